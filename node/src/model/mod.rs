//! The running node's shared state: identity, configuration, index
//! database, live connections, pending (unknown) devices, per-folder
//! change notifications, and the services every part reaches through the
//! node (events, discovery, connection state, metrics). Nothing of a node
//! lives in a process-wide value: two nodes in one process are apart.

pub mod connect;
pub mod discovery;
pub mod introduce;
pub mod requester;
pub mod summaries;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use proto::{DeviceId, Identity};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, FolderConfig};
use crate::db::Db;
use daemon::sync::{MutexExt, RwLockExt};

/// A live BEP connection, as the REST API shows it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Distinguishes a connection from a later one to the same device.
    pub serial: u64,
    /// Syncthing 2.x's connection ID (see [`ConnectionId`]), in logs and
    /// metrics.
    pub id: ConnectionId,
    pub address: SocketAddr,
    pub kind: ConnectionKind,
    /// On the LAN (Syncthing's `isLocal`, see `bandwidth::lan`): exempt
    /// from bandwidth limits unless `limitBandwidthInLan`.
    pub lan: bool,
    pub client_version: String,
    pub started: SystemTime,
    pub in_bytes: Arc<AtomicU64>,
    pub out_bytes: Arc<AtomicU64>,
    /// Dropping or sending on this ends the connection.
    pub close: mpsc::Sender<String>,
    /// Tells the connection the configuration changed or that it became
    /// the primary: it sends a new ClusterConfig if it is the primary.
    pub config_changed: mpsc::Sender<()>,
    /// Our block requests on this connection.
    pub requester: Arc<crate::model::requester::Requester>,
    /// Index messages each way (index traffic belongs on the primary).
    pub counters: Arc<ConnCounters>,
}

/// Index and IndexUpdate messages sent and received on one connection.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub index_sent: AtomicU64,
    pub index_received: AtomicU64,
}

/// A connection's ID as Syncthing 2.x forms it: the sum of the two Hello
/// timestamps (ours and the peer's, Unix nanoseconds) as 8 big-endian
/// bytes, then 8 random bytes, each half in base32hex without padding
/// (26 characters). The first half sorts by time on both sides; the
/// random half keeps IDs unique even if a peer's clock is odd.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(String);

impl ConnectionId {
    pub fn new(our_timestamp: i64, their_timestamp: i64) -> ConnectionId {
        let sum = our_timestamp.wrapping_add(their_timestamp) as u64;
        let random: [u8; 8] = rand::random();
        let enc = &data_encoding::BASE32HEX_NOPAD;
        ConnectionId(enc.encode(&sum.to_be_bytes()) + &enc.encode(&random))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connection's part in the exchange with its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The oldest connection: our full ClusterConfig and index traffic.
    Primary,
    /// Any other: `ClusterConfig{secondary: true}`, then block requests.
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// The live connections to one device, oldest first: the first is the
/// primary, as in Syncthing 2.x.
#[derive(Debug, Clone, Default)]
pub struct DeviceConns {
    pub conns: Vec<ConnInfo>,
    /// `num_connections` of the peer's latest Hello (0: it has no
    /// multiple connections).
    pub peer_wants: i32,
}

impl DeviceConns {
    pub fn primary(&self) -> Option<&ConnInfo> {
        self.conns.first()
    }

    pub fn secondaries(&self) -> &[ConnInfo] {
        self.conns.get(1..).unwrap_or_default()
    }

    fn live(&mut self) {
        self.conns.retain(|c| !c.close.is_closed());
    }
}

/// Why a new connection was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotRegistered {
    #[error("the device is paused")]
    Paused,
    #[error("the device is no longer configured")]
    Removed,
    #[error("already connected to this device")]
    AlreadyConnected,
    #[error("already {0} connections to this device, as many as negotiated")]
    Full(usize),
}

/// How a connection was made, as Syncthing's REST API names it
/// (`/rest/system/connections` `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// We dialed the device.
    TcpClient,
    /// The device dialed us.
    TcpServer,
    /// We reached the device through a relay.
    RelayClient,
    /// The device reached us through a relay.
    RelayServer,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::TcpClient => "tcp-client",
            ConnectionKind::TcpServer => "tcp-server",
            ConnectionKind::RelayClient => "relay-client",
            ConnectionKind::RelayServer => "relay-server",
        }
    }

    pub fn relayed(self) -> bool {
        matches!(
            self,
            ConnectionKind::RelayClient | ConnectionKind::RelayServer
        )
    }

    /// Lower is better: a direct connection replaces a relayed one at
    /// once, as in Syncthing.
    pub fn priority(self) -> u8 {
        if self.relayed() {
            2
        } else {
            1
        }
    }
}

impl std::fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A folder's state, as Syncthing's REST API and `StateChanged` events
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FolderState {
    Idle,
    /// Waiting for the first scan (the folder has just started).
    ScanWaiting,
    Scanning,
    /// Pulling changes from other devices.
    Syncing,
    /// The folder cannot run (its path or marker is missing, its
    /// `.stignore` is broken): the reason is `FolderRuntime::error`.
    Error,
}

impl FolderState {
    pub fn as_str(self) -> &'static str {
        match self {
            FolderState::Idle => "idle",
            FolderState::ScanWaiting => "scan-waiting",
            FolderState::Scanning => "scanning",
            FolderState::Syncing => "syncing",
            FolderState::Error => "error",
        }
    }
}

impl std::fmt::Display for FolderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One folder of a configuration snapshot; cloning it is a reference count.
#[derive(Debug, Clone)]
pub struct FolderSnapshot {
    config: Arc<Config>,
    index: usize,
}

impl std::ops::Deref for FolderSnapshot {
    type Target = FolderConfig;

    fn deref(&self) -> &FolderConfig {
        // `index` was found in this very snapshot, which never changes.
        &self.config.folders[self.index]
    }
}

/// Who offered a folder: device → (the folder's label there, when).
pub type FolderOffers = HashMap<DeviceId, (String, SystemTime)>;

/// A device that connected but is not configured.
#[derive(Debug, Clone)]
pub struct PendingDevice {
    pub name: String,
    pub address: SocketAddr,
    pub time: SystemTime,
}

/// Per-folder runtime state.
pub struct FolderRuntime {
    /// Our current sequence; index senders wait on changes.
    pub sequence: watch::Sender<i64>,
    pub state: Mutex<FolderState>,
    /// Ask the folder's scan loop for a scan now (and a pull after it).
    pub scan_now: mpsc::Sender<()>,
    /// Names the last pull round could not apply, with the reason.
    pub pull_errors: Mutex<Vec<(String, String)>>,
    /// Why the last scan could not run (state `error`), as
    /// `/rest/db/status` shows it; `None` once a scan succeeds.
    pub error: Mutex<Option<String>>,
    /// Told on every configuration change: the folder's versions cleanup
    /// re-reads its settings and restarts its timer.
    pub config_changed: tokio::sync::Notify,
}

impl FolderRuntime {
    /// Sets the folder's state; `StateChanged` if it changed, and the end
    /// of a scan is recorded (`/rest/stats/folder`).
    pub fn set_state(&self, events: &crate::events::Events, folder: &str, to: FolderState) {
        let from = std::mem::replace(&mut *self.state.locked(), to);
        if from == FolderState::Scanning {
            events.records.folder_scanned(folder);
        }
        if from != to {
            events.state_changed(folder, from.as_str(), to.as_str());
        }
    }
}

/// What a REST client asked the node to do with itself; the node's owner
/// (see `handle`) acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    Shutdown,
    /// Stop, then start again with the same arguments (the binary does
    /// this by re-executing itself).
    Restart,
}

pub struct Node {
    /// Event bus, records (log, errors, statistics), download progress.
    pub events: crate::events::Events,
    /// What discovery knows and how its announcements went.
    pub discovery: discovery::Discovery,
    /// Listeners, dial outcomes and the DNS resolver.
    pub connect: connect::ConnectState,
    /// Strangers' and peers' excesses refused (`node_refused_total`).
    pub refusals: Arc<crate::guard::Refusals>,
    /// Counters and gauges for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Bandwidth limits in effect; every connection's stream holds it.
    pub bandwidth: Arc<crate::bandwidth::Bandwidth>,
    /// Requests read from disk at once, over all connections.
    pub disk_reads: tokio::sync::Semaphore,
    /// Handshake slots shared by every TCP listener of this node.
    pub admission: Arc<crate::guard::admission::Admission>,
    /// Log lines about failed handshakes and connections from unknown
    /// devices, rate-limited (strangers must not flood the log).
    pub handshake_log: crate::guard::LogLimiter,
    pub unknown_device_log: crate::guard::LogLimiter,
    /// Warnings about a known peer's index bookkeeping (sequence numbers
    /// out of order), which 2.x applies anyway: a peer sending such
    /// batches without end must not flood the log either.
    pub index_anomaly_log: crate::guard::LogLimiter,
    pub home: PathBuf,
    /// REST address and key in effect (command line overrides included,
    /// which are never written to the file).
    pub gui: crate::config::Gui,
    pub identity: Identity,
    pub my_id: DeviceId,
    config: RwLock<Arc<Config>>,
    /// The configuration the process started with: the REST address, key
    /// and listen addresses only change at the next start, so the REST API
    /// compares with it (`restart-required`).
    pub startup_config: Arc<Config>,
    /// Held by one configuration change at a time (see `update_config`).
    config_writer: Mutex<()>,
    pub db: Db,
    /// Folder summaries computed from `db`, until it changes.
    pub summaries: crate::model::summaries::Summaries,
    /// What connected devices say they are downloading (BEP
    /// DownloadProgress), bounded per connection.
    pub remote_downloads: crate::remote_progress::RemoteDownloads,
    pub started: SystemTime,
    /// Live connections per device, oldest (the primary) first.
    connections: Mutex<HashMap<DeviceId, DeviceConns>>,
    /// Turns the choice of a secondary for block requests.
    request_turn: std::sync::atomic::AtomicUsize,
    /// Unknown devices that connected, at most [`MAX_PENDING_DEVICES`].
    pub pending: Mutex<HashMap<DeviceId, PendingDevice>>,
    /// New pending entries per source: certificates cost nothing, so one
    /// host must not fill the list (or the log) with fresh ones.
    pending_rate: crate::guard::SourceRate,
    /// Folders offered by a connected device that we do not share with it:
    /// folder ID → device → (label, time).
    pub pending_folders: Mutex<HashMap<String, FolderOffers>>,
    /// Woken when the node changed its own configuration (introductions,
    /// auto-accepted folders): the follower spawned by `handle` announces
    /// the change (`ConfigSaved`) and puts it in effect, as after a REST
    /// change.
    pub config_edited: tokio::sync::Notify,
    pub folders: RwLock<HashMap<String, Arc<FolderRuntime>>>,
    /// Devices that have a dial loop running.
    pub dialers: Mutex<HashSet<DeviceId>>,
    next_serial: AtomicU64,
    /// Owns the node's tasks; cancelled when the node stops.
    pub shutdown: daemon::Shutdown,
    /// Set by REST (shutdown, restart); the node's owner acts on it.
    pub stop_request: watch::Sender<Option<StopRequest>>,
    /// Test-only fault point (`NODE_TEST_ABORT_AFTER_ARCHIVE`, read once
    /// by `node serve`): the folder-relative name whose pull aborts the
    /// process right after its old version is archived, before the new
    /// file is put in place (the crash test). `None` in normal runs.
    pub abort_after_archive: Option<String>,
}

/// Requests read from disk at once, over all connections.
const DISK_READS: usize = 32;

/// An existing connection at least this old is replaced by a new one.
pub const REPLACE_AFTER: Duration = Duration::from_secs(10);
/// Pending (unknown) devices kept; the oldest makes room for a new one.
/// An operator accepts devices one by one: a hundred is plenty, and a
/// flood of fresh certificates cannot grow memory.
pub const MAX_PENDING_DEVICES: usize = 100;
/// New pending devices one source (IPv4 address, IPv6 /64) may add per
/// [`PENDING_RATE_WINDOW`].
pub const PENDING_PER_SOURCE: u32 = 10;
pub const PENDING_RATE_WINDOW: Duration = Duration::from_secs(60);
/// Folder offers (folder × offering device) kept pending; more are not
/// recorded until some are accepted or dismissed.
pub const MAX_PENDING_FOLDER_OFFERS: usize = 1000;

/// Runs blocking work (disk, fsync) from wherever we are: on a runtime
/// worker, the runtime first moves its other tasks to other workers.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Node {
    pub fn new(
        home: PathBuf,
        gui: crate::config::Gui,
        identity: Identity,
        config: Config,
        db: Db,
        records: Arc<crate::events::record::Records>,
    ) -> Node {
        let my_id = identity.device_id();
        let metrics = crate::metrics::Metrics::new();
        let refusals = Arc::new(crate::guard::Refusals::registered(&metrics.refused));
        let bandwidth = Arc::new(crate::bandwidth::Bandwidth::default());
        bandwidth.apply(&config);
        Node {
            bandwidth,
            refusals: refusals.clone(),
            events: crate::events::Events::new(records),
            discovery: Default::default(),
            connect: Default::default(),
            metrics,
            disk_reads: tokio::sync::Semaphore::new(DISK_READS),
            admission: Arc::new(crate::guard::admission::Admission::new(refusals.clone())),
            handshake_log: crate::guard::LogLimiter::new(
                20,
                Duration::from_secs(5),
                refusals.clone(),
            ),
            unknown_device_log: crate::guard::LogLimiter::new(
                10,
                Duration::from_secs(6),
                refusals.clone(),
            ),
            index_anomaly_log: crate::guard::LogLimiter::new(10, Duration::from_secs(6), refusals),
            home,
            gui,
            dialers: Mutex::new(HashSet::new()),
            identity,
            my_id,
            startup_config: Arc::new(config.clone()),
            config: RwLock::new(Arc::new(config)),
            config_writer: Mutex::new(()),
            db,
            summaries: Default::default(),
            remote_downloads: Default::default(),
            started: SystemTime::now(),
            connections: Mutex::new(HashMap::new()),
            request_turn: Default::default(),
            pending: Mutex::new(HashMap::new()),
            pending_rate: crate::guard::SourceRate::new(
                PENDING_PER_SOURCE,
                PENDING_RATE_WINDOW,
                4096,
            ),
            pending_folders: Mutex::new(HashMap::new()),
            config_edited: tokio::sync::Notify::new(),
            folders: RwLock::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            shutdown: daemon::Shutdown::new(),
            stop_request: watch::channel(None).0,
            abort_after_archive: None,
        }
    }

    /// A snapshot of the configuration in effect (one reference count);
    /// it does not follow later changes.
    pub fn config(&self) -> Arc<Config> {
        self.config.read_locked().clone()
    }

    /// A copy of folder `id`'s current configuration, if it has one.
    pub fn folder_config(&self, id: &str) -> Option<FolderConfig> {
        self.config().folders.iter().find(|f| f.id == id).cloned()
    }

    /// The folder's configuration if it exists and is shared with `device`
    /// (asked for every incoming block request: no copy, no parsing).
    pub fn shared_folder(&self, folder: &str, device: &DeviceId) -> Option<FolderSnapshot> {
        let config = self.config();
        let index = config
            .folders
            .iter()
            .position(|f| f.id == folder && f.shared_with(device))?;
        Some(FolderSnapshot { config, index })
    }

    /// Changes the configuration: `change` edits a copy, which is checked,
    /// written to the configuration file and then put in effect.
    pub fn update_config(
        &self,
        change: impl FnOnce(&mut Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<Arc<Config>> {
        // Writers take turns on their own lock; readers (every REST call,
        // every connection) keep reading the current configuration while
        // the next one is written and fsynced, which may take long on a
        // busy NAS disk — and that wait is moved off the async runtime.
        let _writer = self.config_writer.locked();
        let mut next = Config::clone(&self.config());
        change(&mut next)?;
        next.validate()?;
        next.validate_folder_paths(&self.home)?;
        blocking(|| next.save(&self.home))?;
        let next = Arc::new(next);
        *self.config.write_locked() = next.clone();
        // Limits reach running transfers at once (Syncthing applies them
        // on commit too).
        self.bandwidth.apply(&next);
        Ok(next)
    }

    pub fn folder_runtime(&self, folder: &str) -> Option<Arc<FolderRuntime>> {
        self.folders.read_locked().get(folder).cloned()
    }

    pub fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection whose peer asked for `peer_wants`
    /// connections in its Hello, and returns its role.
    ///
    /// As Syncthing 2.x: a device has up to the negotiated number of
    /// connections ([`NumConnections::negotiate`](crate::config::NumConnections::negotiate)),
    /// the oldest being the primary; a better kind (direct over relayed)
    /// replaces the worse ones at once; beyond the number, a new connection
    /// is refused. With one connection negotiated (a peer such as 1.19.2),
    /// a new connection also replaces one older than [`REPLACE_AFTER`] (it
    /// may be a dead socket the peer has given up on), as 1.19.2 does.
    pub fn register(
        &self,
        device: DeviceId,
        info: ConnInfo,
        peer_wants: i32,
    ) -> Result<Role, NotRegistered> {
        let config = self.config();
        let Some(d) = config.device(&device) else {
            return Err(NotRegistered::Removed);
        };
        if d.paused {
            return Err(NotRegistered::Paused);
        }
        let desired = d.num_connections.negotiate(peer_wants);
        let mut all = self.connections.locked();
        let entry = all.entry(device).or_default();
        let primary_before = entry.primary().map(|c| c.serial);
        entry.live();
        let worse: Vec<usize> = (0..entry.conns.len())
            .filter(|&i| info.kind.priority() < entry.conns[i].kind.priority())
            .collect();
        if !worse.is_empty() {
            // A better kind replaces the worse at once, as in Syncthing.
            for i in worse.into_iter().rev() {
                let old = entry.conns.remove(i);
                let _ = old.close.try_send("replaced by a better connection".into());
            }
        } else if entry.conns.len() >= desired {
            let oldest_age = entry
                .conns
                .first()
                .and_then(|c| c.started.elapsed().ok())
                .unwrap_or_default();
            if desired > 1 {
                return Err(NotRegistered::Full(entry.conns.len()));
            }
            if oldest_age < REPLACE_AFTER {
                return Err(NotRegistered::AlreadyConnected);
            }
            for old in entry.conns.drain(..) {
                let _ = old.close.try_send("replaced by a new connection".into());
            }
        }
        entry.peer_wants = peer_wants;
        entry.conns.push(info);
        // The primary went (closed, or replaced just now): the next
        // oldest takes its part.
        if entry.conns.len() > 1 && primary_before != Some(entry.conns[0].serial) {
            let _ = entry.conns[0].config_changed.try_send(());
        }
        Ok(if entry.conns.len() == 1 {
            Role::Primary
        } else {
            Role::Secondary
        })
    }

    /// Removes a connection that ended. When it was the primary, the next
    /// oldest is promoted: told to send our full ClusterConfig (and so
    /// start the index exchange), as Syncthing 2.x does. Returns the role
    /// the connection had and how many remain.
    pub fn unregister(&self, device: &DeviceId, serial: u64) -> Option<(Role, usize)> {
        let mut all = self.connections.locked();
        let entry = all.get_mut(device)?;
        let i = entry.conns.iter().position(|c| c.serial == serial)?;
        entry.conns.remove(i);
        let role = if i == 0 {
            Role::Primary
        } else {
            Role::Secondary
        };
        let remaining = entry.conns.len();
        if remaining == 0 {
            all.remove(device);
            drop(all);
            self.events.device_disconnected(device, "connection closed");
        } else if i == 0 {
            let next = &entry.conns[0];
            tracing::info!(device = %device, connection = %next.id,
                "promoting the next oldest connection to primary");
            let _ = next.config_changed.try_send(());
        }
        Some((role, remaining))
    }

    pub fn connected(&self, device: &DeviceId) -> bool {
        self.connections
            .locked()
            .get(device)
            .is_some_and(|d| d.conns.iter().any(|c| !c.close.is_closed()))
    }

    /// The primary connection of every connected device.
    pub fn connections(&self) -> HashMap<DeviceId, ConnInfo> {
        self.connections
            .locked()
            .iter()
            .filter_map(|(id, d)| Some((*id, d.primary()?.clone())))
            .collect()
    }

    /// Every live connection of every connected device.
    pub fn all_connections(&self) -> HashMap<DeviceId, DeviceConns> {
        self.connections.locked().clone()
    }

    /// The serials of the connections to `device` now.
    pub fn serials(&self, device: &DeviceId) -> Vec<u64> {
        let all = self.connections.locked();
        all.get(device)
            .map(|d| d.conns.iter().map(|c| c.serial).collect())
            .unwrap_or_default()
    }

    /// The role of connection `serial` to `device` now (`None`: gone).
    pub fn role(&self, device: &DeviceId, serial: u64) -> Option<Role> {
        let all = self.connections.locked();
        let i = all
            .get(device)?
            .conns
            .iter()
            .position(|c| c.serial == serial)?;
        Some(if i == 0 {
            Role::Primary
        } else {
            Role::Secondary
        })
    }

    /// Live connections to `device` and how many we want with it now (as
    /// negotiated with its latest Hello; 1 before any).
    pub fn connection_count(&self, device: &DeviceId) -> (usize, usize) {
        let wants = self
            .config()
            .device(device)
            .map(|d| d.num_connections)
            .unwrap_or_default();
        let all = self.connections.locked();
        match all.get(device) {
            None => (0, 1),
            Some(d) => (
                d.conns.iter().filter(|c| !c.close.is_closed()).count(),
                wants.negotiate(d.peer_wants),
            ),
        }
    }

    /// Where our next block request to `device` goes: with secondaries,
    /// the one with the fewest requests waiting (taking turns among
    /// equals), so the primary stays free for index traffic, as in
    /// Syncthing 2.x; otherwise the primary.
    pub fn requester_for(&self, device: &DeviceId) -> Option<Arc<requester::Requester>> {
        let all = self.connections.locked();
        let d = all.get(device)?;
        let pool = match d.secondaries() {
            [] => d.conns.as_slice(),
            s => s,
        };
        let n = pool.len();
        let start = self.request_turn.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &pool[(start + k) % n])
            .min_by_key(|c| c.requester.outstanding())
            .map(|c| c.requester.clone())
    }

    /// Records an unknown device that connected (its name is cut and
    /// cleaned here, whatever the caller did). A device already listed is
    /// refreshed; a new one counts against its source's budget and, with
    /// the list full, pushes the oldest entry out. Returns whether the
    /// device is listed now.
    pub fn add_pending(&self, device: DeviceId, mut p: PendingDevice) -> bool {
        p.name = crate::guard::peer_name(&p.name);
        let (name, address) = (p.name.clone(), p.address);
        let mut evicted = None;
        {
            let mut pending = self.pending.locked();
            if let Some(old) = pending.get_mut(&device) {
                *old = p;
                return true;
            }
            let source = crate::guard::Source::of(address);
            if !self.pending_rate.allow(source, std::time::Instant::now()) {
                self.refusals.count(crate::guard::Refusal::PendingRate);
                return false;
            }
            if pending.len() >= MAX_PENDING_DEVICES {
                let oldest = pending
                    .iter()
                    .min_by_key(|(_, p)| p.time)
                    .map(|(id, _)| *id);
                if let Some(id) = oldest {
                    pending.remove(&id);
                    self.refusals.count(crate::guard::Refusal::PendingEvicted);
                    evicted = Some(id);
                }
            }
            pending.insert(device, p);
        }
        if let Some(id) = evicted {
            self.events.emit(
                crate::events::Kind::PendingDevicesChanged,
                serde_json::json!({"removed": [{"deviceID": id.to_string()}]}),
            );
        }
        self.events.pending_device_added(&device, &name, address);
        true
    }

    pub fn add_pending_folder(&self, folder: &str, device: DeviceId, label: &str) {
        let mut pending = self.pending_folders.locked();
        let offers: usize = pending.values().map(HashMap::len).sum();
        let known = pending.get(folder).is_some_and(|o| o.contains_key(&device));
        if !known && offers >= MAX_PENDING_FOLDER_OFFERS {
            // A known device offering folder after folder (each
            // ClusterConfig may list thousands) must not grow memory
            // without end; an operator accepts offers one by one.
            self.refusals
                .count(crate::guard::Refusal::PendingFolderOverflow);
            return;
        }
        let new = pending
            .entry(folder.to_string())
            .or_default()
            .insert(device, (label.to_string(), SystemTime::now()))
            .is_none();
        drop(pending);
        if new {
            self.events.pending_folder_added(folder, label, &device);
        }
    }

    pub fn pending_folders(&self) -> HashMap<String, FolderOffers> {
        let mut all = self.pending_folders.locked().clone();
        // Offers become moot once the folder is shared with that device.
        for (folder, offers) in all.iter_mut() {
            offers.retain(|d, _| self.shared_folder(folder, d).is_none());
        }
        all.retain(|_, offers| !offers.is_empty());
        all
    }

    pub fn pending(&self) -> HashMap<DeviceId, PendingDevice> {
        let mut all = self.pending.locked().clone();
        // A device added since (over REST, or by an introducer) is no
        // longer pending, as in Syncthing.
        let config = self.config();
        all.retain(|id, _| config.device(id).is_none());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_connection_kinds_keep_syncthings_spelling() {
        for (s, text) in [
            (FolderState::Idle, "idle"),
            (FolderState::ScanWaiting, "scan-waiting"),
            (FolderState::Scanning, "scanning"),
            (FolderState::Syncing, "syncing"),
            (FolderState::Error, "error"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), text);
            assert_eq!(s.to_string(), text);
        }
        for (k, text, relayed) in [
            (ConnectionKind::TcpClient, "tcp-client", false),
            (ConnectionKind::TcpServer, "tcp-server", false),
            (ConnectionKind::RelayClient, "relay-client", true),
            (ConnectionKind::RelayServer, "relay-server", true),
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), text);
            assert_eq!(k.to_string(), text);
            assert_eq!(k.relayed(), relayed);
        }
        assert!(ConnectionKind::TcpServer.priority() < ConnectionKind::RelayClient.priority());
    }

    fn node(home: &std::path::Path) -> Node {
        let identity = Identity::generate("syncthing", proto::KeyKind::Ed25519).unwrap();
        let db = Db::open(home).unwrap();
        Node::new(
            home.to_path_buf(),
            Default::default(),
            identity,
            Config::default(),
            db,
            Arc::default(),
        )
    }

    #[test]
    fn connection_ids_are_formed_as_syncthing_2_forms_them() {
        let a = ConnectionId::new(1_000, 2_000);
        let b = ConnectionId::new(1_000, 2_000);
        assert_eq!(a.as_str().len(), 26);
        // The time half is the same, the random half differs.
        assert_eq!(a.as_str()[..13], b.as_str()[..13]);
        assert_ne!(a, b);
        let enc = data_encoding::BASE32HEX_NOPAD.encode(&3_000u64.to_be_bytes());
        assert_eq!(a.as_str()[..13], enc);
        // Later connections sort later.
        assert!(ConnectionId::new(5_000, 0) > a);
    }

    /// A connection's entry, with the connection's ends of its channels
    /// (held by the test: a dropped end means a closed connection).
    type Ends = (mpsc::Receiver<()>, mpsc::Receiver<String>);

    fn conn(serial: u64, kind: ConnectionKind) -> (ConnInfo, Ends) {
        let (close, close_rx) = mpsc::channel(1);
        let (config_changed, changed) = mpsc::channel(1);
        let (tx, _) = mpsc::channel(1);
        let info = ConnInfo {
            serial,
            id: ConnectionId::new(serial as i64, 0),
            address: "127.0.0.1:1".parse().unwrap(),
            kind,
            lan: true,
            client_version: String::new(),
            started: SystemTime::now(),
            in_bytes: Arc::default(),
            out_bytes: Arc::default(),
            close,
            config_changed,
            requester: Arc::new(requester::Requester::new(tx)),
            counters: Arc::default(),
        };
        (info, (changed, close_rx))
    }

    /// The oldest is the primary; up to the negotiated number are kept;
    /// the next oldest is promoted (told) when the primary goes; requests
    /// go to the secondaries.
    #[test]
    fn connections_up_to_the_negotiated_number_oldest_primary() {
        let home = tempfile::tempdir().unwrap();
        let n = node(home.path());
        let peer = proto::DeviceId::from_der_cert(b"peer");
        n.update_config(|c| {
            c.devices.push(crate::config::DeviceConfig::new(peer));
            Ok(())
        })
        .unwrap();
        let tcp = ConnectionKind::TcpServer;
        let (c1, _r1) = conn(1, tcp);
        let (c2, mut r2) = conn(2, tcp);
        let (c3, _r3) = conn(3, tcp);
        let (c4, _r4) = conn(4, tcp);
        assert_eq!(n.register(peer, c1.clone(), 3), Ok(Role::Primary));
        assert_eq!(n.register(peer, c2.clone(), 3), Ok(Role::Secondary));
        assert_eq!(n.register(peer, c3.clone(), 3), Ok(Role::Secondary));
        assert_eq!(n.register(peer, c4, 3), Err(NotRegistered::Full(3)));
        assert_eq!(n.connection_count(&peer), (3, 3));
        for _ in 0..4 {
            let r = n.requester_for(&peer).unwrap();
            assert!(!Arc::ptr_eq(&r, &c1.requester), "never the primary");
        }
        assert_eq!(n.unregister(&peer, 1), Some((Role::Primary, 2)));
        assert!(
            r2.0.try_recv().is_ok(),
            "the next oldest is told it is primary"
        );
        assert_eq!(n.role(&peer, 2), Some(Role::Primary));
        assert_eq!(n.unregister(&peer, 3), Some((Role::Secondary, 1)));
        // Only the primary left: it carries the requests.
        assert!(Arc::ptr_eq(&n.requester_for(&peer).unwrap(), &c2.requester));
        // A peer without multiple connections (1.19.2): one, as before.
        let (c5, _r5) = conn(5, tcp);
        assert_eq!(
            n.register(peer, c5, 0),
            Err(NotRegistered::AlreadyConnected)
        );
        // A direct connection replaces a relayed one at once.
        n.unregister(&peer, 2);
        let (relayed, _r6) = conn(6, ConnectionKind::RelayServer);
        assert_eq!(n.register(peer, relayed, 3), Ok(Role::Primary));
        let (direct, _r7) = conn(7, tcp);
        assert_eq!(n.register(peer, direct, 3), Ok(Role::Primary));
        assert_eq!(n.serials(&peer), vec![7]);
    }

    /// Nothing of a node is process-wide: what one emits, records and
    /// counts, the other in the same process never sees.
    #[test]
    fn two_nodes_in_one_process_share_no_state() {
        let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (node(ha.path()), node(hb.path()));
        a.events.starting(&a.home, &a.my_id);
        a.events.records.error("disk full".into());
        a.metrics.served_bytes.inc_by(42);
        a.refusals.count(crate::guard::Refusal::PendingEvicted);
        let all = crate::events::Mask::Only(crate::events::Kind::ALL.to_vec());
        assert_eq!(a.events.bus.since(0, &all).len(), 1);
        assert!(b.events.bus.since(0, &all).is_empty());
        assert_eq!(a.events.records.errors().len(), 1);
        assert!(b.events.records.errors().is_empty());
        let text = |n: &Node| daemon::metrics::classic_text(&n.metrics.encode());
        assert!(text(&a).contains("node_served_bytes_total 42\n"));
        assert!(text(&b).contains("node_served_bytes_total 0\n"));
        assert!(text(&a).contains("node_refused_total{reason=\"pending_device_evicted\"} 1\n"));
        assert!(text(&b).contains("node_refused_total{reason=\"pending_device_evicted\"} 0\n"));
        assert!(a.discovery.snapshot().is_empty() && b.connect.announced_addresses().is_empty());
    }
}
