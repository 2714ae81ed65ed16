//! Finding and reaching devices (issue 7): our node and real Syncthing
//! 1.19.2 through global discovery (the real stdiscosrv and our
//! discosrv), through relays (the real strelaysrv and our relaysrv with a
//! token), by a DNS name served on loopback, a relayed connection upgraded
//! to a direct one, and hostile discovery servers and relays survived.
//! Every test ends with a folder synced.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::connect::{
    add_node_device, add_node_folder, node_connection, set_node_options, wait_announced, DnsServer,
    Forwarder, Record, Stdiscosrv,
};
use e2e::discovery::Discosrv;
use e2e::node::{Node, NodeHome};
use e2e::relay::RelayServer;
use e2e::{pick_port, wait, Syncthing, SyncthingHome};
use proto::DeviceId;
use serde_json::json;

const CONNECT_LIMIT: Duration = Duration::from_secs(45);
const SYNC_LIMIT: Duration = Duration::from_secs(45);

/// Shares folder `f` between our node and the real device, writes a file
/// on our side and waits until the real device has it, byte for byte.
fn sync_one_file(dir: &Path, node: &Node, st: &Syncthing, name: &str) {
    let ours = dir.join(format!("ours-{name}"));
    let theirs = dir.join(format!("theirs-{name}"));
    add_node_folder(node, name, &ours, &[st.id()]);
    st.share_folder(name, &theirs, "sendreceive", &[&node.home.id]);
    let content = format!("synced through {name} at {:?}\n", Instant::now());
    std::fs::write(ours.join("hello.txt"), &content).unwrap();
    node.post(&format!("/rest/db/scan?folder={name}")).unwrap();
    st.wait_synced(name, 1, SYNC_LIMIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.proc.log_tail(40)));
    assert_eq!(
        std::fs::read_to_string(theirs.join("hello.txt")).unwrap(),
        content
    );
}

fn wait_node_connected(node: &Node, id: &str) -> (String, String) {
    wait::until(CONNECT_LIMIT, Duration::from_millis(200), || {
        node_connection(node, id)
    })
    .unwrap_or_else(|| {
        panic!(
            "our node never connected to {id}:\n{}",
            node.proc.log_tail(40)
        )
    })
}

/// Our node and a real device, both listening on `tcp://localhost:P`,
/// announce to the discovery server at `url`; once the server has both,
/// each gets the other as `dynamic` and they connect and sync. With
/// `real_looks_up` false the real device only announces (`&nolookup`), so
/// the connection can only come from our node's lookup and dial.
fn dynamic_through(dir: &Path, url: &str, port: u16, server: DeviceId, real_looks_up: bool) {
    let st_port = pick_port();
    let st = SyncthingHome::init(&dir.join("st"), &[format!("tcp://localhost:{st_port}")]).start();
    let home = NodeHome::generate(&dir.join("node"), "ours");
    let node = home.start();
    let options = json!({
        "globalAnnounceEnabled": true,
        "globalAnnounceServers": [url],
        "localAnnounceEnabled": false,
    });
    let st_url = if real_looks_up {
        url.to_string()
    } else {
        format!("{url}&nolookup")
    };
    st.set_options(json!({
        "globalAnnounceEnabled": true,
        "globalAnnounceServers": [st_url],
        "localAnnounceEnabled": false,
    }));
    let mut ours = options;
    ours["listenAddresses"] = json!([format!("tcp://localhost:{}", home.listen_port)]);
    ours["reconnectionIntervalS"] = json!(5);
    set_node_options(&node, ours);

    let t0 = Instant::now();
    let our_addrs = wait_announced(port, server, &home.id, Duration::from_secs(30));
    let st_addrs = wait_announced(port, server, st.id(), Duration::from_secs(30));
    eprintln!(
        "announced after {:.1} s: ours {our_addrs:?}, real {st_addrs:?}",
        t0.elapsed().as_secs_f64()
    );
    assert!(our_addrs.contains(&format!("tcp://localhost:{}", home.listen_port)));
    // The next announcement is when the server said (Reannounce-After,
    // 3300–3599 s from both servers), not a fixed interval.
    let next_s: Vec<u64> = node
        .proc
        .log()
        .lines()
        .filter(|l| l.contains(" announced ") && l.contains(url))
        .filter_map(|l| {
            l.split("next_s=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !next_s.is_empty() && next_s.iter().all(|s| (3300..3600).contains(s)),
        "{next_s:?}"
    );

    let t1 = Instant::now();
    add_node_device(&node, st.id(), &["dynamic"]);
    st.add_device(&home.id, &["dynamic"]);
    let (kind, address) = wait_node_connected(&node, st.id());
    eprintln!(
        "connected after {:.1} s: {kind} {address}",
        t1.elapsed().as_secs_f64()
    );
    if real_looks_up {
        assert!(kind.starts_with("tcp-"), "{kind}");
    } else {
        assert_eq!(kind, "tcp-client");
    }
    sync_one_file(dir, &node, &st, "disco");
    // Our node answered lookups with what it found.
    if !real_looks_up {
        let cache = node.get("/rest/system/discovery").unwrap();
        assert_eq!(
            cache[st.id()]["addresses"],
            json!([format!("tcp://localhost:{st_port}")]),
            "{cache}"
        );
    }
    node.stop();
    st.shutdown();
}

#[test]
fn dynamic_addresses_through_real_stdiscosrv() {
    let tmp = tempfile::tempdir().unwrap();
    let disco = Stdiscosrv::start(&tmp.path().join("disco"));
    dynamic_through(tmp.path(), &disco.url(), disco.port, disco.id, true);
}

#[test]
fn dynamic_addresses_through_our_discosrv() {
    let tmp = tempfile::tempdir().unwrap();
    let disco = Discosrv::start(&tmp.path().join("disco"), &[]);
    let id = disco.id.unwrap();
    dynamic_through(tmp.path(), &disco.url(), disco.port, id, false);
}

/// The real device joins the real strelaysrv (its only listener) and
/// announces that relay to the real stdiscosrv; our node has no listener,
/// knows the device only as `dynamic`, looks it up and dials through the
/// relay it announced.
#[test]
fn our_node_dials_real_syncthing_through_the_strelaysrv_it_announces() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayServer::start_strelaysrv(&tmp.path().join("relay"), &[]);
    let disco = Stdiscosrv::start(&tmp.path().join("disco"));
    // A host name: stdiscosrv drops loopback IPs.
    let relay_uri = format!("relay://localhost:{}/?id={}", relay.port, relay.id);
    let st = SyncthingHome::init(&tmp.path().join("st"), std::slice::from_ref(&relay_uri)).start();
    st.set_options(json!({"relaysEnabled": true, "globalAnnounceEnabled": true,
                          "globalAnnounceServers": [disco.url()]}));
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"listenAddresses": [""], "relaysEnabled": true, "reconnectionIntervalS": 5,
               "globalAnnounceEnabled": true, "globalAnnounceServers": [disco.url()]}),
    );
    let announced = wait_announced(disco.port, disco.id, st.id(), Duration::from_secs(40));
    eprintln!("the real device announced {announced:?}");
    assert!(
        announced.iter().any(|a| a.starts_with(&relay_uri)),
        "{announced:?}"
    );
    st.add_device(&home.id, &["dynamic"]);
    let t0 = Instant::now();
    add_node_device(&node, st.id(), &["dynamic"]);
    let (kind, address) = wait_node_connected(&node, st.id());
    eprintln!(
        "relayed after {:.1} s via {address}",
        t0.elapsed().as_secs_f64()
    );
    for l in node.proc.log().lines().filter(|l| l.contains("relay")) {
        eprintln!("{}", &l[..l.len().min(250)]);
    }
    assert_eq!(kind, "relay-client");
    assert_eq!(
        st.wait_connected(&home.id, Duration::from_secs(10))
            .as_deref(),
        Some("relay-server")
    );
    sync_one_file(tmp.path(), &node, &st, "relayed");
    let status = relay.status();
    assert!(status["bytesProxied"].as_u64().unwrap_or(0) > 0, "{status}");
    node.stop();
    st.shutdown();
}

/// The other direction: our node joins the real strelaysrv (its only
/// listener); the real device has no listener and dials through the relay.
#[test]
fn real_syncthing_dials_our_node_through_real_strelaysrv() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayServer::start_strelaysrv(&tmp.path().join("relay"), &[]);
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"listenAddresses": [relay.uri()], "relaysEnabled": true, "reconnectionIntervalS": 5}),
    );
    relay.wait_status("our node joined", Duration::from_secs(30), |s| {
        s["numConnections"].as_u64() == Some(1)
    });
    let st = SyncthingHome::init(&tmp.path().join("st"), &[]).start();
    st.set_options(json!({"relaysEnabled": true}));
    add_node_device(&node, st.id(), &["dynamic"]);
    let t0 = Instant::now();
    st.add_device(&home.id, &[&relay.uri()]);
    let kind = st.wait_connected(&home.id, CONNECT_LIMIT);
    eprintln!("relayed after {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        kind.as_deref(),
        Some("relay-client"),
        "{}",
        node.proc.log_tail(30)
    );
    let (ours, address) = wait_node_connected(&node, st.id());
    assert_eq!(
        (ours.as_str(), address.as_str()),
        ("relay-server", &*format!("127.0.0.1:{}", relay.port))
    );
    sync_one_file(tmp.path(), &node, &st, "joined");
    node.stop();
    st.shutdown();
}

/// Our node joins our relaysrv with a join token (1.19.2 cannot send one)
/// and announces to our discosrv; the real device finds the relay address
/// by discovery (`dynamic`) and dials through it. No direct path exists:
/// neither side has a TCP listener. The token is never announced.
#[test]
fn real_syncthing_dials_our_node_through_our_relaysrv_with_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("tok{}", rand_token());
    let relay = RelayServer::start(&tmp.path().join("relay"), &["--token", &token]);
    let disco = Discosrv::start(&tmp.path().join("disco"), &[]);
    let disco_id = disco.id.unwrap();
    // A host name, so the discovery server keeps it (it drops loopback IPs).
    let relay_listen = format!(
        "relay://localhost:{}/?id={}&token={token}",
        relay.port, relay.id
    );
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"listenAddresses": [relay_listen], "relaysEnabled": true,
               "globalAnnounceEnabled": true, "globalAnnounceServers": [disco.url()],
               "reconnectionIntervalS": 5}),
    );
    let announced = wait_announced(disco.port, disco_id, &home.id, Duration::from_secs(30));
    eprintln!("announced: {announced:?}");
    let expected = format!("relay://localhost:{}/?id={}", relay.port, relay.id);
    assert_eq!(announced, vec![expected.clone()]);
    for a in &announced {
        assert!(!a.contains(&token) && !a.contains("token"), "{a}");
    }
    // The status shows the relay listener (without its token) and the
    // discovery server as Syncthing's /rest/system/status does.
    let status = node.get("/rest/system/status").unwrap();
    assert!(!status.to_string().contains(&token), "{status}");
    assert_eq!(
        status["connectionServiceStatus"][&expected]["wanAddresses"],
        json!([expected]),
        "{status}"
    );
    let key = format!("global@https://127.0.0.1:{}/", disco.port);
    assert_eq!(
        status["discoveryStatus"][&key],
        json!({"error": null}),
        "{status}"
    );

    let st = SyncthingHome::init(&tmp.path().join("st"), &[]).start();
    st.set_options(json!({"relaysEnabled": true, "globalAnnounceEnabled": true,
                          "globalAnnounceServers": [disco.url()]}));
    add_node_device(&node, st.id(), &["dynamic"]);
    let t0 = Instant::now();
    st.add_device(&home.id, &["dynamic"]);
    let kind = st.wait_connected(&home.id, CONNECT_LIMIT);
    eprintln!("relayed after {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        kind.as_deref(),
        Some("relay-client"),
        "{}",
        node.proc.log_tail(40)
    );
    let (ours, _) = wait_node_connected(&node, st.id());
    assert_eq!(ours, "relay-server");
    sync_one_file(tmp.path(), &node, &st, "token");
    // Nothing our node logged shows the token either.
    assert!(!node.stop().contains(&token));
    st.shutdown();
}

fn rand_token() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ 0x5eed_1234
}

/// The device is configured as `tcp://nas.site-a.example:P`; the name
/// exists only in a DNS server the test runs on loopback.
#[test]
fn device_by_dns_name_through_loopback_dns() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let dns = DnsServer::start(vec![(
        "nas.site-a.example".into(),
        Record::A([127, 0, 0, 1].into()),
    )]);
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    // A DNS server must be an address: a name would need DNS itself.
    let refused = node.send(
        "PATCH",
        "/rest/config/options",
        &json!({"dnsServers": ["dns.site-a.example"]}),
    );
    assert!(refused.is_err(), "{refused:?}");
    set_node_options(
        &node,
        json!({"dnsServers": [dns.address()], "reconnectionIntervalS": 5}),
    );
    st.add_device(&home.id, &["dynamic"]);
    add_node_device(
        &node,
        st.id(),
        &[&format!("tcp://nas.site-a.example:{st_port}")],
    );
    let (kind, address) = wait_node_connected(&node, st.id());
    assert_eq!(
        (kind.as_str(), address.as_str()),
        ("tcp-client", &*format!("127.0.0.1:{st_port}"))
    );
    let asked = dns.questions.lock().unwrap().clone();
    eprintln!("DNS questions: {asked:?}");
    assert!(
        asked.iter().any(|q| q == "nas.site-a.example/1"),
        "{asked:?}"
    );
    sync_one_file(tmp.path(), &node, &st, "dns");
    node.stop();
    st.shutdown();
}

/// `dns-srv://site-b.example`: SRV `_syncthing._tcp.site-b.example` names
/// the target host and port, whose A record is served too.
#[test]
fn device_by_dns_srv_through_loopback_dns() {
    let tmp = tempfile::tempdir().unwrap();
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let dns = DnsServer::start(vec![
        (
            "_syncthing._tcp.site-b.example".into(),
            Record::Srv {
                priority: 10,
                weight: 5,
                port: st_port,
                target: "node-0.site-b.example".into(),
            },
        ),
        (
            "node-0.site-b.example".into(),
            Record::A([127, 0, 0, 1].into()),
        ),
    ]);
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"dnsServers": [dns.address()], "reconnectionIntervalS": 5}),
    );
    st.add_device(&home.id, &["dynamic"]);
    add_node_device(&node, st.id(), &["dns-srv://site-b.example"]);
    let (kind, _) = wait_node_connected(&node, st.id());
    assert_eq!(kind, "tcp-client");
    let asked = dns.questions.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|q| q == "_syncthing._tcp.site-b.example/33"),
        "{asked:?}"
    );
    sync_one_file(tmp.path(), &node, &st, "srv");
    node.stop();
    st.shutdown();
}

/// The real device listens on TCP and on a relay; our node knows it by a
/// direct address that is unreachable at first (nothing listens there)
/// and by the relay. It connects through the relay, and once the direct
/// address starts working the relayed connection is replaced.
#[test]
fn relayed_connection_replaced_by_direct_one() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayServer::start(&tmp.path().join("relay"), &[]);
    let st_port = pick_port();
    let st = SyncthingHome::init(
        &tmp.path().join("st"),
        &[format!("tcp://127.0.0.1:{st_port}"), relay.uri()],
    )
    .start();
    st.set_options(json!({"relaysEnabled": true}));
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"listenAddresses": [""], "relaysEnabled": true, "reconnectionIntervalS": 5}),
    );
    relay.wait_status("real device joined", Duration::from_secs(30), |s| {
        s["numConnections"].as_u64() == Some(1)
    });
    let forwarder = Forwarder::reserve();
    st.add_device(&home.id, &["dynamic"]);
    add_node_device(
        &node,
        st.id(),
        &[&format!("tcp://127.0.0.1:{}", forwarder.port), &relay.uri()],
    );
    let (kind, _) = wait_node_connected(&node, st.id());
    assert_eq!(kind, "relay-client");
    sync_one_file(tmp.path(), &node, &st, "before");

    forwarder.start(st_port);
    let t0 = Instant::now();
    let direct = wait::until(CONNECT_LIMIT, Duration::from_millis(200), || {
        node_connection(&node, st.id()).filter(|(k, _)| k == "tcp-client")
    });
    assert!(
        direct.is_some(),
        "not upgraded:\n{}",
        node.proc.log_tail(40)
    );
    eprintln!(
        "relay replaced by a direct connection {:.1} s after it became reachable",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        st.wait_connected(&home.id, Duration::from_secs(10))
            .as_deref(),
        Some("tcp-server")
    );
    sync_one_file(tmp.path(), &node, &st, "after");
    node.stop();
    st.shutdown();
}

/// Reads an HTTP request head (bounded) from a hostile server's client.
fn read_head(s: &mut impl std::io::Read) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while buf.len() < 16 * 1024 && !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            return;
        }
        buf.push(b[0]);
    }
}

/// Discovery servers that answer junk, an oversized body or nothing at
/// all, one with the wrong certificate, and a relay that answers with
/// unexpected and malformed messages: all logged, none harms the node,
/// which then syncs with a real device as usual.
#[test]
fn hostile_discovery_servers_and_relay_are_survived() {
    use std::io::Write;
    use std::sync::atomic::Ordering;

    use e2e::connect::{HangServer, HostileTls};
    use proto::relay::{Message, Response, SessionInvitation, ShortBytes};

    let tmp = tempfile::tempdir().unwrap();
    let junk = HostileTls::start(
        b"http/1.1",
        Box::new(|n, s| {
            read_head(s);
            let reply: Vec<u8> = match n % 3 {
                0 => b"\x00\xff\x13garbage that is not HTTP\r\n\r\n".to_vec(),
                1 => b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{not json!!}".to_vec(),
                _ => {
                    let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".to_vec();
                    r.extend(std::iter::repeat_n(b'a', 300_000));
                    r
                }
            };
            let _ = s.write_all(&reply);
        }),
    );
    let hang = HangServer::start();
    let relay = HostileTls::start(
        b"bep-relay",
        Box::new(|n, s| {
            let _ = e2e::relay::read_message(s);
            let send = |s: &mut _, m: &Message| {
                let _ = e2e::relay::write_message(s, m);
            };
            match n % 4 {
                0 => send(
                    s,
                    &Message::Response(Response::with_code(Response::UNEXPECTED_MESSAGE)),
                ),
                1 => {
                    let _ = s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 4, 0, 0, 0, 0]);
                }
                2 => {
                    send(
                        s,
                        &Message::Response(Response::with_code(Response::SUCCESS)),
                    );
                    let _ =
                        s.write_all(&[0x9e, 0x79, 0xbc, 0x40, 0, 0, 0, 6, 0x7f, 0xff, 0xff, 0xff]);
                }
                _ => {
                    send(
                        s,
                        &Message::Response(Response::with_code(Response::SUCCESS)),
                    );
                    // An invitation with a 3-byte device ID, then one from an
                    // unknown device to a closed port, then an unknown type.
                    send(
                        s,
                        &Message::SessionInvitation(SessionInvitation {
                            from: ShortBytes::new(&[1, 2, 3]).unwrap(),
                            key: ShortBytes::new(&[9; 32]).unwrap(),
                            address: ShortBytes::new(&[127, 0, 0, 1]).unwrap(),
                            port: 1,
                            server_socket: true,
                        }),
                    );
                    send(
                        s,
                        &Message::SessionInvitation(SessionInvitation {
                            from: ShortBytes::new(&[7; 32]).unwrap(),
                            key: ShortBytes::new(&[9; 32]).unwrap(),
                            address: ShortBytes::new(&[127, 0, 0, 1]).unwrap(),
                            port: 1,
                            server_socket: true,
                        }),
                    );
                    let _ = s.write_all(&[0x9e, 0x79, 0xbc, 0x40, 0, 0, 0, 99, 0, 0, 0, 0]);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }),
    );

    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    let other_id = "LYXKCHX-VI3NYZR-ALCJBHF-WMZYSPK-QG6QJA3-MPFYMSO-U56GTUK-NA2MIAW";
    set_node_options(
        &node,
        json!({
            "listenAddresses": [format!("tcp://localhost:{}", home.listen_port),
                                format!("relay://127.0.0.1:{}/?id={}", relay.port, relay.id)],
            "relaysEnabled": true,
            "globalAnnounceEnabled": true,
            "globalAnnounceServers": [
                format!("https://127.0.0.1:{}/?insecure", junk.port),
                format!("https://127.0.0.1:{}/v2/?insecure", junk.port),
                format!("https://127.0.0.1:{}/?insecure", hang.port),
                format!("https://127.0.0.1:{}/?id={other_id}", junk.port),
            ],
            "reconnectionIntervalS": 5,
        }),
    );
    // A device only discovery could find: lookups go to every server.
    let ghost = "7KTUSGK-C4QOOZF-DEKHSEZ-24KGYDL-UPQAR7U-C5NWEIZ-UCBE3GR-HFSNNQY";
    add_node_device(&node, ghost, &["dynamic"]);

    // While a request hangs, the node answers at once.
    let t = Instant::now();
    let _ = wait::until(Duration::from_secs(8), Duration::from_millis(500), || {
        assert!(node.get("/rest/system/ping").is_ok());
        None::<()>
    });
    assert!(t.elapsed() < Duration::from_secs(15));
    let seen = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        let log = node.proc.log();
        (relay.connections.load(Ordering::Relaxed) >= 4
            && log.contains("invitation with a malformed device ID ignored")
            && log.matches("announcement failed").count() >= 3
            && log.contains("discovery lookup failed"))
        .then_some(log)
    });
    let log = seen.unwrap_or_else(|| {
        panic!(
            "relay connections {}, log:\n{}",
            relay.connections.load(Ordering::Relaxed),
            node.proc.log_tail(60)
        )
    });
    for needle in [
        "incorrect", // the wrong pin
        "timed out", // or "no answer within": the hanging server
        "relay connection ended",
        "unexpected",
        "invitation with a malformed device ID ignored",
    ] {
        let ok =
            log.contains(needle) || (needle == "timed out" && log.contains("no answer within"));
        assert!(ok, "no {needle:?} in the log:\n{log}");
    }
    for line in log
        .lines()
        .filter(|l| l.contains("announcement failed") || l.contains("relay connection ended"))
    {
        eprintln!("{}", &line[..line.len().min(300)]);
    }
    assert!(!log.contains("panicked"));

    // Still a working node.
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    st.add_device(&home.id, &["dynamic"]);
    add_node_device(&node, st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    wait_node_connected(&node, st.id());
    sync_one_file(tmp.path(), &node, &st, "after-junk");
    node.stop();
    st.shutdown();
}

/// Like Syncthing, a "not found" is cached for the server's Retry-After
/// (stdiscosrv 1.19.2: 60–120 s for a first miss): however often the dial
/// loop comes round, the server sees one lookup.
#[test]
fn negative_lookups_are_cached_for_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let disco = Stdiscosrv::start(&tmp.path().join("disco"));
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start();
    set_node_options(
        &node,
        json!({"globalAnnounceEnabled": true, "globalAnnounceServers": [disco.url()],
               "reconnectionIntervalS": 1}),
    );
    let ghost = "7KTUSGK-C4QOOZF-DEKHSEZ-24KGYDL-UPQAR7U-C5NWEIZ-UCBE3GR-HFSNNQY";
    add_node_device(&node, ghost, &["dynamic"]);
    let lookups = || {
        disco
            .proc
            .log()
            .lines()
            .filter(|l| l.contains(&format!("device={ghost}")))
            .count()
    };
    let first = wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
        (lookups() > 0).then_some(())
    });
    assert!(first.is_some(), "no lookup:\n{}", disco.proc.log_tail(20));
    // Rounds every second or so for 8 s: still one lookup.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(lookups(), 1, "{}", disco.proc.log_tail(20));
    let cache = node.get("/rest/system/discovery").unwrap();
    assert!(cache.get(ghost).is_none(), "{cache}");
    node.stop();
}

/// A discovery server with a certificate from a (private) CA, configured
/// without `?id=` and without `insecure`: verified against the CA bundle
/// and the host name — `localhost` works, the same server by IP does not.
#[test]
fn discovery_server_verified_by_ca_and_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    let disco_dir = tmp.path().join("disco");
    let ca = e2e::connect::private_ca(&disco_dir);
    let disco = Discosrv::start(&disco_dir, &[]);
    let disco_id = disco.id.unwrap();
    let home = NodeHome::generate(&tmp.path().join("node"), "ours");
    let node = home.start_with_env(&[("SSL_CERT_FILE", &ca)]);
    let by_name = format!("https://localhost:{}/", disco.port);
    let by_ip = format!("https://127.0.0.1:{}/", disco.port);
    set_node_options(
        &node,
        json!({"listenAddresses": [format!("tcp://localhost:{}", home.listen_port)],
               "globalAnnounceEnabled": true,
               "globalAnnounceServers": [by_name, by_ip]}),
    );
    let announced = wait_announced(disco.port, disco_id, &home.id, Duration::from_secs(30));
    assert_eq!(
        announced,
        vec![format!("tcp://localhost:{}", home.listen_port)]
    );
    let status = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let s = node.get("/rest/system/status").ok()?;
        let e = &s["discoveryStatus"][format!("global@{by_ip}")]["error"];
        (e.is_string() && e.as_str() != Some("not announced")).then_some(s)
    })
    .expect("announcement by IP attempted");
    eprintln!("status: {}", status["discoveryStatus"]);
    assert_eq!(
        status["discoveryStatus"][format!("global@{by_name}")]["error"],
        serde_json::Value::Null
    );
    let err = status["discoveryStatus"][format!("global@{by_ip}")]["error"].to_string();
    assert!(err.contains("TLS"), "{err}");
    node.stop();
}

/// The harness: a real Syncthing whose GUI port another process took
/// between the pick and the start (seen when two test runs shared a
/// machine) is started again on a new port, not reported as broken.
#[test]
fn a_taken_gui_port_is_replaced_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let home = SyncthingHome::init(&tmp.path().join("st"), &[]);
    let taken = home.gui_port;
    let t0 = Instant::now();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).expect("bind the GUI port");
    let st = home.start();
    // Not after a client's 30 s timeout on the squatter.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_ne!(st.home.gui_port, taken);
    assert!(st.get("/rest/system/ping").is_ok());
}
