//! The pending pairings: created by a ConnectRequest with two single-use
//! keys, looked up by the data connections that present them, expired by
//! the sweeper (see `pairing.rs` for the whole walk).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::DeviceId;
use tokio::net::TcpStream;

use crate::limits::SocketGuard;
use daemon::sync::MutexExt;

use super::Relay;

pub type Key = [u8; 32];

/// Where the first data connection of a pairing waits for the second.
pub enum Slot {
    Empty,
    Waiting(TcpStream, SocketGuard),
    Closed,
}

pub struct PendingPairing {
    pub id: u64,
    pub server: DeviceId,
    pub client: DeviceId,
    pub created: Instant,
    /// Source (see `limits::source_key`) of the ConnectRequest.
    source: IpAddr,
    keys: [Key; 2],
    pub slot: Mutex<Slot>,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Key, Arc<PendingPairing>>,
    pairings: HashMap<u64, Arc<PendingPairing>>,
    /// Pending pairings per requesting source: one source must not fill
    /// the table and make every other ConnectRequest RelayFull.
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Default)]
pub struct PendingTable {
    inner: Mutex<Inner>,
}

/// Why no pairing was created.
pub enum CreateError {
    Full,
    /// The requesting source has `per_source_pending` unanswered pairings.
    SourceFull,
}

impl PendingTable {
    /// A new pending pairing; returns (server key, client key).
    pub fn create(
        &self,
        relay: &Relay,
        server: DeviceId,
        client: DeviceId,
        source: IpAddr,
    ) -> Result<(Key, Key), CreateError> {
        let max_pairings = relay.capacity.limits.max_pairings;
        if max_pairings > 0 && relay.active_count() >= max_pairings {
            return Err(CreateError::Full);
        }
        let mut inner = self.inner.locked();
        let per_source = relay.capacity.limits.per_source_pending;
        if per_source > 0 && inner.per_source.get(&source).copied().unwrap_or(0) >= per_source {
            return Err(CreateError::SourceFull);
        }
        if inner.pairings.len() >= relay.capacity.limits.max_pending {
            return Err(CreateError::Full);
        }
        let (server_key, client_key): (Key, Key) = loop {
            let (a, b) = (rand::random::<Key>(), rand::random::<Key>());
            if a != b && !inner.keys.contains_key(&a) && !inner.keys.contains_key(&b) {
                break (a, b);
            }
        };
        let p = Arc::new(PendingPairing {
            id: relay.next_id(),
            server,
            client,
            created: Instant::now(),
            source,
            keys: [server_key, client_key],
            slot: Mutex::new(Slot::Empty),
        });
        inner.keys.insert(server_key, p.clone());
        inner.keys.insert(client_key, p.clone());
        inner.pairings.insert(p.id, p);
        *inner.per_source.entry(source).or_insert(0) += 1;
        relay.metrics.pending.set(inner.pairings.len() as i64);
        Ok((server_key, client_key))
    }

    /// Looks a key up and consumes it.
    pub fn take_key(&self, key: &[u8]) -> Option<Arc<PendingPairing>> {
        let key: &Key = key.try_into().ok()?;
        self.inner.locked().keys.remove(key)
    }

    /// Removes a pairing and whatever keys of it remain; closes a waiting
    /// socket unless the caller took it.
    pub fn finish(&self, relay: &Relay, p: &PendingPairing) {
        let mut inner = self.inner.locked();
        for k in &p.keys {
            inner.keys.remove(k);
        }
        if inner.pairings.remove(&p.id).is_some() {
            if let Some(n) = inner.per_source.get_mut(&p.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.per_source.remove(&p.source);
                }
            }
        }
        relay.metrics.pending.set(inner.pairings.len() as i64);
    }

    fn close(&self, relay: &Relay, p: &PendingPairing) {
        self.finish(relay, p);
        *p.slot.locked() = Slot::Closed;
    }

    /// Ends pending pairings of a device that left.
    pub fn drop_device(&self, id: &DeviceId, relay: &Relay) {
        let doomed: Vec<_> = self
            .inner
            .locked()
            .pairings
            .values()
            .filter(|p| p.server == *id || p.client == *id)
            .cloned()
            .collect();
        for p in doomed {
            self.close(relay, &p);
        }
    }

    /// Drops pairings older than `limit`.
    pub fn expire(&self, relay: &Relay, limit: Duration) -> usize {
        let now = Instant::now();
        let doomed: Vec<_> = self
            .inner
            .locked()
            .pairings
            .values()
            .filter(|p| now.duration_since(p.created) >= limit)
            .cloned()
            .collect();
        for p in &doomed {
            self.close(relay, p);
        }
        doomed.len()
    }

    /// Keys not used yet (strelaysrv's `numPendingSessionKeys`).
    pub fn key_count(&self) -> usize {
        self.inner.locked().keys.len()
    }

    /// Drops everything (shutdown).
    pub fn clear(&self, relay: &Relay) {
        let all: Vec<_> = self.inner.locked().pairings.values().cloned().collect();
        for p in all {
            self.close(relay, &p);
        }
    }
}
