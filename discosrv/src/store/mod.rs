//! Where announcements live: one small trait, two implementations.
//!
//! * [`memory::MemoryStore`] — the default: in memory, compact, snapshotted
//!   to disk, no external service.
//! * [`redis::RedisStore`] — Redis or Redis Cluster, shared by replicas.

pub mod memory;
pub mod record;
pub mod redis;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::DeviceId;

/// A device's current addresses and when it last announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub seen_unix_ns: i64,
    pub addresses: Vec<String>,
}

/// The answer to a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Found),
    /// No current address. `seen_before` tells a device that announced in
    /// the last days (probably offline) from one never seen (probably a
    /// typo or a scan), for the adaptive `Retry-After`.
    NotFound {
        seen_before: bool,
    },
}

/// The store cannot answer now; the request gets 503 and may be retried.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Wall-clock time of a request, in Unix nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now(pub i64);

impl Now {
    pub fn system() -> Now {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Now(ns)
    }

    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }
}

/// What became of an announcement the store could take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    Stored,
    /// A new device, and the record budget is spent: refused (503 with
    /// `Retry-After`); known devices still update their records.
    Full,
}

/// Storage of announcements. Addresses given to `announce` are already
/// validated and rewritten; each expires [`proto::discovery::ADDRESS_LIFETIME_SECS`]
/// after `now`. A new announcement merges with what is stored.
pub trait Store: Send + Sync + 'static {
    fn announce(
        &self,
        id: DeviceId,
        addresses: Vec<String>,
        now: Now,
    ) -> impl Future<Output = Result<Announced, StoreError>> + Send;

    fn lookup(
        &self,
        id: DeviceId,
        now: Now,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// Whether requests can be served now (for `/healthz`).
    fn healthy(&self) -> impl Future<Output = bool> + Send;

    /// Devices with at least one current address, if cheaply known.
    fn current_devices(&self) -> Option<u64>;

    /// Whether the store holds a record of `id`, if that is cheap to tell
    /// (for the lower rate of new devices); None when it is not.
    fn knows(&self, _id: &DeviceId) -> Option<bool> {
        None
    }
}

/// A shared store: the Redis store is also read by the allow-list's
/// poller, which holds its own handle.
impl<S: Store> Store for std::sync::Arc<S> {
    fn announce(
        &self,
        id: DeviceId,
        addresses: Vec<String>,
        now: Now,
    ) -> impl Future<Output = Result<Announced, StoreError>> + Send {
        (**self).announce(id, addresses, now)
    }

    fn lookup(
        &self,
        id: DeviceId,
        now: Now,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        (**self).lookup(id, now)
    }

    fn healthy(&self) -> impl Future<Output = bool> + Send {
        (**self).healthy()
    }

    fn current_devices(&self) -> Option<u64> {
        (**self).current_devices()
    }

    fn knows(&self, id: &DeviceId) -> Option<bool> {
        (**self).knows(id)
    }
}
