//! When a refusal is worth a log line. A server that refuses strangers
//! (not on an allow-list, wrong token) logs each one so that an operator
//! sees who knocks, but a device retrying every few seconds, or a flood of
//! fresh certificates, must neither flood the log nor grow a table without
//! bound: [`RefusalLog`] allows one line per key per window and remembers
//! at most a fixed number of keys. Refusals it does not log are still
//! counted by the server's metrics.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::MutexExt;

pub struct RefusalLog<K> {
    every: Duration,
    max_keys: usize,
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    last: HashMap<K, Instant>,
    /// While the table is full of recent keys: the earliest time one of
    /// them can expire. Until then a new key is refused without a sweep,
    /// so a flood costs one hash lookup per refusal, not a scan.
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq> RefusalLog<K> {
    /// One line per key per `every`; at most `max_keys` keys remembered.
    pub fn new(every: Duration, max_keys: usize) -> Self {
        RefusalLog {
            every,
            max_keys,
            inner: Mutex::new(Inner {
                last: HashMap::new(),
                next_sweep: None,
            }),
        }
    }

    /// Whether a refusal of `key` at `now` gets a log line (and if so, it
    /// is remembered as logged at `now`).
    pub fn should_log(&self, key: K, now: Instant) -> bool {
        let mut inner = self.inner.locked();
        if let Some(at) = inner.last.get_mut(&key) {
            if now.saturating_duration_since(*at) < self.every {
                return false;
            }
            *at = now;
            return true;
        }
        if inner.last.len() >= self.max_keys {
            if inner.next_sweep.is_some_and(|t| now < t) {
                return false;
            }
            let every = self.every;
            inner
                .last
                .retain(|_, at| now.saturating_duration_since(*at) < every);
            if inner.last.len() >= self.max_keys {
                inner.next_sweep = inner.last.values().min().map(|at| *at + every);
                return false;
            }
            inner.next_sweep = None;
        }
        inner.last.insert(key, now);
        true
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.inner.locked().last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(600);

    #[test]
    fn one_line_per_key_and_window() {
        let log = RefusalLog::new(EVERY, 100);
        let t0 = Instant::now();
        assert!(log.should_log(1, t0));
        assert!(!log.should_log(1, t0 + Duration::from_secs(1)));
        assert!(log.should_log(2, t0 + Duration::from_secs(1)));
        assert!(log.should_log(1, t0 + EVERY));
        // A clock read out of order is not a panic, only "too soon".
        assert!(!log.should_log(2, t0));
    }

    #[test]
    fn the_table_stays_bounded_and_frees_up_when_keys_expire() {
        let log = RefusalLog::new(EVERY, 1000);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(log.should_log(i, t0 + Duration::from_millis(u64::from(i))));
        }
        // Full of recent keys: new ones go unlogged, however many.
        for i in 1000..50_000u32 {
            assert!(!log.should_log(i, t0 + Duration::from_secs(1)));
        }
        assert_eq!(log.len(), 1000);
        // Once the oldest key's window is over, there is room again.
        assert!(!log.should_log(
            7,
            t0 + EVERY - Duration::from_millis(1) + Duration::from_millis(7)
        ));
        assert!(log.should_log(50_000, t0 + EVERY + Duration::from_millis(1)));
        assert!(log.len() <= 1000);
    }
}
