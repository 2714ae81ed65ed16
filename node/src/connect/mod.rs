//! Connection management: our listeners (TCP and relays) and the
//! addresses they make us reachable at, and one dial loop per configured
//! device that tries every known address — static, `dns-srv://`, and
//! `dynamic` via discovery — preferring direct over relayed, upgrading a
//! relayed connection when a direct one works, backing off in between.
//!
//! * `listen.rs` — listeners reconciled with `listenAddresses`.
//! * `dial.rs` — address candidates and the per-device loop.

mod dial;
mod listen;

use std::sync::{Arc, OnceLock};

use anyhow::Result;

use crate::model::Node;
use crate::resolve::Resolver;

pub use dial::ensure_dialers;
pub use listen::announced_addresses;

/// The process's resolver (one node per process: the home lock).
pub fn resolver() -> &'static Resolver {
    static R: OnceLock<Resolver> = OnceLock::new();
    R.get_or_init(Resolver::default)
}

/// Starts listening (failing when a configured TCP address cannot be
/// bound: an operator wants to know at once), then keeps the listeners in
/// line with the configuration, announces to discovery and runs local
/// discovery. Dial loops start with [`ensure_dialers`].
pub async fn start(node: &Arc<Node>) -> Result<()> {
    listen::reconcile(node, true).await?;
    tokio::spawn(listen::supervise(node.clone()));
    tokio::spawn(crate::discovery::announce_loop(node.clone()));
    tokio::spawn(crate::discovery::local::run(node.clone()));
    Ok(())
}

/// Lower is better, as Syncthing's connection priorities.
pub fn priority(kind: &str) -> u8 {
    if kind.starts_with("relay") {
        2
    } else {
        1
    }
}
