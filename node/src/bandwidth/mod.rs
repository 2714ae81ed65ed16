//! Bandwidth limits, as Syncthing's `maxSendKbps` / `maxRecvKbps` (global
//! in `options`, and per device) and `limitBandwidthInLan`.
//!
//! Each limit is a token bucket of bytes ([`Bucket`]); a connection pays
//! its device's bucket and then the global one, so the stricter of the two
//! sets its pace and the global one is shared by every connection. The
//! node owns one [`Bandwidth`]; each connection wraps its stream (TCP or
//! relayed, before the BEP session splits it) in a [`Limited`] that
//! holds an `Arc` to it, so a configuration change ([`Bandwidth::apply`],
//! called by `Node::update_config`) reaches running transfers at once:
//! waiters are woken and recompute their wait at the new rate.
//!
//! Connections on the LAN ([`lan::is_lan`]) are exempt unless
//! `limitBandwidthInLan` is set; relayed connections never count as LAN.
//!
//! Why not `governor`: its quotas are fixed at creation (a live change
//! would replace the limiter and forget the debt of waiting transfers),
//! a request larger than the burst is an error rather than a longer wait,
//! and its async wait polls on its own timer instead of tokio's. What is
//! needed here is small: a byte bucket that lends ahead (a waiter gets a
//! place in line, like Go's `rate.Limiter` which Syncthing uses) and can
//! change its rate under waiting transfers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use daemon::sync::MutexExt;
use prometheus_client::metrics::counter::Counter;
use proto::DeviceId;
use tokio::sync::Notify;

use crate::config::{Config, Kbps};

pub mod lan;
mod stream;

pub use stream::Limited;

/// Bytes a bucket holds when full: what may pass at once after a pause.
/// Syncthing's burst (4 × 128 KiB, four blocks).
pub const BURST: u64 = 512 * 1024;
/// Chunks are sized to about this many a second at the current rate
/// (Syncthing aims at one write every 10 ms): small enough to keep the
/// pace smooth, large enough not to make thousands of tiny writes.
const CHUNKS_PER_SECOND: u64 = 100;
/// Chunks are whole KiB, at least one.
const CHUNK_UNIT: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Recv,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
        }
    }
}

/// A token bucket of bytes whose rate can change while transfers wait.
///
/// Bytes are lent ahead: [`Bucket::reserve`] hands out a place in line (the
/// total lent so far, including this request) even when the bucket is
/// empty, and the caller waits until the total earned reaches it. Earnings
/// grow at the rate, and stop once they are [`BURST`] ahead of what was
/// lent. Totals are whole bytes (u64 never wraps in practice), with the
/// fraction of a byte earned kept apart, so a long-running node keeps its
/// precision.
#[derive(Debug)]
pub struct Bucket {
    /// Bytes a second, 0 for unlimited: read without the lock on every
    /// read and write, to skip all of this when there is no limit.
    rate: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: u64,
    lent: u64,
    earned: u64,
    /// Part of a byte earned beyond `earned`.
    fraction: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            rate: AtomicU64::new(0),
            state: Mutex::new(State {
                rate: 0,
                lent: 0,
                earned: BURST,
                fraction: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl State {
    fn refill(&mut self, now: Instant) {
        let full = self.lent.saturating_add(BURST);
        if self.rate == 0 {
            self.earned = full;
            self.fraction = 0.0;
        } else {
            let dt = now.saturating_duration_since(self.at).as_secs_f64();
            let gain = self.fraction + dt * self.rate as f64;
            let whole = gain.floor();
            self.fraction = gain - whole;
            self.earned = self.earned.saturating_add(whole as u64);
            if self.earned >= full {
                self.earned = full;
                self.fraction = 0.0;
            }
        }
        self.at = now;
    }
}

impl Bucket {
    /// The limit in bytes a second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    /// Sets the rate (`None`: unlimited); what was earned at the old rate
    /// is kept. Returns whether it changed.
    pub fn set_rate(&self, rate: Option<u64>, now: Instant) -> bool {
        let rate = rate.unwrap_or(0);
        let mut s = self.state.locked();
        s.refill(now);
        let changed = s.rate != rate;
        s.rate = rate;
        self.rate.store(rate, Ordering::Relaxed);
        changed
    }

    /// Takes `n` bytes on credit: the returned place in line is paid once
    /// [`Bucket::wait_for`] says so.
    pub fn reserve(&self, n: u64, now: Instant) -> u64 {
        let mut s = self.state.locked();
        s.refill(now);
        s.lent = s.lent.saturating_add(n);
        s.lent
    }

    /// How long until place `ticket` is paid at the current rate; `None`
    /// when it is.
    pub fn wait_for(&self, ticket: u64, now: Instant) -> Option<Duration> {
        let mut s = self.state.locked();
        s.refill(now);
        if s.earned >= ticket {
            return None;
        }
        // `rate` is not 0 here: unlimited buckets have earned all lent.
        let missing = (ticket - s.earned) as f64 - s.fraction;
        let secs = missing / s.rate as f64;
        // Rounded up to the next microsecond, so the wake-up finds it paid
        // rather than a sliver short.
        Some(Duration::from_micros((secs * 1e6).ceil().max(1.0) as u64))
    }
}

/// The send and receive buckets of one scope (the node, or one device).
#[derive(Debug, Default)]
pub struct Buckets {
    pub send: Bucket,
    pub recv: Bucket,
}

impl Buckets {
    pub fn get(&self, d: Direction) -> &Bucket {
        match d {
            Direction::Send => &self.send,
            Direction::Recv => &self.recv,
        }
    }

    fn set(&self, send: Kbps, recv: Kbps, now: Instant) -> bool {
        let s = self.send.set_rate(send.bytes_per_second(), now);
        let r = self.recv.set_rate(recv.bytes_per_second(), now);
        s || r
    }
}

/// The node's limits: the global buckets, one pair per configured device,
/// and whether LAN connections are limited too. Owned by the node; each
/// connection holds an `Arc` of it (see [`ConnLimits`]).
#[derive(Debug, Default)]
pub struct Bandwidth {
    global: Buckets,
    limit_lan: AtomicBool,
    devices: Mutex<HashMap<DeviceId, Arc<Buckets>>>,
    /// Woken on every change, so waiters recompute at the new rate rather
    /// than sleep out a wait computed at the old one.
    changed: Notify,
}

impl Bandwidth {
    /// Puts `config`'s limits in effect, under running transfers too.
    pub fn apply(&self, config: &Config) {
        let now = Instant::now();
        let o = &config.options;
        let global = self.global.set(o.max_send_kbps, o.max_recv_kbps, now);
        let lan_before = self
            .limit_lan
            .swap(o.limit_bandwidth_in_lan, Ordering::Relaxed);
        if global || lan_before != o.limit_bandwidth_in_lan {
            tracing::info!(send = %shown(o.max_send_kbps), recv = %shown(o.max_recv_kbps),
                lan = if o.limit_bandwidth_in_lan { "limited" } else { "exempt" },
                "overall bandwidth limits");
        }
        {
            let mut devices = self.devices.locked();
            devices.retain(|id, _| config.device(id).is_some());
            for d in &config.devices {
                let b = devices.entry(d.device_id).or_default();
                if b.set(d.max_send_kbps, d.max_recv_kbps, now) {
                    tracing::info!(device = %d.device_id, send = %shown(d.max_send_kbps),
                        recv = %shown(d.max_recv_kbps), "device bandwidth limits");
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// The buckets of a configured device.
    fn device(&self, id: &DeviceId) -> Option<Arc<Buckets>> {
        self.devices.locked().get(id).cloned()
    }

    /// Waits until `ticket` of `bucket` is paid, recomputing whenever a
    /// limit changes. Sleeps on tokio's timer: no polling.
    async fn wait(&self, bucket: &Bucket, ticket: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between still
            // wakes this waiter.
            changed.as_mut().enable();
            let Some(wait) = bucket.wait_for(ticket, Instant::now()) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }
}

fn shown(k: Kbps) -> String {
    match k.bytes_per_second() {
        Some(_) => format!("{} KiB/s", k.0),
        None => "unlimited".into(),
    }
}

/// One connection's view of the limits: its device's buckets (if the
/// device is configured), whether it is exempt as LAN, and its counters.
pub struct ConnLimits {
    bandwidth: Arc<Bandwidth>,
    device: Option<Arc<Buckets>>,
    lan: bool,
    /// Seconds spent waiting for the limits, and bytes moved, per
    /// direction (send, recv); `None` for an unconfigured device, whose
    /// ID must not become a metrics series.
    throttled: [Option<Counter<f64, AtomicU64>>; 2],
    bytes: [Option<Counter>; 2],
}

impl ConnLimits {
    /// Limits for a connection to `peer`; `lan` exempts it unless
    /// `limitBandwidthInLan`.
    pub fn new(
        bandwidth: Arc<Bandwidth>,
        peer: &DeviceId,
        lan: bool,
        metrics: &crate::metrics::Metrics,
    ) -> ConnLimits {
        let device = bandwidth.device(peer);
        let counters = |d: Direction| {
            let labels = [
                ("device", peer.to_string()),
                ("direction", d.as_str().to_string()),
            ];
            device.as_ref().map(|_| {
                (
                    metrics.bandwidth_throttled.get_or_create(&labels).clone(),
                    metrics.device_bytes.get_or_create(&labels).clone(),
                )
            })
        };
        let (send, recv) = (counters(Direction::Send), counters(Direction::Recv));
        ConnLimits {
            bandwidth,
            device,
            lan,
            throttled: [
                send.as_ref().map(|c| c.0.clone()),
                recv.as_ref().map(|c| c.0.clone()),
            ],
            bytes: [send.map(|c| c.1), recv.map(|c| c.1)],
        }
    }

    fn index(d: Direction) -> usize {
        match d {
            Direction::Send => 0,
            Direction::Recv => 1,
        }
    }

    /// A LAN connection while LAN is not limited.
    fn exempt(&self) -> bool {
        self.lan && !self.bandwidth.limit_lan.load(Ordering::Relaxed)
    }

    /// The rate that applies in direction `d` now, `None` when unlimited
    /// (no limit set, or a LAN connection exempt from them).
    pub fn rate(&self, d: Direction) -> Option<u64> {
        if self.exempt() {
            return None;
        }
        let global = self.bandwidth.global.get(d).rate();
        let device = self.device.as_ref().and_then(|b| b.get(d).rate());
        match (global, device) {
            (Some(g), Some(x)) => Some(g.min(x)),
            (g, x) => g.or(x),
        }
    }

    /// Bytes to move at once at `rate`: about 1/100 s worth, in whole KiB,
    /// at most the burst (a larger request would only wait longer before
    /// its first byte).
    pub fn chunk(rate: u64) -> usize {
        let kib = rate / CHUNKS_PER_SECOND / CHUNK_UNIT + 1;
        (kib * CHUNK_UNIT).min(BURST) as usize
    }

    /// Counts `n` bytes moved in direction `d`.
    pub fn moved(&self, d: Direction, n: usize) {
        if let Some(c) = &self.bytes[Self::index(d)] {
            c.inc_by(n as u64);
        }
    }

    /// Pays for `n` bytes in direction `d`: the device's bucket, then the
    /// global one.
    pub async fn take(self: Arc<Self>, d: Direction, n: usize) {
        let started = Instant::now();
        let n = n as u64;
        if !self.exempt() {
            let device = self.device.as_ref().map(|b| b.get(d));
            for bucket in device.into_iter().chain([self.bandwidth.global.get(d)]) {
                if bucket.rate().is_some() {
                    let ticket = bucket.reserve(n, Instant::now());
                    self.bandwidth.wait(bucket, ticket).await;
                }
            }
        }
        let waited = started.elapsed();
        if let Some(c) = &self.throttled[Self::index(d)] {
            if waited >= Duration::from_millis(1) {
                c.inc_by(waited.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests;
