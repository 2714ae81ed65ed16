//! A private discovery server (issue 19): the device allow-list (a file
//! reloaded live, or a Redis set shared by replicas) and the secret path
//! prefix, against real Syncthing devices of the newest version built.

use std::path::Path;
use std::time::Duration;

use e2e::discovery::{plain, Discosrv, Redis, Reply};
use e2e::peers::PeerVersion;
use e2e::{pick_port, wait, Syncthing, SyncthingHome};
use proto::{DeviceId, Identity, KeyKind};
use serde_json::json;

fn identity() -> Identity {
    Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap()
}

/// Writes an allow-list the way an operator's tooling (or a ConfigMap)
/// does: a new file renamed over the old one.
fn write_list(path: &Path, ids: &[&str]) {
    let tmp = path.with_extension("new");
    let mut text = String::from("# studio devices\n");
    for id in ids {
        text.push_str(id);
        text.push('\n');
    }
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

const NOT_ALLOWED: &str = "syncthing_discovery_refused_total{reason=\"not_allowed\"}";
const ANNOUNCE_NOT_ALLOWED: &str =
    "syncthing_discovery_announcement_requests_total{result=\"not_allowed\"}";
const BAD_PATH: &str = "syncthing_discovery_refused_total{reason=\"bad_path\"}";

fn status(srv: &Discosrv) -> serde_json::Value {
    let r = plain(srv.metrics_port, "GET", "/status", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The headers of a reply without `date`, sorted, for comparisons.
fn headers(r: &Reply) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    h
}

/// A 404 for an unlisted device must be the one for a device never seen:
/// same status, body and headers (Retry-After from the same tracker,
/// hence compared by range).
fn assert_same_as_unknown(unlisted: &Reply, unknown: &Reply) {
    assert_eq!(unlisted.status, 404, "{unlisted:?}");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unlisted.body, unknown.body);
    let names = |r: &Reply| -> Vec<String> { headers(r).into_iter().map(|(n, _)| n).collect() };
    assert_eq!(names(unlisted), names(unknown));
    for r in [unlisted, unknown] {
        assert!(
            (60..=3600).contains(&r.secs("retry-after").unwrap()),
            "{r:?}"
        );
        assert_eq!(r.header("content-type"), unknown.header("content-type"));
    }
}

/// Real devices of `version` in `dir/name`, listening on
/// `tcp://localhost:P` (a host name: the server drops loopback IPs),
/// announcing to `url` only. Returns the device and its listen address.
fn device(dir: &Path, name: &str, version: PeerVersion) -> (SyncthingHome, String) {
    let port = pick_port();
    let addr = format!("tcp://localhost:{port}");
    let home = SyncthingHome::init_version(&dir.join(name), std::slice::from_ref(&addr), version);
    (home, addr)
}

fn announce_to(node: &Syncthing, url: &str) {
    node.set_options(json!({
        "globalAnnounceEnabled": true,
        "globalAnnounceServers": [url],
        "localAnnounceEnabled": false,
    }));
}

/// Waits until `lookup` finds `node` at `addr`.
fn wait_found(node: &Syncthing, addr: &str, lookup: &dyn Fn(&str) -> Reply) {
    let found = wait::until(Duration::from_secs(40), Duration::from_millis(250), || {
        let r = lookup(node.id());
        (r.status == 200 && r.addresses().iter().any(|a| a == addr)).then_some(())
    });
    assert!(
        found.is_some(),
        "Syncthing {} {} never announced {addr}: {:?}\n{}",
        node.version(),
        node.id(),
        node.get("/rest/system/status"),
        node.proc.log_tail(30)
    );
}

/// Two devices that found each other's addresses by discovery alone
/// connect (their configurations hold `dynamic` addresses only).
fn connect_through_discovery(n1: &Syncthing, n2: &Syncthing) {
    n1.add_device(n2.id(), &["dynamic"]);
    n2.add_device(n1.id(), &["dynamic"]);
    let conn = n2.wait_connected(n1.id(), Duration::from_secs(60));
    assert!(
        conn.is_some(),
        "Syncthing {} devices never connected through discovery:\n{}",
        n1.version(),
        n2.proc.log_tail(30)
    );
}

/// Waits until the server has refused at least one announcement of an
/// unlisted device (a real device announces about 5 s after its start).
fn wait_refused_announcement(srv: &Discosrv) -> String {
    wait::until(Duration::from_secs(40), Duration::from_millis(250), || {
        let m = srv.metrics();
        (metric(&m, ANNOUNCE_NOT_ALLOWED) >= 1.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("no announcement refused:\n{}", srv.proc.log_tail(30)))
}

#[test]
fn listed_real_devices_find_each_other_and_an_unlisted_one_is_refused() {
    let version = PeerVersion::newest_available();
    let dir = tempfile::tempdir().unwrap();
    let (h1, a1) = device(dir.path(), "n1", version);
    let (h2, a2) = device(dir.path(), "n2", version);
    let (h3, _) = device(dir.path(), "outsider", version);
    let list = dir.path().join("allow.txt");
    write_list(&list, &[&h1.id, &h2.id]);
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--allow-devices", list.to_str().unwrap()],
    );
    let url = srv.url();
    let (n1, n2, n3) = (h1.start(), h2.start(), h3.start());
    for n in [&n1, &n2, &n3] {
        announce_to(n, &url);
    }
    wait_found(&n1, &a1, &|id| srv.lookup(id));
    wait_found(&n2, &a2, &|id| srv.lookup(id));
    connect_through_discovery(&n1, &n2);

    // The outsider's real announcements are refused; its lookup is the
    // 404 of a device never seen.
    let m = wait_refused_announcement(&srv);
    assert!(metric(&m, NOT_ALLOWED) >= 1.0, "{m}");
    let unknown = identity().device_id().to_string();
    assert_same_as_unknown(&srv.lookup(n3.id()), &srv.lookup(&unknown));
    // One log line for the refused device, naming it; none for the listed.
    let log = srv.proc.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not in the allow-list"))
        .collect();
    assert!(refused.iter().all(|l| l.contains(n3.id())), "{refused:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");

    let st = status(&srv);
    assert_eq!(st["allowList"]["source"], "file", "{st}");
    assert_eq!(st["allowList"]["devices"], 2, "{st}");
    assert!(st["allowList"]["loadedAt"].is_string(), "{st}");
    for n in [n1, n2, n3] {
        n.shutdown();
    }
    srv.stop();
}

#[test]
fn allow_list_file_changes_take_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (identity(), identity());
    let (id1, id2) = (d1.device_id().to_string(), d2.device_id().to_string());
    let list = dir.path().join("allow.txt");
    write_list(&list, &[&id1]);
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--allow-devices",
            list.to_str().unwrap(),
            "--allow-reload-interval",
            "1s",
        ],
    );
    assert_eq!(srv.announce(&d1, &["tcp://one.example:1"]).status, 204);
    let refused = srv.announce(&d2, &["tcp://two.example:2"]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.text(), "Forbidden\n");
    assert!(refused.secs("retry-after").is_some(), "{refused:?}");
    assert_eq!(srv.lookup(&id2).status, 404);
    let loaded_before = status(&srv)["allowList"]["loadedAt"].clone();

    // Added: announces within the reload interval, no restart.
    write_list(&list, &[&id1, &id2]);
    let ok = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (srv.announce(&d2, &["tcp://two.example:2"]).status == 204).then_some(())
    });
    assert!(ok.is_some(), "{}", srv.proc.log_tail(20));
    assert_eq!(srv.lookup(&id2).addresses(), ["tcp://two.example:2"]);
    let st = status(&srv);
    assert_eq!(st["allowList"]["devices"], 2, "{st}");
    assert_eq!(st["allowList"]["reloads"], 1, "{st}");
    assert_ne!(st["allowList"]["loadedAt"], loaded_before, "{st}");

    // A broken file keeps the list in force.
    std::fs::write(&list, format!("{id1}\nnot-a-device\n")).unwrap();
    let failed = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (status(&srv)["allowList"]["reloadFailures"] == 1).then_some(())
    });
    assert!(failed.is_some(), "{}", srv.proc.log_tail(20));
    assert_eq!(srv.lookup(&id2).status, 200);

    // Removed: its record stays in the store but is no longer found, and
    // the answer is the unknown device's.
    write_list(&list, &[&id2]);
    let gone = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (srv.lookup(&id1).status == 404).then_some(())
    });
    assert!(gone.is_some(), "{}", srv.proc.log_tail(20));
    let unknown = identity().device_id().to_string();
    assert_same_as_unknown(&srv.lookup(&id1), &srv.lookup(&unknown));

    let m = srv.metrics();
    assert!(metric(&m, NOT_ALLOWED) >= 3.0, "{m}");
    assert_eq!(
        metric(&m, "syncthing_discovery_allowlist_devices"),
        1.0,
        "{m}"
    );
    assert!(metric(&m, "syncthing_discovery_allowlist_loaded_time_seconds") > 1.7e9);
    e2e::promtool::assert_accepts(&m);
    srv.stop();
}

#[test]
fn an_empty_list_refuses_everyone_and_a_bad_file_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("allow.txt");
    write_list(&list, &[]);
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--allow-devices", list.to_str().unwrap()],
    );
    assert_eq!(
        srv.announce(&identity(), &["tcp://a.example:1"]).status,
        403
    );
    assert!(
        srv.proc.log().contains("holds no device"),
        "{}",
        srv.proc.log_tail(20)
    );
    srv.stop();

    std::fs::write(&list, "not-a-device\n").unwrap();
    let out = std::process::Command::new(e2e::our_binary("discosrv"))
        .args(["--listen", "127.0.0.1:0", "--allow-devices"])
        .arg(&list)
        .arg("--db-dir")
        .arg(dir.path().join("db2"))
        .arg("--cert")
        .arg(dir.path().join("c.pem"))
        .arg("--key")
        .arg(dir.path().join("k.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allow-list") && err.contains("line 1"),
        "{err}"
    );
}

/// A command through `redis-cli` (`SADD key member`, …).
fn redis_cli(redis: &Redis, args: &[&str]) {
    let out = std::process::Command::new(e2e::require_program("redis-cli", "redis-tools"))
        .arg("-p")
        .arg(redis.port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
}

fn sadd(redis: &Redis, key: &str, member: &str) {
    redis_cli(redis, &["SADD", key, member]);
}

#[test]
fn two_replicas_share_an_allow_set_in_redis() {
    let version = PeerVersion::newest_available();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let key = "studio:allowed-devices";
    let (h1, a1) = device(dir.path(), "n1", version);
    let (h2, a2) = device(dir.path(), "n2", version);
    let (h3, _) = device(dir.path(), "outsider", version);
    sadd(&redis, key, &h1.id);
    sadd(&redis, key, &h2.id);
    let replica = |name: &str| {
        Discosrv::start(
            &dir.path().join(name),
            &[
                "--redis-url",
                &redis.url(),
                "--allow-devices-redis",
                key,
                "--allow-reload-interval",
                "1s",
            ],
        )
    };
    let (a, b) = (replica("a"), replica("b"));
    let (n1, n2, n3) = (h1.start(), h2.start(), h3.start());
    // Each listed device announces to its own replica and is found
    // through the other one.
    announce_to(&n1, &a.url());
    announce_to(&n2, &b.url());
    announce_to(&n3, &a.url());
    wait_found(&n1, &a1, &|id| b.lookup(id));
    wait_found(&n2, &a2, &|id| a.lookup(id));
    connect_through_discovery(&n1, &n2);

    wait_refused_announcement(&a);
    let unknown = identity().device_id().to_string();
    assert_same_as_unknown(&b.lookup(n3.id()), &b.lookup(&unknown));
    assert_same_as_unknown(&a.lookup(n3.id()), &a.lookup(&unknown));

    // A device added to the set is accepted by both replicas, no restart.
    let d = identity();
    let id = d.device_id().to_string();
    assert_eq!(b.announce(&d, &["tcp://d.example:4"]).status, 403);
    sadd(&redis, key, &id);
    let ok = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (b.announce(&d, &["tcp://d.example:4"]).status == 204).then_some(())
    });
    assert!(ok.is_some(), "{}", b.proc.log_tail(20));
    let found = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (a.lookup(&id).status == 200).then_some(())
    });
    assert!(found.is_some(), "{}", a.proc.log_tail(20));
    let st = status(&a);
    assert_eq!(st["allowList"]["source"], "redis", "{st}");
    assert_eq!(st["allowList"]["devices"], 3, "{st}");

    // A member that is not a device ID refuses the new set: the list in
    // force stays.
    sadd(&redis, key, "not-a-device");
    let failed = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (status(&a)["allowList"]["reloadFailures"].as_u64() >= Some(1)).then_some(())
    });
    assert!(failed.is_some(), "{}", a.proc.log_tail(20));
    assert_eq!(a.announce(&d, &["tcp://d.example:4"]).status, 204);
    assert_eq!(status(&a)["allowList"]["devices"], 3);

    // A member longer than any list line is refused inside Redis, before
    // the set is sent: the list in force stays, and the log says why.
    redis_cli(&redis, &["SREM", key, "not-a-device"]);
    let before = status(&a)["allowList"]["reloadFailures"]
        .as_u64()
        .unwrap_or(0);
    sadd(&redis, key, &"A".repeat(300));
    let failed = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        (status(&a)["allowList"]["reloadFailures"].as_u64() > Some(before)).then_some(())
    });
    assert!(failed.is_some(), "{}", a.proc.log_tail(20));
    let log = wait::until(Duration::from_secs(10), Duration::from_millis(100), || {
        a.proc.log_tail(50).contains("300 bytes long").then_some(())
    });
    assert!(log.is_some(), "{}", a.proc.log_tail(50));
    assert_eq!(a.announce(&d, &["tcp://d.example:4"]).status, 204);
    assert_eq!(status(&a)["allowList"]["devices"], 3);
    for n in [n1, n2, n3] {
        n.shutdown();
    }
    a.stop();
    b.stop();
}

#[test]
fn real_devices_keep_the_secret_path_and_outside_it_nothing_is_revealed() {
    let version = PeerVersion::newest_available();
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--path-prefix", "/k3J9-studio/"],
    );
    let url = format!(
        "https://127.0.0.1:{}/k3J9-studio/?id={}",
        srv.port,
        srv.id.unwrap()
    );
    let (h1, a1) = device(dir.path(), "n1", version);
    let (h2, a2) = device(dir.path(), "n2", version);
    let (n1, n2) = (h1.start(), h2.start());
    announce_to(&n1, &url);
    announce_to(&n2, &url);
    let lookup = |id: &str| srv.request(None, "GET", &format!("/k3J9-studio/?device={id}"), b"");
    wait_found(&n1, &a1, &lookup);
    wait_found(&n2, &a2, &lookup);
    connect_through_discovery(&n1, &n2);
    // Nothing of theirs arrived outside the prefix.
    let m = srv.metrics();
    assert_eq!(metric(&m, BAD_PATH), 0.0, "{m}");

    // Outside the prefix every request gets the answer of a path that
    // does not exist, whatever it asks; inside, the API answers.
    let reference = srv.request(None, "GET", "/no/such/path", b"");
    assert_eq!(reference.status, 404);
    assert_eq!(reference.text(), "404 page not found\n");
    let dev = identity();
    let body = br#"{"addresses":["tcp://x.example:1"]}"#;
    let probes = [
        srv.request(None, "GET", "/", b""),
        srv.request(None, "GET", &format!("/?device={}", n1.id()), b""),
        srv.request(Some(&dev), "POST", "/", body),
        srv.request(None, "GET", "/ping", b""),
        srv.request(None, "GET", "/healthz", b""),
        srv.request(None, "GET", "/k3J9-studio", b""),
        srv.request(None, "GET", "/k3J9-studio/other", b""),
        srv.request(None, "PUT", "/", b""),
        srv.request(None, "GET", "/K3J9-STUDIO/", b""),
    ];
    for (i, r) in probes.iter().enumerate() {
        assert_eq!(
            (r.status, &r.body, headers(r)),
            (reference.status, &reference.body, headers(&reference)),
            "probe {i}: {r:?}"
        );
    }
    assert_eq!(lookup(n1.id()).status, 200);
    assert_eq!(
        srv.request(None, "GET", "/k3J9-studio/ping", b"").status,
        204
    );
    assert_eq!(
        plain(srv.metrics_port, "GET", "/healthz", &[], b"").status,
        200
    );
    let m = srv.metrics();
    assert!(metric(&m, BAD_PATH) >= (probes.len() + 1) as f64, "{m}");
    n1.shutdown();
    n2.shutdown();
    srv.stop();
}

#[test]
fn the_device_id_forms_of_the_list_are_those_syncthing_prints() {
    // The file takes IDs as Syncthing shows them and in the compact form.
    let dir = tempfile::tempdir().unwrap();
    let d = identity();
    let id: DeviceId = d.device_id();
    let compact = id.to_string().replace('-', "").to_lowercase();
    let list = dir.path().join("allow.txt");
    write_list(&list, &[&compact]);
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--allow-devices", list.to_str().unwrap()],
    );
    assert_eq!(srv.announce(&d, &["tcp://a.example:1"]).status, 204);
    srv.stop();
}

#[test]
fn syncthing_1_19_2_keeps_the_secret_path_and_is_refused_unlisted() {
    // Debian's 1.19.2 (no token, older discovery client): the same path
    // handling and the same reaction to a refusal.
    let version = PeerVersion::V1_19_2;
    let dir = tempfile::tempdir().unwrap();
    let (h1, a1) = device(dir.path(), "listed", version);
    let (h2, _) = device(dir.path(), "outsider", version);
    let list = dir.path().join("allow.txt");
    write_list(&list, &[&h1.id]);
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--allow-devices",
            list.to_str().unwrap(),
            "--path-prefix",
            "/old-clients/",
        ],
    );
    let url = format!(
        "https://127.0.0.1:{}/old-clients/?id={}",
        srv.port,
        srv.id.unwrap()
    );
    let (n1, n2) = (h1.start(), h2.start());
    announce_to(&n1, &url);
    announce_to(&n2, &url);
    wait_found(&n1, &a1, &|id| {
        srv.request(None, "GET", &format!("/old-clients/?device={id}"), b"")
    });
    let m = wait_refused_announcement(&srv);
    assert_eq!(metric(&m, BAD_PATH), 0.0, "{m}");
    assert_eq!(
        srv.request(
            None,
            "GET",
            &format!("/old-clients/?device={}", n2.id()),
            b""
        )
        .status,
        404
    );
    n1.shutdown();
    n2.shutdown();
    srv.stop();
}
