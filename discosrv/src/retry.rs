//! `Retry-After` values: fixed ranges for errors and re-announcements, and
//! the adaptive delay for lookups of unknown devices.
//!
//! A 404 tells the client not to ask again for `Retry-After` seconds. The
//! more clients ask for absent devices, the longer that delay should be, so
//! the rate of such requests stays near a target. Two trackers keep
//! separate delays for devices seen recently (probably just offline) and
//! devices never seen. Unlike stdiscosrv 1.19.2's per-device miss counters,
//! this keeps no state per unknown ID: millions of distinct unknown IDs cost
//! no memory.

use std::sync::atomic::{AtomicU64, Ordering};

use proto::discovery::{
    ERROR_RETRY_AFTER_SECS, ERROR_RETRY_JITTER_SECS, NOT_FOUND_RETRY_MAX_SECS,
    NOT_FOUND_RETRY_MIN_SECS, REANNOUNCE_AFTER_SECS, REANNOUNCE_JITTER_SECS,
};

/// `Retry-After` for errors: 1500 to 1799 s, as stdiscosrv.
pub fn error_retry_after() -> u64 {
    ERROR_RETRY_AFTER_SECS + rand::random_range(0..ERROR_RETRY_JITTER_SECS)
}

/// `Reannounce-After` on success: 3300 to 3599 s, as stdiscosrv.
pub fn reannounce_after() -> u64 {
    REANNOUNCE_AFTER_SECS + rand::random_range(0..REANNOUNCE_JITTER_SECS)
}

/// `Retry-After` when the store is briefly unavailable: soon, but spread.
pub fn unavailable_retry_after() -> u64 {
    60 + rand::random_range(0..60)
}

/// An adaptive not-found delay. `hit` is called per 404 (lock-free);
/// `tick` once per `interval_secs` by a timer.
pub struct NotFoundTracker {
    desired_per_sec: f64,
    count: AtomicU64,
    /// Current delay in seconds, as f64 bits.
    delay: AtomicU64,
}

impl NotFoundTracker {
    pub fn new(desired_per_sec: f64) -> Self {
        NotFoundTracker {
            desired_per_sec: desired_per_sec.max(0.001),
            count: AtomicU64::new(0),
            delay: AtomicU64::new((NOT_FOUND_RETRY_MIN_SECS as f64).to_bits()),
        }
    }

    pub fn delay(&self) -> f64 {
        f64::from_bits(self.delay.load(Ordering::Relaxed))
    }

    /// Counts one not-found reply and returns its `Retry-After`: the
    /// current delay ±50 %, within 60..=3600 s.
    pub fn hit(&self) -> u64 {
        self.count.fetch_add(1, Ordering::Relaxed);
        let d = self.delay() * rand::random_range(0.5..1.5);
        (d.round() as u64).clamp(NOT_FOUND_RETRY_MIN_SECS, NOT_FOUND_RETRY_MAX_SECS)
    }

    /// Moves the delay a quarter of the way towards the one that would
    /// bring the observed rate to the desired rate: with clients retrying
    /// after `delay`, the rate is proportional to 1/delay.
    pub fn tick(&self, interval_secs: f64) {
        let n = self.count.swap(0, Ordering::Relaxed) as f64;
        let rate = n / interval_secs.max(0.001);
        let cur = self.delay();
        let target = cur * rate / self.desired_per_sec;
        let next = (cur + 0.25 * (target - cur)).clamp(
            NOT_FOUND_RETRY_MIN_SECS as f64,
            NOT_FOUND_RETRY_MAX_SECS as f64,
        );
        self.delay.store(next.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ranges() {
        for _ in 0..1000 {
            assert!((1500..1800).contains(&error_retry_after()));
            assert!((3300..3600).contains(&reannounce_after()));
        }
    }

    #[test]
    fn adapts_between_bounds() {
        let t = NotFoundTracker::new(10.0);
        for _ in 0..100 {
            assert!((60..=90).contains(&t.hit()));
        }
        // 100 per second against a target of 10: the delay grows.
        for _ in 0..50 {
            for _ in 0..100 {
                t.hit();
            }
            t.tick(1.0);
        }
        assert!(t.delay() > 1000.0, "{}", t.delay());
        assert!(t.hit() <= 3600);
        // Quiet: back to the minimum.
        for _ in 0..200 {
            t.tick(1.0);
        }
        assert_eq!(t.delay(), 60.0);
    }
}
