//! Bandwidth limits (`maxRecvKbps`, `maxSendKbps`, global and per device,
//! `limitBandwidthInLan`) with real Syncthing devices on loopback, which
//! is LAN: the limits apply only with `limitBandwidthInLan`.
//!
//! How rates are measured: a thread samples our node's
//! `/rest/system/connections` byte totals (BEP bytes after TLS, counted
//! as the connection reads or writes them, after the limiter) every
//! 50 ms, each sample stamped when its answer arrived. A rate is the bytes
//! between two moments over the time between them, each moment's total
//! interpolated between the samples around it; a sample's error is one
//! REST round trip (milliseconds), small beside windows of seconds. The
//! first MiB is left out of every window: it holds the index exchange and
//! the limiter's burst (512 KiB, as Syncthing's), which pass at once.
//!
//! Syncthing's "Kbps" are KiB a second (`lib/connections/limiter.go`
//! multiplies by 1024), so 8000 means 8 192 000 bytes a second.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::node::{Node, NodeHome};
use e2e::tree::write_mib_file;
use e2e::{wait, PeerVersion, Syncthing};
use serde_json::{json, Value};

const MIB: f64 = 1024.0 * 1024.0;
const KIB: f64 = 1024.0;
/// How far a measured rate may be from the limit (the issue's ±15 %).
const TOLERANCE: f64 = 0.15;

/// Our node's byte totals over time: (when, received, sent).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    recv: f64,
    sent: f64,
}

/// Samples our node's byte totals in a thread until dropped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(home: &NodeHome) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (port, key) = (home.gui_port, home.api_key.clone());
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                let rest = e2e::rest::Rest {
                    port,
                    api_key: &key,
                    timeout: Duration::from_secs(10),
                    https: None,
                };
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(c) = rest.get("/rest/system/connections") {
                        let total = |k: &str| c["total"][k].as_f64().unwrap_or(0.0);
                        samples.lock().unwrap().push(Sample {
                            at: Instant::now(),
                            recv: total("inBytesTotal"),
                            sent: total("outBytesTotal"),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let sampler = Sampler {
            samples,
            stop,
            thread: Some(thread),
        };
        let first = wait::until(Duration::from_secs(10), Duration::from_millis(20), || {
            sampler.samples().first().copied()
        });
        assert!(first.is_some(), "no answer from /rest/system/connections");
        sampler
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The samples once one was taken after `t`, so totals up to `t` are
    /// interpolated, never the stale last sample (a loaded machine may
    /// answer late).
    fn samples_past(&self, t: Instant) -> Vec<Sample> {
        let past = wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
            let s = self.samples();
            s.last().is_some_and(|x| x.at > t).then_some(s)
        });
        past.expect("no sample of /rest/system/connections for 30 s")
    }

    /// The latest total in direction `dir`.
    fn latest(&self, dir: Dir) -> f64 {
        self.samples().last().map_or(0.0, |s| dir.of(s))
    }

    /// Waits until the total in `dir` reaches `bytes`; returns when.
    fn wait_for(&self, dir: Dir, bytes: f64, limit: Duration, log: &dyn Fn() -> String) -> Instant {
        wait::until(limit, Duration::from_millis(20), || {
            let s = self.samples();
            let i = s.iter().position(|x| dir.of(x) >= bytes)?;
            Some(crossing(&s, i, dir, bytes))
        })
        .unwrap_or_else(|| {
            panic!(
                "{dir:?} total never reached {bytes} (at {}):\n{}",
                self.latest(dir),
                log()
            )
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Dir {
    Recv,
    Sent,
}

impl Dir {
    fn of(self, s: &Sample) -> f64 {
        match self {
            Dir::Recv => s.recv,
            Dir::Sent => s.sent,
        }
    }
}

/// When the total crossed `bytes`, sample `i` being the first at or above
/// it: interpolated between it and the one before.
fn crossing(s: &[Sample], i: usize, dir: Dir, bytes: f64) -> Instant {
    if i == 0 {
        return s[0].at;
    }
    let (a, b) = (&s[i - 1], &s[i]);
    let (va, vb) = (dir.of(a), dir.of(b));
    let f = if vb > va {
        (bytes - va) / (vb - va)
    } else {
        1.0
    };
    a.at + (b.at - a.at).mul_f64(f.clamp(0.0, 1.0))
}

/// The total at `t`, interpolated between the samples around it.
fn total_at(s: &[Sample], dir: Dir, t: Instant) -> f64 {
    match s.iter().position(|x| x.at >= t) {
        None => s.last().map_or(0.0, |x| dir.of(x)),
        Some(0) => dir.of(&s[0]),
        Some(i) => {
            let (a, b) = (&s[i - 1], &s[i]);
            let span = (b.at - a.at).as_secs_f64();
            let f = if span > 0.0 {
                (t - a.at).as_secs_f64() / span
            } else {
                1.0
            };
            dir.of(a) + (dir.of(b) - dir.of(a)) * f
        }
    }
}

/// The rate in KiB/s in `dir` between `from` and `to`.
fn rate_kib(s: &[Sample], dir: Dir, from: Instant, to: Instant) -> f64 {
    (total_at(s, dir, to) - total_at(s, dir, from)) / KIB / (to - from).as_secs_f64()
}

fn assert_near(what: &str, measured: f64, expected: f64) {
    eprintln!(
        "{what}: {measured:.2} (expected {expected:.2} ± {:.0} %)",
        TOLERANCE * 100.0
    );
    assert!(
        (measured - expected).abs() <= expected * TOLERANCE,
        "{what}: {measured:.0}, expected {expected:.0} ± {:.0} %",
        TOLERANCE * 100.0
    );
}

/// A real Syncthing device (`version`) and our node (not started) sharing
/// folder `id`: the real device sends `theirs` to our `ours`, or the other
/// way round when `we_send`.
fn setup(
    tmp: &Path,
    version: PeerVersion,
    we_send: bool,
    options: Value,
    device: Value,
) -> (Syncthing, NodeHome) {
    let ours = NodeHome::generate(&tmp.join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.join("st"), version);
    let (theirs, mine) = (tmp.join("st-folder"), tmp.join("our-folder"));
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::create_dir_all(&mine).unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    let (their_type, our_type) = if we_send {
        ("receiveonly", "sendonly")
    } else {
        ("sendonly", "receiveonly")
    };
    st.share_folder("bw", &theirs, their_type, &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("bw", &mine, our_type, &[st.id()]);
    let mut c = ours.config();
    for (k, v) in options.as_object().unwrap() {
        c["options"][k] = v.clone();
    }
    for (k, v) in device.as_object().unwrap() {
        c["devices"][0][k] = v.clone();
    }
    ours.set_config(&c);
    (st, ours)
}

/// Puts a file of `mib` MiB in the sending side's folder and has it
/// scanned.
fn offer(tmp: &Path, st: &Syncthing, node: &Node, we_send: bool, mib: u64) {
    if we_send {
        write_mib_file(&tmp.join("our-folder/big.bin"), mib, 3);
        node.post("/rest/db/scan?folder=bw").unwrap();
    } else {
        write_mib_file(&tmp.join("st-folder/big.bin"), mib, 3);
        st.scan("bw");
    }
}

/// Waits until the receiving side has the whole file.
fn wait_done(tmp: &Path, we_send: bool, mib: u64, limit: Duration, log: &dyn Fn() -> String) {
    let at = tmp
        .join(if we_send { "st-folder" } else { "our-folder" })
        .join("big.bin");
    let done = wait::until(limit, Duration::from_millis(100), || {
        (std::fs::metadata(&at).ok()?.len() == mib << 20).then_some(())
    });
    assert!(done.is_some(), "{} not complete:\n{}", at.display(), log());
}

fn patch(node: &Node, path: &str, body: Value) {
    node.send("PATCH", path, &body)
        .unwrap_or_else(|e| panic!("PATCH {path}: {e}"));
}

fn metrics(home: &NodeHome) -> String {
    ureq::get(&format!("http://127.0.0.1:{}/metrics", home.gui_port))
        .set("X-API-Key", &home.api_key)
        .timeout(Duration::from_secs(10))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default()
}

/// Acceptance (1): `maxRecvKbps` 8000 with `limitBandwidthInLan`: a
/// 64 MiB pull from the newest real Syncthing takes 64 MiB / 8000 KiB/s
/// (8.2 s) ± 15 %, measured from the end of the first MiB to 63 MiB and
/// scaled to the whole file.
#[test]
fn recv_limit_paces_a_64_mib_pull_from_real_syncthing() {
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let opts = json!({"maxRecvKbps": 8000, "limitBandwidthInLan": true});
    let (st, home) = setup(tmp.path(), version, false, opts, json!({}));
    let node = home.start();
    let log = || node.proc.log_tail(30);
    let cfg = node.get("/rest/config/options").unwrap();
    assert_eq!(
        (
            cfg["maxRecvKbps"].as_i64(),
            cfg["limitBandwidthInLan"].as_bool()
        ),
        (Some(8000), Some(true))
    );
    let sampler = Sampler::start(&home);
    offer(tmp.path(), &st, &node, false, 64);
    let from = sampler.wait_for(Dir::Recv, MIB, Duration::from_secs(60), &log);
    let to = sampler.wait_for(Dir::Recv, 63.0 * MIB, Duration::from_secs(60), &log);
    let seconds_for_64 = (to - from).as_secs_f64() * 64.0 / 62.0;
    assert_near(
        "64 MiB pull, seconds",
        seconds_for_64,
        64.0 * MIB / (8000.0 * KIB),
    );
    wait_done(tmp.path(), false, 64, Duration::from_secs(30), &log);
    let m = metrics(&home);
    for line in [
        "node_bandwidth_limit_bytes_per_second{direction=\"recv\",scope=\"global\",device=\"\"} 8192000",
        "node_bandwidth_limit_bytes_per_second{direction=\"send\",scope=\"global\",device=\"\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing:\n{m}");
    }
    let throttled = format!(
        "node_bandwidth_throttled_seconds_total{{device=\"{}\",direction=\"recv\"}} ",
        st.id()
    );
    let waited: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix(&throttled)?.parse().ok())
        .unwrap_or_else(|| panic!("{throttled} missing:\n{m}"));
    assert!(
        waited > 1.0,
        "the pull waited only {waited} s for the limit"
    );
    node.stop();
    st.shutdown();
}

/// Acceptance (2): a device limit stricter than the global one wins (with
/// Syncthing 1.19.2: one connection, the oldest peer we support).
#[test]
fn device_limit_stricter_than_global_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = json!({"maxRecvKbps": 8000, "limitBandwidthInLan": true});
    let dev = json!({"maxRecvKbps": 2000});
    let (st, home) = setup(tmp.path(), PeerVersion::V1_19_2, false, opts, dev);
    let node = home.start();
    let log = || node.proc.log_tail(30);
    let sampler = Sampler::start(&home);
    offer(tmp.path(), &st, &node, false, 16);
    let from = sampler.wait_for(Dir::Recv, MIB, Duration::from_secs(60), &log);
    let to = sampler.wait_for(Dir::Recv, 15.0 * MIB, Duration::from_secs(60), &log);
    let s = sampler.samples();
    assert_near(
        "device-limited rate, KiB/s",
        rate_kib(&s, Dir::Recv, from, to),
        2000.0,
    );
    wait_done(tmp.path(), false, 16, Duration::from_secs(30), &log);
    node.stop();
    st.shutdown();
}

/// Acceptance (3): loopback is LAN, so without `limitBandwidthInLan` the
/// limit does not apply: much faster than it (four times is far below
/// what loopback does even on a loaded machine, and far above the limit).
#[test]
fn lan_connection_is_unlimited_without_limit_bandwidth_in_lan() {
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let opts = json!({"maxRecvKbps": 1000, "maxSendKbps": 1000, "limitBandwidthInLan": false});
    let (st, home) = setup(
        tmp.path(),
        version,
        false,
        opts,
        json!({"maxRecvKbps": 1000}),
    );
    let node = home.start();
    let log = || node.proc.log_tail(30);
    let sampler = Sampler::start(&home);
    offer(tmp.path(), &st, &node, false, 32);
    let from = sampler.wait_for(Dir::Recv, MIB, Duration::from_secs(60), &log);
    let to = sampler.wait_for(Dir::Recv, 31.0 * MIB, Duration::from_secs(60), &log);
    let rate = rate_kib(&sampler.samples(), Dir::Recv, from, to);
    eprintln!("unlimited LAN rate: {rate:.0} KiB/s (limit 1000 KiB/s, not applied)");
    assert!(rate > 4000.0, "LAN connection limited: {rate:.0} KiB/s");
    let conns = node.get("/rest/system/connections").unwrap();
    assert_eq!(conns["connections"][st.id()]["isLocal"], true, "{conns}");
    wait_done(tmp.path(), false, 32, Duration::from_secs(30), &log);
    node.stop();
    st.shutdown();
}

/// A limit changed over REST on a running transfer: in effect within 2 s.
/// The rate over a 500 ms window must pass the midpoint between the old
/// and the new limit by 2 s after the PATCH was sent, and the rate from
/// 2 s to 4 s after it be the new limit ± 15 %.
fn assert_changed(
    sampler: &Sampler,
    dir: Dir,
    at: Instant,
    old: f64,
    new: f64,
    log: &dyn Fn() -> String,
) {
    let end = at + Duration::from_secs(4);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let s = sampler.samples_past(end);
    let mid = (old + new) / 2.0;
    let window = Duration::from_millis(500);
    let took = (0..=30)
        .map(|i| at + Duration::from_millis(100 * i))
        .find(|&t| {
            let r = rate_kib(&s, dir, t.checked_sub(window).unwrap_or(t), t);
            if new > old {
                r > mid
            } else {
                r < mid
            }
        })
        .map(|t| (t - at).as_secs_f64());
    eprintln!("{old} → {new} KiB/s: past the midpoint after {took:?} s");
    assert!(
        took.is_some_and(|t| t <= 2.0),
        "{old} → {new} KiB/s not in effect within 2 s ({took:?}):\n{}",
        log()
    );
    let r = rate_kib(&s, dir, at + Duration::from_secs(2), end);
    assert_near(&format!("{dir:?} rate after {old} → {new} KiB/s"), r, new);
}

/// Acceptance (4): `maxRecvKbps` changed over REST mid-pull (global, then
/// the device's) reaches the running transfer.
#[test]
fn recv_limit_changed_over_rest_reaches_a_running_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let opts = json!({"maxRecvKbps": 1000, "limitBandwidthInLan": true});
    let (st, home) = setup(tmp.path(), version, false, opts, json!({}));
    let node = home.start();
    let log = || node.proc.log_tail(30);
    let sampler = Sampler::start(&home);
    offer(tmp.path(), &st, &node, false, 48);
    let from = sampler.wait_for(Dir::Recv, MIB, Duration::from_secs(60), &log);
    let end = from + Duration::from_secs(3);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let s = sampler.samples_past(end);
    assert_near(
        "rate at 1000 KiB/s",
        rate_kib(&s, Dir::Recv, from, end),
        1000.0,
    );

    let at = Instant::now();
    patch(&node, "/rest/config/options", json!({"maxRecvKbps": 8000}));
    assert_changed(&sampler, Dir::Recv, at, 1000.0, 8000.0, &log);

    // The device's own limit, stricter, over its own endpoint.
    let at = Instant::now();
    let path = format!("/rest/config/devices/{}", st.id());
    patch(&node, &path, json!({"maxRecvKbps": 2000}));
    assert_changed(&sampler, Dir::Recv, at, 8000.0, 2000.0, &log);

    // No limits: the rest at once.
    patch(&node, "/rest/config/options", json!({"maxRecvKbps": 0}));
    patch(&node, &path, json!({"maxRecvKbps": 0}));
    wait_done(tmp.path(), false, 48, Duration::from_secs(60), &log);
    node.stop();
    st.shutdown();
}

/// Acceptance (5): `maxSendKbps` with the newest real Syncthing pulling
/// from us: paced at the limit, and changed over REST mid-transfer.
#[test]
fn send_limit_paces_a_real_device_pulling_from_us_and_changes_live() {
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let opts = json!({"maxSendKbps": 2000, "limitBandwidthInLan": true});
    let (st, home) = setup(tmp.path(), version, true, opts, json!({}));
    let node = home.start();
    let log = || node.proc.log_tail(30);
    let sampler = Sampler::start(&home);
    offer(tmp.path(), &st, &node, true, 48);
    let from = sampler.wait_for(Dir::Sent, MIB, Duration::from_secs(60), &log);
    let to = sampler.wait_for(Dir::Sent, 9.0 * MIB, Duration::from_secs(60), &log);
    let s = sampler.samples();
    assert_near(
        "send rate at 2000 KiB/s",
        rate_kib(&s, Dir::Sent, from, to),
        2000.0,
    );

    let at = Instant::now();
    patch(&node, "/rest/config/options", json!({"maxSendKbps": 8000}));
    assert_changed(&sampler, Dir::Sent, at, 2000.0, 8000.0, &log);

    patch(&node, "/rest/config/options", json!({"maxSendKbps": 0}));
    wait_done(tmp.path(), true, 48, Duration::from_secs(60), &log);
    node.stop();
    st.shutdown();
}

/// Every transport pays the limits, and a relayed connection is never LAN
/// (as in Syncthing), even through a relay on loopback: our node listens
/// only on a real strelaysrv, Syncthing 1.19.2 dials it there and pulls
/// from us; `maxSendKbps` applies without `limitBandwidthInLan`.
#[test]
fn relayed_connection_is_limited_without_limit_bandwidth_in_lan() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = e2e::relay::RelayServer::start_strelaysrv(&tmp.path().join("relay"), &[]);
    let home = NodeHome::generate(&tmp.path().join("node"), "rust");
    let mine = tmp.path().join("our-folder");
    let theirs = tmp.path().join("st-folder");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let st = e2e::SyncthingHome::init(&tmp.path().join("st"), &[]).start();
    st.set_options(json!({"relaysEnabled": true}));
    home.add_device(st.id(), &["dynamic"]);
    home.add_folder("bw", &mine, "sendonly", &[st.id()]);
    let mut c = home.config();
    for (k, v) in [
        ("listenAddresses", json!([relay.uri()])),
        ("relaysEnabled", json!(true)),
        ("maxSendKbps", json!(2000)),
        ("limitBandwidthInLan", json!(false)),
    ] {
        c["options"][k] = v;
    }
    home.set_config(&c);
    let node = home.start();
    let log = || node.proc.log_tail(30);
    relay.wait_status("our node joined", Duration::from_secs(30), |s| {
        s["numConnections"].as_u64() == Some(1)
    });
    st.add_device(&home.id, &[&relay.uri()]);
    st.share_folder("bw", &theirs, "receiveonly", &[&home.id]);
    let connected = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        let c = node.get("/rest/system/connections").ok()?;
        let d = &c["connections"][st.id()];
        (d["connected"] == true).then(|| d.clone())
    })
    .unwrap_or_else(|| panic!("not connected through the relay:\n{}", log()));
    assert_eq!(
        (connected["type"].as_str(), connected["isLocal"].as_bool()),
        (Some("relay-server"), Some(false)),
        "{connected}"
    );
    let sampler = Sampler::start(&home);
    let base = sampler.latest(Dir::Sent);
    offer(tmp.path(), &st, &node, true, 12);
    let from = sampler.wait_for(Dir::Sent, base + MIB, Duration::from_secs(60), &log);
    let to = sampler.wait_for(Dir::Sent, base + 11.0 * MIB, Duration::from_secs(60), &log);
    let s = sampler.samples();
    assert_near(
        "relayed send rate, KiB/s",
        rate_kib(&s, Dir::Sent, from, to),
        2000.0,
    );
    wait_done(tmp.path(), true, 12, Duration::from_secs(30), &log);
    node.stop();
    st.shutdown();
}
