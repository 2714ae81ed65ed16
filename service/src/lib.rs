//! Runtime plumbing shared by `discosrv`, `relaysrv` and `node`: logging,
//! the async runtime, shutdown and bounded HTTP bodies. Protocol logic lives in `proto`, never here.

pub mod body;
pub mod logging;
pub mod runtime;
pub mod shutdown;

pub use logging::LogArgs;
pub use runtime::run_main;
