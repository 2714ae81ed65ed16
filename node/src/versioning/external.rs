//! External versioning: a command the operator configured moves the file
//! away itself. It is split into words as a POSIX shell would (quotes,
//! backslashes) but run without a shell; `%FOLDER_PATH%`, `%FILE_PATH%`
//! (folder-relative) and `%FOLDER_FILESYSTEM%` are substituted in each
//! word and also set as environment variables, as Syncthing does. A word
//! holding both a placeholder and a shell special character is refused
//! (Syncthing's rule: the command must not be able to smuggle a file
//! name into shell syntax).
//!
//! The file counts as handled only when the command exits with 0 *and*
//! the file is gone; a command still running after its timeout is killed
//! (its whole process group).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Characters that make a word with a placeholder unsafe.
const SPECIAL: &[char] = &[
    '`', '"', '\'', '<', '>', ';', '!', '#', '$', '&', '*', '?', ' ',
];
/// Stderr kept for the error message.
const MAX_STDERR: usize = 4096;
/// How often a running command is looked at (bounded by its timeout).
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExternalError {
    #[error("the external versioning command is invalid: {0}")]
    Invalid(String),
    #[error("unsafe external versioning command: a word holds both a placeholder and a shell special character")]
    Unsafe,
    #[error("cannot run the external versioning command {program:?}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("the external versioning command failed ({status}){stderr}")]
    Failed { status: String, stderr: String },
    #[error("the external versioning command did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("the external versioning command succeeded but did not remove the file")]
    NotRemoved,
}

/// Splits `command` into words: whitespace separates; `'…'` is literal;
/// `"…"` allows `\"`, `\\`, `\$`, `` \` `` escapes; `\x` outside quotes is `x`.
pub fn split(command: &str) -> Result<Vec<String>, ExternalError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => {
                            return Err(ExternalError::Invalid("unterminated single quote".into()))
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => cur.push(e),
                            Some('\n') => {}
                            Some(o) => {
                                cur.push('\\');
                                cur.push(o);
                            }
                            None => {
                                return Err(ExternalError::Invalid(
                                    "unterminated double quote".into(),
                                ))
                            }
                        },
                        Some(c) => cur.push(c),
                        None => {
                            return Err(ExternalError::Invalid("unterminated double quote".into()))
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(e) => cur.push(e),
                    None => return Err(ExternalError::Invalid("trailing backslash".into())),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(ExternalError::Invalid("empty command".into()));
    }
    Ok(words)
}

/// The words to run for `file` (folder-relative) of the folder at
/// `folder`, placeholders substituted.
pub fn prepare(command: &str, folder: &Path, file: &str) -> Result<Vec<String>, ExternalError> {
    let folder = folder.to_string_lossy();
    let vars = [
        ("%FOLDER_FILESYSTEM%", "basic"),
        ("%FOLDER_PATH%", folder.as_ref()),
        ("%FILE_PATH%", file),
    ];
    split(command)?
        .into_iter()
        .map(|w| {
            let has_var = vars.iter().any(|(k, _)| w.contains(k));
            if has_var && w.contains(SPECIAL) {
                return Err(ExternalError::Unsafe);
            }
            Ok(vars.iter().fold(w, |w, (k, v)| w.replace(k, v)))
        })
        .collect()
}

/// Runs the command for `file`; `Ok` when it exited with 0 (whether the
/// file is gone is for the caller to check, through its directory
/// handle).
pub fn run(
    command: &str,
    folder: &Path,
    file: &str,
    timeout: Duration,
) -> Result<(), ExternalError> {
    use std::os::unix::process::CommandExt;
    let words = prepare(command, folder, file)?;
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        // Our REST key is nobody's business (Syncthing drops its own).
        .env_remove("NODE_GUI_APIKEY")
        .env("FOLDER_FILESYSTEM", "basic")
        .env("FOLDER_PATH", folder)
        .env("FILE_PATH", file);
    let mut child = cmd.spawn().map_err(|e| ExternalError::Spawn {
        program: words[0].clone(),
        reason: e.to_string(),
    })?;
    // Stderr is read while the command runs (a full pipe would stall it),
    // keeping only the start.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.by_ref().take(MAX_STDERR as u64).read_to_end(&mut kept);
            let _ = std::io::copy(p, &mut std::io::sink());
        }
        kept
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the process group we created; the
                // child has not been reaped, so its pid is still ours.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                break Err(ExternalError::Timeout(timeout));
            }
            Ok(None) => std::thread::sleep(POLL.min(deadline - Instant::now())),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(ExternalError::Spawn {
                    program: words[0].clone(),
                    reason: e.to_string(),
                });
            }
        }
    };
    let status = status?;
    if status.success() {
        // Not joined: something the command left running may hold its
        // stderr open for long; the reader ends when the pipe closes.
        return Ok(());
    }
    let stderr = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&stderr).trim().to_string();
    Err(ExternalError::Failed {
        status: status.to_string(),
        stderr: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_like_a_shell_and_substituted() {
        assert_eq!(
            split(r#"mv  "a b" 'c d' e\ f "x\"y""#).unwrap(),
            ["mv", "a b", "c d", "e f", "x\"y"]
        );
        assert!(split("mv 'open").is_err());
        assert!(split("   ").is_err());
        let w = prepare(
            "/bin/mv %FOLDER_PATH%/%FILE_PATH% \"/backup/%FILE_PATH%\"",
            Path::new("/srv/f"),
            "a/b c.exr",
        )
        .unwrap();
        assert_eq!(w, ["/bin/mv", "/srv/f/a/b c.exr", "/backup/a/b c.exr"]);
        // A placeholder next to shell syntax is refused.
        assert_eq!(
            prepare("sh -c 'rm %FILE_PATH%'", Path::new("/f"), "x"),
            Err(ExternalError::Unsafe)
        );
    }

    #[test]
    fn failures_and_hangs_are_errors() {
        let dir = Path::new("/");
        run("true", dir, "x", Duration::from_secs(30)).unwrap();
        let e = run(
            "sh -c 'echo nope >&2; exit 3'",
            dir,
            "x",
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(matches!(
            run("/nonexistent/cmd", dir, "x", Duration::from_secs(30)),
            Err(ExternalError::Spawn { .. })
        ));
        // The shell and the sleep it starts are killed together.
        let started = Instant::now();
        let e = run(
            "sh -c 'sleep 100; true'",
            dir,
            "x",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(e, ExternalError::Timeout(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
