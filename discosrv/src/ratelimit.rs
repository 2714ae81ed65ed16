//! Per-client request rate limiting (token bucket per IP, IPv6 per /64).
//!
//! Memory stays bounded: idle clients are forgotten by a periodic sweep,
//! and if more than `max_clients` remain after a sweep the whole table is
//! started afresh (briefly lenient rather than unbounded).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

type Limiter = DefaultKeyedRateLimiter<IpAddr>;

pub struct RateLimit {
    quota: Quota,
    max_clients: usize,
    limiter: RwLock<Arc<Limiter>>,
}

impl RateLimit {
    /// None when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32, max_clients: usize) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Some(Self::with_quota(
            Quota::per_second(rate).allow_burst(burst),
            max_clients,
        ))
    }

    /// `per_minute` events a minute after a burst; None when 0 (off).
    pub fn per_minute(per_minute: u32, burst: u32, max_clients: usize) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self::with_quota(
            Quota::per_minute(rate).allow_burst(burst),
            max_clients,
        ))
    }

    fn with_quota(quota: Quota, max_clients: usize) -> Self {
        RateLimit {
            quota,
            max_clients: max_clients.max(1),
            limiter: RwLock::new(Arc::new(RateLimiter::keyed(quota))),
        }
    }

    fn current(&self) -> Arc<Limiter> {
        match self.limiter.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Ok, or the time to wait before the next request is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let limiter = self.current();
        limiter
            .check_key(&key(ip))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets idle clients; returns how many are remembered.
    pub fn sweep(&self) -> usize {
        let limiter = self.current();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let n = limiter.len();
        if n > self.max_clients {
            tracing::warn!(
                clients = n,
                max = self.max_clients,
                "rate limiter table full; starting afresh"
            );
            let fresh = Arc::new(RateLimiter::keyed(self.quota));
            match self.limiter.write() {
                Ok(mut g) => *g = fresh,
                Err(p) => *p.into_inner() = fresh,
            }
            return 0;
        }
        n
    }
}

/// IPv4 addresses as they are; IPv6 by /64, the smallest prefix a single
/// site usually gets (otherwise one host could use 2^64 keys).
pub fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0,
            ))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_bounds() {
        assert!(RateLimit::new(0, 10, 10).is_none());
        let rl = RateLimit::new(1, 3, 2).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(rl.check(a).is_ok());
        }
        let wait = rl.check(a).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        // Same /64 shares a bucket.
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..3 {
            assert!(rl.check(b).is_ok());
        }
        assert!(rl.check(c).is_err());
        // Three keys over a maximum of two: the table starts afresh.
        assert!(rl.check("192.0.2.9".parse().unwrap()).is_ok());
        assert_eq!(rl.sweep(), 0);
        assert!(rl.check(a).is_ok());
    }
}
