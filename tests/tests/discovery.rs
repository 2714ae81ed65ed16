//! Our `discosrv` against real Syncthing 1.19.2 nodes, a real
//! `redis-server` and a real nginx (issue 10); and against real 1.30.0
//! and 2.1.3 devices, directly and behind nginx (issue 16).

use std::path::Path;
use std::time::Duration;

use e2e::discovery::{https, https_from, idle_h2, plain, Discosrv, Nginx, Redis, Reply};
use e2e::peers::PeerVersion;
use e2e::{pick_port, wait, SyncthingHome};
use proto::{Identity, KeyKind};
use serde_json::json;

fn identity() -> Identity {
    Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap()
}

/// Two real nodes listening on `tcp://localhost:P` (a host name: the
/// server drops loopback IPs), discovery through `url` only, find each
/// other by device ID and sync a folder whose contents are then compared.
/// `lookup` asks the server (or a replica) directly.
fn two_nodes_sync_through(dir: &Path, url: &str, lookup: &dyn Fn(&str) -> Reply) {
    two_nodes_of_version_sync_through(dir, url, lookup, PeerVersion::V1_19_2);
}

/// [`two_nodes_sync_through`] with two real devices of `version`.
fn two_nodes_of_version_sync_through(
    dir: &Path,
    url: &str,
    lookup: &dyn Fn(&str) -> Reply,
    version: PeerVersion,
) {
    let (s1, s2) = (pick_port(), pick_port());
    let listen = |p: u16| [format!("tcp://localhost:{p}")];
    let n1 = SyncthingHome::init_version(&dir.join("n1"), &listen(s1), version).start();
    let n2 = SyncthingHome::init_version(&dir.join("n2"), &listen(s2), version).start();
    let opts = json!({
        "globalAnnounceEnabled": true,
        "globalAnnounceServers": [url],
        "localAnnounceEnabled": false,
    });
    n1.set_options(opts.clone());
    n2.set_options(opts);

    // Both announcements must be in before the devices are added: a 404
    // would be cached by the node for its Retry-After.
    for (node, port) in [(&n1, s1), (&n2, s2)] {
        let want = format!("tcp://localhost:{port}");
        let found = wait::until(Duration::from_secs(40), Duration::from_millis(250), || {
            let r = lookup(node.id());
            (r.status == 200 && r.addresses().contains(&want)).then_some(())
        });
        assert!(
            found.is_some(),
            "Syncthing {version} {} never announced {want}: {:?}\n{}",
            node.id(),
            node.get("/rest/system/status"),
            node.proc.log_tail(30)
        );
    }

    n1.add_device(n2.id(), &["dynamic"]);
    n2.add_device(n1.id(), &["dynamic"]);
    let (d1, d2) = (dir.join("data1"), dir.join("data2"));
    n1.share_folder("disco", &d1, "sendonly", &[n2.id()]);
    n2.share_folder("disco", &d2, "receiveonly", &[n1.id()]);
    let conn = n2.wait_connected(n1.id(), Duration::from_secs(60));
    assert!(
        conn.is_some(),
        "Syncthing {version} nodes never connected through discovery:\n{}",
        n2.proc.log_tail(30)
    );

    let mut files = Vec::new();
    for i in 0..5u32 {
        let content: Vec<u8> = (0..(1000 + i * 7919))
            .map(|_| rand::random::<u8>())
            .collect();
        std::fs::write(d1.join(format!("f{i}.bin")), &content).unwrap();
        files.push((format!("f{i}.bin"), content));
    }
    n1.scan("disco");
    n2.wait_synced("disco", files.len() as u64, Duration::from_secs(60))
        .unwrap();
    for (name, content) in files {
        assert_eq!(std::fs::read(d2.join(&name)).unwrap(), content, "{name}");
    }
    n1.shutdown();
    n2.shutdown();
}

#[test]
fn real_syncthing_nodes_find_each_other_through_our_discosrv() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(&dir.path().join("disco"), &[]);
    two_nodes_sync_through(dir.path(), &srv.url(), &|id| srv.lookup(id));
    let m = srv.metrics();
    assert!(
        m.contains("syncthing_discovery_announcement_requests_total{result=\"success\"}"),
        "{m}"
    );
    srv.stop();
}

#[test]
fn protocol_status_codes_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(&dir.path().join("disco"), &[]);
    let dev = identity();
    let id = dev.device_id().to_string();

    let r = srv.lookup(&id);
    assert_eq!(r.status, 404, "{r:?}");
    assert!((60..=3600).contains(&r.secs("retry-after").unwrap()));
    assert_eq!(r.text(), "Not Found\n");

    let r = srv.announce(
        &dev,
        &[
            "tcp://localhost:22000",
            "tcp://0.0.0.0:22001",
            "relay://localhost:22067/?id=X",
        ],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!((3300..3600).contains(&r.secs("reannounce-after").unwrap()));

    let r = srv.lookup(&id);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // 0.0.0.0 from a loopback source is dropped, host names kept, sorted.
    assert_eq!(
        r.addresses(),
        ["relay://localhost:22067/?id=X", "tcp://localhost:22000"]
    );
    let seen = r.json()["seen"].as_str().unwrap().to_string();
    assert!(seen.ends_with('Z') && seen.contains('T'), "{seen}");

    // Re-announcing merges.
    assert_eq!(srv.announce(&dev, &["tcp://other.example:1"]).status, 204);
    assert_eq!(srv.lookup(&id).addresses().len(), 3);

    // Any ID form the parser accepts.
    let lower = id.to_lowercase().replace('-', "");
    assert_eq!(srv.lookup(&lower).status, 200);

    let r = srv.request(None, "POST", "/", br#"{"addresses":["tcp://localhost:1"]}"#);
    assert_eq!(r.status, 403);
    assert!((1500..1800).contains(&r.secs("retry-after").unwrap()));
    assert_eq!(srv.request(None, "PUT", "/", b"").status, 405);
    assert_eq!(srv.request(None, "DELETE", "/?device=x", b"").status, 405);
    for m in ["GET", "POST", "HEAD"] {
        assert_eq!(srv.request(None, m, "/ping", b"").status, 204);
    }
    assert_eq!(srv.request(None, "GET", "/healthz", b"").status, 200);
    assert_eq!(
        plain(srv.metrics_port, "GET", "/healthz", &[], b"").status,
        200
    );
    // Any path is the discovery API, as with stdiscosrv (public servers use /v2/).
    assert_eq!(
        srv.request(None, "GET", &format!("/v2/?device={id}"), b"")
            .status,
        200
    );

    // HTTP/2 over TLS (ALPN h2), as newer clients use.
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("https://127.0.0.1:{}/?device={id}", srv.port))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");

    let m = srv.metrics();
    for want in [
        "syncthing_discovery_api_requests_total{type=\"POST\",result=\"204\"}",
        "syncthing_discovery_api_requests_total{type=\"PUT\",result=\"405\"}",
        "syncthing_discovery_announcement_requests_total{result=\"no_certificate\"} 1",
        "syncthing_discovery_lookup_requests_total{result=\"not_found_ever\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    srv.stop();
}

#[test]
fn bad_input_gets_4xx_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(&dir.path().join("disco"), &["--rate-limit", "0"]);
    let dev = identity();
    let id = dev.device_id().to_string();
    let post = |body: &[u8]| srv.request(Some(&dev), "POST", "/", body);

    let addrs = |n: usize| {
        let v: Vec<String> = (0..n)
            .map(|i| format!("tcp://h{i}.example:22000"))
            .collect();
        json!({ "addresses": v }).to_string().into_bytes()
    };
    let long = json!({ "addresses": [format!("tcp://{}:1", "a".repeat(5000))] }).to_string();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"addresses\": [".to_vec(), 400),
        ("not JSON", b"hello".to_vec(), 400),
        ("JSON array", b"[]".to_vec(), 400),
        ("wrong type", br#"{"addresses":"tcp://localhost:1"}"#.to_vec(), 400),
        ("empty list", br#"{"addresses":[]}"#.to_vec(), 400),
        ("hundreds of addresses", addrs(500), 400),
        ("thousands of addresses", addrs(5000), 413),
        ("address too long", long.into_bytes(), 400),
        (
            "invalid URLs only",
            br#"{"addresses":["not a url","tcp://localhost","tcp://localhost:99999","tcp://user@localhost:1","://x:1","tcp://bad host:1"]}"#.to_vec(),
            400,
        ),
        ("loopback and multicast only", br#"{"addresses":["tcp://127.0.0.1:1","tcp://[::1]:1","tcp://224.0.0.1:1"]}"#.to_vec(), 400),
        ("unspecified from loopback", br#"{"addresses":["tcp://0.0.0.0:1","tcp://:0"]}"#.to_vec(), 400),
    ];
    for (what, body, want) in &cases {
        let r = post(body);
        assert_eq!(r.status, *want, "{what}: {r:?}");
        assert!(r.secs("retry-after").is_some(), "{what}: no Retry-After");
        assert_eq!(srv.lookup(&id).status, 404, "{what}: something was stored");
    }

    // Huge bodies: refused from the declared length without reading them,
    // and when the length is not declared, once the limit is passed.
    let r = https(
        srv.port,
        srv.id,
        Some(&dev),
        "POST",
        "/",
        &[("Content-Length", "10485760")],
        // Nothing sent after the headers: the reply must come first.
        b"",
    );
    assert_eq!(r.status, 413, "{r:?}");
    let mut chunked = format!("{:x}\r\n", 70_000).into_bytes();
    chunked.extend(std::iter::repeat_n(b' ', 70_000));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = https(
        srv.port,
        srv.id,
        Some(&dev),
        "POST",
        "/",
        &[("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(srv.lookup(&id).status, 404);

    // Bad device IDs in lookups.
    for bad in [
        "",
        "garbage",
        "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA",
        &id[..40],
        "%ff%fe",
    ] {
        let r = srv.lookup(bad);
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
        assert!((1500..1800).contains(&r.secs("retry-after").unwrap()));
    }
    assert_eq!(srv.request(None, "GET", "/", b"").status, 400);

    // Spoofed forwarding headers in TLS mode (and from an untrusted peer):
    // ignored. No client certificate → 403 even with a certificate header;
    // with one, X-Forwarded-For does not replace the source address.
    let other = identity();
    let cert_hdr = other.cert_pem().replace('\n', " ");
    let spoof = [
        ("X-SSL-Cert", cert_hdr.as_str()),
        ("X-Forwarded-For", "198.51.100.20"),
        ("X-Client-Port", "40000"),
    ];
    let body = br#"{"addresses":["tcp://0.0.0.0:22000"]}"#;
    let r = https(srv.port, srv.id, None, "POST", "/", &spoof, body);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(srv.lookup(&other.device_id().to_string()).status, 404);
    let r = https(srv.port, srv.id, Some(&dev), "POST", "/", &spoof, body);
    assert_eq!(r.status, 400, "forwarded address believed: {r:?}");
    assert_eq!(srv.lookup(&id).status, 404);

    // Still healthy, and nothing crashed.
    assert_eq!(srv.announce(&dev, &["tcp://localhost:1"]).status, 204);
    assert!(!srv.proc.log().contains("panicked"));
    srv.stop();
}

#[test]
fn announcements_survive_a_restart_of_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let sdir = dir.path().join("disco");
    let (port, mport) = (pick_port(), pick_port());
    let srv = Discosrv::start_on(&sdir, port, mport, &[]);
    let server_id = srv.id;
    let devs: Vec<Identity> = (0..20).map(|_| identity()).collect();
    for (i, d) in devs.iter().enumerate() {
        let addr = format!("tcp://host{i}.example:22000");
        assert_eq!(srv.announce(d, &[addr.as_str()]).status, 204);
    }
    let before: Vec<Reply> = devs
        .iter()
        .map(|d| srv.lookup(&d.device_id().to_string()))
        .collect();
    srv.stop();
    assert!(
        sdir.join("db/records.bin").exists(),
        "no snapshot written at shutdown"
    );

    let srv = Discosrv::start_on(&sdir, port, mport, &[]);
    assert_eq!(srv.id, server_id, "server identity changed across restart");
    for (d, b) in devs.iter().zip(before) {
        let r = srv.lookup(&d.device_id().to_string());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json(), b.json());
    }

    // Periodic snapshots too: with a 1 s interval, a kill -9 loses nothing
    // announced more than an interval ago.
    drop(srv);
    let srv = Discosrv::start_on(&sdir, port, mport, &["--db-flush-interval", "1s"]);
    let late = identity();
    assert_eq!(srv.announce(&late, &["tcp://late.example:1"]).status, 204);
    std::thread::sleep(Duration::from_millis(2500));
    srv.proc.signal(libc::SIGKILL);
    drop(srv);
    let srv = Discosrv::start_on(&sdir, port, mport, &[]);
    assert_eq!(srv.lookup(&late.device_id().to_string()).status, 200);
    srv.stop();
}

#[test]
fn sync_through_discosrv_with_redis_store() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let srv = Discosrv::start(&dir.path().join("disco"), &["--redis-url", &redis.url()]);
    two_nodes_sync_through(dir.path(), &srv.url(), &|id| srv.lookup(id));
    srv.stop();
}

#[test]
fn two_replicas_share_one_redis_and_survive_its_outage() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let url = redis.url();
    let a = Discosrv::start(
        &dir.path().join("a"),
        &["--redis-url", &url, "--rate-limit", "0"],
    );
    let b = Discosrv::start(
        &dir.path().join("b"),
        &["--redis-url", &url, "--rate-limit", "0"],
    );
    let (d1, d2) = (identity(), identity());
    assert_eq!(a.announce(&d1, &["tcp://one.example:1"]).status, 204);
    assert_eq!(b.announce(&d2, &["tcp://two.example:2"]).status, 204);
    assert_eq!(
        b.lookup(&d1.device_id().to_string()).addresses(),
        ["tcp://one.example:1"]
    );
    assert_eq!(
        a.lookup(&d2.device_id().to_string()).addresses(),
        ["tcp://two.example:2"]
    );
    // Merged across replicas.
    assert_eq!(b.announce(&d1, &["tcp://one-b.example:1"]).status, 204);
    assert_eq!(
        a.lookup(&d1.device_id().to_string()).addresses(),
        ["tcp://one-b.example:1", "tcp://one.example:1"]
    );

    // Load from a few threads while Redis is killed and restarted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u32>::new(),
    ));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (stop, counts) = (stop.clone(), counts.clone());
            let port = a.port;
            let id = a.id;
            let dev = identity();
            let who = d1.device_id().to_string();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5000 {
                    n += 1;
                    let r = if i == 0 {
                        https(
                            port,
                            id,
                            Some(&dev),
                            "POST",
                            "/",
                            &[],
                            br#"{"addresses":["tcp://w.example:1"]}"#,
                        )
                    } else {
                        https(port, id, None, "GET", &format!("/?device={who}"), &[], b"")
                    };
                    if r.status == 503 {
                        assert!(r.secs("retry-after").is_some(), "503 without Retry-After");
                    }
                    *counts.lock().unwrap().entry(r.status).or_default() += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (rdir, rport) = redis.kill();
    let saw_503 = wait::until(Duration::from_secs(10), Duration::from_millis(100), || {
        (a.lookup(&d1.device_id().to_string()).status == 503).then_some(())
    });
    assert!(saw_503.is_some(), "no 503 while Redis is down");
    assert_eq!(a.request(None, "GET", "/healthz", b"").status, 503);
    std::thread::sleep(Duration::from_secs(1));
    let redis = Redis::start_on(&rdir, rport);
    // Data was not persisted (--save ''): re-announce after recovery.
    let back = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        (a.announce(&d1, &["tcp://again.example:1"]).status == 204).then_some(())
    });
    assert!(
        back.is_some(),
        "discosrv did not recover:\n{}",
        a.proc.log_tail(20)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().expect("load thread");
    }
    assert_eq!(
        b.lookup(&d1.device_id().to_string()).addresses(),
        ["tcp://again.example:1"]
    );
    let counts = counts.lock().unwrap().clone();
    assert!(counts.contains_key(&503), "{counts:?}");
    // 404: Redis came back empty (no persistence) until the re-announcement.
    assert!(
        counts.keys().all(|s| [200, 204, 404, 503].contains(s)),
        "{counts:?}"
    );
    let mut a = a;
    assert!(a.proc.alive() && b.proc.log().find("panicked").is_none());
    assert!(!a.proc.log().contains("panicked"));
    assert!(a
        .metrics()
        .contains("syncthing_discovery_store_errors_total"));
    a.stop();
    b.stop();
    drop(redis);
}

#[test]
fn sync_through_discosrv_behind_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--http", "--trusted-proxy", "127.0.0.1/32"],
    );
    let nginx = Nginx::start(&dir.path().join("nginx"), srv.port);
    let lookup = |id: &str| {
        https(
            nginx.port,
            Some(nginx.id),
            None,
            "GET",
            &format!("/?device={id}"),
            &[],
            b"",
        )
    };
    // The certificate reaches discosrv through nginx.
    let dev = identity();
    let body = br#"{"addresses":["tcp://localhost:1"]}"#;
    let r = https(
        nginx.port,
        Some(nginx.id),
        Some(&dev),
        "POST",
        "/",
        &[],
        body,
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(lookup(&dev.device_id().to_string()).status, 200);
    let r = https(nginx.port, Some(nginx.id), None, "POST", "/", &[], body);
    assert_eq!(r.status, 403, "{r:?}");

    two_nodes_sync_through(dir.path(), &nginx.url(), &lookup);
    drop(nginx);
    srv.stop();
}

#[test]
fn forwarding_headers_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let dev = identity();
    let id = dev.device_id().to_string();
    let pem = dev.cert_pem().replace('\n', " ");
    let b64 = data_encoding_base64(dev.cert_der());
    let body = br#"{"addresses":["tcp://0.0.0.0:22000","tcp://:0","tcp6://[::]:1"]}"#;

    // 127.0.0.1 is not trusted: headers ignored, nothing stored.
    let untrusted = Discosrv::start(
        &dir.path().join("untrusted"),
        &["--http", "--trusted-proxy", "10.0.0.0/8"],
    );
    let spoof = [
        ("X-SSL-Cert", pem.as_str()),
        ("X-Forwarded-For", "198.51.100.20"),
        ("X-Client-Port", "40000"),
    ];
    let r = plain(untrusted.port, "POST", "/", &spoof, body);
    assert_eq!(r.status, 403, "{r:?}");
    let r = plain(untrusted.port, "GET", &format!("/?device={id}"), &[], b"");
    assert_eq!(r.status, 404);
    untrusted.stop();

    // Trusted: the certificate in each proxy's header form (the server
    // configured for it), and the client address from X-Forwarded-For.
    for (flag, cert) in [
        ("nginx", ("X-SSL-Cert", pem.clone())),
        ("caddy", ("X-Tls-Client-Cert-Der-Base64", b64.clone())),
        (
            "traefik",
            (
                "X-Forwarded-Tls-Client-Cert",
                b64.replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D"),
            ),
        ),
    ] {
        let srv = Discosrv::start(
            &dir.path().join(flag),
            &[
                "--http",
                "--trusted-proxy",
                "10.0.0.0/8,127.0.0.0/8",
                "--client-cert-header",
                flag,
            ],
        );
        let headers = [
            (cert.0, cert.1.as_str()),
            ("X-Forwarded-For", "198.51.100.20"),
            ("X-Client-Port", "40000"),
        ];
        let r = plain(srv.port, "POST", "/", &headers, body);
        assert_eq!(r.status, 204, "{}: {r:?}", cert.0);
        let r = plain(srv.port, "GET", &format!("/?device={id}"), &[], b"");
        assert_eq!(
            r.addresses(),
            ["tcp://198.51.100.20:22000", "tcp://198.51.100.20:40000"],
            "{}",
            cert.0
        );
        srv.stop();
    }
    let srv = Discosrv::start(
        &dir.path().join("trusted"),
        &["--http", "--trusted-proxy", "10.0.0.0/8,127.0.0.0/8"],
    );
    // A garbage certificate header from a trusted proxy: refused.
    let r = plain(srv.port, "POST", "/", &[("X-SSL-Cert", "garbage")], body);
    assert_eq!(r.status, 403);
    // No X-Forwarded-For: the source is unknown, so unspecified addresses
    // are dropped rather than replaced by the proxy's address.
    let other = identity();
    let other_pem = other.cert_pem().replace('\n', " ");
    let r = plain(
        srv.port,
        "POST",
        "/",
        &[("X-SSL-Cert", other_pem.as_str())],
        body,
    );
    assert_eq!(r.status, 400, "{r:?}");
    srv.stop();
}

fn data_encoding_base64(der: &[u8]) -> String {
    // Standard base64 with padding, as Caddy sends it.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn rate_limit_answers_429_and_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--rate-limit", "2", "--rate-limit-burst", "3"],
    );
    let replies: Vec<Reply> = (0..6)
        .map(|_| srv.request(None, "GET", "/ping", b""))
        .collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty(), "{replies:?}");
    let wait_s = limited[0].secs("retry-after").expect("429 has Retry-After");
    assert!((1..=2).contains(&wait_s), "{wait_s}");
    std::thread::sleep(Duration::from_secs(wait_s));
    assert_eq!(srv.request(None, "GET", "/ping", b"").status, 204);

    let metrics = srv.metrics();
    assert!(
        metrics.contains("syncthing_discovery_rate_limited_requests_total "),
        "{metrics}"
    );
    e2e::promtool::assert_accepts(&metrics);
    srv.stop();
}

#[test]
fn redis_record_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--redis-url", &redis.url(), "--rate-limit", "0"],
    );
    let dev = identity();
    for round in 0..3 {
        let addrs: Vec<String> = (0..60)
            .map(|i| format!("tcp://r{round}-{i}.example:1"))
            .collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        assert_eq!(srv.announce(&dev, &refs).status, 204);
    }
    let got = srv.lookup(&dev.device_id().to_string()).addresses();
    // 180 different addresses announced within the same seconds: the
    // stored record keeps 100 (those expiring last; ties broken arbitrarily).
    assert_eq!(got.len(), 100, "{got:?}");
    srv.stop();
}

/// Issue 14, H1: behind nginx (which writes only X-SSL-Cert), a client
/// without a certificate adds another proxy's certificate header holding a
/// victim's certificate (certificates are public) to announce for it.
#[test]
fn another_proxys_certificate_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let victim = identity();
    let vid = victim.device_id().to_string();
    let b64 = data_encoding_base64(victim.cert_der());
    let pem = victim.cert_pem().replace('\n', " ");
    let body = br#"{"addresses":["tcp://attacker.example:22000"]}"#;
    let forged = [
        ("X-Tls-Client-Cert-Der-Base64", b64.as_str()),
        ("X-Forwarded-Tls-Client-Cert", b64.as_str()),
    ];

    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--http", "--trusted-proxy", "127.0.0.1/32"],
    );
    let attacker = identity();
    let lookup_via = |port: u16, id| {
        https(
            port,
            Some(id),
            None,
            "GET",
            &format!("/?device={vid}"),
            &[],
            b"",
        )
    };
    // The documented nginx configuration removes the other headers; the
    // configuration documented before (without those lines) forwards
    // them, and discosrv itself refuses.
    for (name, extra) in [
        (
            "nginx-documented",
            e2e::discovery::NGINX_CLEAR_OTHER_CERT_HEADERS,
        ),
        ("nginx-old", ""),
    ] {
        let nginx = Nginx::start_with(&dir.path().join(name), srv.port, "$remote_addr", extra);
        for header in forged {
            for who in [None, Some(&attacker)] {
                let r = https(
                    nginx.port,
                    Some(nginx.id),
                    who,
                    "POST",
                    "/",
                    &[header],
                    body,
                );
                // With its own certificate through the documented nginx,
                // the client announces for itself only: the header is gone.
                let want = if who.is_some() && !extra.is_empty() {
                    204
                } else {
                    403
                };
                assert_eq!(
                    r.status,
                    want,
                    "{name}, {}, own cert {}: {r:?}",
                    header.0,
                    who.is_some()
                );
                let r = lookup_via(nginx.port, nginx.id);
                assert_eq!(
                    r.status, 404,
                    "{name}: the victim's record was written: {r:?}"
                );
            }
        }
        if extra.is_empty() {
            let r = https(
                nginx.port,
                Some(nginx.id),
                None,
                "POST",
                "/",
                &[forged[0]],
                body,
            );
            assert!(r.text().contains("not the configured one"), "{r:?}");
        }
        // A real client still announces through it.
        let r = https(
            nginx.port,
            Some(nginx.id),
            Some(&attacker),
            "POST",
            "/",
            &[],
            body,
        );
        assert_eq!(r.status, 204, "{name}: {r:?}");
    }
    let m = srv.metrics();
    assert!(
        m.contains("syncthing_discovery_refused_total{reason=\"cert_header_unexpected\"}"),
        "{m}"
    );
    assert!(!srv.proc.log().contains(&b64[..40]), "raw header logged");
    srv.stop();

    // A server configured for Caddy's or Traefik's header, behind a
    // trusted proxy that forwards what the client sent (127.0.0.1 plays
    // it): the client's own X-SSL-Cert is refused, alone or beside the
    // proxy's header with the client's real certificate.
    let own = data_encoding_base64(attacker.cert_der());
    for flag in ["caddy", "traefik"] {
        let srv = Discosrv::start(
            &dir.path().join(flag),
            &[
                "--http",
                "--trusted-proxy",
                "127.0.0.1/32",
                "--client-cert-header",
                flag,
            ],
        );
        let proxys = if flag == "caddy" {
            "X-Tls-Client-Cert-Der-Base64"
        } else {
            "X-Forwarded-Tls-Client-Cert"
        };
        for headers in [
            vec![
                ("X-SSL-Cert", pem.as_str()),
                ("X-Forwarded-For", "192.0.2.7"),
            ],
            vec![
                ("X-SSL-Cert", pem.as_str()),
                (proxys, own.as_str()),
                ("X-Forwarded-For", "192.0.2.7"),
            ],
        ] {
            let r = plain(srv.port, "POST", "/", &headers, body);
            assert_eq!(r.status, 403, "{flag}: {headers:?}: {r:?}");
            let r = plain(srv.port, "GET", &format!("/?device={vid}"), &[], b"");
            assert_eq!(r.status, 404, "{flag}: stored for the victim");
        }
        srv.stop();
    }
}

/// Issue 14, M8: behind a proxy that appends to X-Forwarded-For (nginx's
/// `$proxy_add_x_forwarded_for`), a client writing a new address on the
/// left of each request must still be rate-limited as itself.
#[test]
fn lying_x_forwarded_for_does_not_escape_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--http",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "2",
        ],
    );
    let nginx = Nginx::start_with(
        &dir.path().join("nginx"),
        srv.port,
        "$proxy_add_x_forwarded_for",
        e2e::discovery::NGINX_CLEAR_OTHER_CERT_HEADERS,
    );
    // The client is 127.0.0.2: 127.0.0.1 is nginx, the trusted proxy.
    let client = Some("127.0.0.2".parse().unwrap());
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let lie = format!("198.51.100.{}", i + 1);
        let r = https_from(
            client,
            nginx.port,
            Some(nginx.id),
            None,
            "GET",
            "/ping",
            &[("X-Forwarded-For", lie.as_str())],
            b"",
        );
        statuses.push(r.status);
    }
    let elapsed = started.elapsed().as_secs();
    let allowed = statuses.iter().filter(|s| **s == 204).count() as u64;
    assert!(
        statuses.iter().all(|s| [204, 429].contains(s)),
        "{statuses:?}"
    );
    // Burst 2 plus one a second, whatever the machine's speed.
    assert!(
        allowed <= 2 + elapsed + 1,
        "{allowed} allowed in {elapsed} s: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    drop(nginx);
    srv.stop();
}

/// Issue 14: over HTTP/2 (curl's default with TLS and ALPN), a refusal sent
/// before the upload ended was lost to a stream reset. curl 7.88 (Debian
/// 12) drops an answer even on a NO_ERROR reset, so this is its strictest
/// client.
#[test]
fn http2_clients_get_403_and_413_intact() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(&dir.path().join("disco"), &["--rate-limit", "0"]);
    let dev = identity();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    dev.save(&cert, &key).unwrap();
    let curl = |with_cert: bool, body: &Path| {
        let mut cmd = std::process::Command::new(e2e::require_program("curl", "curl"));
        cmd.args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ]);
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let out = cmd
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("https://127.0.0.1:{}/", srv.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut bodies = Vec::new();
    for size in [100usize, 70_000, 300_000, 3_000_000] {
        let path = dir.path().join(format!("body-{size}"));
        std::fs::write(&path, vec![b' '; size]).unwrap();
        bodies.push((size, path));
    }
    for round in 0..3 {
        for (size, path) in &bodies {
            assert_eq!(
                curl(false, path),
                "2 403",
                "round {round}, no certificate, {size} bytes"
            );
            if *size > 65_536 {
                assert_eq!(curl(true, path), "2 413", "round {round}, {size} bytes");
            }
        }
    }
    assert_eq!(srv.lookup(&dev.device_id().to_string()).status, 404);
    srv.stop();
}

/// Issue 14, low: DISCOSRV_REDIS_URL may hold a password; --help printed it.
#[test]
fn help_does_not_print_the_redis_url() {
    let out = std::process::Command::new(e2e::programs::our_binary("discosrv"))
        .arg("--help")
        .env("DISCOSRV_REDIS_URL", "redis://:hunter2-secret@redis:6379/0")
        .output()
        .expect("discosrv --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--redis-url"), "{text}");
    assert!(!text.contains("hunter2-secret"), "{text}");
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime); `after` starts at field 3.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Issue 14, low: out of file descriptors, the metrics accept loop retried
/// at once and spun a core. The open-file limit is made small (soft and
/// hard, so raising it at start cannot help) and filled by idle metrics
/// connections; the server must then pause between failed accepts.
#[test]
fn metrics_accept_loop_backs_off_when_out_of_file_descriptors() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start_with(
        &dir.path().join("disco"),
        pick_port(),
        pick_port(),
        &[],
        |cmd| {
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: 64,
                        rlim_max: 64,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    let pid = srv.proc.pid();
    let mut hogs = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..100 {
        match std::net::TcpStream::connect(("127.0.0.1", srv.metrics_port)) {
            Ok(s) => hogs.push(s),
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert!(
        hogs.len() > 64,
        "only {} connections; errors {:?}\n{}",
        hogs.len(),
        &refused[..refused.len().min(3)],
        srv.proc.log_tail(30)
    );
    // Wait until the server has run out (its log says so), then measure.
    let out = wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
        srv.proc.log().contains("accept failed").then_some(())
    });
    assert!(out.is_some(), "never ran out:\n{}", srv.proc.log_tail(20));
    let (t0, c0) = (std::time::Instant::now(), cpu_seconds(pid));
    std::thread::sleep(Duration::from_secs(3));
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - c0);
    assert!(
        cpu < wall / 4.0,
        "{cpu:.2} s of CPU in {wall:.2} s while out of descriptors"
    );
    drop(hogs);
    // Serving again, and the failures were counted.
    let m = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let r = std::panic::catch_unwind(|| srv.metrics()).ok()?;
        r.contains("syncthing_discovery_accept_errors_total{listener=\"metrics\"}")
            .then_some(r)
    });
    assert!(m.is_some(), "{}", srv.proc.log_tail(20));
    srv.stop();
}

/// Issue 14, H4: the soft open-files limit is raised to the hard one at
/// start (a shell's usual 1024 would cap connections far below the hard
/// limit), and the limit in force is logged.
#[test]
fn open_files_limit_is_raised_at_start() {
    use std::os::unix::process::CommandExt;
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    if hard.rlim_max <= 256 {
        eprintln!("hard open-files limit {} too low to test", hard.rlim_max);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start_with(
        &dir.path().join("disco"),
        pick_port(),
        pick_port(),
        &[],
        |cmd| {
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = 256;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.proc.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(soft[3], hard.rlim_max.to_string(), "{line}");
    let log = srv.proc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("open files limit") && l.contains(&hard.rlim_max.to_string())),
        "{log}"
    );
    srv.stop();
}

/// Issue 14, H4: idle HTTP/2 connections from one source held every slot
/// and the accept loop stopped, locking everyone out. Now one source gets
/// --max-connections-per-ip slots, and past --max-connections a connection
/// is accepted and closed at once instead of waiting in the listen queue.
#[test]
fn idle_connections_from_one_source_do_not_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--max-connections",
            "12",
            "--max-connections-per-ip",
            "4",
            "--rate-limit",
            "0",
        ],
    );
    let dev = identity();
    let id = dev.device_id().to_string();
    assert_eq!(
        srv.announce(&dev, &["tcp://idle.example:22000"]).status,
        204
    );
    let src = |n: u8| Some(std::net::IpAddr::from([127, 0, 0, n]));
    let lookup_from = |n: u8| {
        https_from(
            src(n),
            srv.port,
            srv.id,
            None,
            "GET",
            &format!("/?device={id}"),
            &[],
            b"",
        )
    };

    // --max-connections idle h2 connections from one source: 4 kept.
    let held: Vec<_> = (0..12).filter_map(|_| idle_h2(srv.port, src(1))).collect();
    assert_eq!(held.len(), 4, "per-source cap");
    let r = lookup_from(2);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.addresses(), ["tcp://idle.example:22000"]);

    // Fill the rest from two more sources: 12 in all. One more connection
    // from a fourth source is closed at once, not queued; the lookup
    // succeeds again as soon as a slot is free.
    let more: Vec<_> = (0..8)
        .filter_map(|n| idle_h2(srv.port, src(3 + n / 4)))
        .collect();
    assert_eq!(more.len(), 8);
    let t = std::time::Instant::now();
    assert!(
        idle_h2(srv.port, src(9)).is_none(),
        "accepted past --max-connections"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "left waiting instead of refused"
    );
    drop(more);
    let r = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        // Refused (closed) until the server has seen the others go.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lookup_from(9))).ok()?;
        (r.status == 200).then_some(r)
    });
    assert!(r.is_some(), "{}", srv.proc.log_tail(20));

    let m = srv.metrics();
    for reason in ["max_connections_per_ip", "max_connections"] {
        assert!(
            m.contains(&format!(
                "syncthing_discovery_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {m}"
        );
    }
    drop(held);
    srv.stop();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Issue 14, H3: fresh certificates (free to make) announcing large bodies
/// filled memory without bound. Through a trusted proxy's Caddy header (no
/// handshake per device, as the benchmark's fill), 200 certificates send
/// 60 KB bodies of long addresses, then 2000 send 7.5 KB each, against a
/// 4 MiB budget: the first are refused (413), the rest stop at the budget
/// with 503 + Retry-After, and the server's RSS grows by less than 3× it.
#[test]
fn fresh_certificates_with_large_bodies_stay_within_the_budget() {
    const BUDGET: u64 = 4 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--http",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--client-cert-header",
            "caddy",
            "--rate-limit",
            "0",
            "--new-device-rate",
            "0",
            "--max-store-bytes",
            &BUDGET.to_string(),
        ],
    );
    let pid = srv.proc.pid();
    let before = rss_kib(pid);
    let body = |n: usize, len: usize| {
        let addrs: Vec<String> = (0..n)
            // Labels of 50 characters: a valid host name of about `len`.
            .map(|i| {
                format!(
                    "tcp://{}h{i}.example:22000",
                    format!("{}.", "h".repeat(49)).repeat(len / 50)
                )
            })
            .collect();
        json!({ "addresses": addrs }).to_string().into_bytes()
    };
    let announce = |b: &[u8]| {
        let dev = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
        let der = data_encoding_base64(dev.cert_der());
        let headers = [
            ("X-Tls-Client-Cert-Der-Base64", der.as_str()),
            ("X-Forwarded-For", "192.0.2.1"),
        ];
        (dev, plain(srv.port, "POST", "/", &headers, b))
    };
    // Relay URLs may carry long parameters: 60 of nearly 1 KB each.
    let relays: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "relay://192.0.2.1:22067/?id=X&n={i}&pad={}",
                "p".repeat(950)
            )
        })
        .collect();
    let big = json!({ "addresses": relays }).to_string().into_bytes();
    assert!(big.len() > 55_000 && big.len() < 64 * 1024);
    for _ in 0..200 {
        let (dev, r) = announce(&big);
        assert_eq!(r.status, 413, "{r:?}");
        let look = plain(
            srv.port,
            "GET",
            &format!("/?device={}", dev.device_id()),
            &[],
            b"",
        );
        assert_eq!(look.status, 404);
    }
    let fill = body(30, 200);
    let mut counts = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..2000 {
        let (_, r) = announce(&fill);
        if r.status == 503 {
            assert!(r.secs("retry-after").is_some(), "503 without Retry-After");
        }
        *counts.entry(r.status).or_default() += 1;
    }
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before) * 1024;
    eprintln!(
        "BUDGET {BUDGET} bytes; RSS {before} KiB -> {after} KiB (+{grown} bytes); replies {counts:?}"
    );
    let stored = u64::from(counts.get(&204).copied().unwrap_or(0));
    assert!(counts.get(&503).copied().unwrap_or(0) > 0, "{counts:?}");
    // Each stored record holds at least its address text.
    let per: u64 = serde_json::from_slice::<serde_json::Value>(&fill).unwrap()["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().len() as u64)
        .sum();
    assert!(
        stored * per <= BUDGET + per,
        "{stored} stored of {per} bytes: {counts:?}"
    );
    assert!(
        grown < 3 * BUDGET,
        "RSS grew by {grown} bytes for a budget of {BUDGET}"
    );
    let m = srv.metrics();
    for reason in ["store_full", "announcement_too_large"] {
        assert!(
            m.contains(&format!(
                "syncthing_discovery_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    srv.stop();
}

/// Issue 14, H3: new device IDs per source come at a lower rate than
/// requests; known devices and other sources are not held back.
#[test]
fn new_devices_per_source_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &[
            "--http",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--client-cert-header",
            "caddy",
            "--rate-limit",
            "0",
            "--new-device-rate",
            "1",
            "--new-device-burst",
            "3",
        ],
    );
    let body = br#"{"addresses":["tcp://new.example:22000"]}"#;
    let post = |dev: &Identity, from: &str| {
        let der = data_encoding_base64(dev.cert_der());
        let headers = [
            ("X-Tls-Client-Cert-Der-Base64", der.as_str()),
            ("X-Forwarded-For", from),
        ];
        plain(srv.port, "POST", "/", &headers, body)
    };
    let devs: Vec<Identity> = (0..10).map(|_| identity()).collect();
    let statuses: Vec<u16> = devs.iter().map(|d| post(d, "192.0.2.1").status).collect();
    assert_eq!(&statuses[..3], [204, 204, 204], "{statuses:?}");
    // One a minute after the burst: at most one more, however slow this run.
    let more = statuses[3..].iter().filter(|s| **s == 204).count();
    assert!(more <= 1, "{statuses:?}");
    let r = post(&devs[9], "192.0.2.1");
    if r.status == 429 {
        assert!(r.secs("retry-after").is_some_and(|s| s >= 1), "{r:?}");
    }
    // A known device re-announces; another source adds its own.
    assert_eq!(post(&devs[0], "192.0.2.1").status, 204);
    assert_eq!(post(&identity(), "192.0.2.2").status, 204);
    assert!(srv
        .metrics()
        .contains("syncthing_discovery_refused_total{reason=\"new_device_rate\"}"));
    srv.stop();
}

/// Issue 15: SIGTERM under load. Kept-alive clients announce and look up
/// without pause, others connect for each request, and slow ones hold a
/// half-open TCP connection, half a request head or half a body. discosrv
/// must stop by awaiting its tasks (requests in progress get a bounded
/// drain, idle and half-open connections are closed), write its final
/// snapshot and exit 0 within 5 s.
#[test]
fn sigterm_under_load_exits_cleanly_within_5s() {
    use e2e::discovery::KeepAlive;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--rate-limit", "0", "--new-device-rate", "0"],
    );
    let (port, server) = (srv.port, srv.id);
    let answered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let devices: Vec<Identity> = (0..4).map(|_| identity()).collect();
    let ids: Arc<Vec<String>> =
        Arc::new(devices.iter().map(|d| d.device_id().to_string()).collect());
    let mut workers = Vec::new();
    // Kept-alive: each device announces in a loop; as many look up.
    for (n, dev) in devices.into_iter().enumerate() {
        let (answered, done, ids) = (answered.clone(), done.clone(), ids.clone());
        workers.push(std::thread::spawn(move || {
            let body = json!({ "addresses": [format!("tcp://192.0.2.{n}:22000")] }).to_string();
            let Ok(mut announcer) = KeepAlive::connect(port, server, Some(&dev)) else {
                return;
            };
            let Ok(mut looker) = KeepAlive::connect(port, server, None) else {
                return;
            };
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                let a = announcer.request("POST", "/", body.as_bytes());
                let l = looker.request("GET", &format!("/?device={}", ids[i % ids.len()]), b"");
                match (a, l) {
                    (Ok(204), Ok(200 | 404)) => answered.fetch_add(2, Ordering::Relaxed),
                    (Ok(a), Ok(l)) => panic!("unexpected answers {a} / {l}"),
                    // The server closed the connection: it is stopping.
                    _ => return,
                };
                i += 1;
            }
        }));
    }
    // A new connection (TCP + TLS) for each lookup.
    {
        let (answered, done, id) = (answered.clone(), done.clone(), ids[0].clone());
        workers.push(std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let r = KeepAlive::connect(port, server, None)
                    .and_then(|mut c| c.request("GET", &format!("/?device={id}"), b""));
                match r {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(_) => return,
                };
            }
        }));
    }
    // Slow and partial clients, held open across the SIGTERM.
    let half_open: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let partial = |bytes: &[u8]| {
        let mut c = KeepAlive::connect(port, server, None).unwrap();
        c.send_raw(bytes).unwrap();
        c
    };
    let slow: Vec<_> = (0..4)
        .flat_map(|_| {
            [
                partial(b"GET /?device="),
                partial(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"addr"),
            ]
        })
        .collect();

    // The load is flowing before the signal.
    let flowing = wait::until(Duration::from_secs(30), Duration::from_millis(50), || {
        (answered.load(Ordering::Relaxed) >= 500).then_some(())
    });
    assert!(
        flowing.is_some(),
        "load did not start:\n{}",
        srv.proc.log_tail(20)
    );
    let before = answered.load(Ordering::Relaxed);
    let t = std::time::Instant::now();
    srv.proc.signal(libc::SIGTERM);
    let status = srv.proc.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a load client failed");
    }
    drop((half_open, slow));
    eprintln!(
        "{before} requests answered before SIGTERM, {} in all; exit after {took:?}",
        answered.load(Ordering::Relaxed)
    );
    let log = srv.proc.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "discosrv did not exit 0 ({status:?}):\n{}",
        srv.proc.log_tail(30)
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to exit:\n{}",
        srv.proc.log_tail(30)
    );
    // Every task returned before the final snapshot: none was abandoned.
    assert!(!log.contains("did not all end in time"), "{log}");
    assert!(
        log.contains("final snapshot written") && log.contains("stopped"),
        "{log}"
    );
}

e2e::per_version!(devices_find_each_other_directly:
    real_1_30_0_devices_find_each_other_through_our_discosrv => PeerVersion::V1_30_0,
    real_2_1_3_devices_find_each_other_through_our_discosrv => PeerVersion::V2_1_3,
);

e2e::per_version!(devices_find_each_other_behind_nginx:
    real_1_30_0_devices_find_each_other_through_our_discosrv_behind_nginx => PeerVersion::V1_30_0,
    real_2_1_3_devices_find_each_other_through_our_discosrv_behind_nginx => PeerVersion::V2_1_3,
);

/// DER encoding of the Ed25519 algorithm identifier (OID 1.3.101.112).
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// What key a real device of `version` generated: 2.x makes Ed25519
/// certificates, 1.x ECDSA. The discovery server sees this certificate as
/// the TLS client certificate (or in nginx's header) of every announcement.
fn assert_generated_key(version: PeerVersion, home: &Path) {
    let der = Identity::load_certificate(&home.join("cert.pem")).expect("device certificate");
    let ed25519 = der.windows(ED25519_OID.len()).any(|w| w == ED25519_OID);
    assert_eq!(
        ed25519,
        version.is_v2(),
        "Syncthing {version}: Ed25519 certificate expected only from 2.x"
    );
}

/// Every announcement the nodes made succeeded, none was refused.
fn assert_announcements_accepted(srv: &Discosrv) {
    let m = srv.metrics();
    let sample = |result: &str| {
        let prefix =
            format!("syncthing_discovery_announcement_requests_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(sample("success") >= 2.0, "{m}");
    for refused in m.lines().filter(|l| {
        l.starts_with("syncthing_discovery_announcement_requests_total{")
            && !l.contains("result=\"success\"")
    }) {
        let n: f64 = refused
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert_eq!(n, 0.0, "an announcement was refused: {refused}\n{m}");
    }
}

/// Two real devices of `version` announce to our discosrv over HTTPS
/// (their own TLS client certificates; 2.x speaks HTTP/2 to it), look
/// each other up through it, connect and sync.
fn devices_find_each_other_directly(version: PeerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(&dir.path().join("disco"), &[]);
    two_nodes_of_version_sync_through(dir.path(), &srv.url(), &|id| srv.lookup(id), version);
    assert_generated_key(version, &dir.path().join("n1"));
    assert_announcements_accepted(&srv);
    assert!(
        !srv.proc.log().contains("panicked"),
        "{}",
        srv.proc.log_tail(20)
    );
    srv.stop();
}

/// The same behind nginx: the devices' certificates reach discosrv in
/// nginx's header, the lookups go through nginx too.
fn devices_find_each_other_behind_nginx(version: PeerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--http", "--trusted-proxy", "127.0.0.1/32"],
    );
    let nginx = Nginx::start(&dir.path().join("nginx"), srv.port);
    let lookup = |id: &str| {
        https(
            nginx.port,
            Some(nginx.id),
            None,
            "GET",
            &format!("/?device={id}"),
            &[],
            b"",
        )
    };
    two_nodes_of_version_sync_through(dir.path(), &nginx.url(), &lookup, version);
    assert_generated_key(version, &dir.path().join("n1"));
    assert_announcements_accepted(&srv);
    drop(nginx);
    srv.stop();
}

/// `scripts/bench-discosrv`'s realistic mix relies on these `discoload`
/// modes: a fill by one TLS handshake per device, and lookups of stored
/// devices (kept in an IDs file between runs) mixed with never-announced
/// IDs. A benchmark is not a test, but a broken load generator should be
/// found here, not an hour into a benchmark.
#[test]
fn discoload_modes_of_the_realistic_mix() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Discosrv::start(
        &dir.path().join("disco"),
        &["--rate-limit", "0", "--new-device-rate", "0"],
    );
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(e2e::programs::our_binary("discoload"))
            .arg("--target")
            .arg(format!("127.0.0.1:{}", srv.port))
            .args(args)
            .output()
            .expect("run discoload");
        assert!(
            out.status.success(),
            "discoload {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("discoload prints JSON")
    };
    let count = |v: &serde_json::Value, status: &str| v["statuses"][status].as_u64().unwrap_or(0);

    let fill = run(&[
        "--mode",
        "fill-tls",
        "--key-type",
        "ed25519",
        "--devices",
        "40",
        "--concurrency",
        "8",
    ]);
    assert_eq!(count(&fill, "204"), 40, "{fill}");
    assert_eq!(fill["transport_errors"], 0, "{fill}");
    assert_eq!(
        srv.metrics()
            .matches("syncthing_discovery_announcement_requests_total{result=\"success\"} 40")
            .count(),
        1
    );

    let ids = dir.path().join("ids");
    let ids_arg = ids.to_str().unwrap();
    let mix = [
        "--mode",
        "lookup",
        "--key-type",
        "ed25519",
        "--devices",
        "20",
        "--unknown-share",
        "0.5",
        "--unknown-devices",
        "20",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--ids-file",
        ids_arg,
    ];
    let first = run(&mix);
    assert_eq!(std::fs::read_to_string(&ids).unwrap().lines().count(), 20);
    // The same stored devices again, from the file: nothing new announced.
    let again = run(&mix);
    for v in [&first, &again] {
        assert!(count(v, "200") > 0 && count(v, "404") > 0, "{v}");
        assert_eq!(
            count(v, "200") + count(v, "404"),
            v["requests"].as_u64().unwrap(),
            "{v}"
        );
        // Every other request is for an unknown ID, and every request sent
        // is answered: the two counts differ by at most one.
        assert_eq!(v["transport_errors"], 0, "{v}");
        assert!(count(v, "200").abs_diff(count(v, "404")) <= 1, "{v}");
    }
    assert_eq!(
        srv.metrics()
            .matches("syncthing_discovery_announcement_requests_total{result=\"success\"} 60")
            .count(),
        1
    );
    srv.stop();
}
