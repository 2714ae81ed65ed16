//! Our `discosrv --redis-cluster` on a real Redis Cluster (issue 22):
//! 3 masters and 3 replicas from Debian's `redis-server`, with a password.
//! Two replicas share it; a master is killed under load and its replica
//! promoted; the whole cluster goes down and comes back; slots move under
//! load. Clients see errors (503 with Retry-After) only while the cluster
//! itself cannot answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::discovery::{https, plain, Discosrv};
use e2e::redis_cluster::RedisCluster;
use e2e::wait;
use proto::{DeviceId, Identity, KeyKind};

fn identity() -> Identity {
    Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap()
}

/// discosrv on the cluster, every node given as a seed.
fn discosrv(dir: &std::path::Path, cluster: &RedisCluster) -> Discosrv {
    let seeds = cluster.urls().join(",");
    Discosrv::start(
        dir,
        &[
            "--redis-cluster",
            "--redis-url",
            &seeds,
            "--rate-limit",
            "0",
            "--new-device-rate",
            "0",
        ],
    )
}

fn addr_of(id: &DeviceId) -> String {
    format!("tcp://{}.example:22000", id.short())
}

/// One request the load made: when, what, and its status.
#[derive(Clone, Debug)]
struct Outcome {
    at: Instant,
    lookup: bool,
    status: u16,
}

/// Threads announcing (each its own devices, over and over) and looking
/// up (every device of the load and `quiet`) through `ports`, over HTTPS
/// with client certificates, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<JoinHandle<()>>,
    devices: Vec<Arc<Identity>>,
}

impl Load {
    fn start(servers: &[(u16, Option<DeviceId>)], quiet: &[DeviceId]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let devices: Vec<Arc<Identity>> = (0..8).map(|_| Arc::new(identity())).collect();
        let mut lookups: Vec<DeviceId> = devices.iter().map(|d| d.device_id()).collect();
        lookups.extend_from_slice(quiet);
        // Every device of the load is in before the lookups start.
        for d in &devices {
            let (port, id) = servers[0];
            let body = serde_json::json!({ "addresses": [addr_of(&d.device_id())] });
            let r = https(
                port,
                id,
                Some(d),
                "POST",
                "/",
                &[],
                body.to_string().as_bytes(),
            );
            assert_eq!(r.status, 204, "{r:?}");
        }
        let mut threads = Vec::new();
        for t in 0..4 {
            let (stop, log) = (stop.clone(), log.clone());
            let (port, id) = servers[t % servers.len()];
            let announcing = t < 2;
            let mine: Vec<Arc<Identity>> = devices.iter().skip(t % 2).step_by(2).cloned().collect();
            let lookups = lookups.clone();
            threads.push(std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = if announcing {
                        let dev = &mine[i % mine.len()];
                        let body = serde_json::json!({ "addresses": [addr_of(&dev.device_id())] });
                        https(
                            port,
                            id,
                            Some(dev),
                            "POST",
                            "/",
                            &[],
                            body.to_string().as_bytes(),
                        )
                    } else {
                        let dev = lookups[i % lookups.len()];
                        https(port, id, None, "GET", &format!("/?device={dev}"), &[], b"")
                    };
                    if r.status == 503 {
                        assert!(
                            r.secs("retry-after").is_some(),
                            "503 without Retry-After: {r:?}"
                        );
                    }
                    log.lock().unwrap().push(Outcome {
                        at: Instant::now(),
                        lookup: !announcing,
                        status: r.status,
                    });
                }
            }));
        }
        Load {
            stop,
            log,
            threads,
            devices,
        }
    }

    /// Requests so far.
    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits until `n` more requests were made, so the load is known to run.
    fn wait_for(&self, n: usize, limit: Duration) {
        let start = self.count();
        let ok = wait::until(limit, Duration::from_millis(50), || {
            (self.count() >= start + n).then_some(())
        });
        assert!(ok.is_some(), "the load made no progress");
    }

    fn stop(self) -> (Vec<Outcome>, Vec<Arc<Identity>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let log = self.log.lock().unwrap().clone();
        (log, self.devices)
    }
}

/// A failed request: anything but 204 for an announcement, anything but
/// 200 for a lookup (every device looked up was announced).
fn failed(o: &Outcome) -> bool {
    if o.lookup {
        o.status != 200
    } else {
        o.status != 204
    }
}

/// Status counts, for messages.
fn histogram(log: &[Outcome]) -> BTreeMap<(bool, u16), usize> {
    let mut h = BTreeMap::new();
    for o in log {
        *h.entry((o.lookup, o.status)).or_default() += 1;
    }
    h
}

fn found(srv: &Discosrv, id: &DeviceId) -> bool {
    let r = srv.lookup(&id.to_string());
    r.status == 200 && r.addresses().contains(&addr_of(id))
}

fn healthz(srv: &Discosrv) -> u16 {
    plain(srv.metrics_port, "GET", "/healthz", &[], b"").status
}

fn store_errors(srv: &Discosrv) -> u64 {
    srv.metrics()
        .lines()
        .find(|l| l.starts_with("syncthing_discovery_store_errors_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn replicas_share_a_cluster_with_keys_on_every_master() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(&dir.path().join("cluster"));
    let a = discosrv(&dir.path().join("a"), &cluster);
    let b = discosrv(&dir.path().join("b"), &cluster);

    let devices: Vec<Identity> = (0..30).map(|_| identity()).collect();
    for (i, d) in devices.iter().enumerate() {
        let via = if i % 2 == 0 { &a } else { &b };
        let r = via.announce(d, &[&addr_of(&d.device_id())]);
        assert_eq!(r.status, 204, "{r:?}");
        assert!(r.secs("reannounce-after").is_some());
    }
    for (i, d) in devices.iter().enumerate() {
        // Through the other replica.
        let via = if i % 2 == 0 { &b } else { &a };
        assert!(found(via, &d.device_id()), "{} not found", d.device_id());
    }

    // Same keys as in single-node mode: `discosrv:d:<ID>`, a hash of
    // address → expiry (now + 2 h) and `~seen`, living a week.
    let per_master = cluster.keys_per_master("discosrv:d:*");
    let mut total = 0;
    for (port, keys) in &per_master {
        let slots: BTreeSet<u16> = keys.iter().map(|k| cluster.keyslot(k)).collect();
        eprintln!(
            "master {port}: {} device records in {} slots",
            keys.len(),
            slots.len()
        );
        assert!(
            !keys.is_empty(),
            "master {port} holds no record: {per_master:?}"
        );
        total += keys.len();
    }
    assert_eq!(per_master.len(), 3);
    assert_eq!(total, devices.len(), "{per_master:?}");

    let d = &devices[0];
    let key = format!("discosrv:d:{}", d.device_id());
    let slot = cluster.keyslot(&key);
    let master = cluster.master_of_slot(slot).expect("slot served");
    let ttl: i64 = cluster.cli(master, &["ttl", &key]).trim().parse().unwrap();
    assert!(
        (7 * 24 * 3600 - 120..=7 * 24 * 3600).contains(&ttl),
        "TTL {ttl}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expiry: i64 = cluster
        .cli(master, &["hget", &key, &addr_of(&d.device_id())])
        .trim()
        .parse()
        .unwrap();
    assert!(
        (now + 7200 - 120..=now + 7200 + 5).contains(&expiry),
        "{expiry} vs {now}"
    );
    let seen: i64 = cluster
        .cli(master, &["hget", &key, "~seen"])
        .trim()
        .parse()
        .unwrap();
    assert!(seen / 1_000_000_000 <= now + 5 && seen / 1_000_000_000 > now - 120);

    assert_eq!(healthz(&a), 200);
    a.stop();
    b.stop();
}

#[test]
fn master_killed_under_load_then_whole_cluster_down_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start(&dir.path().join("cluster"));
    let a = discosrv(&dir.path().join("a"), &cluster);
    let b = discosrv(&dir.path().join("b"), &cluster);

    // Devices announced once before the kill and never again: the cluster
    // kept them (replicated), so they must be found after the failover.
    let quiet: Vec<Identity> = (0..30).map(|_| identity()).collect();
    for d in &quiet {
        assert_eq!(a.announce(d, &[&addr_of(&d.device_id())]).status, 204);
    }
    let quiet_ids: Vec<DeviceId> = quiet.iter().map(|d| d.device_id()).collect();
    // Victim: the master of the first quiet device's slot.
    let key = format!("discosrv:d:{}", quiet_ids[0]);
    let victim = cluster
        .master_of_slot(cluster.keyslot(&key))
        .expect("slot served");
    let replica = cluster.replica_of(victim).expect("victim has a replica");
    // Its replica has caught up before the kill.
    let synced = wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
        let m = cluster.cli(victim, &["dbsize"]);
        let r = cluster.cli(replica, &["dbsize"]);
        (!m.trim().is_empty() && m == r).then_some(())
    });
    assert!(synced.is_some(), "replica {replica} never caught up");

    let load = Load::start(&[(a.port, a.id), (b.port, b.id)], &quiet_ids);
    load.wait_for(40, Duration::from_secs(30));
    let killed_at = Instant::now();
    cluster.kill(victim);
    eprintln!("killed master {victim}; its replica is {replica}");
    let promoted = wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
        cluster
            .cli(replica, &["info", "replication"])
            .contains("role:master")
            .then_some(())
    });
    assert!(
        promoted.is_some(),
        "replica not promoted:\n{}",
        cluster.describe()
    );
    eprintln!("replica promoted after {:?}", killed_at.elapsed());
    // Served again through both replicas: a round of lookups succeeds.
    let serving = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        quiet_ids
            .iter()
            .all(|id| found(&a, id) && found(&b, id))
            .then_some(())
    });
    assert!(
        serving.is_some(),
        "not serving after the failover:\n{}",
        a.proc.log_tail(30)
    );
    let recovered_at = Instant::now();
    // A replica (re)started meanwhile, its first seed the dead node, finds
    // the topology through the others.
    let mut seeds = cluster.urls();
    let dead = seeds
        .iter()
        .position(|u| u.ends_with(&format!(":{victim}/")))
        .expect("victim among the seeds");
    seeds.swap(0, dead);
    let seeds = seeds.join(",");
    let c = Discosrv::start(
        &dir.path().join("c"),
        &[
            "--redis-cluster",
            "--redis-url",
            &seeds,
            "--rate-limit",
            "0",
        ],
    );
    let c_serves = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        quiet_ids.iter().all(|id| found(&c, id)).then_some(())
    });
    assert!(
        c_serves.is_some(),
        "a replica whose first seed is down does not serve:\n{}",
        c.proc.log_tail(30)
    );
    c.stop();
    load.wait_for(100, Duration::from_secs(30));

    // The killed node comes back, as a replica: nothing changes for clients.
    let before_restart = Instant::now();
    cluster.restart(victim);
    let rejoined = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        cluster
            .cli(victim, &["info", "replication"])
            .contains("role:slave")
            .then_some(())
    });
    assert!(
        rejoined.is_some(),
        "killed node did not rejoin as a replica:\n{}",
        cluster.describe()
    );
    cluster.wait_ok(Duration::from_secs(30));
    load.wait_for(100, Duration::from_secs(30));
    let (log, loaders) = load.stop();

    let fails: Vec<&Outcome> = log.iter().filter(|o| failed(o)).collect();
    let before: Vec<_> = fails.iter().filter(|o| o.at < killed_at).collect();
    let after_restart: Vec<_> = fails.iter().filter(|o| o.at >= before_restart).collect();
    assert!(
        before.is_empty(),
        "failures before the kill: {:?}",
        histogram(&log)
    );
    assert!(
        after_restart.is_empty(),
        "failures after the killed node restarted: {} ({:?})",
        after_restart.len(),
        histogram(&log)
    );
    let window: Vec<_> = fails
        .iter()
        .filter(|o| o.at >= killed_at && o.at <= recovered_at)
        .collect();
    let statuses: BTreeSet<u16> = fails.iter().map(|o| o.status).collect();
    match (window.first(), window.last()) {
        (Some(first), Some(last)) => eprintln!(
            "failover: {} failed of {} requests, first {} ms and last {} ms after the kill \
             (failures answered over {} ms), statuses {statuses:?}; all: {:?}",
            fails.len(),
            log.len(),
            first.at.duration_since(killed_at).as_millis(),
            last.at.duration_since(killed_at).as_millis(),
            last.at.duration_since(first.at).as_millis(),
            histogram(&log)
        ),
        _ => eprintln!(
            "failover: no failed request of {}; {:?}",
            log.len(),
            histogram(&log)
        ),
    }
    // Only 503 (with Retry-After, checked by the load) or a 404 of a
    // load device whose write the dead master had not yet replicated.
    assert!(
        statuses.iter().all(|s| [503, 404].contains(s)),
        "{:?}",
        histogram(&log)
    );
    for id in quiet_ids.iter().chain(
        loaders
            .iter()
            .map(|d| d.device_id())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            found(&a, id) && found(&b, id),
            "{id} lost after the failover"
        );
    }

    // The whole cluster down: 503 with Retry-After, not ready, errors counted.
    let errors_before = store_errors(&a);
    for port in cluster.running_ports() {
        cluster.kill(port);
    }
    let down = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let r = a.lookup(&quiet_ids[0].to_string());
        (r.status == 503).then_some(r)
    })
    .expect("no 503 with the cluster down");
    assert!(down.secs("retry-after").is_some(), "{down:?}");
    let r = a.announce(&quiet[0], &[&addr_of(&quiet_ids[0])]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.secs("retry-after").is_some());
    assert_eq!(healthz(&a), 503);
    assert!(store_errors(&a) > errors_before);

    // Back (empty: no persistence): served again without a restart.
    for n in 0..cluster.nodes.len() {
        let port = cluster.nodes[n].port;
        cluster.restart(port);
    }
    cluster.wait_ok(Duration::from_secs(60));
    let back = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (a.announce(&quiet[0], &[&addr_of(&quiet_ids[0])]).status == 204
            && found(&b, &quiet_ids[0])
            && healthz(&a) == 200
            && healthz(&b) == 200)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "discosrv did not recover:\n{}",
        a.proc.log_tail(30)
    );
    for s in [&a, &b] {
        assert!(!s.proc.log().contains("panicked"));
    }
    a.stop();
    b.stop();
}

#[test]
fn slots_move_under_load_without_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(&dir.path().join("cluster"));
    let a = discosrv(&dir.path().join("a"), &cluster);
    let b = discosrv(&dir.path().join("b"), &cluster);
    let masters = cluster.masters();
    // redis-cli takes the slots to move from the start of the source's
    // list: devices in those slots are looked up (and re-announced)
    // while their slot migrates, which answers MOVED and ASK.
    let moving: BTreeSet<u16> = masters[0]
        .1
        .iter()
        .flat_map(|&(a, b)| a..=b)
        .take(500)
        .collect();
    let slot = |id: &DeviceId| RedisCluster::slot_of(&format!("discosrv:d:{id}"));
    let mut quiet: Vec<Identity> = Vec::new();
    while quiet
        .iter()
        .filter(|d| moving.contains(&slot(&d.device_id())))
        .count()
        < 8
    {
        let d = identity();
        if moving.contains(&slot(&d.device_id())) || quiet.len() < 20 {
            quiet.push(d);
        }
    }
    for d in &quiet {
        assert_eq!(a.announce(d, &[&addr_of(&d.device_id())]).status, 204);
    }
    let quiet_ids: Vec<DeviceId> = quiet.iter().map(|d| d.device_id()).collect();
    let probe = format!("discosrv:d:{}", quiet_ids[0]);
    assert_eq!(cluster.keyslot(&probe), slot(&quiet_ids[0]));
    let load = Load::start(&[(a.port, a.id), (b.port, b.id)], &quiet_ids);
    load.wait_for(40, Duration::from_secs(30));

    let from_id = node_id(&cluster, masters[0].0);
    let to_id = node_id(&cluster, masters[1].0);
    let out = cluster.cli(
        masters[0].0,
        &[
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", masters[0].0),
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            "500",
            "--cluster-yes",
            "--cluster-pipeline",
            "5",
        ],
    );
    assert!(out.contains("Moving slot"), "reshard did nothing:\n{out}");
    cluster.wait_ok(Duration::from_secs(30));
    load.wait_for(100, Duration::from_secs(30));
    let (log, _) = load.stop();
    let after = cluster.masters();
    let count = |m: &[(u16, Vec<(u16, u16)>)], p: u16| -> u32 {
        m.iter().find(|(q, _)| *q == p).map_or(0, |(_, r)| {
            r.iter().map(|&(a, b)| u32::from(b - a) + 1).sum()
        })
    };
    eprintln!(
        "reshard: {} slots {} → {}, {} → {}; {} requests {:?}",
        masters[0].0,
        count(&masters, masters[0].0),
        count(&after, masters[0].0),
        masters[1].0,
        count(&after, masters[1].0),
        log.len(),
        histogram(&log)
    );
    assert_eq!(
        count(&after, masters[0].0) + 500,
        count(&masters, masters[0].0)
    );
    let moved = quiet_ids
        .iter()
        .filter(|id| moving.contains(&slot(id)))
        .filter(|id| cluster.master_of_slot(slot(id)) == Some(masters[1].0))
        .count();
    eprintln!("{moved} looked-up device records moved with their slots");
    assert!(moved >= 8, "{moved}");
    assert!(
        !log.iter().any(failed),
        "client-visible errors during the reshard: {:?}",
        histogram(&log)
    );
    for id in &quiet_ids {
        assert!(found(&a, id) && found(&b, id));
    }
    a.stop();
    b.stop();
}

/// The cluster node ID of the node on `port`.
fn node_id(cluster: &RedisCluster, port: u16) -> String {
    cluster.cli(port, &["cluster", "myid"]).trim().to_string()
}

/// Redis memory per stored device, for deploy/README.md's sizing: fills
/// `DISCO_MEM_DEVICES` (default 100,000) devices with three addresses
/// each through `discoload --mode fill` (reverse-proxy mode, so no TLS
/// handshake per device) into the cluster and into a single Redis, and
/// prints the `used_memory` delta per device. A measurement, not a check:
/// `cargo test -p e2e --test discovery_cluster redis_memory -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement of a few minutes; run by hand"]
fn redis_memory_per_device() {
    let n: usize = std::env::var("DISCO_MEM_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let proxy = [
        "--http",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--client-cert-header",
        "caddy",
        "--rate-limit",
        "0",
        "--new-device-rate",
        "0",
    ];
    let fill = |srv: &Discosrv| {
        let out = std::process::Command::new(e2e::our_binary("discoload"))
            .args(["--target", &format!("127.0.0.1:{}", srv.port)])
            .args(["--plain", "--mode", "fill", "--concurrency", "16"])
            .args(["--devices", &n.to_string()])
            .output()
            .expect("run discoload");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let cluster = RedisCluster::start(&dir.path().join("cluster"));
    let seeds = cluster.urls().join(",");
    let mut args = proxy.to_vec();
    args.extend(["--redis-cluster", "--redis-url", &seeds]);
    let srv = Discosrv::start(&dir.path().join("c"), &args);
    let before = cluster.masters_used_memory();
    let report = fill(&srv);
    let after = cluster.masters_used_memory();
    let keys: usize = cluster
        .keys_per_master("discosrv:d:*")
        .iter()
        .map(|(_, k)| k.len())
        .sum();
    eprintln!(
        "cluster: {keys} records, used_memory of the masters +{} bytes: {} bytes/device; {report}",
        after - before,
        (after - before) / keys.max(1) as u64
    );
    srv.stop();
    drop(cluster);

    let redis = e2e::discovery::Redis::start(&dir.path().join("single"));
    let mut args = proxy.to_vec();
    let url = redis.url();
    args.extend(["--redis-url", &url]);
    let srv = Discosrv::start(&dir.path().join("s"), &args);
    let used = || -> u64 {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "info", "memory"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = used();
    let report = fill(&srv);
    let after = used();
    eprintln!(
        "single Redis: used_memory +{} bytes: {} bytes/device; {report}",
        after - before,
        (after - before) / n as u64
    );
    srv.stop();
}
