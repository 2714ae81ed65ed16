//! Limits: byte-rate buckets, capacity (clients, pairings, open files) and
//! the per-IP connection rate.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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
        let mut st = crate::state::lock(&self.state);
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
    pub max_clients: usize,
    pub max_pending: usize,
    pub max_pairings: usize,
    /// 80 % of the open-file limit, like strelaysrv: room for what is not
    /// counted (listeners, pipes, log files).
    pub max_sockets: usize,
    open_sockets: Arc<AtomicUsize>,
}

impl Capacity {
    pub fn new(max_clients: usize, max_pending: usize, max_pairings: usize) -> Capacity {
        let files = raise_open_file_limit();
        Capacity {
            max_clients,
            max_pending,
            max_pairings,
            max_sockets: files.saturating_mul(8) / 10,
            open_sockets: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts a socket while the guard lives.
    pub fn socket(&self) -> SocketGuard {
        self.open_sockets.fetch_add(1, Ordering::Relaxed);
        SocketGuard(self.open_sockets.clone())
    }

    pub fn open_sockets(&self) -> usize {
        self.open_sockets.load(Ordering::Relaxed)
    }

    pub fn sockets_exhausted(&self) -> bool {
        self.max_sockets > 0 && self.open_sockets() >= self.max_sockets
    }
}

/// Decrements the open-socket count on drop.
pub struct SocketGuard(Arc<AtomicUsize>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the soft open-file limit to the hard one; returns the limit in
/// force (0 when unknown).
fn raise_open_file_limit() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 0;
            }
            if lim.rlim_cur < lim.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// New connections per source IP.
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
        self.limiter
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
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
}
