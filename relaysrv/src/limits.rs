//! Limits: byte-rate buckets, capacity (clients, pairings, open files),
//! per-source connection rate and concurrency, the sockets that may be
//! evicted when the relay runs out of them, and invitation rates.
//!
//! A *source* is an IPv4 address or an IPv6 /64: one IPv6 host usually
//! owns a whole /64 and can pick any address in it, so per-address limits
//! would not limit it at all.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use proto::DeviceId;
use tokio_util::sync::CancellationToken;

use crate::config::CapacityConfig;
use daemon::sync::MutexExt;

/// The key all per-source limits use: IPv4 addresses as they are (also
/// when they arrive IPv4-mapped on a dual-stack socket), IPv6 addresses
/// reduced to their /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// A token bucket of bytes: rate = limit, burst = 2 × limit (as strelaysrv).
/// Callers take what they forwarded and sleep for the returned delay, so a
/// burst may overdraw the bucket and the debt is paid by waiting.
pub struct ByteBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl ByteBucket {
    /// `None` for a zero (unlimited) rate.
    pub fn new(rate: u64) -> Option<ByteBucket> {
        (rate > 0).then(|| ByteBucket {
            rate: rate as f64,
            burst: 2.0 * rate as f64,
            state: Mutex::new((2.0 * rate as f64, Instant::now())),
        })
    }

    /// Largest piece to take at once.
    pub fn burst(&self) -> usize {
        self.burst.min(usize::MAX as f64) as usize
    }

    /// Takes `n` bytes; returns how long to wait before forwarding them.
    pub fn take(&self, n: usize) -> Duration {
        let mut st = self.state.locked();
        let now = Instant::now();
        let (tokens, last) = *st;
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let left = refilled - n as f64;
        *st = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }
}

/// Waits as long as the strictest bucket requires for `n` bytes.
pub async fn pace(buckets: &[&ByteBucket], n: usize) {
    let delay = buckets.iter().map(|b| b.take(n)).max().unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// How full the relay may get.
pub struct Capacity {
    /// As given (`max_sockets` there is the flag; the one in force is below).
    pub limits: CapacityConfig,
    /// At most 80 % of the open-file limit, like strelaysrv: room for what
    /// is not counted (listeners, pipes, log files).
    pub max_sockets: usize,
    open_sockets: Arc<AtomicUsize>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a new socket was not counted.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketRefused {
    /// Its source already holds `per_source_sockets`.
    SourceLimit,
}

impl Capacity {
    pub fn new(cfg: CapacityConfig) -> Capacity {
        // `daemon::run_main` raised the limit already when this is the
        // relaysrv binary; a relay started inside another program raises it
        // here (raising again changes nothing). 0 = unknown.
        let open_files = daemon::runtime::raise_open_file_limit()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let from_files = open_files.saturating_mul(8) / 10;
        let max_sockets = match (cfg.max_sockets, from_files) {
            (0, f) => f,
            (m, 0) => m,
            (m, f) => m.min(f),
        };
        Capacity {
            limits: cfg,
            max_sockets,
            open_sockets: Arc::new(AtomicUsize::new(0)),
            per_source: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a socket of `source` (a [`source_key`]) while the guard
    /// lives, unless the source is at its limit.
    pub fn socket(&self, source: IpAddr) -> Result<SocketGuard, SocketRefused> {
        {
            let mut map = self.per_source.locked();
            let n = map.entry(source).or_insert(0);
            if self.limits.per_source_sockets > 0 && *n >= self.limits.per_source_sockets {
                return Err(SocketRefused::SourceLimit);
            }
            *n += 1;
        }
        self.open_sockets.fetch_add(1, Ordering::Relaxed);
        Ok(SocketGuard {
            total: self.open_sockets.clone(),
            per_source: self.per_source.clone(),
            source,
        })
    }

    pub fn open_sockets(&self) -> usize {
        self.open_sockets.load(Ordering::Relaxed)
    }

    pub fn sockets_exhausted(&self) -> bool {
        self.max_sockets > 0 && self.open_sockets() >= self.max_sockets
    }
}

/// Uncounts its socket on drop.
pub struct SocketGuard {
    total: Arc<AtomicUsize>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl SocketGuard {
    pub fn source(&self) -> IpAddr {
        self.source
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.per_source.locked();
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            // Sources without sockets are forgotten, so the map holds at
            // most one entry per open socket.
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// Sockets that have not proved anything yet: protocol connections before
/// their join (or connect request), data connections before a valid key.
/// When the relay is out of sockets the oldest of these is closed to make
/// room for a newcomer; a joined device or a pairing is never given up.
#[derive(Default)]
pub struct Unproven {
    sockets: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Unproven {
    /// Registers socket `id` (ids grow with time, so the smallest is the
    /// oldest); the token is cancelled if it is evicted.
    pub fn register(self: &Arc<Self>, id: u64) -> UnprovenGuard {
        let cancel = CancellationToken::new();
        self.sockets.locked().insert(id, cancel.clone());
        UnprovenGuard {
            set: self.clone(),
            id,
            cancel,
        }
    }

    /// Closes the oldest unproven socket; false when there is none.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.sockets.locked().pop_first();
        match oldest {
            Some((_, cancel)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sockets.locked().len()
    }
}

/// Membership of one socket in [`Unproven`]; leaves it on drop.
pub struct UnprovenGuard {
    set: Arc<Unproven>,
    id: u64,
    cancel: CancellationToken,
}

impl UnprovenGuard {
    /// Cancelled when the socket is evicted.
    pub fn evicted(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Drop for UnprovenGuard {
    fn drop(&mut self) {
        self.set.sockets.locked().remove(&self.id);
    }
}

/// New connections per source (IPv4 address or IPv6 /64).
pub struct PerIpLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl PerIpLimiter {
    pub fn new(per_second: u32, burst: u32) -> PerIpLimiter {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        PerIpLimiter { limiter }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        let source = source_key(ip);
        self.limiter
            .as_ref()
            .is_none_or(|l| l.check_key(&source).is_ok())
    }

    /// Forgets IPs whose bucket is full again, so the map does not grow
    /// with every address ever seen.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Invitations pushed to joined devices: one bucket per (target device,
/// dialing source) so a flood from one source cannot starve dials from
/// others, and one per target (four times as large) bounding what all
/// sources together push to a device.
pub struct InvitationLimiter {
    per_pair: DefaultKeyedRateLimiter<(DeviceId, IpAddr)>,
    per_target: DefaultKeyedRateLimiter<DeviceId>,
}

/// How many source buckets one target's bucket is worth.
pub const TARGET_SHARE: u32 = 4;

impl InvitationLimiter {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<InvitationLimiter> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        let share = NonZeroU32::new(TARGET_SHARE).unwrap_or(NonZeroU32::MIN);
        let scale = |n: NonZeroU32| n.saturating_mul(share);
        Some(InvitationLimiter {
            per_pair: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            per_target: RateLimiter::keyed(
                Quota::per_second(scale(rate)).allow_burst(scale(burst)),
            ),
        })
    }

    /// Takes one invitation from `source` (a [`source_key`]) to `target`.
    pub fn allow(&self, target: DeviceId, source: IpAddr) -> bool {
        self.per_pair.check_key(&(target, source)).is_ok()
            && self.per_target.check_key(&target).is_ok()
    }

    pub fn forget_idle(&self) {
        self.per_pair.retain_recent();
        self.per_pair.shrink_to_fit();
        self.per_target.retain_recent();
        self.per_target.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let b = ByteBucket::new(1000).unwrap();
        assert_eq!(b.burst(), 2000);
        assert_eq!(b.take(2000), Duration::ZERO);
        let d = b.take(500);
        assert!(
            d > Duration::from_millis(400) && d <= Duration::from_millis(500),
            "{d:?}"
        );
        assert!(ByteBucket::new(0).is_none());
    }

    #[test]
    fn per_ip_limiter() {
        let l = PerIpLimiter::new(1, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip)));
        assert!(!l.allow(ip));
        assert!(l.allow("127.0.0.2".parse().unwrap()));
        assert!(PerIpLimiter::new(0, 0).allow(ip));
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let key = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(
            key("2001:db8:1:2::5"),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        // The connection rate of a whole /64 is one budget.
        let l = PerIpLimiter::new(1, 2);
        assert!(l.allow("fd00::1".parse().unwrap()));
        assert!(l.allow("fd00::2".parse().unwrap()));
        assert!(!l.allow("fd00::3".parse().unwrap()));
        assert!(l.allow("fd00:0:0:1::1".parse().unwrap()));
    }

    #[test]
    fn per_source_socket_cap() {
        let cap = Capacity::new(CapacityConfig {
            max_clients: 0,
            max_pending: 10,
            max_pairings: 0,
            max_sockets: 100,
            per_source_sockets: 2,
            per_source_pending: 0,
        });
        let a = source_key("fd00::1".parse().unwrap());
        let g1 = cap.socket(a).unwrap();
        let g2 = cap.socket(source_key("fd00::2".parse().unwrap())).unwrap();
        assert_eq!(cap.socket(a).err(), Some(SocketRefused::SourceLimit));
        assert!(cap.socket("10.0.0.1".parse().unwrap()).is_ok());
        drop(g1);
        let _g3 = cap.socket(a).unwrap();
        drop(g2);
        assert_eq!(cap.open_sockets(), 1);
    }

    #[test]
    fn eviction_takes_the_oldest_unproven_socket() {
        let set = Arc::new(Unproven::default());
        let old = set.register(1);
        let young = set.register(2);
        let proven = set.register(0);
        drop(proven);
        assert!(set.evict_oldest());
        assert!(old.evicted().is_cancelled() && !young.evicted().is_cancelled());
        drop(young);
        assert!(!set.evict_oldest());
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn invitations_per_target_and_source() {
        let l = InvitationLimiter::new(1, 2).unwrap();
        let (t, u) = (DeviceId::from_bytes([1; 32]), DeviceId::from_bytes([2; 32]));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.allow(t, a) && l.allow(t, a) && !l.allow(t, a));
        // Another source, or another target, has its own budget.
        assert!(l.allow(t, b) && l.allow(u, a));
        assert!(InvitationLimiter::new(0, 5).is_none());
    }
}
