//! Runtime plumbing shared by `discosrv`, `relaysrv` and `node`: logging
//! and shutdown. Protocol logic lives in `proto`, never here.

pub mod logging;
pub mod shutdown;

pub use logging::LogArgs;
