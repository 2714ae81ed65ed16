//! The node's REST API: authentication like Syncthing's, the status codes
//! of bad input (none of which changes the configuration), configuration
//! round trips, and every endpoint side by side with Syncthing 1.19.2,
//! 1.30.0 and 2.1.3 (where they differ, the node answers as 2.x does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::https::Endpoint;
use e2e::node::NodeHome;
use e2e::peers::{self, PeerProgram, PeerVersion};
use e2e::rest_api::{call, keyed, shape_diff};
use e2e::syncthing::start_tcp_version;
use serde_json::{json, Value};

/// Every file of the home whose name starts with `config` (the file and
/// nothing else may change).
fn config_files(home: &NodeHome) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&home.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("config"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn bad_input_gets_syncthings_status_codes_and_never_changes_the_config() {
    bad_input_gets_syncthings_status_codes(false);
}

/// The same over HTTPS (`gui.useTLS`).
#[test]
fn bad_input_gets_syncthings_status_codes_over_https() {
    bad_input_gets_syncthings_status_codes(true);
}

fn bad_input_gets_syncthings_status_codes(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut home = NodeHome::generate(&dir.path().join("n"), "n");
    if tls {
        home.use_tls();
    }
    let folder = dir.path().join("f");
    std::fs::create_dir_all(&folder).unwrap();
    let node = home.start();
    let (port, key) = (&home.endpoint(), home.api_key.as_str());
    // A folder to PATCH later.
    let f = json!({"id": "f", "label": "F", "path": folder, "type": "sendreceive"});
    let a = keyed(
        port,
        key,
        "POST",
        "/rest/config/folders",
        Some(&f.to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let before = config_files(&home);

    // Over the 4 MiB body limit: 413, and the answer arrives (the body is
    // read, not left unread under a closed connection).
    let huge = format!("{{\"x\": \"{}\"}}", "a".repeat(4 << 20));
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "PUT",
            "/rest/config",
            Some(huge.as_str()),
            413,
            "larger than",
        ),
        ("GET", "/rest/no/such/thing", None, 404, ""),
        ("GET", "/rest/system/nosuch", None, 404, ""),
        ("GET", "/rest/system/shutdown", None, 405, ""),
        ("DELETE", "/rest/system/status", None, 405, ""),
        ("POST", "/rest/config/restart-required", None, 405, ""),
        ("PUT", "/rest/config", Some("{not json"), 400, "JSON"),
        ("POST", "/rest/system/config", Some("[1,2"), 400, "JSON"),
        (
            "PATCH",
            "/rest/config/options",
            Some("{\"listenAddresses\": 5}"),
            400,
            "listenAddresses",
        ),
        (
            "PATCH",
            "/rest/config/folders/f",
            Some("{\"rescanIntervalS\": \"soon\"}"),
            400,
            "rescanIntervalS",
        ),
        (
            "PATCH",
            "/rest/config/folders/f",
            Some("{\"type\": \"mirror\"}"),
            400,
            "mirror",
        ),
        (
            "PATCH",
            "/rest/config/folders/f",
            Some("{\"disableFsync\": true}"),
            400,
            "disableFsync",
        ),
        // Checked as networks, unlike Syncthing, which ignores a typo.
        (
            "PATCH",
            "/rest/config/options",
            Some("{\"alwaysLocalNets\": [\"10.0.0.0/33\"]}"),
            400,
            "alwaysLocalNets",
        ),
        (
            "PATCH",
            "/rest/config/options",
            Some("{\"maxRecvKbps\": \"fast\"}"),
            400,
            "maxRecvKbps",
        ),
        // A key 2.x added that this node cannot honour.
        (
            "PATCH",
            "/rest/config/folders/f",
            Some("{\"syncXattrs\": true}"),
            400,
            "syncXattrs",
        ),
        (
            "PUT",
            "/rest/config/folders/g",
            Some("{\"path\": \"relative/path\"}"),
            400,
            "absolute",
        ),
        (
            "GET",
            "/rest/config/devices/NOT-A-DEVICE",
            None,
            400,
            "device ID",
        ),
        (
            "DELETE",
            "/rest/config/devices/NOT-A-DEVICE",
            None,
            400,
            "device ID",
        ),
        (
            "POST",
            "/rest/config/devices",
            Some("{\"deviceID\": \"AAAA-BBBB\"}"),
            400,
            "deviceID",
        ),
        (
            "GET",
            "/rest/db/completion?folder=f&device=XYZ",
            None,
            400,
            "device ID",
        ),
        ("GET", "/rest/db/status", None, 400, "folder"),
        ("GET", "/rest/db/status?folder=nope", None, 404, ""),
        ("DELETE", "/rest/config/folders/nope", None, 404, ""),
    ];
    for (method, path, body, want, says) in &cases {
        let a = keyed(port, key, method, path, *body);
        assert_eq!(a.status, *want, "{method} {path}: {}", a.body);
        assert!(
            a.body.contains(says),
            "{method} {path}: {:?} lacks {says:?}",
            a.body
        );
        println!(
            "{method:6} {path:48} -> {} {}",
            a.status,
            a.body.trim().chars().take(80).collect::<String>()
        );
    }
    // Missing, wrong, or wrongly-placed keys.
    for headers in [
        vec![],
        vec![("X-API-Key", "wrong")],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-API-Key", "")],
    ] {
        let a = call(port, "GET", "/rest/system/status", &headers, None);
        assert_eq!(a.status, 403, "{headers:?}: {}", a.body);
        let a = call(port, "POST", "/rest/system/shutdown", &headers, None);
        assert_eq!(a.status, 403, "{headers:?}: {}", a.body);
    }
    assert_eq!(
        config_files(&home),
        before,
        "a refused request changed the config"
    );
    assert!(node.get("/rest/system/ping").is_ok(), "the node still runs");

    // Bearer works like X-API-Key; the health check needs nothing.
    let bearer = format!("Bearer {key}");
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(a.status, 200);
    let a = call(port, "GET", "/rest/noauth/health", &[], None);
    assert_eq!((a.status, a.json()), (200, json!({"status": "OK"})));
    // The node's own log lines are served.
    let log = keyed(port, key, "GET", "/rest/system/log", None).json();
    let lines: Vec<&str> = log["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("starting")),
        "{lines:?}"
    );
    node.stop();
}

#[test]
fn browser_rules_basic_auth_csrf_host_check_and_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let node = home.start();
    let (port, key) = (home.gui_port, home.api_key.as_str());

    // A CORS preflight gets the allowed methods, nothing else.
    let a = call(
        port,
        "OPTIONS",
        "/rest/system/status",
        &[("Origin", "http://evil.example")],
        None,
    );
    assert_eq!(a.status, 204);
    assert!(a
        .header("access-control-allow-headers")
        .unwrap()
        .contains("X-API-Key"));
    // With the key, any origin may call (Syncthing's rule); without, no
    // CORS header is given.
    let a = keyed(port, key, "GET", "/rest/system/ping", None);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    let a = call(port, "GET", "/rest/system/ping", &[], None);
    assert_eq!(
        (a.status, a.header("access-control-allow-origin")),
        (403, None)
    );
    // DNS rebinding: another host name for our loopback address.
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("X-API-Key", key), ("Host", "evil.example:80")],
        None,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("Host check"), "{}", a.body);

    // A GUI user; the password is stored as a bcrypt hash.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"user": "ops", "password": "s3cret"}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let gui = keyed(port, key, "GET", "/rest/config/gui", None).json();
    let hash = gui["password"].as_str().unwrap();
    assert!(hash.starts_with("$2"), "password stored as {hash:?}");
    let text = std::fs::read_to_string(home.config_path()).unwrap_or_default();
    assert!(
        !text.contains("s3cret"),
        "plain password in the config file"
    );

    let wrong = e2e::rest_api::basic_auth("ops", "guess");
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Authorization", &wrong)],
        None,
    );
    assert_eq!(a.status, 401, "{}", a.body);
    let right = e2e::rest_api::basic_auth("ops", "s3cret");
    // Right password but no CSRF token: what a cross-origin page could do
    // with the browser's cached credentials.
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Authorization", &right)],
        None,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("CSRF"), "{}", a.body);
    // A page of our own origin gets the token as a cookie and echoes it.
    let a = call(port, "GET", "/", &[("Authorization", &right)], None);
    assert_eq!(a.status, 200);
    let cookie = a
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix("CSRF-Token-"))
        .expect("CSRF cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (unique, token) = cookie.split_once('=').unwrap();
    let header = format!("X-CSRF-Token-{unique}");
    let a = call(
        port,
        "GET",
        "/rest/system/status",
        &[("Authorization", &right), (&header, token)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["myID"], home.id.as_str());
    node.stop();

    // Without an API key and user, a non-loopback address is refused
    // (a fresh home: this one has a GUI user now).
    let fresh = NodeHome::generate(&dir.path().join("fresh"), "fresh");
    let out = std::process::Command::new(e2e::our_binary("node"))
        .args(["serve", "--home"])
        .arg(&fresh.dir)
        .arg(format!("--gui-address=0.0.0.0:{}", e2e::pick_port()))
        .arg("--gui-apikey=")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert!(err.contains("refusing to serve the REST API"), "{err}");
}

#[test]
fn configuration_round_trips_through_the_syncthing_shapes() {
    configuration_round_trips(false);
}

/// The same over HTTPS (`gui.useTLS`).
#[test]
fn configuration_round_trips_through_the_syncthing_shapes_over_https() {
    configuration_round_trips(true);
}

fn configuration_round_trips(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut home = NodeHome::generate(&dir.path().join("n"), "n");
    if tls {
        home.use_tls();
    }
    let node = home.start();
    let (port, key) = (&home.endpoint(), home.api_key.as_str());
    let peer = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";
    let folder = dir.path().join("shared");
    std::fs::create_dir_all(&folder).unwrap();

    // Whole config: GET, edit like a tool would, PUT back.
    let mut c = keyed(port, key, "GET", "/rest/config", None).json();
    assert_eq!(c["version"], 36);
    let me = c["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["deviceID"] == home.id.as_str());
    assert!(
        me,
        "this device is listed among the devices, as in Syncthing"
    );
    c["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"deviceID": peer.ll(), "name": "peer", "addresses": ["dynamic"]}));
    let mut f = keyed(port, key, "GET", "/rest/config/defaults/folder", None).json();
    f["id"] = json!("shared");
    f["path"] = json!(folder);
    f["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"deviceID": peer}));
    c["folders"].as_array_mut().unwrap().push(f);
    let a = keyed(port, key, "PUT", "/rest/config", Some(&c.to_string()));
    assert_eq!(a.status, 200, "{}", a.body);
    let back = keyed(port, key, "GET", "/rest/config", None).json();
    assert_eq!(back["folders"][0]["id"], "shared");
    let d = keyed(
        port,
        key,
        "GET",
        &format!("/rest/config/devices/{peer}"),
        None,
    )
    .json();
    assert_eq!(
        (d["name"].as_str(), d["deviceID"].as_str()),
        (Some("peer"), Some(peer)),
        "lower-case ID normalised"
    );
    // Introducer and auto-accept settings are real settings (issue 18),
    // with Syncthing's defaults and shapes.
    assert_eq!(
        (
            &d["introducer"],
            &d["skipIntroductionRemovals"],
            &d["introducedBy"],
            &d["autoAcceptFolders"]
        ),
        (&json!(false), &json!(false), &json!(""), &json!(false))
    );
    let a = keyed(
        port,
        key,
        "PATCH",
        &format!("/rest/config/devices/{peer}"),
        Some(
            &json!({"introducer": true, "skipIntroductionRemovals": true,
                     "autoAcceptFolders": true, "introducedBy": home.id})
            .to_string(),
        ),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let d = keyed(
        port,
        key,
        "GET",
        &format!("/rest/config/devices/{peer}"),
        None,
    )
    .json();
    assert_eq!(
        (
            &d["introducer"],
            &d["skipIntroductionRemovals"],
            &d["introducedBy"],
            &d["autoAcceptFolders"]
        ),
        (&json!(true), &json!(true), &json!(home.id), &json!(true))
    );
    let f = keyed(port, key, "GET", "/rest/config/folders/shared", None).json();
    assert_eq!(f["devices"][1]["introducedBy"], "", "{f}");
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/defaults/folder",
        Some(r#"{"path": "/srv/incoming"}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let c = keyed(port, key, "GET", "/rest/config", None).json();
    assert_eq!(c["defaults"]["folder"]["path"], "/srv/incoming");

    // The old endpoint and the per-object ones.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/folders/shared",
        Some(r#"{"label": "Shared", "rescanIntervalS": 120}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let f = keyed(port, key, "GET", "/rest/config/folders/shared", None).json();
    assert_eq!(
        (f["label"].as_str(), f["rescanIntervalS"].as_u64()),
        (Some("Shared"), Some(120))
    );
    let sys = keyed(port, key, "GET", "/rest/system/config", None).json();
    assert_eq!(sys["folders"][0]["label"], "Shared");
    let a = keyed(
        port,
        key,
        "POST",
        "/rest/system/config",
        Some(&sys.to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Listen addresses apply at the next start.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/options",
        Some(r#"{"listenAddresses": ["tcp://127.0.0.1:1"]}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Keys of 2.x are shown with its defaults; a key it dropped, written
    // back by a 1.x tool, is accepted and no longer shown.
    let a = keyed(
        port,
        key,
        "PATCH",
        "/rest/config/options",
        Some(r#"{"restartOnWakeup": false, "connectionPriorityTcpLan": 10}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let o = keyed(port, key, "GET", "/rest/config/options", None).json();
    assert_eq!(o["connectionPriorityRelay"], 50);
    assert!(o.get("restartOnWakeup").is_none(), "{o}");
    let rr = keyed(port, key, "GET", "/rest/config/restart-required", None).json();
    assert_eq!(rr, json!({"requiresRestart": true}));
    let a = keyed(
        port,
        key,
        "DELETE",
        &format!("/rest/config/devices/{peer}"),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = keyed(
        port,
        key,
        "GET",
        &format!("/rest/config/devices/{peer}"),
        None,
    );
    assert_eq!(a.status, 404);
    // Pausing a folder, by any endpoint, is an event.
    for paused in [true, false] {
        let body = json!({ "paused": paused }).to_string();
        let a = keyed(
            port,
            key,
            "PATCH",
            "/rest/config/folders/shared",
            Some(&body),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let evs = keyed(
        port,
        key,
        "GET",
        "/rest/events?events=FolderPaused,FolderResumed&timeout=5",
        None,
    )
    .json();
    let kinds: Vec<(&str, &str)> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("FolderPaused", "shared"), ("FolderResumed", "shared")]
    );
    if tls {
        plain_http_is_redirected_while_use_tls_is_set(port, key);
    }
    node.stop();
}

/// With `useTLS`, plain HTTP to the port gets a 307 to the same URL over
/// HTTPS (the method kept, nothing else answered but the health check); switched off over REST,
/// plain HTTP is served again at once (HTTPS still is: the port speaks
/// both, as Syncthing's).
fn plain_http_is_redirected_while_use_tls_is_set(https: &Endpoint, key: &str) {
    let plain = https.port;
    let redirect = |method: &str, path: &str| {
        let a = call(plain, method, path, &[("X-API-Key", key)], None);
        (a.status, a.header("location").map(str::to_string))
    };
    for (method, path) in [
        ("GET", "/rest/system/status"),
        ("POST", "/rest/db/scan?folder=shared"),
        ("GET", "/"),
    ] {
        assert_eq!(
            redirect(method, path),
            (307, Some(format!("https://127.0.0.1:{plain}{path}"))),
            "{method} {path} over plain HTTP"
        );
    }
    // The health check stays plain: container probes speak HTTP.
    assert_eq!(redirect("GET", "/rest/noauth/health"), (200, None));
    let gui = keyed(https, key, "GET", "/rest/config/gui", None).json();
    assert_eq!(gui["useTLS"], true);
    let a = keyed(
        https,
        key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"useTLS": false}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = keyed(plain, key, "GET", "/rest/system/status", None);
    assert_eq!(
        a.status, 200,
        "plain HTTP served once useTLS is off: {}",
        a.body
    );
    let a = keyed(https, key, "GET", "/rest/system/status", None);
    assert_eq!(a.status, 200, "HTTPS still served: {}", a.body);
    let a = keyed(
        plain,
        key,
        "PATCH",
        "/rest/config/gui",
        Some(r#"{"useTLS": true}"#),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(redirect("GET", "/rest/system/status").0, 307);
}

trait Lower {
    fn ll(&self) -> String;
}

impl Lower for &str {
    fn ll(&self) -> String {
        self.to_ascii_lowercase()
    }
}

/// Paths called on both; `{folder}` and `{device}` are filled in.
const GETS: &[&str] = &[
    "/rest/system/ping",
    "/rest/system/status",
    "/rest/system/version",
    "/rest/system/connections",
    "/rest/system/error",
    "/rest/system/log",
    "/rest/system/discovery",
    "/rest/system/browse?current=/",
    "/rest/config",
    "/rest/system/config",
    "/rest/config/restart-required",
    "/rest/config/insync",
    "/rest/config/options",
    "/rest/config/gui",
    "/rest/config/ldap",
    "/rest/config/folders",
    "/rest/config/devices",
    "/rest/config/folders/{folder}",
    "/rest/config/devices/{device}",
    "/rest/config/defaults/folder",
    "/rest/config/defaults/device",
    "/rest/config/defaults/ignores",
    "/rest/db/status?folder={folder}",
    "/rest/db/completion?folder={folder}&device={device}",
    "/rest/db/completion?folder={folder}",
    "/rest/db/need?folder={folder}",
    "/rest/db/remoteneed?folder={folder}&device={device}",
    "/rest/db/localchanged?folder={folder}",
    "/rest/db/file?folder={folder}&file=a.txt",
    "/rest/db/browse?folder={folder}",
    "/rest/db/ignores?folder={folder}",
    "/rest/folder/errors?folder={folder}",
    "/rest/stats/device",
    "/rest/stats/folder",
    "/rest/cluster/pending/devices",
    "/rest/cluster/pending/folders",
    "/rest/svc/deviceid?id={device}",
    "/rest/svc/deviceid?id=nonsense",
    "/rest/svc/random/string?length=16",
    "/rest/events?since=0&limit=5&timeout=0",
    "/rest/events/disk?since=0&limit=5&timeout=0",
];

/// Differences kept on purpose: (path prefix of the endpoint, field path
/// prefix, reason).
const DELIBERATE: &[(&str, &str, &str)] = &[
    (
        "/rest/system/status",
        ".hashedFiles",
        "extra counters of this node (hashing, serving, pulling)",
    ),
    ("/rest/system/status", ".hashedBytes", "extra counter"),
    ("/rest/system/status", ".servedBytes", "extra counter"),
    ("/rest/system/status", ".servedRequests", "extra counter"),
    ("/rest/system/status", ".pulledBytes", "extra counter"),
    ("/rest/system/status", ".reusedBytes", "extra counter"),
    (
        "/rest/system/status",
        ".discovery",
        "Syncthing adds discovery fields only when discovery is on",
    ),
    (
        "/rest/system/status",
        ".lastDialStatus.<id>.error",
        "null after a successful dial, a string after a failed one, on both (a value, not a shape)",
    ),
    (
        "/rest/config",
        ".name",
        "this node's name is a top-level field (Syncthing keeps it on its own device entry)",
    ),
    ("/rest/system/config", ".name", "as /rest/config"),
    (
        "/rest/config",
        ".options.dnsServers",
        "extra option: DNS servers for host names",
    ),
    (
        "/rest/system/config",
        ".options.dnsServers",
        "as /rest/config",
    ),
    ("/rest/config/options", ".dnsServers", "as /rest/config"),
    ("/rest/config/devices", "[0].paused", "-"),
    (
        "/rest/db/file",
        ".global.permissions",
        "present when the entry has permission bits",
    ),
    (
        "/rest/db/file",
        ".local.permissions",
        "present when the entry has permission bits",
    ),
    (
        "/rest/db/completion",
        ".remoteState",
        "newer Syncthing field, also given here",
    ),
    (
        "/rest/events",
        "[0].data",
        "different events happened on each side (the envelope id, globalID, time, type, data is compared)",
    ),
    ("/rest/events/disk", "[0].data", "as /rest/events"),
    ("/rest/system/log", ".messages[0]", "different lines"),
    ("event ConfigSaved", ".data.name", "as /rest/config"),
    (
        "event PendingDevicesChanged",
        ".data.",
        "`added` or `removed`, whichever happened, on both; the first event differs",
    ),
    (
        "event PendingFoldersChanged",
        ".data.",
        "`added` or `removed`, whichever happened, on both; the first event differs",
    ),
    ("event ConfigSaved", ".data.options.dnsServers", "as /rest/config"),
    (
        "/rest/folder/errors",
        ".errors: null in Syncthing, array in ours",
        "an empty list is [] here (Syncthing marshals a nil list as null); clients iterate either",
    ),
    (
        "/rest/system/error",
        ".errors: null",
        "an empty list is [] here, null in Syncthing (as /rest/folder/errors); \
         1.19.2 also warns about running as root",
    ),
    (
        "/rest/config",
        ".devices[0].numConnections",
        "Syncthing 2.x's device setting (1.24+), also here",
    ),
    ("/rest/system/config", ".devices[0].numConnections", "as /rest/config"),
    ("/rest/config", ".defaults.device.numConnections", "as /rest/config"),
    (
        "/rest/system/config",
        ".defaults.device.numConnections",
        "as /rest/config",
    ),
    (
        "event ConfigSaved",
        ".data.defaults.device.numConnections",
        "as /rest/config",
    ),
    ("/rest/config/devices", "[0].numConnections", "as /rest/config"),
    ("/rest/config/devices/", ".numConnections", "as /rest/config"),
    ("/rest/config/defaults/device", ".numConnections", "as /rest/config"),
    (
        "event ConfigSaved",
        ".data.devices[0].numConnections",
        "as /rest/config",
    ),
    ("/rest/db/need", "", "-"),
    ("/rest/db/remoteneed", "", "-"),
    ("/rest/db/localchanged", "", "-"),
];

/// Differences against one Syncthing version only: (version, path prefix
/// of the endpoint, field path prefix, reason). Where 1.19.2 and 2.x
/// answer differently the node follows 2.x, so the 1.19.2 run lists those
/// fields here with the reason "2.x answers so".
const DELIBERATE_PER_VERSION: &[(PeerVersion, &str, &str, &str)] = &[(
    PeerVersion::V1_19_2,
    "/rest/system/connections",
    ".connections.<id>",
    "1.19.2 lists its own device (never connected) first; per-device shapes equal",
)];

/// The configuration endpoints (the keys of every configuration object).
const CONFIG: &[&str] = &["/rest/config", "/rest/system/config", "event ConfigSaved"];

/// Where 1.x and 2.x answer differently the node answers as 2.1.3 does:
/// (endpoints, last field name; `status` for a status code) that the runs
/// against 1.19.2 and 1.30.0 therefore see differ ("2.x answers so").
const V2_ANSWERS_SO: &[(&[&str], &[&str])] = &[
    // Keys 2.x added (some already in 1.30.0), with 2.x's defaults.
    (
        CONFIG,
        &[
            "numConnections",
            "group",
            "blockIndexing",
            "fsWatcherTimeoutS",
            "pullerDelayS",
            "sendOwnership",
            "syncOwnership",
            "sendXattrs",
            "syncXattrs",
            "xattrFilter",
            "metricsWithoutAuth",
            "sendBasicAuthPrompt",
            "sessionCookieDurationS",
            "sessionCookiePath",
            "auditEnabled",
            "auditFile",
            "connectionPriorityTcpLan",
            "connectionPriorityQuicLan",
            "connectionPriorityTcpWan",
            "connectionPriorityQuicWan",
            "connectionPriorityRelay",
            "connectionPriorityUpgradeThreshold",
        ],
    ),
    // Keys 2.x dropped: no longer shown, still accepted on input.
    (
        CONFIG,
        &[
            "disableTempIndexes",
            "weakHashThresholdPct",
            "debugging",
            "cacheIgnoredFiles",
            "databaseTuning",
            "insecureAllowOldTLSVersions",
            "restartOnWakeup",
        ],
    ),
    (
        &["/rest/db/status", "event FolderSummary"],
        &[
            "error",
            "watchError",
            "remoteSequence",
            "receiveOnlyChangedFiles",
            "receiveOnlyChangedDirectories",
            "receiveOnlyChangedSymlinks",
            "receiveOnlyChangedDeletes",
            "receiveOnlyChangedBytes",
            "receiveOnlyTotalItems",
        ],
    ),
    (
        &["/rest/db/file"],
        &[
            "mtime",
            "blocksHash",
            "previousBlocksHash",
            "platform",
            "inodeChange",
        ],
    ),
    (&["/rest/system/version"], &["container", "extra"]),
    (&["/rest/system/error", "/rest/system/log"], &["level"]),
    (&["event FolderCompletion"], &["remoteState"]),
    // 501 (1.19.2: 503); peerCompletion is gone (404; 1.19.2: 403).
    (
        &["/rest/system/upgrade", "/rest/debug/peerCompletion"],
        &["status"],
    ),
];

/// Whether `diff` of `endpoint` is one where the node follows 2.x.
fn follows_2x(endpoint: &str, diff: &str) -> bool {
    let field = diff.split(':').next().unwrap_or("");
    let last = field.rsplit('.').next().unwrap_or("");
    V2_ANSWERS_SO.iter().any(|(endpoints, fields)| {
        endpoints.iter().any(|e| endpoint.starts_with(e)) && fields.contains(&last)
    })
}

fn deliberate(version: PeerVersion, endpoint: &str, diff: &str) -> Option<&'static str> {
    if version != PeerVersion::V2_1_3 && follows_2x(endpoint, diff) {
        return Some("2.x answers so");
    }
    let common = DELIBERATE.iter().copied();
    let own = DELIBERATE_PER_VERSION
        .iter()
        .filter(|(v, ..)| *v == version)
        .map(|&(_, e, f, w)| (e, f, w));
    own.chain(common)
        .find(|(e, field, _)| endpoint.starts_with(e) && diff.starts_with(field))
        .map(|(_, _, why)| why)
}

#[test]
fn every_endpoint_side_by_side_with_syncthing_1_19_2() {
    side_by_side(PeerVersion::V1_19_2);
}

#[test]
fn every_endpoint_side_by_side_with_syncthing_1_30_0() {
    side_by_side(PeerVersion::V1_30_0);
}

/// Against 2.1.3 (when built), and the table of what 1.19.2 and 2.1.3
/// answer differently (the 1.19.2 answers from a run of their own).
#[test]
fn every_endpoint_side_by_side_with_syncthing_2_1_3() {
    let test = "every_endpoint_side_by_side_with_syncthing_2_1_3";
    if !peers::available(PeerVersion::V2_1_3, test, PeerProgram::Syncthing) {
        return;
    }
    let new = side_by_side(PeerVersion::V2_1_3);
    let old = side_by_side(PeerVersion::V1_19_2);
    let table = version_differences(&old, &new);
    println!(
        "Syncthing 1.19.2 vs 2.1.3, by endpoint ({} differences):\n{}",
        table.len(),
        table.join("\n")
    );
    assert!(
        !table.is_empty(),
        "1.19.2 and 2.1.3 answered alike everywhere: the comparison compared nothing"
    );
}

/// What one real Syncthing answered in a side-by-side run: the JSON of
/// each GET (by endpoint, and by `after <path>` for the reads after the
/// writes), each event type's first event (`event <type>`), and the
/// status of each write (`<method> <path>`).
#[derive(Default)]
struct Answers {
    json: BTreeMap<String, Value>,
    status: BTreeMap<String, u16>,
}

/// The differences between two Syncthing versions' answers, one line per
/// endpoint and field: shapes of the JSON, and status codes.
fn version_differences(old: &Answers, new: &Answers) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = old.json.keys().chain(new.json.keys()).collect();
    for k in keys {
        match (old.json.get(k), new.json.get(k)) {
            (Some(o), Some(n)) => {
                let mut diffs = Vec::new();
                shape_diff(o, n, "", &mut diffs);
                for d in diffs {
                    // shape_diff speaks of "Syncthing" and "ours": here the
                    // first is 1.19.2, the second 2.1.3.
                    let d = d
                        .replace("missing in ours", "removed in 2.1.3")
                        .replace("extra in ours", "new in 2.1.3")
                        .replace("in Syncthing,", "in 1.19.2,")
                        .replace("in ours", "in 2.1.3");
                    out.push(format!("{k:44} {d}"));
                }
            }
            (Some(_), None) => out.push(format!("{k:44} answered by 1.19.2 only")),
            (None, Some(_)) => out.push(format!("{k:44} answered by 2.1.3 only")),
            (None, None) => {}
        }
    }
    for (k, o) in &old.status {
        if let Some(n) = new.status.get(k).filter(|n| *n != o) {
            out.push(format!("{k:44} status {o} in 1.19.2, {n} in 2.1.3"));
        }
    }
    out
}

/// Every GET, the writes and the events, on a real Syncthing of `version`
/// and on our node, set up alike and connected to each other; fails on any
/// difference not explained in [`DELIBERATE`] or
/// [`DELIBERATE_PER_VERSION`]. Returns what Syncthing answered.
fn side_by_side(version: PeerVersion) -> Answers {
    let mut recorded = Answers::default();
    let dir = tempfile::tempdir().unwrap();
    let (st, st_port) = start_tcp_version(&dir.path().join("st"), version);
    let home = NodeHome::generate(&dir.path().join("n"), "ours");
    let node = home.start();
    let (port, key) = (home.gui_port, home.api_key.clone());
    // The same folder on both, shared with each other; one file on each.
    let st_dir = dir.path().join("st-folder");
    let our_dir = dir.path().join("our-folder");
    st.add_device(&home.id, &[&home.address()]);
    st.share_folder("folder-x", &st_dir, "sendreceive", &[&home.id]);
    std::fs::write(st_dir.join("a.txt"), b"hello").unwrap();
    std::fs::create_dir_all(&our_dir).unwrap();
    std::fs::write(our_dir.join("a.txt"), b"hello").unwrap();
    let dev = json!({"deviceID": st.id(), "name": "st", "addresses": [format!("tcp://127.0.0.1:{st_port}")]});
    assert_eq!(
        keyed(
            port,
            &key,
            "POST",
            "/rest/config/devices",
            Some(&dev.to_string())
        )
        .status,
        200
    );
    let f = json!({"id": "folder-x", "path": our_dir, "type": "sendreceive",
                   "devices": [{"deviceID": st.id()}]});
    assert_eq!(
        keyed(
            port,
            &key,
            "POST",
            "/rest/config/folders",
            Some(&f.to_string())
        )
        .status,
        200
    );
    st.scan("folder-x");
    let up = e2e::wait::until(Duration::from_secs(60), Duration::from_millis(200), || {
        node.connected(st.id()).then_some(())
    });
    assert!(up.is_some(), "not connected:\n{}", node.proc.log_tail(30));
    std::thread::sleep(Duration::from_secs(2));

    let mut unexplained = Vec::new();
    let mut table = Vec::new();
    for p in GETS {
        let theirs_path = p
            .replace("{folder}", "folder-x")
            .replace("{device}", &home.id);
        let ours_path = p
            .replace("{folder}", "folder-x")
            .replace("{device}", st.id());
        let t = st.get(&theirs_path);
        let o = keyed(port, &key, "GET", &ours_path, None);
        let (Ok(t), 200) = (&t, o.status) else {
            unexplained.push(format!(
                "{p}: Syncthing {:?}, ours HTTP {} {}",
                t.as_ref().err(),
                o.status,
                o.body.trim()
            ));
            continue;
        };
        let o: Value = o.json();
        let mut diffs = Vec::new();
        shape_diff(t, &o, "", &mut diffs);
        let endpoint = p.split('?').next().unwrap();
        recorded.json.insert(p.to_string(), t.clone());
        for d in diffs {
            match deliberate(version, endpoint, &d) {
                Some(why) => table.push(format!("{endpoint:36} {d}  [{why}]")),
                None => unexplained.push(format!("{p}: {d}")),
            }
        }
    }
    // The writes, on both: same status codes; what they change is then
    // read back and compared by shape too.
    let st_key = st.home.api_key.clone();
    let random_dev = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";
    let writes: Vec<(&str, String, Option<String>)> = vec![
        (
            "POST",
            "/rest/system/error".into(),
            Some("disk almost full".into()),
        ),
        ("GET", "/rest/system/error".into(), None),
        ("POST", "/rest/system/error/clear".into(), None),
        ("POST", "/rest/system/pause?device={device}".into(), None),
        ("GET", "/rest/system/connections".into(), None),
        ("POST", "/rest/system/resume?device={device}".into(), None),
        ("POST", "/rest/db/scan?folder={folder}".into(), None),
        (
            "POST",
            "/rest/db/ignores?folder={folder}".into(),
            Some(r#"{"ignore": ["*.tmp", "// comment"]}"#.into()),
        ),
        ("GET", "/rest/db/ignores?folder={folder}".into(), None),
        (
            "PATCH",
            "/rest/config/folders/{folder}".into(),
            Some(r#"{"label": "Renamed"}"#.into()),
        ),
        (
            "PATCH",
            "/rest/config/devices/{device}".into(),
            Some(r#"{"name": "the-peer"}"#.into()),
        ),
        (
            "PATCH",
            "/rest/config/options".into(),
            Some(r#"{"reconnectionIntervalS": 7}"#.into()),
        ),
        ("PUT", "/rest/config".into(), Some("{config}".into())),
        (
            "POST",
            "/rest/system/config".into(),
            Some("{config}".into()),
        ),
        (
            "DELETE",
            format!("/rest/cluster/pending/devices?device={random_dev}"),
            None,
        ),
        (
            "DELETE",
            "/rest/cluster/pending/folders?folder=nothing".into(),
            None,
        ),
        ("GET", "/rest/nope".into(), None),
        ("GET", "/rest/debug/peerCompletion".into(), None),
        ("GET", "/rest/system/shutdown".into(), None),
        ("PUT", "/rest/config".into(), Some("{broken".into())),
        ("POST", "/rest/system/ping".into(), None),
        // Built without the upgrader, both refuse it.
        ("GET", "/rest/system/upgrade".into(), None),
    ];
    let mut statuses = Vec::new();
    for (method, path, body) in &writes {
        let mut answers = Vec::new();
        for (p, k, other) in [
            (st.home.gui_port, st_key.as_str(), home.id.as_str()),
            (port, key.as_str(), st.id()),
        ] {
            let path = path
                .replace("{folder}", "folder-x")
                .replace("{device}", other);
            let body = body.as_ref().map(|b| {
                if b == "{config}" {
                    keyed(p, k, "GET", "/rest/config", None).body
                } else {
                    b.clone()
                }
            });
            answers.push(keyed(p, k, method, &path, body.as_deref()));
        }
        let (t, o) = (&answers[0], &answers[1]);
        recorded.status.insert(format!("{method} {path}"), t.status);
        statuses.push(format!(
            "{method:6} {path:56} Syncthing {} ours {}",
            t.status, o.status
        ));
        let endpoint = path.split('?').next().unwrap();
        if t.status != o.status {
            if let Some(why) = deliberate(version, endpoint, "status") {
                table.push(format!(
                    "{endpoint:36} status {} in Syncthing, {} in ours  [{why}]",
                    t.status, o.status
                ));
                continue;
            }
            unexplained.push(format!(
                "{method} {path}: Syncthing {} {:?}, ours {} {:?}",
                t.status, t.body, o.status, o.body
            ));
        } else if *method == "GET" && t.status == 200 {
            recorded.json.insert(format!("after {path}"), t.json());
            let mut diffs = Vec::new();
            shape_diff(&t.json(), &o.json(), "", &mut diffs);
            for d in diffs {
                match deliberate(version, endpoint, &d) {
                    Some(why) => table.push(format!("{path:36} {d}  [{why}]")),
                    None => unexplained.push(format!("{method} {path} (after writes): {d}")),
                }
            }
        }
    }
    println!("writes:\n{}", statuses.join("\n"));

    // Events: for each type both sides emitted, the data has the same shape.
    let by_type = |p: u16, k: &str| {
        let mut m = std::collections::BTreeMap::<String, Value>::new();
        // The default mask: Syncthing buffers it from its start (a new
        // `events=` mask would only see events from its first use on).
        for path in [
            "/rest/events?since=0&timeout=0",
            "/rest/events/disk?since=0&timeout=0",
        ] {
            for e in keyed(p, k, "GET", path, None).json().as_array().unwrap() {
                m.entry(e["type"].as_str().unwrap().to_string())
                    .or_insert_with(|| e.clone());
            }
        }
        m
    };
    let theirs = by_type(st.home.gui_port, &st_key);
    let ours = by_type(port, &key);
    let mut compared = Vec::new();
    for (kind, t) in &theirs {
        let Some(o) = ours.get(kind) else { continue };
        compared.push(kind.clone());
        recorded.json.insert(format!("event {kind}"), t.clone());
        let mut diffs = Vec::new();
        shape_diff(t, o, "", &mut diffs);
        for d in diffs {
            let endpoint = format!("event {kind}");
            match deliberate(version, &endpoint, &d) {
                Some(why) => table.push(format!("{endpoint:36} {d}  [{why}]")),
                None => unexplained.push(format!("{endpoint}: {d}")),
            }
        }
    }
    let only_theirs: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    println!("event types compared: {compared:?}\nemitted by Syncthing only in this run: {only_theirs:?}");
    println!(
        "deliberate differences from Syncthing {version}:\n{}",
        table.join("\n")
    );
    assert!(
        unexplained.is_empty(),
        "unexplained differences from Syncthing {version}:\n{}",
        unexplained.join("\n")
    );
    node.stop();
    st.shutdown();
    recorded
}

#[test]
fn pause_resume_restart_and_pending_devices() {
    let dir = tempfile::tempdir().unwrap();
    let ha = NodeHome::generate(&dir.path().join("a"), "a");
    let hb = NodeHome::generate(&dir.path().join("b"), "b");
    let a = ha.start();
    let b = hb.start();
    let (pa, ka) = (ha.gui_port, ha.api_key.as_str());
    // B knows A, A does not know B yet: B is pending on A.
    let dev_a = json!({"deviceID": ha.id, "name": "a", "addresses": [ha.address()]});
    b.send("POST", "/rest/config/devices", &dev_a).unwrap();
    let pending = e2e::wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        let p = a.get("/rest/cluster/pending/devices").ok()?;
        p.get(&hb.id).cloned()
    })
    .expect("B pending on A");
    assert_eq!(pending["name"], "b");
    let evs = keyed(
        pa,
        ka,
        "GET",
        "/rest/events?events=PendingDevicesChanged&timeout=5",
        None,
    )
    .json();
    assert_eq!(
        evs[0]["data"]["added"][0]["deviceID"],
        hb.id.as_str(),
        "{evs}"
    );
    let a_del = keyed(
        pa,
        ka,
        "DELETE",
        &format!("/rest/cluster/pending/devices?device={}", hb.id),
        None,
    );
    assert_eq!(a_del.status, 200);

    // Accepted: connected.
    let dev_b = json!({"deviceID": hb.id, "name": "b", "addresses": [hb.address()]});
    a.send("POST", "/rest/config/devices", &dev_b).unwrap();
    let connected = |want: bool| {
        e2e::wait::until(Duration::from_secs(40), Duration::from_millis(200), || {
            (a.connected(&hb.id) == want).then_some(())
        })
        .is_some()
    };
    assert!(connected(true), "{}", a.proc.log_tail(20));
    // Paused: the connection goes and stays gone; resumed: it comes back.
    let r = keyed(
        pa,
        ka,
        "POST",
        &format!("/rest/system/pause?device={}", hb.id),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(connected(false), "still connected after pause");
    let c = a.get("/rest/system/connections").unwrap();
    assert_eq!(c["connections"][&hb.id]["paused"], true);
    let d = a.get(&format!("/rest/config/devices/{}", hb.id)).unwrap();
    assert_eq!(d["paused"], true, "pause is saved");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!a.connected(&hb.id), "a paused device reconnected");
    let evs = keyed(
        pa,
        ka,
        "GET",
        "/rest/events?events=DevicePaused,DeviceDisconnected&timeout=5",
        None,
    )
    .json();
    let kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        kinds.contains(&"DevicePaused") && kinds.contains(&"DeviceDisconnected"),
        "{kinds:?}"
    );
    let r = keyed(pa, ka, "POST", "/rest/system/resume", None);
    assert_eq!(r.status, 200);
    assert!(connected(true), "not reconnected after resume");
    let evs = keyed(
        pa,
        ka,
        "GET",
        "/rest/events?events=DeviceConnected&timeout=5",
        None,
    )
    .json();
    let last = &evs.as_array().unwrap().last().unwrap()["data"];
    assert_eq!(last["id"], hb.id.as_str(), "{evs}");
    assert_eq!(last["deviceName"], "b", "{evs}");
    assert!(
        !last["clientName"].as_str().unwrap_or("").is_empty(),
        "{evs}"
    );

    // Restart: same process ID, a new start time, and it answers again.
    let before = a.get("/rest/system/status").unwrap()["startTime"].clone();
    let pid = a.proc.pid();
    let r = keyed(pa, ka, "POST", "/rest/system/restart", None);
    assert_eq!((r.status, r.json()), (200, json!({"ok": "restarting"})));
    let after = e2e::wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        let s = a.get("/rest/system/status").ok()?;
        (s["startTime"] != before).then_some(s)
    })
    .expect("restarted");
    assert_eq!(a.proc.pid(), pid);
    assert_eq!(after["myID"], ha.id.as_str());
    assert!(connected(true), "not reconnected after restart");
    a.stop();
    b.stop();
}
