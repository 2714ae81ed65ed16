//! Checking a GUI user's password without letting anyone who can reach
//! the port burn the node's CPU or guess at leisure.
//!
//! - bcrypt (tens of milliseconds by design) runs on the blocking pool,
//!   never on the async runtime that also carries BEP, and at most
//!   `MAX_BCRYPT_AT_ONCE` at a time: a burst of logins queues instead of
//!   taking every core.
//! - A source (an IPv4 address, an IPv6 /64) that failed `FREE_FAILURES`
//!   times is refused without any check for a back-off that doubles with
//!   each further failure, up to `MAX_BACKOFF`. The table of sources is
//!   bounded: the one that failed longest ago is forgotten first.
//! - A password that just verified is remembered (its SHA-256 with the
//!   hash it matched) for `VERIFIED_FOR`, so a script sending basic auth
//!   on every call does not pay bcrypt each time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::rest::http_util::same;
use crate::rest::source::Source;
use daemon::sync::MutexExt;

const MAX_BCRYPT_AT_ONCE: usize = 2;
const FREE_FAILURES: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A source's failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(900);
const MAX_SOURCES: usize = 10_000;
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// The outcome of one login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    Wrong,
    /// Too many failures from this source: try again after this long.
    Throttled(Duration),
}

pub struct Logins {
    bcrypt: Semaphore,
    failures: Mutex<HashMap<Source, Failures>>,
    /// SHA-256 of `user:password:hash` of the last success, and when.
    verified: Mutex<Option<([u8; 32], Instant)>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn blocked_until(&self) -> Option<Instant> {
        let over = self.count.checked_sub(FREE_FAILURES)?;
        let backoff = Duration::from_secs(1u64 << over.min(16)).min(MAX_BACKOFF);
        Some(self.last + backoff)
    }
}

impl Default for Logins {
    fn default() -> Self {
        Logins {
            bcrypt: Semaphore::new(MAX_BCRYPT_AT_ONCE),
            failures: Mutex::new(HashMap::new()),
            verified: Mutex::new(None),
        }
    }
}

impl Logins {
    /// Checks `user`/`password` from `ip` against the configured user and
    /// bcrypt `hash`.
    pub async fn attempt(
        &self,
        ip: IpAddr,
        (want_user, hash): (&str, &str),
        (user, password): (&str, &str),
    ) -> Login {
        let source = Source::of_ip(ip);
        if let Some(wait) = self.throttled(source, Instant::now()) {
            return Login::Throttled(wait);
        }
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(user)
            .chain_update([0])
            .chain_update(password)
            .chain_update([0])
            .chain_update(hash)
            .finalize()
            .into();
        if self.recently_verified(&fingerprint) {
            return Login::Ok;
        }
        // Counted as a failure before the check, so guesses sent in
        // parallel cannot all slip past the throttle while bcrypt runs.
        self.failed(source, Instant::now());
        let ok =
            same(user.as_bytes(), want_user.as_bytes()) && self.bcrypt_verify(password, hash).await;
        let now = Instant::now();
        if ok {
            self.failures.locked().remove(&source);
            *self.verified.locked() = Some((fingerprint, now));
            Login::Ok
        } else {
            Login::Wrong
        }
    }

    fn recently_verified(&self, fingerprint: &[u8; 32]) -> bool {
        let v = self.verified.locked();
        v.as_ref()
            .is_some_and(|(f, at)| same(f, fingerprint) && at.elapsed() < VERIFIED_FOR)
    }

    /// bcrypt on the blocking pool, at most `MAX_BCRYPT_AT_ONCE` at once.
    /// A plain-text value (not `$2…`) is never accepted: the file must not
    /// hold passwords.
    async fn bcrypt_verify(&self, password: &str, hash: &str) -> bool {
        if !hash.starts_with("$2") {
            return false;
        }
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        let (password, hash) = (password.to_string(), hash.to_string());
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }

    fn throttled(&self, source: Source, now: Instant) -> Option<Duration> {
        let f = self.failures.locked();
        let until = f.get(&source)?.blocked_until()?;
        let wait = until.saturating_duration_since(now);
        (!wait.is_zero()).then_some(wait)
    }

    fn failed(&self, source: Source, now: Instant) {
        let mut f = self.failures.locked();
        f.retain(|_, v| now.saturating_duration_since(v.last) < FORGET_AFTER);
        if f.len() >= MAX_SOURCES && !f.contains_key(&source) {
            if let Some(oldest) = f.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| *k) {
                f.remove(&oldest);
            }
        }
        let e = f.entry(source).or_insert(Failures {
            count: 0,
            last: now,
        });
        e.count = e.count.saturating_add(1);
        e.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_back_off_per_source_and_success_resets() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let cfg = ("ops", hash.as_str());
        let l = Logins::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(l.attempt(a, cfg, ("ops", "guess")).await, Login::Wrong);
        }
        // Even the right password is not checked while throttled.
        assert!(matches!(
            l.attempt(a, cfg, ("ops", "right")).await,
            Login::Throttled(_)
        ));
        // Another source is not affected.
        assert_eq!(l.attempt(b, cfg, ("ops", "right")).await, Login::Ok);
        assert_eq!(l.attempt(b, cfg, ("root", "right")).await, Login::Wrong);
        // Plain text in the configuration is never a password.
        assert_eq!(
            l.attempt(b, ("ops", "right"), ("ops", "right")).await,
            Login::Wrong
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped_and_sources_are_bounded() {
        let l = Logins::default();
        let s = Source::of_ip("192.0.2.1".parse().unwrap());
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            l.failed(s, now);
        }
        assert_eq!(l.throttled(s, now), Some(Duration::from_secs(1)));
        l.failed(s, now);
        assert_eq!(l.throttled(s, now), Some(Duration::from_secs(2)));
        for _ in 0..40 {
            l.failed(s, now);
        }
        assert_eq!(l.throttled(s, now), Some(MAX_BACKOFF));
        assert_eq!(l.throttled(s, now + MAX_BACKOFF), None);

        for i in 0..(MAX_SOURCES as u32 + 10) {
            l.failed(Source::V4(i + 1_000_000), now);
        }
        assert!(l.failures.lock().unwrap().len() <= MAX_SOURCES);
    }
}
