//! What every long-running program of the project (`discosrv`, `relaysrv`,
//! `node`) shares: logging, the async runtime, shutdown, bounded HTTP
//! bodies and the metrics text format. Protocol logic lives in `proto`, never here.

pub mod body;
pub mod logging;
pub mod metrics;
pub mod refusal_log;
pub mod runtime;
pub mod shutdown;
pub mod sync;
pub mod watched;

pub use logging::LogArgs;
pub use refusal_log::RefusalLog;
pub use runtime::{run_main, run_main_with};
pub use shutdown::Shutdown;
pub use watched::WatchedFile;
