//! A private relay (issue 19): device allow-lists for joining and dialing,
//! several join tokens at once from a file, all reloaded without a
//! restart; refusals counted, logged and visible in `/status`. Real
//! Syncthing devices (the newest available) on both sides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::peers::PeerVersion;
use e2e::relay::{ProtocolClient, RelayServer};
use e2e::{wait, Syncthing, SyncthingHome};
use proto::relay::{Message, Response};
use proto::{Identity, KeyKind};
use serde_json::{json, Value};

/// The allow-lists and token file are checked this often here (5 s by
/// default): what "within the reload interval" is measured against.
const RELOAD: &str = "1s";
/// Generous: the machine running these may be loaded.
const LIMIT: Duration = Duration::from_secs(40);

/// A real device of the newest version, listening only on `listen`.
fn device(dir: &Path, listen: &[String]) -> Syncthing {
    device_of(PeerVersion::newest_available(), dir, listen)
}

fn device_of(version: PeerVersion, dir: &Path, listen: &[String]) -> Syncthing {
    let st = SyncthingHome::init_version(dir, listen, version).start();
    st.set_options(json!({ "relaysEnabled": true }));
    st
}

fn write_list(path: &Path, ids: &[&str]) {
    let mut text = String::from("# devices allowed on the studio relay\n");
    for id in ids {
        text.push_str(id);
        text.push('\n');
    }
    // Written aside and renamed, as an operator's editor or a ConfigMap
    // update does: the relay never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reject(relay: &RelayServer, reason: &str) -> f64 {
    relay.metric_or(
        &format!("relaysrv_rejects_total{{reason=\"{reason}\"}}"),
        0.0,
    )
}

fn wait_for(relay: &RelayServer, what: &str, f: impl Fn() -> bool) {
    let ok = wait::until(LIMIT, Duration::from_millis(200), || f().then_some(()));
    assert!(
        ok.is_some(),
        "{what}\nmetrics:\n{}\nrelay log:\n{}",
        relay.metrics(),
        relay.proc.log_tail(30)
    );
}

/// `accessFiles.<what>` of the relay's `/status`.
fn access_file(relay: &RelayServer, what: &str) -> Value {
    relay.status()["accessFiles"][what].clone()
}

/// The error a real device shows for its relay listener, once it has one.
fn listener_error(st: &Syncthing) -> Option<String> {
    let status = st.get("/rest/system/status").ok()?;
    status["connectionServiceStatus"]
        .as_object()?
        .values()
        .find_map(|l| l["error"].as_str().map(str::to_string))
}

/// Makes a real device dial `peer` now rather than at its next scheduled
/// attempt (up to a minute away): pausing and resuming a device asks
/// Syncthing to dial it at once.
fn redial(st: &Syncthing, peer: &str) {
    for paused in [true, false] {
        st.send(
            "PATCH",
            &format!("/rest/config/devices/{peer}"),
            &json!({ "paused": paused }),
        )
        .expect("pause/resume device");
    }
}

/// Restarts a real device's relay listener (a new join), by giving it
/// the same relay under a different URI.
fn rejoin(st: &Syncthing, uri: &str, nonce: u32) {
    st.set_options(json!({ "listenAddresses": [format!("{uri}&rejoin={nonce}")] }));
}

/// Whether the relay logged a refusal of `device` for `reason` (one line
/// names both; the line is rate-limited, not suppressed).
fn logged_refusal(relay: &RelayServer, device: &str, reason: &str) -> bool {
    relay
        .proc
        .log()
        .lines()
        .any(|l| l.contains("refused") && l.contains(device) && l.contains(reason))
}

fn flag(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Relay listing device A only. A (real, listening through the relay)
/// joins; B (real, also listening there) is refused as with a wrong token;
/// B's dial of A is refused as "not found" and no invitation reaches A (A
/// never sees B; no session key is ever issued). B is added to the file:
/// within the reload interval the relay knows it (same process), B joins
/// and dials A through the relay. A is removed: it is dropped at its next
/// ping and its next join is refused. The metrics pass promtool.
#[test]
fn allow_list_admits_only_listed_devices_and_reloads_live() {
    let dir = tempfile::tempdir().unwrap();
    let list: PathBuf = dir.path().join("allowed.txt");
    std::fs::write(&list, "").unwrap();
    let relay = RelayServer::start(
        &dir.path().join("relay"),
        &[
            "--allow-devices",
            flag(&list),
            "--allow-reload-interval",
            RELOAD,
            "--ping-interval",
            "3s",
        ],
    );
    let pid = relay.proc.pid();
    let a = device(&dir.path().join("a"), &[relay.uri()]);
    let b = device(&dir.path().join("b"), &[relay.uri()]);
    write_list(&list, &[a.id()]);
    wait_for(&relay, "the list with A is in force", || {
        access_file(&relay, "allow-devices")["entries"] == 1
    });
    rejoin(&a, &relay.uri(), 1);
    a.add_device(b.id(), &["dynamic"]);
    b.add_device(a.id(), &[&relay.uri()]);

    wait_for(&relay, "A joins; B's join and dial are refused", || {
        relay.metric("relaysrv_joined_devices") == 1.0
            && reject(&relay, "JoinNotAllowed") >= 1.0
            && reject(&relay, "ConnectNotAllowed") >= 1.0
    });
    let error = wait::until(LIMIT, Duration::from_millis(200), || listener_error(&b));
    assert!(
        error.as_deref().is_some_and(|e| e.contains("wrong token")),
        "B should see what a wrong token gives: {error:?}"
    );
    // No invitation reached A: A never connected to B, and the relay
    // never issued a session key or pairing.
    assert!(a.wait_connected(b.id(), Duration::ZERO).is_none());
    assert_eq!(relay.metric("relaysrv_pairings_total"), 0.0);
    assert_eq!(relay.status()["numPendingSessionKeys"], 0);
    assert!(
        logged_refusal(&relay, b.id(), "JoinNotAllowed"),
        "no refusal line naming B:\n{}",
        relay.proc.log()
    );

    // B added: the relay knows within the reload interval, no restart.
    let added = std::time::Instant::now();
    write_list(&list, &[a.id(), b.id()]);
    wait_for(&relay, "the list with B is in force", || {
        access_file(&relay, "allow-devices")["entries"] == 2
    });
    eprintln!("list reloaded after {:?}", added.elapsed());
    assert_eq!(relay.proc.pid(), pid);
    rejoin(&b, &relay.uri(), 1);
    redial(&b, a.id());
    let via = b.wait_connected(a.id(), Duration::from_secs(60));
    assert_eq!(
        via.as_deref(),
        Some("relay-client"),
        "B does not reach A:\n{}\nrelay:\n{}",
        b.proc.log_tail(30),
        relay.proc.log_tail(30)
    );
    wait_for(&relay, "B joined too", || {
        relay.metric("relaysrv_joined_devices") == 2.0
    });

    // A removed: dropped at its next ping, its next join refused.
    let not_allowed = reject(&relay, "JoinNotAllowed");
    write_list(&list, &[b.id()]);
    wait_for(&relay, "A dropped", || {
        reject(&relay, "JoinRevoked") >= 1.0 && relay.metric("relaysrv_joined_devices") == 1.0
    });
    rejoin(&a, &relay.uri(), 2);
    wait_for(&relay, "A's next join refused", || {
        reject(&relay, "JoinNotAllowed") > not_allowed
    });
    assert!(logged_refusal(&relay, a.id(), "JoinRevoked"));
    assert!(logged_refusal(&relay, a.id(), "JoinNotAllowed"));
    assert_eq!(relay.metric("relaysrv_joined_devices"), 1.0);

    let metrics = relay.metrics();
    assert!(
        metrics.contains("relaysrv_access_list_entries{list=\"allow-devices\"} 1"),
        "{metrics}"
    );
    e2e::promtool::assert_accepts(&metrics);
    b.shutdown();
    a.shutdown();
}

e2e::per_version!(separate_join_and_connect_lists:
    separate_join_and_connect_lists_newest => PeerVersion::newest_available(),
    separate_join_and_connect_lists_1_19_2 => PeerVersion::V1_19_2,
);

/// --allow-join lists A, --allow-connect lists C (both real, of
/// `version`; --allow-devices, listing nobody, is overridden for both): C
/// may not listen on the relay (its join is refused) but dials A through
/// it; A, on the join list only, cannot dial through the relay.
fn separate_join_and_connect_lists(version: PeerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let (join, connect) = (dir.path().join("join.txt"), dir.path().join("connect.txt"));
    std::fs::write(&join, "").unwrap();
    std::fs::write(&connect, "").unwrap();
    let general = dir.path().join("all.txt");
    std::fs::write(&general, "").unwrap();
    let relay = RelayServer::start(
        &dir.path().join("relay"),
        &[
            // Overridden for both actions by the specific lists.
            "--allow-devices",
            flag(&general),
            "--allow-join",
            flag(&join),
            "--allow-connect",
            flag(&connect),
            "--allow-reload-interval",
            RELOAD,
        ],
    );
    let a = device_of(version, &dir.path().join("a"), &[relay.uri()]);
    let c = device_of(version, &dir.path().join("c"), &[relay.uri()]);
    write_list(&join, &[a.id()]);
    write_list(&connect, &[c.id()]);
    wait_for(&relay, "both lists in force", || {
        let s = relay.status();
        s["accessFiles"]["allow-join"]["entries"] == 1
            && s["accessFiles"]["allow-connect"]["entries"] == 1
    });
    assert!(
        relay.status()["accessFiles"].get("allow-devices").is_none(),
        "--allow-devices is overridden for both actions and not used"
    );
    rejoin(&a, &relay.uri(), 1);
    rejoin(&c, &relay.uri(), 1);
    a.add_device(c.id(), &["dynamic"]);
    c.add_device(a.id(), &[&relay.uri()]);

    let via = c.wait_connected(a.id(), Duration::from_secs(60));
    assert_eq!(
        via.as_deref(),
        Some("relay-client"),
        "C does not reach A:\n{}\nrelay:\n{}",
        c.proc.log_tail(30),
        relay.proc.log_tail(30)
    );
    wait_for(&relay, "C may not join", || {
        reject(&relay, "JoinNotAllowed") >= 1.0
    });
    assert_eq!(relay.metric("relaysrv_joined_devices"), 1.0);

    // A may listen but not dial: a ConnectRequest from A's identity
    // would need A's key; our own client stands in for a device on the
    // join list only.
    let home_a = dir.path().join("a");
    let id_a = Identity::load(&home_a.join("cert.pem"), &home_a.join("key.pem"))
        .expect("A's certificate and key");
    let mut client = ProtocolClient::connect(relay.port, &id_a, relay.id).unwrap();
    let c_id: proto::DeviceId = c.id().parse().unwrap();
    let refused = reject(&relay, "ConnectNotAllowed");
    assert_eq!(
        client.connect_to(c_id).unwrap(),
        Message::Response(Response::with_code(Response::NOT_FOUND))
    );
    assert_eq!(reject(&relay, "ConnectNotAllowed"), refused + 1.0);
    c.shutdown();
    a.shutdown();
}

/// Two tokens valid at once from --token-file: A joins with the old one,
/// B dials A. The old token is removed from the file: a new join with it
/// is refused (code 3), the new one joins, and A's join and the session
/// B–A are untouched. A's listener restarted with the old token is
/// refused; with the new one it joins again.
#[test]
fn token_rotation_keeps_existing_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# rotation\nold-token-1\nnew-token-2\n").unwrap();
    let relay = RelayServer::start(
        &dir.path().join("relay"),
        &[
            "--token-file",
            flag(&tokens),
            "--allow-reload-interval",
            RELOAD,
        ],
    );
    let a = device(
        &dir.path().join("a"),
        &[relay.uri_with_token("old-token-1")],
    );
    let b = device(&dir.path().join("b"), &[]);
    a.add_device(b.id(), &["dynamic"]);
    b.add_device(a.id(), &[&relay.uri()]);
    let via = b.wait_connected(a.id(), Duration::from_secs(60));
    assert_eq!(
        via.as_deref(),
        Some("relay-client"),
        "{}\nrelay:\n{}",
        b.proc.log_tail(30),
        relay.proc.log_tail(30)
    );
    let other = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let mut probe = ProtocolClient::connect(relay.port, &other, relay.id).unwrap();
    assert_eq!(
        probe.join(Some("new-token-2")).unwrap(),
        Message::Response(Response::with_code(Response::SUCCESS))
    );
    drop(probe);

    // The old token removed.
    let tmp = tokens.with_extension("tmp");
    std::fs::write(&tmp, "new-token-2\n").unwrap();
    std::fs::rename(&tmp, &tokens).unwrap();
    wait_for(&relay, "the file without the old token is in force", || {
        access_file(&relay, "token-file")["entries"] == 1
    });
    let fresh = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let mut probe = ProtocolClient::connect(relay.port, &fresh, relay.id).unwrap();
    assert_eq!(
        probe.join(Some("old-token-1")).unwrap(),
        Message::Response(Response::with_code(Response::WRONG_TOKEN))
    );
    drop(probe);
    // Existing sessions untouched: A still joined, B still on the same
    // relayed connection.
    assert!(relay.metric("relaysrv_joined_devices") >= 1.0);
    assert_eq!(relay.status()["numActiveSessions"], 1);
    assert_eq!(
        b.wait_connected(a.id(), Duration::ZERO).as_deref(),
        Some("relay-client")
    );
    let log = relay.proc.log();
    assert!(!log.contains("old-token-1") && !log.contains("new-token-2"));

    // A real device's new join with the old token is refused.
    let wrong = reject(&relay, "WrongToken");
    a.set_options(
        json!({ "listenAddresses": [format!("{}&rejoin=1", relay.uri_with_token("old-token-1"))] }),
    );
    wait_for(&relay, "A's join with the old token refused", || {
        reject(&relay, "WrongToken") > wrong
    });
    a.set_options(json!({ "listenAddresses": [relay.uri_with_token("new-token-2")] }));
    wait_for(&relay, "A joins with the new token", || {
        relay.metric("relaysrv_joined_devices") >= 1.0
    });
    b.shutdown();
    a.shutdown();
}
