//! A value read from a file and read again when the file changes: allow
//! lists and token files that operators edit (or Kubernetes swaps under a
//! ConfigMap mount) while the program runs.
//!
//! Changes are found by polling the file's metadata (size, mtime, inode,
//! ctime) rather than inotify: a ConfigMap update replaces a symlink two
//! levels up, which inotify on the file never sees, while a `stat` through
//! the path does. A file that cannot be read or parsed leaves the previous
//! value in force (a typo must not open or close a server), and says why.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::sync::{MutexExt, RwLockExt};
use crate::Shutdown;

/// Why a file was not (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

type Parser<T> = Box<dyn Fn(&str) -> Result<T, String> + Send + Sync>;

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            inode: m.ino(),
        }
    }
}

/// The value of a watched file: [`WatchedFile::get`] is always the last
/// version that parsed.
pub struct WatchedFile<T> {
    path: PathBuf,
    max_bytes: u64,
    parse: Parser<T>,
    current: RwLock<Arc<T>>,
    stamp: Mutex<Option<Stamp>>,
    loaded_at: Mutex<SystemTime>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl<T: Send + Sync + 'static> WatchedFile<T> {
    /// Reads and parses the file now: a program refuses to start on a
    /// file it cannot use, rather than start open. Files beyond
    /// `max_bytes` are refused.
    pub fn load(
        path: &Path,
        max_bytes: u64,
        parse: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Arc<WatchedFile<T>>, WatchError> {
        let (value, stamp) = read(path, max_bytes, &parse)?;
        Ok(Arc::new(WatchedFile {
            path: path.to_path_buf(),
            max_bytes,
            parse: Box::new(parse),
            current: RwLock::new(Arc::new(value)),
            stamp: Mutex::new(Some(stamp)),
            loaded_at: Mutex::new(SystemTime::now()),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// The last version that parsed.
    pub fn get(&self) -> Arc<T> {
        self.current.read_locked().clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the value in force was read.
    pub fn loaded_at(&self) -> SystemTime {
        *self.loaded_at.locked()
    }

    /// Successful reloads after the first load.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads refused (unreadable or unparsable file).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reads the file again if it changed: `Ok(true)` when a new version
    /// is in force. On an error the previous value stays, and the same
    /// broken version is not reported again until it changes.
    pub fn check(&self) -> Result<bool, WatchError> {
        let meta = fs::metadata(&self.path).map_err(|source| WatchError::Io {
            path: self.path.clone(),
            source,
        });
        let stamp = meta.as_ref().ok().map(Stamp::of);
        {
            let mut seen = self.stamp.locked();
            if stamp.is_some() && *seen == stamp {
                return Ok(false);
            }
            *seen = stamp;
        }
        meta?;
        match read(&self.path, self.max_bytes, &self.parse) {
            Ok((value, _)) => {
                *self.current.write_locked() = Arc::new(value);
                *self.loaded_at.locked() = SystemTime::now();
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Checks the file every `every` until `shutdown`, logging reloads and
    /// refusals (`what` names the file's role in the log).
    pub fn spawn_polling(
        self: &Arc<Self>,
        what: &'static str,
        every: Duration,
        shutdown: &Shutdown,
    ) {
        let me = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let me2 = me.clone();
                match tokio::task::spawn_blocking(move || me2.check()).await {
                    Ok(Ok(true)) => tracing::info!(file = %me.path.display(), what, "reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(what, error = %e, "not reloaded; the previous version stays in force")
                    }
                    Err(e) => tracing::error!(what, error = %e, "reload task failed"),
                }
            }
        });
    }
}

fn read<T>(
    path: &Path,
    max_bytes: u64,
    parse: &dyn Fn(&str) -> Result<T, String>,
) -> Result<(T, Stamp), WatchError> {
    let io = |source| WatchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let stamp = Stamp::of(&file.metadata().map_err(io)?);
    let mut text = String::new();
    file.take(max_bytes + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > max_bytes {
        return Err(WatchError::TooLarge {
            path: path.to_path_buf(),
            max: max_bytes,
        });
    }
    let value = parse(&text).map_err(|reason| WatchError::Parse {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok((value, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Result<Vec<String>, String> {
        if text.contains("bad") {
            return Err("bad line".into());
        }
        Ok(text.lines().map(str::to_string).collect())
    }

    #[test]
    fn reloads_changes_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        fs::write(&path, "a\n").unwrap();
        let w = WatchedFile::load(&path, 1024, lines).unwrap();
        assert_eq!(*w.get(), ["a"]);
        assert!(!w.check().unwrap(), "unchanged file reloaded");

        // Replaced the way editors and ConfigMaps do: a new file renamed over.
        fs::write(dir.path().join("new"), "a\nb\n").unwrap();
        fs::rename(dir.path().join("new"), &path).unwrap();
        assert!(w.check().unwrap());
        assert_eq!(*w.get(), ["a", "b"]);

        fs::write(dir.path().join("new"), "bad\n").unwrap();
        fs::rename(dir.path().join("new"), &path).unwrap();
        assert!(matches!(w.check(), Err(WatchError::Parse { .. })));
        assert_eq!(*w.get(), ["a", "b"], "a broken file replaced the list");
        assert!(
            !w.check().unwrap(),
            "the same broken version reported twice"
        );
        assert_eq!((w.reloads(), w.failures()), (1, 1));

        fs::remove_file(&path).unwrap();
        assert!(matches!(w.check(), Err(WatchError::Io { .. })));
        assert_eq!(*w.get(), ["a", "b"]);
        fs::write(&path, "c\n").unwrap();
        assert!(w.check().unwrap());
        assert_eq!(*w.get(), ["c"]);
    }

    #[test]
    fn refuses_to_start_on_a_bad_or_huge_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        assert!(matches!(
            WatchedFile::load(&path, 10, lines),
            Err(WatchError::Io { .. })
        ));
        fs::write(&path, "x".repeat(11)).unwrap();
        assert!(matches!(
            WatchedFile::load(&path, 10, lines),
            Err(WatchError::TooLarge { .. })
        ));
    }
}
