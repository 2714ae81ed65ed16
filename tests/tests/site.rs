//! `scripts/site`, the one-command private site: it starts discosrv,
//! relaysrv and a node sharing a folder, prints what other devices need,
//! takes a real Syncthing 1.19.2 device with `scripts/site add-device`,
//! receives a file from it, and stops everything on SIGINT (Ctrl-C).

use e2e::{our_binary, pick_port, syncthing, wait, Proc};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The value printed after `label` in the site's banner.
fn banner_value(log: &str, label: &str) -> Option<String> {
    log.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

#[test]
fn one_command_site_syncs_from_real_syncthing_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("site");
    let sync = tmp.path().join("Sync");
    let ports: Vec<u16> = (0..6).map(|_| pick_port()).collect();
    let (disco, relay, node_port, gui, metrics, status_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]);
    let bin_dir = our_binary("node").parent().unwrap().to_path_buf();

    // The binaries are those `cargo build --workspace` made: a cargo build
    // from inside `cargo test` would wait on the build lock it holds.
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/site"))
        .arg("--home")
        .arg(&home)
        .arg("--sync")
        .arg(&sync)
        .args(["--address", "127.0.0.1", "--bind", "127.0.0.1"])
        .args(["--discovery-port", &disco.to_string()])
        .args(["--relay-port", &relay.to_string()])
        .args(["--node-port", &node_port.to_string()])
        .args(["--gui-port", &gui.to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        .args(["--status-port", &status_port.to_string()])
        .arg("--no-local-discovery")
        .arg("--bin-dir")
        .arg(&bin_dir);
    // The test plays Ctrl-C. A test run started in the background of a
    // non-interactive shell inherits SIGINT ignored, and bash cannot trap a
    // signal ignored on entry: give the script the default, as a terminal
    // would.
    // SAFETY: signal(2) is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut site = Proc::spawn("scripts/site", cmd, &tmp.path().join("site.log"));

    let banner = wait::until(Duration::from_secs(60), Duration::from_millis(100), || {
        let log = site.log();
        log.contains("Ctrl-C stops it").then_some(log)
    })
    .unwrap_or_else(|| panic!("no banner from scripts/site:\n{}", site.log_tail(40)));
    eprintln!("{banner}");

    let node_id = banner_value(&banner, "Node device ID").expect("node ID in the banner");
    let disco_uri = banner_value(&banner, "Discovery server").expect("discovery URI");
    let relay_uri = banner_value(&banner, "Relay").expect("relay URI");
    let rest = banner_value(&banner, "Node REST API").expect("REST address");
    assert_eq!(node_id.len(), 63, "{node_id}");
    assert!(
        disco_uri.starts_with(&format!("https://127.0.0.1:{disco}/?id=")),
        "{disco_uri}"
    );
    assert!(
        relay_uri.starts_with(&format!("relay://127.0.0.1:{relay}/?id="))
            && relay_uri.contains("&token="),
        "{relay_uri}"
    );
    assert_eq!(rest, format!("http://127.0.0.1:{gui}"));
    // The printed IDs are those the servers really have.
    let disco_id = disco_uri.split("?id=").nth(1).unwrap();
    let printed = Command::new(our_binary("node"))
        .args(["device-id", "--cert"])
        .arg(home.join("discosrv/cert.pem"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), disco_id);
    for port in [disco, relay, node_port, gui, metrics, status_port] {
        assert!(
            wait::listening(port, Duration::from_secs(10)),
            "port {port} not listening"
        );
    }

    // With the relay client, the node joins the site's relay with the
    // printed URI's token. (Announcing to the site's discovery server needs
    // a non-loopback --address: discovery drops loopback addresses.)
    let node_log = home.join("logs/node.log");
    if !banner.contains("no relay client") {
        let joined = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
            let m = ureq::get(&format!("http://127.0.0.1:{status_port}/metrics"))
                .call()
                .ok()?
                .into_string()
                .ok()?;
            m.lines()
                .any(|l| l.starts_with("relaysrv_joined_devices ") && !l.ends_with(" 0"))
                .then_some(())
        });
        assert!(
            joined.is_some(),
            "the site's node did not join the site's relay:\n{}",
            std::fs::read_to_string(&node_log).unwrap_or_default()
        );
    }

    // A real Syncthing device: it adds the site's node and shares the
    // folder with the ID the banner names; the site accepts it.
    let st_home = tmp.path().join("syncthing");
    let (st, st_port) = syncthing::start_tcp(&st_home);
    st.add_device(&node_id, &[&format!("tcp://127.0.0.1:{node_port}")]);
    let st_folder = tmp.path().join("st-folder");
    st.share_folder("default", &st_folder, "sendreceive", &[&node_id]);
    let content = b"from the real Syncthing device into the site\n".repeat(1000);
    std::fs::write(st_folder.join("hello.txt"), &content).unwrap();
    st.scan("default");

    let added = Command::new("bash")
        .arg(repo_root().join("scripts/site"))
        .arg("add-device")
        .arg(st.id())
        .arg(format!("tcp://127.0.0.1:{st_port}"))
        .arg("--home")
        .arg(&home)
        .output()
        .unwrap();
    assert!(added.status.success(), "add-device failed: {added:?}");

    let synced = wait::until(Duration::from_secs(60), Duration::from_millis(200), || {
        (std::fs::read(sync.join("hello.txt")).ok()? == content).then_some(())
    });
    assert!(
        synced.is_some(),
        "hello.txt did not arrive in the site's folder\nsite:\n{}\nnode log:\n{}",
        site.log_tail(20),
        std::fs::read_to_string(home.join("logs/node.log")).unwrap_or_default()
    );
    st.shutdown();

    // Ctrl-C: the script stops the three programs and exits 0.
    site.signal(libc::SIGINT);
    let status = site.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        // Which program did not stop: the end of each one's log.
        let mut logs = String::new();
        for name in ["discosrv", "relaysrv", "node"] {
            let text =
                std::fs::read_to_string(home.join(format!("logs/{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs.push_str(&format!("--- {name}.log (last lines)\n"));
            for l in tail.iter().rev() {
                logs.push_str(l);
                logs.push('\n');
            }
        }
        panic!(
            "scripts/site did not stop on SIGINT:\n{}\n{logs}",
            site.log_tail(20)
        )
    });
    assert!(status.success(), "exit {status:?}:\n{}", site.log_tail(20));
    assert!(site.log().contains("site: stopped"));
    assert!(
        !site.log().contains("did not stop"),
        "a program had to be killed:\n{}",
        site.log_tail(20)
    );
    for port in [disco, relay, node_port, gui, metrics, status_port] {
        let gone = wait::until(Duration::from_secs(10), Duration::from_millis(100), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        });
        assert!(gone.is_some(), "port {port} still open after Ctrl-C");
    }
}
