//! Admission of incoming connections before the peer has proven who it is
//! (TLS handshake and Hello). Unauthenticated connections are cheap to
//! open and were once able to hold every slot for 30 s, locking real
//! devices out. Now:
//!
//! * one source (IPv4 address, IPv6 /64) holds at most
//!   [`MAX_PER_SOURCE`] handshakes at a time; more are closed at once;
//! * when all [`MAX_HANDSHAKES`] slots are taken, the oldest handshake is
//!   cut to make room (a new connection is never refused for lack of a
//!   slot, so silent sockets cannot starve a device dialing in);
//! * TLS and Hello must both be done by [`PRE_HELLO_TIMEOUT`];
//! * a peer whose certificate is a configured device gives its slot back
//!   as soon as TLS is done (see `conn::run`): only strangers wait for
//!   their Hello in a slot.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::guard::{Refusal, Refusals, Source};
use daemon::sync::MutexExt;

/// Handshakes in progress over all listeners.
pub const MAX_HANDSHAKES: usize = 64;
/// Handshakes in progress from one source.
pub const MAX_PER_SOURCE: usize = 8;
/// TLS handshake and the peer's Hello, together (Syncthing allows 20 s
/// for the Hello alone; a real device needs well under a second).
pub const PRE_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Inner {
    next: u64,
    /// id → (source, eviction signal); ids increase, so the first entry
    /// is the oldest.
    active: BTreeMap<u64, (Source, Arc<Notify>)>,
    per_source: HashMap<Source, usize>,
}

#[derive(Default)]
pub struct Admission {
    inner: Mutex<Inner>,
    /// The node's refusal counters.
    refusals: Arc<Refusals>,
}

/// A slot held by one handshake; dropping it gives the slot back.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: Arc<Notify>,
    /// TLS and Hello must be done by then.
    pub deadline: Instant,
}

impl Admission {
    pub fn new(refusals: Arc<Refusals>) -> Admission {
        Admission {
            inner: Mutex::default(),
            refusals,
        }
    }

    /// A slot for a connection from `addr`, or None when its source
    /// already has [`MAX_PER_SOURCE`] handshakes in progress.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Ticket> {
        let source = Source::of(addr);
        let mut inner = self.inner.locked();
        if inner.per_source.get(&source).copied().unwrap_or(0) >= MAX_PER_SOURCE {
            self.refusals.count(Refusal::HandshakePerSource);
            return None;
        }
        if inner.active.len() >= MAX_HANDSHAKES {
            if let Some((_, (old_source, signal))) = inner.active.pop_first() {
                release(&mut inner.per_source, old_source);
                // notify_one keeps the signal for a task not yet waiting.
                signal.notify_one();
                self.refusals.count(Refusal::HandshakeEvicted);
            }
        }
        let id = inner.next;
        inner.next += 1;
        let evicted = Arc::new(Notify::new());
        inner.active.insert(id, (source, evicted.clone()));
        *inner.per_source.entry(source).or_default() += 1;
        Some(Ticket {
            admission: self.clone(),
            id,
            evicted,
            deadline: Instant::now() + PRE_HELLO_TIMEOUT,
        })
    }

    #[cfg(test)]
    fn in_progress(&self) -> usize {
        self.inner.locked().active.len()
    }
}

fn release(per_source: &mut HashMap<Source, usize>, source: Source) {
    if let Some(n) = per_source.get_mut(&source) {
        *n -= 1;
        if *n == 0 {
            per_source.remove(&source);
        }
    }
}

impl Ticket {
    /// Resolves when this handshake was cut to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.inner.locked();
        if let Some((source, _)) = inner.active.remove(&self.id) {
            release(&mut inner.per_source, source);
        }
    }
}

/// Waits for the eviction of `ticket`'s handshake; never resolves
/// without a ticket (outgoing and relayed connections hold none).
pub async fn evicted(ticket: Option<&Ticket>) {
    match ticket {
        Some(t) => t.evicted().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_capped_and_gets_its_slots_back() {
        let a = Arc::new(Admission::default());
        let held: Vec<Ticket> = (0..MAX_PER_SOURCE)
            .map(|i| a.admit(addr(&format!("192.0.2.1:{}", 1000 + i))).unwrap())
            .collect();
        assert!(a.admit(addr("192.0.2.1:9")).is_none());
        // The same /64 is the same source.
        let six: Vec<Ticket> = (0..MAX_PER_SOURCE)
            .map(|i| {
                a.admit(addr(&format!("[2001:db8::{:x}]:1", i + 1)))
                    .unwrap()
            })
            .collect();
        assert!(a.admit(addr("[2001:db8::ffff:1]:1")).is_none());
        assert!(a.admit(addr("192.0.2.2:9")).is_some(), "others unaffected");
        drop(held);
        drop(six);
        assert_eq!(a.in_progress(), 0);
        assert!(a.admit(addr("192.0.2.1:9")).is_some());
    }

    #[tokio::test]
    async fn a_full_table_cuts_the_oldest_instead_of_refusing() {
        let a = Arc::new(Admission::default());
        let mut held: Vec<Ticket> = (0..MAX_HANDSHAKES)
            .map(|i| {
                a.admit(addr(&format!("10.0.{}.{}:1", i / 200, i % 200)))
                    .unwrap()
            })
            .collect();
        let newcomer = a.admit(addr("192.0.2.7:1"));
        assert!(newcomer.is_some());
        assert_eq!(a.in_progress(), MAX_HANDSHAKES);
        // The oldest was told, even though it was not waiting yet.
        let oldest = held.remove(0);
        tokio::time::timeout(Duration::from_secs(5), oldest.evicted())
            .await
            .expect("oldest evicted");
        drop(oldest);
        assert_eq!(a.in_progress(), MAX_HANDSHAKES);
        let second = &held[0];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.evicted())
                .await
                .is_err(),
            "only the oldest is cut"
        );
    }
}
