//! One node's connection state (`node.connect`): the listeners running
//! and the ones that failed, the last outcome of each dialed address, and
//! the DNS resolver. The state only; `connect/` listens and dials.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::resolve::Resolver;
use daemon::sync::MutexExt;

/// One node's connection state (`node.connect`).
#[derive(Default)]
pub struct ConnectState {
    /// DNS for dialing, relays and discovery servers (its cache is shared
    /// by them all).
    pub resolver: Resolver,
    pub listeners: Listeners,
    pub dials: DialLog,
}

impl ConnectState {
    /// Our current addresses, for discovery (see [`Listeners`]).
    pub fn announced_addresses(&self) -> Vec<String> {
        self.listeners.announced_addresses()
    }
}

pub struct Listener {
    pub task: JoinHandle<()>,
    /// The address this listener makes us reachable at, once it is.
    pub reachable: watch::Receiver<Option<String>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One node's listeners, by listen address.
#[derive(Default)]
pub struct Listeners {
    pub running: Mutex<HashMap<String, Listener>>,
    /// Listen addresses that could not be started, with the reason.
    pub failures: Mutex<HashMap<String, String>>,
    /// Held by one [`reconcile`] at a time: two rounds both seeing an
    /// address missing would both bind it.
    pub reconciling: tokio::sync::Mutex<()>,
}

/// What to show of a listen address: relay tokens never leave the node.
pub fn shown(uri: &str) -> String {
    match uri.parse::<proto::relay::RelayUri>() {
        Ok(r) if uri.starts_with("relay://") => crate::config::relay_uri::announceable(&r),
        _ => uri.to_string(),
    }
}

impl Listeners {
    /// Syncthing's `connectionServiceStatus`: per listen address its error
    /// (or null) and the addresses it makes us reachable at.
    pub fn service_status(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (uri, l) in self.running.locked().iter() {
            let reachable: Vec<String> = l.reachable.borrow().iter().cloned().collect();
            let error = if reachable.is_empty() {
                serde_json::Value::from("not connected to the relay yet")
            } else {
                serde_json::Value::Null
            };
            out.insert(
                shown(uri),
                serde_json::json!({
                    "error": error, "lanAddresses": reachable, "wanAddresses": reachable
                }),
            );
        }
        for (uri, e) in self.failures.locked().iter() {
            out.insert(
                shown(uri),
                serde_json::json!({"error": e, "lanAddresses": [], "wanAddresses": []}),
            );
        }
        out
    }

    /// Our current addresses, for discovery: TCP listeners as configured (the
    /// bound port filled in) and relays we are joined to, without tokens.
    pub fn announced_addresses(&self) -> Vec<String> {
        let l = self.running.locked();
        let mut out: Vec<String> = l
            .values()
            .filter_map(|x| x.reachable.borrow().clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// When an address was last dialed, and the error (`None`: it worked).
type DialOutcome = (SystemTime, Option<String>);

/// Addresses remembered at most in `lastDialStatus`.
const MAX_DIAL_STATUS: usize = 1000;

/// Dial outcomes by address (label), for Syncthing's `lastDialStatus`.
#[derive(Default)]
pub struct DialLog(std::sync::Mutex<HashMap<String, DialOutcome>>);

impl DialLog {
    pub fn record(&self, label: String, error: Option<String>) {
        let mut m = self.0.locked();
        if m.len() >= MAX_DIAL_STATUS && !m.contains_key(&label) {
            m.clear();
        }
        m.insert(label, (SystemTime::now(), error));
    }

    /// `lastDialStatus`: address → (when, error or `None` for success).
    pub fn snapshot(&self) -> HashMap<String, DialOutcome> {
        self.0.locked().clone()
    }
}
