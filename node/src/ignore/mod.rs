//! `.stignore`: which names of a folder are not synced, as Syncthing
//! 1.19.2 reads them.
//!
//! Each line is trimmed; empty lines and `//` comments are skipped; a line
//! seen before (in any file) is skipped. `#include FILE` reads another
//! file, relative to the including one (here: never outside the folder,
//! at most [`MAX_INCLUDE_DEPTH`] deep, each file once). Other lines are
//! patterns with optional prefixes in any order, each at most once: `!`
//! (un-ignore), `(?i)` (case-insensitive), `(?d)` (may be deleted when it
//! keeps a directory from being removed). A pattern starting with `/`
//! matches from the folder root only; any other also matches in every
//! subdirectory (`**/` is added). A pattern also covers everything below
//! a matching directory (`/**` is added). The first matching pattern
//! decides.
//!
//! Any error (bad pattern, missing include) is returned: the folder then
//! stops rather than sync or delete what the user meant to ignore.

pub(crate) mod glob;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use glob::Glob;

/// The ignore file at the root of every folder.
pub const FILE: &str = ".stignore";
/// Includes deeper than this are refused (1.19.2 stops only at cycles).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Largest ignore file read.
const MAX_FILE: u64 = 1 << 20;
/// Most patterns kept (over all files).
const MAX_PATTERNS: usize = 100_000;
/// Most glob instructions kept (over all files; about one per character,
/// at most 16 bytes each): twice what the largest file of plain lines
/// needs, as each line becomes up to four patterns. Bounds what
/// `.stignore` text (a user's, or a REST client's) can make the node hold:
/// 128 MiB.
const MAX_INSTRUCTIONS: usize = 8 * MAX_FILE as usize;

/// What a name's first matching pattern says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub ignored: bool,
    /// Ignored with `(?d)`: may be removed to delete its directory.
    pub deletable: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The pattern as compiled (after prefixes, `**/` and `/**` added).
    text: String,
    glob: Glob,
    ignore: bool,
    fold_case: bool,
    deletable: bool,
}

/// The parsed ignore patterns of a folder.
#[derive(Debug, Clone, Default)]
pub struct Ignores {
    patterns: Vec<Pattern>,
    skip_ignored_dirs: bool,
    /// Folder-relative directories ignored whatever the patterns say (a
    /// versions folder inside the folder under another name than
    /// `.stversions`): never scanned, announced, served or pulled into.
    internal: Vec<String>,
}

impl Ignores {
    /// Reads `root/.stignore` (and its includes). A missing file means no
    /// patterns.
    pub fn load(root: &Path) -> Result<Ignores> {
        let path = root.join(FILE);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ignores::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            Ok(_) => {}
        }
        let mut state = Loader::new(root);
        state
            .file(Path::new(FILE), 0)
            .with_context(|| format!("ignore patterns in {}", path.display()))?;
        Ok(Ignores::from_patterns(state.patterns))
    }

    /// Parses ignore-file text that has no `#include` lines (tests, the
    /// fuzz targets); an `#include` fails, as its file cannot be found.
    pub fn parse(text: &str) -> Result<Ignores> {
        let mut state = Loader::new(Path::new("/nonexistent"));
        state.text(text, Path::new(FILE), 0)?;
        Ok(Ignores::from_patterns(state.patterns))
    }

    fn from_patterns(patterns: Vec<Pattern>) -> Ignores {
        // Like 1.19.2: an ignored directory's content is not walked unless
        // some pattern could un-ignore something inside it. Patterns that
        // only re-ignore, and root-level `!/name` ones, allow skipping;
        // the `/**` companion of the previous pattern is not looked at.
        let mut skip = true;
        let mut previous = "";
        for p in &patterns {
            // By suffix, not by byte count: a count can cut a multi-byte
            // character (`éé` panicked here; found by fuzz/node_ignore).
            if p.text.len() > 3 && p.text.strip_suffix("/**") == Some(previous) {
                continue;
            }
            if !p.allows_skipping_ignored_dirs() {
                skip = false;
                break;
            }
            previous = &p.text;
        }
        Ignores {
            patterns,
            skip_ignored_dirs: skip,
            internal: Vec::new(),
        }
    }

    /// These patterns, and `dir` (and everything below it) ignored first.
    pub fn with_internal_dir(mut self, dir: Option<String>) -> Ignores {
        self.internal.extend(dir);
        self
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The verdict for a folder-relative name (`/`-separated).
    pub fn check(&self, name: &str) -> Verdict {
        if name.is_empty() || name == "." {
            return Verdict::default();
        }
        for d in &self.internal {
            if name
                .strip_prefix(d.as_str())
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            {
                return Verdict {
                    ignored: true,
                    deletable: false,
                };
            }
        }
        let mut lower: Option<String> = None;
        for p in &self.patterns {
            let hit = if p.fold_case {
                p.glob
                    .matches(lower.get_or_insert_with(|| name.to_lowercase()))
            } else {
                p.glob.matches(name)
            };
            if hit {
                return Verdict {
                    ignored: p.ignore,
                    deletable: p.ignore && p.deletable,
                };
            }
        }
        Verdict::default()
    }

    pub fn is_ignored(&self, name: &str) -> bool {
        self.check(name).ignored
    }

    /// Whether an ignored directory can be skipped whole by the scanner
    /// (no pattern could un-ignore something inside it).
    pub fn skip_ignored_dirs(&self) -> bool {
        self.skip_ignored_dirs
    }
}

impl Pattern {
    fn allows_skipping_ignored_dirs(&self) -> bool {
        if self.ignore {
            return true;
        }
        let Some(rest) = self.text.strip_prefix('/') else {
            return false;
        };
        if rest.contains('/') {
            return false;
        }
        !self
            .text
            .strip_suffix("**")
            .unwrap_or(&self.text)
            .contains("**")
    }
}

struct Loader<'a> {
    root: &'a Path,
    seen_lines: HashSet<String>,
    seen_files: HashSet<PathBuf>,
    patterns: Vec<Pattern>,
    /// Glob instructions held by `patterns`, against [`MAX_INSTRUCTIONS`].
    instructions: usize,
}

/// `rel` joined lexically onto `base`'s directory; `None` when the result
/// would leave the folder.
fn include_path(current: &Path, include: &str) -> Option<PathBuf> {
    let joined = current.parent().unwrap_or(Path::new("")).join(include);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

impl<'a> Loader<'a> {
    fn new(root: &'a Path) -> Loader<'a> {
        Loader {
            root,
            seen_lines: HashSet::new(),
            seen_files: HashSet::new(),
            patterns: Vec::new(),
            instructions: 0,
        }
    }
}

impl Loader<'_> {
    /// Reads the folder-relative file `rel`, never through a symlink that
    /// leaves the folder.
    fn file(&mut self, rel: &Path, depth: usize) -> Result<()> {
        if !self.seen_files.insert(rel.to_path_buf()) {
            bail!("multiple include of ignore file {:?}", rel.display());
        }
        let path = self.root.join(rel);
        let root = fs::canonicalize(self.root)
            .with_context(|| format!("cannot resolve {}", self.root.display()))?;
        let real =
            fs::canonicalize(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if !real.starts_with(&root) {
            bail!("{} resolves outside the folder; not read", path.display());
        }
        let file =
            fs::File::open(&real).with_context(|| format!("cannot read {}", path.display()))?;
        if !file.metadata()?.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let mut data = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if data.len() as u64 > MAX_FILE {
            bail!("{} is larger than {} bytes", path.display(), MAX_FILE);
        }
        let text = String::from_utf8(data)
            .map_err(|_| anyhow!("{} is not valid UTF-8", path.display()))?;
        self.text(&text, rel, depth)
    }

    fn text(&mut self, text: &str, current: &Path, depth: usize) -> Result<()> {
        for line in text.lines() {
            let line = line.trim();
            if !self.seen_lines.insert(line.to_string()) {
                continue;
            }
            if line.is_empty() || line.starts_with("//") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("#include") {
                // 1.19.2 splits at the first space: "#includex" is an error.
                let Some(include) = rest.strip_prefix(' ').map(str::trim) else {
                    bail!("failed to parse #include line {line:?}: no file?");
                };
                if include.is_empty() {
                    bail!("failed to parse #include line {line:?}: no file?");
                }
                if depth + 1 > MAX_INCLUDE_DEPTH {
                    bail!("#include {include:?}: includes nested deeper than {MAX_INCLUDE_DEPTH}");
                }
                let Some(path) = include_path(current, include) else {
                    bail!("#include {include:?}: only files inside the folder can be included");
                };
                self.file(&path, depth + 1)
                    .with_context(|| format!("failed to load include file {include:?}"))?;
                continue;
            }
            let result = if line.ends_with("/**") {
                self.add(line)
            } else if line.ends_with('/') {
                self.add(&format!("{line}**"))
            } else {
                self.add(line)
                    .and_then(|()| self.add(&format!("{line}/**")))
            };
            result.with_context(|| format!("invalid pattern {line:?} in ignore file"))?;
        }
        Ok(())
    }

    /// One pattern line (prefixes included); adds one or two patterns.
    fn add(&mut self, line: &str) -> Result<()> {
        if self.patterns.len() >= MAX_PATTERNS {
            bail!("more than {MAX_PATTERNS} patterns");
        }
        let (mut ignore, mut fold_case, mut deletable) = (true, false, false);
        let mut seen = [false; 3];
        let mut line = line;
        loop {
            if let (Some(r), false) = (line.strip_prefix('!'), seen[0]) {
                seen[0] = true;
                ignore = !ignore;
                line = r;
            } else if let (Some(r), false) = (line.strip_prefix("(?i)"), seen[1]) {
                seen[1] = true;
                fold_case = true;
                line = r;
            } else if let (Some(r), false) = (line.strip_prefix("(?d)"), seen[2]) {
                seen[2] = true;
                deletable = true;
                line = r;
            } else {
                break;
            }
        }
        if line.is_empty() {
            bail!("missing pattern");
        }
        let line = if fold_case {
            line.to_lowercase()
        } else {
            line.to_string()
        };
        let mut push = |text: String, glob_text: &str| -> Result<()> {
            let glob = Glob::compile(glob_text)?;
            self.instructions += glob.size();
            if self.instructions > MAX_INSTRUCTIONS {
                bail!("the ignore patterns are too large (more than {MAX_INSTRUCTIONS} compiled glob steps, about one per character)");
            }
            self.patterns.push(Pattern {
                text,
                glob,
                ignore,
                fold_case,
                deletable,
            });
            Ok(())
        };
        if let Some(rooted) = line.strip_prefix('/') {
            return push(line.clone(), rooted);
        }
        if let Some(rest) = line.strip_prefix("**/") {
            push(line.clone(), &line)?;
            return push(rest.to_string(), rest);
        }
        push(line.clone(), &line)?;
        let anywhere = format!("**/{line}");
        push(anywhere.clone(), &anywhere)
    }
}
