//! `node`: a Syncthing-compatible sync device, as a library. The `node`
//! binary (`main.rs`) parses flags and calls [`serve::serve`] (or the
//! identity commands); tests start nodes in-process the same way.

pub mod apply;
pub mod bandwidth;
pub mod config;
pub mod conn;
pub mod connect;
pub mod db;
pub mod dirfd;
pub mod discovery;
pub mod events;
pub mod fileserve;
pub mod folder;
pub mod guard;
pub mod handle;
pub mod identity_cmd;
pub mod ignore;
pub mod metrics;
pub mod model;
pub mod pull;
pub mod relay_client;
pub mod remote_progress;
pub mod resolve;
pub mod rest;
pub mod scan;
pub mod serve;
pub mod timefmt;
pub mod versioning;
pub mod watch;

/// Not an API: what the fuzz targets in `fuzz/` must reach of private
/// modules (the `.stignore` glob dialect, for a differential target; the
/// config endpoints' handling of request bodies).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::ignore::glob::Glob;
    pub use crate::rest::config::{check_body as rest_config_body, BodyError, BodyFor};
}
