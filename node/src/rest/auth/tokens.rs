//! Random tokens the API hands out as cookies — CSRF tokens and login
//! sessions — each kept in a bounded list and forgotten once unused for
//! too long, so neither a stolen cookie nor a flood of logins lives on.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rest::http_util::same;
use daemon::sync::MutexExt;

/// Tokens of one kind, most recently used first.
pub struct Tokens {
    list: Mutex<VecDeque<Entry>>,
    /// Most tokens remembered; the least recently used goes beyond this.
    max: usize,
    /// A token unused for this long is no longer accepted.
    idle: Duration,
    /// A token older than this is no longer accepted, however much used.
    lifetime: Duration,
}

struct Entry {
    token: String,
    created: Instant,
    used: Instant,
}

impl Tokens {
    pub fn new(max: usize, idle: Duration, lifetime: Duration) -> Tokens {
        Tokens {
            list: Mutex::new(VecDeque::new()),
            max,
            idle,
            lifetime,
        }
    }

    /// A fresh random token, remembered as just used.
    pub fn issue(&self) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut l = self.list.locked();
        l.push_front(Entry {
            token: token.clone(),
            created: now,
            used: now,
        });
        l.truncate(self.max);
        token
    }

    /// Whether `token` is live; if so it counts as used now. Expired
    /// tokens met on the way are dropped.
    pub fn check(&self, token: &str) -> bool {
        self.check_at(token, Instant::now())
    }

    fn check_at(&self, token: &str, now: Instant) -> bool {
        let mut l = self.list.locked();
        l.retain(|e| {
            now.saturating_duration_since(e.used) < self.idle
                && now.saturating_duration_since(e.created) < self.lifetime
        });
        // Every entry is compared (constant time per entry) so the position
        // of a match does not show in the timing.
        let mut found = None;
        for (i, e) in l.iter().enumerate() {
            if same(e.token.as_bytes(), token.as_bytes()) {
                found = Some(i);
            }
        }
        let Some(i) = found else { return false };
        if let Some(mut e) = l.remove(i) {
            e.used = now;
            l.push_front(e);
        }
        true
    }

    /// Forgets every token (the credentials they stood for changed).
    pub fn clear(&self) {
        self.list.locked().clear();
    }
}

/// 32 characters from [A-Za-z0-9]: about 190 bits from the OS generator.
fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..32)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_when_idle_or_old_and_the_list_is_bounded() {
        let t = Tokens::new(3, Duration::from_secs(60), Duration::from_secs(600));
        let a = t.issue();
        assert!(t.check(&a));
        assert!(!t.check("nope"));
        let now = Instant::now();
        // Used 30 s later, then 59 s after that: still live (idle resets).
        assert!(t.check_at(&a, now + Duration::from_secs(30)));
        assert!(t.check_at(&a, now + Duration::from_secs(89)));
        // Idle for over a minute: gone.
        assert!(!t.check_at(&a, now + Duration::from_secs(150)));

        // Kept alive, but past its lifetime: gone.
        let b = t.issue();
        let now = Instant::now();
        for s in (50..600).step_by(50) {
            assert!(t.check_at(&b, now + Duration::from_secs(s)), "{s}");
        }
        assert!(!t.check_at(&b, now + Duration::from_secs(601)));

        // Only the three most recently used are kept.
        let all: Vec<String> = (0..4).map(|_| t.issue()).collect();
        assert!(!t.check(&all[0]));
        assert!(all[1..].iter().all(|x| t.check(x)));
        t.clear();
        assert!(!t.check(&all[3]));
    }

    #[test]
    fn tokens_are_random_and_cookie_safe() {
        let t = Tokens::new(10, Duration::from_secs(1), Duration::from_secs(1));
        let (a, b) = (t.issue(), t.issue());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
