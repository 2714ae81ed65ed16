//! One public port (issue 19): a real nginx runs `deploy/one-port/nginx.conf`
//! (its stream module routing by `ssl_preread`) in front of our discosrv and
//! relaysrv, and two real Syncthing devices of the newest version built
//! reach both only through that port: they join the relay, announce and
//! look each other up, connect through a relayed session and sync a folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::discovery::Discosrv;
use e2e::peers::PeerVersion;
use e2e::relay::RelayServer;
use e2e::{pick_port, require_program, wait, Proc, SyncthingHome};
use serde_json::json;

/// Debian's nginx has the stream module as a loadable module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The deployment's nginx.conf, with the addresses of this test: listens
/// on 127.0.0.1:`port`, upstreams on loopback, files under `dir`.
fn nginx_conf(dir: &Path, port: u16, disco: u16, relay: u16) -> String {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/one-port/nginx.conf");
    let conf = std::fs::read_to_string(&deploy).expect("deploy/one-port/nginx.conf");
    let d = dir.display();
    let mut out = format!(
        "load_module {STREAM_MODULE};\ndaemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
    );
    let mut replaced = 0;
    for line in conf.lines() {
        let swapped = match line.trim() {
            "worker_processes auto;" => "worker_processes 1;".to_string(),
            "listen 443;" => format!("listen 127.0.0.1:{port};"),
            "server discosrv:8443;" => format!("server 127.0.0.1:{disco};"),
            "server relaysrv:22067;" => format!("server 127.0.0.1:{relay};"),
            "access_log /dev/stdout route;" => format!("access_log {d}/stream.log route;"),
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        replaced += 1;
        out.push_str(&swapped);
        out.push('\n');
    }
    assert_eq!(replaced, 5, "deploy/one-port/nginx.conf changed shape");
    out
}

fn start_nginx(dir: &Path, port: u16, disco: u16, relay: u16) -> Proc {
    let nginx = require_program("nginx", "nginx-light");
    assert!(
        Path::new(STREAM_MODULE).exists(),
        "{STREAM_MODULE} is missing: apt-get install libnginx-mod-stream"
    );
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, disco, relay)).unwrap();
    let mut cmd = std::process::Command::new(nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let mut proc = Proc::spawn("nginx", cmd, &dir.join("nginx.out"));
    assert!(
        wait::listening(port, Duration::from_secs(20)) && proc.alive(),
        "nginx did not start:\n{}\n{}",
        proc.log_tail(20),
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    proc
}

fn write_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    (0..4u32)
        .map(|i| {
            let content: Vec<u8> = (0..(20_000 + i * 300_007))
                .map(|_| rand::random::<u8>())
                .collect();
            let path = dir.join(format!("f{i}.bin"));
            std::fs::write(&path, &content).unwrap();
            (PathBuf::from(format!("f{i}.bin")), content)
        })
        .collect()
}

#[test]
fn relay_and_discovery_share_one_port_behind_nginx() {
    let version = PeerVersion::newest_available();
    let dir = tempfile::tempdir().unwrap();
    let port = pick_port();
    let disco = Discosrv::start(&dir.path().join("disco"), &["--path-prefix", "/studio/"]);
    // Invitations send session connections to the public port.
    let relay = RelayServer::start(
        &dir.path().join("relay"),
        &["--ext-address", &format!("127.0.0.1:{port}")],
    );
    let mut nginx = start_nginx(&dir.path().join("nginx"), port, disco.port, relay.port);

    // Both devices listen only on the relay and announce only to the
    // discovery server, each through the one port. `localhost`: the
    // discovery server drops loopback IPs from announcements.
    let relay_uri = format!("relay://localhost:{port}/?id={}", relay.id);
    let disco_url = format!(
        "https://127.0.0.1:{port}/studio/?id={}",
        disco.id.expect("TLS mode")
    );
    let start = |name: &str| {
        let st = SyncthingHome::init_version(
            &dir.path().join(name),
            std::slice::from_ref(&relay_uri),
            version,
        )
        .start();
        st.set_options(json!({
            "relaysEnabled": true,
            "globalAnnounceEnabled": true,
            "globalAnnounceServers": [disco_url],
            "localAnnounceEnabled": false,
        }));
        st
    };
    let (n1, n2) = (start("n1"), start("n2"));
    relay.wait_status(
        "both devices join through nginx",
        Duration::from_secs(40),
        |s| s["numConnections"].as_u64().unwrap_or(0) >= 2,
    );
    for n in [&n1, &n2] {
        let found = wait::until(Duration::from_secs(40), Duration::from_millis(250), || {
            let r = disco.request(None, "GET", &format!("/studio/?device={}", n.id()), b"");
            (r.status == 200
                && r.addresses()
                    .iter()
                    .any(|a| a.starts_with(&format!("relay://localhost:{port}/"))))
            .then_some(())
        });
        assert!(
            found.is_some(),
            "{} never announced its relay address through nginx:\n{}",
            n.id(),
            n.proc.log_tail(30)
        );
    }

    // Dynamic addresses only: each finds the other's relay address by a
    // lookup through nginx, then dials it through nginx.
    n1.add_device(n2.id(), &["dynamic"]);
    n2.add_device(n1.id(), &["dynamic"]);
    let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
    let files = write_files(&d1);
    n1.share_folder("onport", &d1, "sendonly", &[n2.id()]);
    n2.share_folder("onport", &d2, "receiveonly", &[n1.id()]);
    let kind = n2.wait_connected(n1.id(), Duration::from_secs(60));
    assert!(
        kind.as_deref().is_some_and(|k| k.starts_with("relay-")),
        "not connected through the relay ({kind:?}):\n{}\nrelay:\n{}",
        n2.proc.log_tail(30),
        relay.proc.log_tail(20)
    );
    n1.scan("onport");
    n2.wait_synced("onport", files.len() as u64, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", n2.proc.log_tail(30)));
    for (rel, content) in &files {
        assert!(
            std::fs::read(d2.join(rel)).unwrap() == *content,
            "{rel:?} differs"
        );
    }
    let st = relay.status();
    assert!(st["numActiveSessions"].as_u64() >= Some(1), "{st}");

    // nginx logs each connection as it closes: after the devices stop,
    // every kind of connection has gone its way.
    n1.shutdown();
    n2.shutdown();
    let log_path = dir.path().join("nginx/stream.log");
    let kinds = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let join = log
            .lines()
            .any(|l| l.contains("alpn=bep-relay -> relaysrv"));
        let discovery = log
            .lines()
            .any(|l| l.contains("http/1.1") && l.contains("-> discosrv"));
        // nginx writes "-" for an empty variable; the port probe of the
        // test moved no bytes, a session the synced files.
        let session = log.lines().any(|l| {
            l.contains("tls=- alpn=- -> relaysrv")
                && l.split_whitespace()
                    .filter_map(|w| w.split_once('/'))
                    .find_map(|(rx, tx)| Some((rx.parse::<u64>().ok()?, tx.parse::<u64>().ok()?)))
                    .is_some_and(|(rx, tx)| rx.max(tx) > 100_000)
        });
        (join && discovery && session).then_some(log)
    });
    assert!(
        kinds.is_some(),
        "not every kind of connection was routed:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let log = kinds.unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("bep-relay") && l.contains("-> discosrv")),
        "{log}"
    );
    disco.stop();
    nginx.stop(Duration::from_secs(10));
}
