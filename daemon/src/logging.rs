//! `tracing` setup: human-readable by default, JSON lines on request.

use std::sync::Arc;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags, flattened into each binary's command line.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `info,relaysrv=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Gets the text of each log event (a program keeping recent lines,
/// e.g. for an API). The subscriber is process-wide, so the callback
/// holds whatever it feeds (an `Arc` of it) instead of reaching a global.
pub type CopyFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes one log event to stderr and hands a copy of its text to a
/// callback when done.
struct Tee {
    buf: Vec<u8>,
    copy: CopyFn,
}

/// Longest copy of one event kept (the stderr line is never cut).
const MAX_COPY: usize = 16 << 10;

impl std::io::Write for Tee {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() < MAX_COPY {
            let room = MAX_COPY - self.buf.len();
            self.buf.extend_from_slice(&data[..data.len().min(room)]);
        }
        std::io::stderr().write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            (self.copy)(&String::from_utf8_lossy(&self.buf));
        }
    }
}

impl LogArgs {
    /// Installs the global subscriber; logs go to stderr. An invalid filter
    /// falls back to `info` with a warning rather than refusing to start.
    pub fn init(&self) {
        self.init_with_copy(None);
    }

    /// Like [`LogArgs::init`], and `copy` also gets each event's text.
    pub fn init_with_copy(&self, copy: Option<CopyFn>) {
        let (filter, bad) = match EnvFilter::try_new(&self.log_level) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(e)),
        };
        let writer = move || -> Box<dyn std::io::Write> {
            match &copy {
                Some(copy) => Box::new(Tee {
                    buf: Vec::new(),
                    copy: copy.clone(),
                }),
                None => Box::new(std::io::stderr()),
            }
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        let _ = match self.log_format {
            LogFormat::Human => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        if let Some(e) = bad {
            tracing::warn!(filter = %self.log_level, error = %e, "invalid --log-level; using info");
        }
    }
}
