//! The buckets and the stream adapter on tokio's paused clock: the
//! durations asserted are the limiter's own arithmetic, not the machine's
//! speed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;
use crate::config::{Config, DeviceConfig};
use crate::metrics::Metrics;

const KIB: u64 = 1024;

fn peer() -> DeviceId {
    DeviceId::from_der_cert(b"peer")
}

fn config(send: i64, recv: i64, dev_send: i64, dev_recv: i64, in_lan: bool) -> Config {
    let mut c = Config::default();
    c.options.max_send_kbps = Kbps(send);
    c.options.max_recv_kbps = Kbps(recv);
    c.options.limit_bandwidth_in_lan = in_lan;
    c.devices.push(DeviceConfig {
        max_send_kbps: Kbps(dev_send),
        max_recv_kbps: Kbps(dev_recv),
        ..DeviceConfig::new(peer())
    });
    c
}

#[test]
fn kbps_are_kibibytes_and_zero_or_less_is_unlimited() {
    assert_eq!(Kbps(8000).bytes_per_second(), Some(8000 * 1024));
    assert_eq!(Kbps(0).bytes_per_second(), None);
    assert_eq!(Kbps(-1).bytes_per_second(), None);
}

#[test]
fn chunks_are_a_hundredth_of_a_second_in_kib_up_to_the_burst() {
    assert_eq!(ConnLimits::chunk(1), 1024);
    assert_eq!(ConnLimits::chunk(8000 * KIB), 81 * 1024);
    assert_eq!(ConnLimits::chunk(1 << 40), BURST as usize);
}

#[test]
fn a_bucket_lends_its_burst_then_paces_at_its_rate() {
    let b = Bucket::default();
    let t0 = Instant::now();
    b.set_rate(Some(1000), t0);
    let first = b.reserve(BURST, t0);
    assert_eq!(b.wait_for(first, t0), None, "the burst passes at once");
    let second = b.reserve(2000, t0);
    let third = b.reserve(500, t0);
    assert_eq!(b.wait_for(second, t0), Some(Duration::from_secs(2)));
    assert_eq!(b.wait_for(third, t0), Some(Duration::from_millis(2500)));
    // A rate change under a waiter: what is missing is earned at the new rate.
    let t1 = t0 + Duration::from_secs(1);
    b.set_rate(Some(4000), t1);
    assert_eq!(b.wait_for(second, t1), Some(Duration::from_millis(250)));
    b.set_rate(None, t1);
    assert_eq!(b.wait_for(third, t1), None, "unlimited pays everything");
    // Idle time earns at most the burst.
    b.set_rate(Some(1000), t1);
    let t2 = t1 + Duration::from_secs(3600);
    let t = b.reserve(BURST + 1000, t2);
    assert_eq!(b.wait_for(t, t2), Some(Duration::from_secs(1)));
}

/// Copies `n` bytes through a limited stream (written by `ours` when
/// `send`, else read by it) and returns the time it took on the paused
/// clock.
async fn transfer(bw: &Arc<Bandwidth>, lan: bool, send: bool, n: usize) -> Duration {
    let limits = Arc::new(ConnLimits::new(bw.clone(), &peer(), lan, &Metrics::new()));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut ours, mut theirs) = (Limited::new(a, limits), b);
    let started = Instant::now();
    let data = vec![7u8; n];
    let mut got = vec![0u8; n];
    if send {
        let (w, r) = tokio::join!(ours.write_all(&data), theirs.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
    } else {
        let (w, r) = tokio::join!(theirs.write_all(&data), ours.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
    }
    started.elapsed()
}

fn assert_about(took: Duration, expected: Duration) {
    let (t, e) = (took.as_secs_f64(), expected.as_secs_f64());
    assert!(
        (t - e).abs() <= e * 0.02 + 0.02,
        "took {took:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_stricter_of_global_and_device_limits_wins() {
    let bw = Arc::new(Bandwidth::default());
    let n = 4 << 20;
    // 1 MiB/s global, 512 KiB/s for the device: 4 MiB less the burst.
    bw.apply(&config(1024, 1024, 512, 0, true));
    let secs = (n as u64 - BURST) as f64 / (512 * KIB) as f64;
    assert_about(
        transfer(&bw, false, true, n).await,
        Duration::from_secs_f64(secs),
    );
    // Receive: only the global limit.
    let secs = (n as u64 - BURST) as f64 / (1024 * KIB) as f64;
    assert_about(
        transfer(&bw, false, false, n).await,
        Duration::from_secs_f64(secs),
    );
}

#[tokio::test(start_paused = true)]
async fn lan_is_exempt_unless_limited_in_lan() {
    let bw = Arc::new(Bandwidth::default());
    bw.apply(&config(100, 100, 0, 0, false));
    assert_eq!(transfer(&bw, true, true, 4 << 20).await, Duration::ZERO);
    assert_eq!(transfer(&bw, true, false, 4 << 20).await, Duration::ZERO);
    assert!(transfer(&bw, false, true, 1 << 20).await >= Duration::from_secs(5));
    bw.apply(&config(100, 100, 0, 0, true));
    assert!(transfer(&bw, true, false, 1 << 20).await >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_change_reaches_a_running_transfer() {
    let bw = Arc::new(Bandwidth::default());
    // 64 KiB/s: 8 MiB would take two minutes.
    bw.apply(&config(0, 64, 0, 0, true));
    let raise = {
        let bw = bw.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            bw.apply(&config(0, 8192, 0, 0, true));
        }
    };
    let (took, ()) = tokio::join!(transfer(&bw, false, false, 8 << 20), raise);
    // 2 s at 64 KiB/s (plus the burst), the rest at 8 MiB/s.
    let rest = (8 << 20) as f64 - (BURST + 2 * 64 * KIB) as f64;
    let expected = 2.0 + rest / (8192 * KIB) as f64;
    assert_about(took, Duration::from_secs_f64(expected));
}
