//! Defences against hostile peers that have not (or not yet) proven who
//! they are: peer-chosen strings made safe for logs and the REST API,
//! per-source rate limits (an IPv6 source counted per /64, as one host
//! usually owns the whole prefix), log lines that cannot flood the disk,
//! and a counter per refusal reason for `/metrics`.

pub mod admission;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::sync::MutexExt;

/// Longest peer-chosen name (device name, client name/version, folder
/// label) we store or log, in characters: enough for any real name, small
/// enough that thousands of them stay cheap.
pub const MAX_PEER_NAME_CHARS: usize = 64;

/// A peer-chosen string as we store and log it: control characters
/// (newlines included: a name must not forge log lines), bidirectional
/// overrides and other invisible format characters removed, and at most
/// `max_chars` characters kept (an ellipsis marks a cut).
pub fn sanitize(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4 + 3));
    let mut kept = 0;
    for c in s.chars() {
        if c.is_control() || is_invisible_format(c) {
            continue;
        }
        if kept == max_chars {
            out.push('…');
            break;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// A peer name: [`sanitize`] with [`MAX_PEER_NAME_CHARS`].
pub fn peer_name(s: &str) -> String {
    sanitize(s, MAX_PEER_NAME_CHARS)
}

/// A longer peer text (a Close reason, a relay's message): sanitised and
/// cut at 256 characters.
pub fn peer_text(s: &str) -> String {
    sanitize(s, 256)
}

/// Unicode format characters that reorder or hide text (bidi controls,
/// zero-width characters, line/paragraph separators): harmless in a file
/// name on disk, misleading in a log line.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Who a connection comes from, for per-source limits: an IPv4 address,
/// or the /64 prefix of an IPv6 one (IPv4-mapped addresses count as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    pub fn of(addr: SocketAddr) -> Source {
        Source::of_ip(addr.ip())
    }

    pub fn of_ip(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// At most `per_window` events per source in each `window`, remembering
/// at most `max_sources` sources (when more are seen within a window the
/// table starts over: failing open keeps real devices working, and what
/// the events add is bounded elsewhere).
pub struct SourceRate {
    per_window: u32,
    window: Duration,
    max_sources: usize,
    seen: Mutex<HashMap<Source, (Instant, u32)>>,
}

impl SourceRate {
    pub fn new(per_window: u32, window: Duration, max_sources: usize) -> SourceRate {
        SourceRate {
            per_window,
            window,
            max_sources,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event of `source` at `now`; false when it is over its
    /// budget.
    pub fn allow(&self, source: Source, now: Instant) -> bool {
        let mut seen = self.seen.locked();
        if seen.len() >= self.max_sources && !seen.contains_key(&source) {
            let window = self.window;
            seen.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if seen.len() >= self.max_sources {
                seen.clear();
            }
        }
        let entry = seen.entry(source).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// A token bucket for log lines of one kind: `burst` lines at once, then
/// one per `every`. What it holds back is counted and reported with the
/// next line let through, so an operator sees that lines were dropped.
pub struct LogLimiter {
    burst: f64,
    every: Duration,
    state: Mutex<Option<(f64, Instant, u64)>>,
    /// Where held-back lines are counted (`log_suppressed`).
    refusals: Arc<Refusals>,
}

impl LogLimiter {
    pub fn new(burst: u32, every: Duration, refusals: Arc<Refusals>) -> LogLimiter {
        LogLimiter {
            burst: f64::from(burst),
            every,
            state: Mutex::new(None),
            refusals,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.locked();
        let (tokens, last, suppressed) = state.get_or_insert((self.burst, now, 0));
        let refill = now.saturating_duration_since(*last).as_secs_f64() / self.every.as_secs_f64();
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens < 1.0 {
            *suppressed += 1;
            self.refusals.count(Refusal::LogSuppressed);
            return None;
        }
        *tokens -= 1.0;
        Some(std::mem::take(suppressed))
    }
}

/// Why something from the network was refused or dropped; each reason is
/// a label of `node_refused_total` in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A source already had its share of handshakes in progress.
    HandshakePerSource,
    /// The oldest unauthenticated handshake made room for a new one.
    HandshakeEvicted,
    /// TLS and Hello not done within the pre-Hello time limit.
    HandshakeTimeout,
    /// An unknown device over its source's budget of new pending entries.
    PendingRate,
    /// The oldest pending device made room for a new one.
    PendingEvicted,
    /// A log line held back by a rate limit.
    LogSuppressed,
    /// A folder offer not recorded: the pending offers are full.
    PendingFolderOverflow,
    /// A configured device connecting from outside its `allowedNetworks`.
    NetworkNotAllowed,
}

impl crate::metrics::RefusalReason for Refusal {
    const ALL: &'static [Refusal] = &[
        Refusal::HandshakePerSource,
        Refusal::HandshakeEvicted,
        Refusal::HandshakeTimeout,
        Refusal::PendingRate,
        Refusal::PendingEvicted,
        Refusal::LogSuppressed,
        Refusal::PendingFolderOverflow,
        Refusal::NetworkNotAllowed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Refusal::HandshakePerSource => "handshake_per_source",
            Refusal::HandshakeEvicted => "handshake_evicted",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::PendingRate => "pending_device_rate",
            Refusal::PendingEvicted => "pending_device_evicted",
            Refusal::LogSuppressed => "log_suppressed",
            Refusal::PendingFolderOverflow => "pending_folder_overflow",
            Refusal::NetworkNotAllowed => "network_not_allowed",
        }
    }
}

/// The refusal counters by [`Refusal`].
pub type Refusals = crate::metrics::Refusals<Refusal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_lose_control_characters_and_length() {
        assert_eq!(peer_name("laptop"), "laptop");
        assert_eq!(
            peer_name("evil\n2026-01-01 INFO forged line\r\x1b[31m"),
            "evil2026-01-01 INFO forged line[31m"
        );
        assert_eq!(peer_name("a\u{202E}b\u{200B}c\u{2028}d"), "abcd");
        let long = "é".repeat(32 * 1024);
        let cut = peer_name(&long);
        assert_eq!(cut.chars().count(), MAX_PEER_NAME_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(peer_name(&"x".repeat(64)), "x".repeat(64));
    }

    #[test]
    fn sources_aggregate_ipv6_per_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let v4: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:6".parse().unwrap();
        assert_eq!(Source::of(v4), Source::of(mapped));
    }

    #[test]
    fn source_rate_limits_each_source_and_refills_per_window() {
        let r = SourceRate::new(3, Duration::from_secs(60), 100);
        let t = Instant::now();
        let s = Source::V4(1);
        assert!((0..3).all(|_| r.allow(s, t)));
        assert!(!r.allow(s, t));
        assert!(r.allow(Source::V4(2), t), "other sources unaffected");
        assert!(r.allow(s, t + Duration::from_secs(61)));
        // Many sources: the table stays bounded.
        for i in 0..1000 {
            r.allow(Source::V4(10 + i), t);
        }
        assert!(r.seen.lock().unwrap().len() <= 100);
    }

    #[test]
    fn log_limiter_lets_a_burst_through_then_counts_what_it_holds_back() {
        let l = LogLimiter::new(2, Duration::from_secs(10), Arc::default());
        let t = Instant::now();
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), None);
        assert_eq!(l.allow_at(t), None);
        assert_eq!(l.allow_at(t + Duration::from_secs(10)), Some(2));
    }
}
