//! Open REST connections per source (`guard::Source`: an IPv4 address
//! or an IPv6 /64 — an attacker owns a whole /64 as easily as one
//! address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use daemon::sync::MutexExt;

pub use crate::guard::Source;

/// Open connections per source, each at most `max`.
pub struct PerSource {
    max: usize,
    open: Arc<Mutex<HashMap<Source, usize>>>,
}

/// One open connection of a source; dropping it frees the slot.
pub struct Slot {
    source: Source,
    open: Arc<Mutex<HashMap<Source, usize>>>,
}

impl PerSource {
    pub fn new(max: usize) -> PerSource {
        PerSource {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `ip`, or `None` if its source holds
    /// `max` already.
    pub fn enter(&self, ip: IpAddr) -> Option<Slot> {
        let source = Source::of_ip(ip);
        let mut open = self.open.locked();
        let n = open.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            source,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.locked();
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                // Entries exist only for sources with open connections.
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let a = Source::of_ip("2001:db8:1:2::1".parse().unwrap());
        let b = Source::of_ip("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = Source::of_ip("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Source::of_ip("::ffff:192.0.2.1".parse().unwrap()),
            Source::of_ip("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn slots_per_source_are_capped_and_freed() {
        let p = PerSource::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = p.enter(a).unwrap();
        let _s2 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        assert!(p.enter(b).is_some(), "another source has its own slots");
        drop(s1);
        assert!(p.enter(a).is_some());
        drop(_s2);
        assert!(
            p.open.lock().unwrap().is_empty(),
            "no entry outlives its slots"
        );
    }
}
