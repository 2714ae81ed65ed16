//! Runtime plumbing shared by `discosrv`, `relaysrv` and `node`: logging,
//! the async runtime and shutdown. Protocol logic lives in `proto`, never here.

pub mod logging;
pub mod runtime;
pub mod shutdown;

pub use logging::LogArgs;
pub use runtime::run_main;
