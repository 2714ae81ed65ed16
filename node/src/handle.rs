//! Starting and stopping a node in-process: [`spawn`] → [`NodeHandle`] →
//! [`NodeHandle::shutdown`]. The `node serve` command is this plus flags,
//! logging and signals; tests run several nodes in one process with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use proto::Identity;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::Db;
use crate::model::Node;
use crate::rest;

/// What a node needs to start besides its home directory's files.
#[derive(Clone, Default)]
pub struct Options {
    /// Home directory: cert.pem, key.pem, config.toml, the index database.
    pub home: PathBuf,
    /// REST address, overriding the configuration (not saved).
    pub gui_address: Option<String>,
    /// REST API key, overriding the configuration (not saved).
    pub gui_apikey: Option<String>,
    /// Where the node's recent log lines are kept (`/rest/system/log`); the
    /// log subscriber feeds them. A new, empty one if not given.
    pub records: Option<Arc<crate::events::record::Records>>,
    /// Test-only: see `Node::abort_after_archive`.
    pub abort_after_archive: Option<String>,
}

pub use crate::model::StopRequest;

/// How long connections and tasks get to finish once the node stops;
/// under the 5 s an orchestrator waits after SIGTERM, with room for the
/// runtime's own exit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// A running node. Dropping it without [`NodeHandle::shutdown`] leaves the
/// node's tasks running until the runtime ends.
pub struct NodeHandle {
    node: Arc<Node>,
    rest_addr: Option<SocketAddr>,
    /// The home directory's lock, released after the stop.
    _home_lock: std::fs::File,
}

/// Loads the identity, configuration and index from `options.home`, starts
/// the folders, listeners, discovery, dialers and the REST API, and
/// returns once all of them are running (a TCP listen address that cannot
/// be bound is an error).
pub async fn spawn(options: Options) -> Result<NodeHandle> {
    let home = options.home.clone();
    let identity = Identity::load(&home.join("cert.pem"), &home.join("key.pem")).with_context(
        || {
            format!(
                "cannot load the device identity from {}; create one with `node generate --home {}`",
                home.display(),
                home.display()
            )
        },
    )?;
    // One node per home: two would share the index database and identity.
    let home_lock = lock_home(&home)?;
    let config = Config::load(&home)?;
    let mut gui = config.gui.clone();
    if let Some(a) = options.gui_address {
        gui.address = a;
    }
    if let Some(k) = options.gui_apikey {
        gui.api_key = k;
    }
    let db = Db::open(&home)?;
    let records = options.records.unwrap_or_default();
    let mut node = Node::new(home, gui, identity, config, db, records);
    node.abort_after_archive = options.abort_after_archive;
    let node = Arc::new(node);
    tracing::info!(id = %node.my_id, "starting");
    node.events.starting(&node.home, &node.my_id);
    let rest_addr = match start(&node).await {
        Ok(addr) => addr,
        Err(e) => {
            // Whatever started before the failure stops with it.
            let _ = node.shutdown.stop(STOP_DEADLINE).await;
            return Err(e);
        }
    };
    node.events.startup_complete(&node.my_id);
    Ok(NodeHandle {
        node,
        rest_addr,
        _home_lock: home_lock,
    })
}

async fn start(node: &Arc<Node>) -> Result<Option<SocketAddr>> {
    // Folders (an initial scan, then periodic/on-demand ones) and dialers.
    crate::apply::apply_config(node)?;
    node.shutdown
        .spawn_until_cancelled(follow_own_config_changes(node.clone()));
    // Listeners (TCP, relays), discovery; fails if a TCP address cannot be bound.
    crate::connect::start(node).await?;
    if node.gui.address.is_empty() {
        return Ok(None);
    }
    rest::check_listen_address(node)?;
    let listener = TcpListener::bind(&node.gui.address)
        .await
        .with_context(|| format!("cannot listen for the REST API on {}", node.gui.address))?;
    let addr = listener.local_addr()?;
    // The port speaks HTTPS as well whenever a certificate is at hand, as
    // Syncthing's; without `useTLS` a certificate problem only costs that.
    let https = match rest::tls::acceptor(&node.home) {
        Ok(a) => Some(a),
        Err(e) if !node.config().gui.use_tls => {
            tracing::warn!(error = %format!("{e:#}"), "REST API: no HTTPS, plain HTTP only");
            None
        }
        Err(e) => return Err(e.context("gui.useTLS is set")),
    };
    node.shutdown
        .spawn_until_cancelled(rest::serve(node.clone(), listener, https));
    Ok(Some(addr))
}

/// Changes the node makes to its own configuration (an introducer's
/// devices, auto-accepted folders: `model::introduce`) are announced and
/// put in effect here, as a REST change is: `ConfigSaved`, then
/// `apply_config` (new folders start, new devices get dialed, every
/// connection sends a new ClusterConfig). Several changes in a row are
/// applied once.
async fn follow_own_config_changes(node: Arc<Node>) {
    loop {
        node.config_edited.notified().await;
        let config = node.config();
        node.events
            .config_saved(&config, rest::config::config_json(&node));
        if let Err(e) = crate::apply::apply_config(&node) {
            tracing::warn!(error = %format!("{e:#}"), "configuration saved, but not applied");
        }
    }
}

impl NodeHandle {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Where the REST API listens, if it does.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest_addr
    }

    /// The addresses the node is reachable at (TCP listeners with their
    /// bound port, joined relays), as discovery announces them.
    pub fn listen_addresses(&self) -> Vec<String> {
        self.node.connect.announced_addresses()
    }

    /// Resolves when a REST client asks the node to shut down or restart.
    pub async fn stop_requested(&self) -> StopRequest {
        let mut rx = self.node.stop_request.subscribe();
        let asked = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => *r,
            // The sender lives in the Node we hold: never closed.
            Err(_) => None,
        };
        asked.unwrap_or(StopRequest::Shutdown)
    }

    /// Stops the node: connections are closed with a BEP Close (peers see
    /// "device is shutting down"), every task is asked to stop and awaited,
    /// at most [`STOP_DEADLINE`].
    pub async fn shutdown(self) -> Result<()> {
        let reason = match *self.node.stop_request.borrow() {
            Some(StopRequest::Restart) => "device is restarting",
            _ => "device is shutting down",
        };
        tracing::info!("shutting down");
        // Live connections send their Close and end; new ones are refused
        // once the stop is asked (see conn::run).
        for c in self
            .node
            .all_connections()
            .into_values()
            .flat_map(|d| d.conns)
        {
            let _ = c.close.try_send(reason.into());
        }
        let stopped = self.node.shutdown.stop(STOP_DEADLINE).await;
        if let Err(e) = &stopped {
            tracing::warn!(error = %e, "some tasks did not stop in time");
        }
        stopped.context("stopping the node")
    }
}

/// Holds an exclusive lock on `home/node.lock` for the life of the handle.
fn lock_home(home: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = home.join("node.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; released when it closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "another node is already running with home {} (lock {} is held)",
            home.display(),
            path.display()
        );
    }
    Ok(file)
}
