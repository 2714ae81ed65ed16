//! The relay's shared state: settings, joined devices, pairings, counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use proto::relay::SessionInvitation;
use proto::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use daemon::Shutdown;

use crate::limits::{ByteBucket, Capacity, InvitationLimiter, Unproven};
use crate::metrics::Metrics;
use crate::pairing::PendingTable;
use crate::splice::ForwarderKind;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub network_timeout: Duration,
    pub message_timeout: Duration,
    /// Accept to TLS done and first request read (see --handshake-timeout).
    pub handshake_timeout: Duration,
    pub per_session_rate: u64,
    pub global_rate: u64,
    pub token: Option<String>,
    /// ConnectRequests only from devices joined (with the token).
    pub connect_requires_token: bool,
    /// Invitations per second and burst per (target, source); 0 = none.
    pub invitation_rate: u32,
    pub invitation_burst: u32,
    pub network_buffer: usize,
    pub forwarder: ForwarderKind,
    /// IP bytes put in invitations: empty, 4 or 16 (see the spec's note on
    /// IPv4-mapped addresses), and the data port.
    pub invitation_address: Vec<u8>,
    pub invitation_port: u16,
    pub pools: Vec<String>,
    pub provided_by: String,
}

/// A device joined on a protocol connection, reachable for invitations.
pub struct JoinedDevice {
    pub conn_id: u64,
    pub outbox: mpsc::Sender<SessionInvitation>,
}

/// An active pairing, as seen from outside its task.
pub struct ActivePairing {
    pub server: DeviceId,
    pub client: DeviceId,
    pub cancel: CancellationToken,
}

pub struct Relay {
    pub settings: Settings,
    pub started: Instant,
    pub start_time: SystemTime,
    pub metrics: Metrics,
    pub capacity: Capacity,
    pub global_bucket: Option<ByteBucket>,
    /// Owns every task of the relay; cancelled when it stops.
    pub shutdown: Shutdown,
    /// Sockets that may be evicted when sockets run out.
    pub unproven: Arc<Unproven>,
    pub invitations: Option<InvitationLimiter>,
    devices: Mutex<HashMap<DeviceId, JoinedDevice>>,
    pub pending: PendingTable,
    active: Mutex<HashMap<u64, ActivePairing>>,
    next_id: AtomicU64,
}

/// A poisoned lock only means another task panicked while holding it; the
/// maps stay consistent (each update is a single insert or remove), so
/// carry on rather than take the whole relay down.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    pub fn new(settings: Settings, capacity: Capacity, shutdown: Shutdown) -> Arc<Relay> {
        let global_bucket = ByteBucket::new(settings.global_rate);
        let invitations =
            InvitationLimiter::new(settings.invitation_rate, settings.invitation_burst);
        Arc::new(Relay {
            unproven: Arc::new(Unproven::default()),
            invitations,
            settings,
            started: Instant::now(),
            start_time: SystemTime::now(),
            metrics: Metrics::new(),
            capacity,
            global_bucket,
            shutdown,
            devices: Mutex::new(HashMap::new()),
            pending: PendingTable::default(),
            active: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Runs `work` unless the relay stops first (then `None`). For the
    /// awaits of a connection that may block on a peer (a write to a
    /// device that reads nothing): the relay's exit must not wait for them.
    pub async fn unless_stopping<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            v = work => Some(v),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a joined device unless that ID is joined already.
    pub fn join(&self, id: DeviceId, device: JoinedDevice) -> bool {
        let mut devices = lock(&self.devices);
        if devices.contains_key(&id) {
            return false;
        }
        devices.insert(id, device);
        self.metrics.joined.set(devices.len() as i64);
        true
    }

    /// Removes the device if `conn_id` still owns its entry, and ends every
    /// pairing it takes part in: its peers learn at once that it is gone,
    /// and a restarting device is not refused as "already connected".
    pub fn leave(&self, id: &DeviceId, conn_id: u64) {
        {
            let mut devices = lock(&self.devices);
            if devices.get(id).is_some_and(|d| d.conn_id == conn_id) {
                devices.remove(id);
            }
            self.metrics.joined.set(devices.len() as i64);
        }
        for p in lock(&self.active).values() {
            if p.server == *id || p.client == *id {
                p.cancel.cancel();
            }
        }
        self.pending.drop_device(id, self);
    }

    pub fn outbox(&self, id: &DeviceId) -> Option<mpsc::Sender<SessionInvitation>> {
        lock(&self.devices).get(id).map(|d| d.outbox.clone())
    }

    pub fn is_joined(&self, id: &DeviceId) -> bool {
        lock(&self.devices).contains_key(id)
    }

    pub fn joined_count(&self) -> usize {
        lock(&self.devices).len()
    }

    pub fn add_active(&self, pairing_id: u64, pairing: ActivePairing) {
        let mut active = lock(&self.active);
        active.insert(pairing_id, pairing);
        self.metrics.active.set(active.len() as i64);
    }

    pub fn remove_active(&self, pairing_id: u64) {
        let mut active = lock(&self.active);
        active.remove(&pairing_id);
        self.metrics.active.set(active.len() as i64);
    }

    pub fn active_count(&self) -> usize {
        lock(&self.active).len()
    }
}
