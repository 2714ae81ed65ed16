//! End-to-end test harness.
//!
//! Starts real programs — ours (from `target/`) and Syncthing 1.19.2's from
//! Debian's packages — isolated on 127.0.0.1: free ports from a range below
//! the kernel's ephemeral ports, every public-infrastructure setting of
//! Syncthing switched off before its first start, and processes stopped by
//! the PID this harness started, never by name.
//!
//! A missing program fails the test with the name of the package to
//! install; nothing is skipped silently.

pub mod bench;
pub mod bep_peer;
pub mod connect;
pub mod discovery;
pub mod netns;
pub mod node;
pub mod ports;
pub mod process;
pub mod programs;
pub mod relay;
pub mod rest;
pub mod rest_api;
pub mod syncthing;
pub mod tree;
pub mod wait;

pub use ports::pick_port;
pub use process::Proc;
pub use programs::{our_binary, require_program};
pub use syncthing::{Syncthing, SyncthingHome};
