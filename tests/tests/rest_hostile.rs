//! The node's REST API tried as an attacker would (issue 14: C1, M6 and
//! the session item of the low list): what the shipped defaults expose
//! on a non-loopback address, and what a client can make the node hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::bep_peer::{cluster_config, RawPeer};
use e2e::node::NodeHome;
use e2e::rest_api::{basic_auth, call, keyed, Answer};
use e2e::tree::sha256;
use proto::bep::{wire, Message};
use proto::{DeviceId, Identity, KeyKind};

fn cookies(a: &Answer) -> Vec<&str> {
    a.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `name=value` of the cookie whose name starts with `prefix`.
fn cookie_pair(a: &Answer, prefix: &str) -> Option<(String, String)> {
    cookies(a).into_iter().find_map(|c| {
        let pair = c.split(';').next()?;
        let (k, v) = pair.split_once('=')?;
        k.starts_with(prefix)
            .then(|| (k.to_string(), v.to_string()))
    })
}

/// A generated home whose REST API listens on every interface, with the
/// API key only — the container image's and the Kubernetes base's setup.
fn key_only_on_all_interfaces(dir: &std::path::Path) -> NodeHome {
    let home = NodeHome::generate(dir, "n");
    let mut c = home.config();
    c["gui"]["address"] = format!("0.0.0.0:{}", home.gui_port).into();
    home.set_config(&c);
    home
}

#[test]
fn key_only_node_on_a_public_address_opens_nothing_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = key_only_on_all_interfaces(&dir.path().join("n"));
    let node = home.start();
    let (port, key) = (home.gui_port, home.api_key.as_str());

    // The attack of the issue: ask `/` for a CSRF cookie, echo it.
    let a = call(port, "GET", "/", &[], None);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        cookies(&a).is_empty(),
        "cookies handed out: {:?}",
        cookies(&a)
    );
    // Even a token guessed or kept from an earlier version does nothing.
    let unique: String = home.id.chars().take(5).collect();
    let a = call(
        port,
        "GET",
        "/rest/config/gui",
        &[
            (&format!("X-CSRF-Token-{unique}"), "x".repeat(32).as_str()),
            ("Cookie", &format!("CSRF-Token-{unique}={}", "x".repeat(32))),
        ],
        None,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(!a.body.contains(key), "the key leaked: {}", a.body);
    // Metrics need the key too (Syncthing >= 1.24 puts them behind auth).
    let a = call(port, "GET", "/metrics", &[], None);
    assert_eq!(a.status, 403, "{}", a.body);
    let a = call(
        port,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {key}"))],
        None,
    );
    assert_eq!(a.status, 200);
    assert!(a
        .body
        .contains("node_rest_refused_total{reason=\"wrong_api_key\"}"));
    // Host check off loopback: a DNS-rebinding page reaches us by a name
    // of its own, without the key.
    let a = call(
        port,
        "GET",
        "/rest/noauth/health",
        &[("Host", "evil.example")],
        None,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("Host check"), "{}", a.body);
    let a = call(port, "GET", "/rest/noauth/health", &[], None);
    assert_eq!(a.status, 200, "by IP address: {}", a.body);
    // With the key, scripts may use the NAS's name.
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Host", "nas.studio.example:8384"), ("X-API-Key", key)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Wrong key: refused, counted.
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("X-API-Key", "guess")],
        None,
    );
    assert_eq!(a.status, 403);

    // A key cleared over REST takes effect at the next start (which then
    // refuses a public address without a credential); until then the
    // key in effect still guards everything.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"apiKey": ""}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(port, "GET", "/", &[], None);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(cookies(&a).is_empty());
    node.stop();

    // Restarted with a key and a GUI user: Syncthing's browser flow still
    // works — basic auth, then the session and CSRF cookies.
    let mut c = home.config();
    c["gui"]["apiKey"] = key.into();
    c["gui"]["user"] = "ops".into();
    c["gui"]["password"] = bcrypt_hash("s3cret").into();
    home.set_config(&c);
    let node = home.start();
    let right = basic_auth("ops", "s3cret");
    let a = call(port, "GET", "/metrics", &[], None);
    assert_eq!(a.status, 401, "{}", a.body);
    let a = call(port, "GET", "/metrics", &[("Authorization", &right)], None);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(port, "GET", "/", &[("Authorization", &right)], None);
    assert_eq!(a.status, 200, "{}", a.body);
    let all = cookies(&a).join(" | ");
    assert!(
        cookies(&a).iter().all(|c| c.contains("SameSite=Strict")),
        "{all}"
    );
    assert!(
        cookies(&a)
            .iter()
            .any(|c| c.starts_with("sessionid-") && c.contains("HttpOnly")),
        "{all}"
    );
    let (csrf_name, csrf) = cookie_pair(&a, "CSRF-Token-").expect("CSRF cookie");
    let (session_name, session) = cookie_pair(&a, "sessionid-").expect("session cookie");
    let header = csrf_name.replace("CSRF-Token-", "X-CSRF-Token-");
    // The session cookie alone (no Authorization) + the CSRF header.
    let session_cookie = format!("{session_name}={session}");
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Cookie", &session_cookie), (&header, &csrf)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Without the CSRF header: what a cross-origin page could send.
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Cookie", &session_cookie)],
        None,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    // A changed password ends the sessions opened with the old one.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"password": "n3w"}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Cookie", &session_cookie), (&header, &csrf)],
        None,
    );
    assert_eq!(a.status, 401, "old session still open: {}", a.body);
    node.stop();
}

fn bcrypt_hash(pw: &str) -> String {
    // The node hashes a plain password given over REST; use that to get a
    // hash without a bcrypt crate in the tests.
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("h"), "h");
    let node = home.start();
    let body = format!(r#"{{"password": "{pw}"}}"#);
    let a = keyed(
        home.gui_port,
        &home.api_key,
        "PATCH",
        "/rest/config/gui",
        Some(&body),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let gui = keyed(
        home.gui_port,
        &home.api_key,
        "GET",
        "/rest/config/gui",
        None,
    )
    .json();
    node.stop();
    gui["password"].as_str().unwrap().to_string()
}

/// Seconds until the node closes `s` (reads until EOF or reset), sending
/// `drip` one byte at a time every `every` meanwhile; `None` if still open
/// after `limit`.
fn closed_after(mut s: TcpStream, drip: &[u8], every: Duration, limit: Duration) -> Option<f64> {
    let start = Instant::now();
    s.set_read_timeout(Some(every)).unwrap();
    let mut i = 0;
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if i < drip.len() {
            if s.write_all(&drip[i..i + 1]).is_err() {
                return Some(start.elapsed().as_secs_f64());
            }
            i += 1;
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed().as_secs_f64()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed().as_secs_f64()),
        }
    }
    None
}

/// Round trip of a BEP Request for a 12-byte file, in milliseconds.
fn bep_round_trip(p: &mut RawPeer, id: i32) -> f64 {
    let start = Instant::now();
    p.send(&Message::Request(wire::Request {
        id,
        folder: "f".into(),
        name: "data.txt".into(),
        size: 12,
        hash: sha256(b"hello world\n"),
        ..Default::default()
    }));
    let r = p.response(id);
    assert_eq!(r.data, b"hello world\n");
    start.elapsed().as_secs_f64() * 1000.0
}

/// The status of `GET /rest/system/status` with `authorization`, or 0 if
/// the node closed the connection without an answer.
fn status_or_closed(port: u16, authorization: &str) -> u16 {
    let r = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(90))
        .build()
        .get(&format!("http://127.0.0.1:{port}/rest/system/status"))
        .set("Authorization", authorization)
        .call();
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

/// The status of a GET sent from the local address `from`.
fn call_from(from: &str, port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {from}: {out:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn rest_slowloris_and_password_guessing_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();
    let root = dir.path().join("f");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("data.txt"), b"hello world\n").unwrap();
    home.add_device(&raw_id, &["dynamic"]);
    home.add_folder("f", &root, "sendonly", &[&raw_id]);
    let node = home.start();
    node.wait_scanned("f", 1, Duration::from_secs(30));
    let port = home.gui_port;
    let key = home.api_key.clone();
    let a = keyed(
        port,
        &key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"user": "ops", "password": "s3cret"}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);

    // A known BEP peer, to see whether the attack slows the node's real work.
    let our_id: DeviceId = home.id.parse().unwrap();
    let mut p = RawPeer::connect(&raw, home.listen_port, Duration::from_secs(20));
    p.hello();
    p.send(&cluster_config("f", &[our_id, raw.device_id()]));
    let before: Vec<f64> = (0..20).map(|i| bep_round_trip(&mut p, i)).collect();

    // 20 parallel wrong passwords, three rounds: bcrypt runs on the
    // blocking pool, two at a time, and the source is soon throttled.
    let started = Instant::now();
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                for round in 0..3 {
                    let pw = format!("guess-{i}-{round}");
                    codes.push(status_or_closed(port, &basic_auth("ops", &pw)));
                }
                codes
            })
        })
        .collect();
    // Meanwhile, slowloris: partial headers, a byte a second.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                closed_after(
                    s,
                    b"GET /rest/system/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    let during: Vec<f64> = (100..120).map(|i| bep_round_trip(&mut p, i)).collect();
    let codes: Vec<u16> = guesses
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let guess_secs = started.elapsed().as_secs_f64();
    // 0: the connection was closed at once because the source held its
    // share of connections (a reconnecting client can briefly overlap).
    assert!(codes.iter().all(|c| [0, 401, 429].contains(c)), "{codes:?}");
    let throttled = codes.iter().filter(|c| **c == 429).count();
    let checked = codes.iter().filter(|c| **c == 401).count();
    assert!(
        checked <= 20,
        "{checked} of 60 guesses had their password checked: {codes:?}"
    );

    let slow_closed: Vec<Option<f64>> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    for c in &slow_closed {
        let secs = c.expect("a slowloris connection stayed open for 60 s");
        assert!(secs < 30.0, "slowloris connection held for {secs:.1} s");
    }
    // An idle kept-alive connection is closed too.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /rest/noauth/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let idle = closed_after(s, b"", Duration::from_secs(1), Duration::from_secs(60));
    let idle = idle.expect("an idle keep-alive connection stayed open for 60 s");
    assert!(idle < 30.0, "idle connection held for {idle:.1} s");

    // The throttle is per source: from 127.0.0.2 (another source on
    // loopback) the right password works at once.
    let right = basic_auth("ops", "s3cret");
    assert_eq!(
        call_from("127.0.0.2", port, "/", &[("Authorization", &right)]),
        200
    );
    let (b, d) = (median(before), median(during));
    println!(
        "REST attack: 60 wrong passwords in {guess_secs:.1} s, {checked} checked, {throttled} throttled; \
         slowloris closed after {:?} s; idle keep-alive closed after {idle:.1} s; \
         BEP request round trip median {b:.2} ms before, {d:.2} ms during",
        slow_closed
            .iter()
            .map(|c| format!("{:.1}", c.unwrap_or(-1.0)))
            .collect::<Vec<_>>()
    );
    // Generous: CI's cores are shared; a runtime blocked by bcrypt would
    // show as whole bcrypt rounds (tens of ms each, queued by the dozen).
    assert!(
        d < b * 10.0 + 50.0,
        "BEP round trip {b:.2} ms before, {d:.2} ms during"
    );

    // More connections from one source than it may hold: the excess is
    // closed at once, and another source still gets in.
    let held: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut closed_at_once = 0;
    for s in &held {
        let mut s = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(0)) {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 16,
        "{closed_at_once} of 80 closed at once"
    );
    let a = call_from("127.0.0.2", port, "/rest/noauth/health", &[]);
    assert_eq!(a, 200, "another source is locked out");
    drop(held);
    let m = keyed(port, &key, "GET", "/metrics", None).body;
    assert!(
        m.contains("node_rest_refused_total{reason=\"login_throttled\"}"),
        "{m}"
    );
    node.stop();
}
