//! The relay's shared state, [`Relay`]: settings, joined devices,
//! pairings, limits, counters. Handed as `Arc<Relay>` to every task;
//! what the tasks do with it lives in the modules above this one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use proto::relay::SessionInvitation;
use proto::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use daemon::Shutdown;

use crate::access::Access;
use crate::limits::{ByteBucket, Capacity, InvitationLimiter, Unproven};
use crate::metrics::Metrics;
use daemon::sync::MutexExt;

pub mod pending;
mod settings;

pub use self::pending::PendingTable;
pub use self::settings::Settings;

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
    /// Allow-lists and join tokens, reloaded live.
    pub access: Access,
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

impl Relay {
    pub fn new(
        settings: Settings,
        access: Access,
        capacity: Capacity,
        shutdown: Shutdown,
    ) -> Arc<Relay> {
        let global_bucket = ByteBucket::new(settings.global_rate);
        let invitations =
            InvitationLimiter::new(settings.invitation_rate, settings.invitation_burst);
        Arc::new(Relay {
            unproven: Arc::new(Unproven::default()),
            invitations,
            settings,
            access,
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
    pub fn unless_stopping<F: std::future::Future>(
        &self,
        work: F,
    ) -> daemon::shutdown::UntilCancelled<F> {
        self.shutdown.until_cancelled(work)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a joined device unless that ID is joined already.
    pub fn join(&self, id: DeviceId, device: JoinedDevice) -> bool {
        let mut devices = self.devices.locked();
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
            let mut devices = self.devices.locked();
            if devices.get(id).is_some_and(|d| d.conn_id == conn_id) {
                devices.remove(id);
            }
            self.metrics.joined.set(devices.len() as i64);
        }
        for p in self.active.locked().values() {
            if p.server == *id || p.client == *id {
                p.cancel.cancel();
            }
        }
        self.pending.drop_device(id, self);
    }

    pub fn outbox(&self, id: &DeviceId) -> Option<mpsc::Sender<SessionInvitation>> {
        self.devices.locked().get(id).map(|d| d.outbox.clone())
    }

    pub fn is_joined(&self, id: &DeviceId) -> bool {
        self.devices.locked().contains_key(id)
    }

    pub fn joined_count(&self) -> usize {
        self.devices.locked().len()
    }

    pub fn add_active(&self, pairing_id: u64, pairing: ActivePairing) {
        let mut active = self.active.locked();
        active.insert(pairing_id, pairing);
        self.metrics.active.set(active.len() as i64);
    }

    pub fn remove_active(&self, pairing_id: u64) {
        let mut active = self.active.locked();
        active.remove(&pairing_id);
        self.metrics.active.set(active.len() as i64);
    }

    pub fn active_count(&self) -> usize {
        self.active.locked().len()
    }
}
