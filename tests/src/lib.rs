//! End-to-end test harness.
//!
//! Starts real programs — ours (from `target/`) and Syncthing's (1.19.2 from
//! Debian's packages, 1.30.0 and 2.1.3 built by `scripts/build-go-peers`:
//! [`peers`]) — isolated on 127.0.0.1: free ports from a range below
//! the kernel's ephemeral ports, every public-infrastructure setting of
//! Syncthing switched off before its first start, and processes stopped by
//! the PID this harness started, never by name.
//!
//! A missing program fails the test with the name of the package to
//! install. The one exception is Syncthing 2.1.3, which the Go module proxy
//! may refuse to serve: its cases print a `SKIPPED` line with the reason;
//! nothing is skipped silently.

pub mod bench;
pub mod bep_peer;
pub mod connect;
pub mod discovery;
pub mod fat;
pub mod https;
pub mod netns;
pub mod node;
pub mod peers;
pub mod ports;
pub mod process;
pub mod programs;
pub mod promtool;
pub mod redis_cluster;
pub mod relay;
pub mod rest;
pub mod rest_api;
pub mod syncthing;
pub mod tree;
pub mod versioning;
pub mod wait;

pub use peers::{PeerProgram, PeerVersion};
pub use ports::pick_port;
pub use process::Proc;
pub use programs::{our_binary, require_program};
pub use syncthing::{Syncthing, SyncthingHome};
