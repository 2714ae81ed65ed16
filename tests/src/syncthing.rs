//! Real Syncthing nodes (1.19.2, 1.30.0 or 2.1.3: [`PeerVersion`]),
//! isolated on loopback.
//!
//! `syncthing generate` points a new config at the public infrastructure
//! (global discovery, relay pools, STUN, usage and crash reporting, local
//! broadcast). [`SyncthingHome::init`] rewrites all of it in `config.xml`
//! before the first start, so no node started here ever talks to any
//! address but 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::peers::{PeerProgram, PeerVersion};
use crate::process::Proc;
use crate::rest::Rest;
use crate::{pick_port, wait};

/// Phone-home URLs are pointed here: nothing listens on port 1.
const DEAD_URL: &str = "https://127.0.0.1:1";

fn syncthing_command(version: PeerVersion) -> Command {
    let mut cmd = Command::new(version.require(PeerProgram::Syncthing));
    // STMONITORED: run the real process directly, without the monitor
    // parent (1.x and 2.x alike), so the PID we hold is the one with the
    // sockets.
    cmd.env("STNOUPGRADE", "1")
        .env("STNODEFAULTFOLDER", "1")
        .env("STNORESTART", "1")
        .env("STMONITORED", "1")
        .env_remove("STTRACE");
    // Debugging a test: E2E_STTRACE=model,… traces the real program.
    if let Some(trace) = std::env::var_os("E2E_STTRACE") {
        cmd.env("STTRACE", trace);
    }
    cmd
}

/// Runs Syncthing 1.19.2's `syncthing generate` in `dir`; returns the
/// device ID it printed.
pub fn generate(dir: &Path) -> String {
    generate_version(dir, PeerVersion::V1_19_2)
}

/// Runs `syncthing generate` of `version` in `dir`; returns the device ID
/// it printed.
pub fn generate_version(dir: &Path, version: PeerVersion) -> String {
    std::fs::create_dir_all(dir).expect("create syncthing home");
    let mut cmd = syncthing_command(version);
    // 2.x dropped --no-default-folder (it never makes one at generate) and
    // renamed --skip-port-probing.
    if version.is_v2() {
        cmd.args(["generate", "--no-port-probing", "--home"]);
    } else {
        cmd.args([
            "generate",
            "--no-default-folder",
            "--skip-port-probing",
            "--home",
        ]);
    }
    let out = cmd.arg(dir).output().expect("run syncthing generate");
    assert!(
        out.status.success(),
        "syncthing {version} generate failed: {out:?}"
    );
    // 1.x prints "Device ID: XXXX-..." on stderr, 2.x a structured line
    // "Calculated device ID (device=XXXX-...)".
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| c.is_whitespace() || matches!(c, '=' | '(' | ')'))
        .find(|word| word.len() == 63 && word.matches('-').count() == 7)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no device ID in syncthing {version} generate output: {text}"))
}

/// The device ID real Syncthing computes for the certificate in `dir`
/// (`syncthing serve --home DIR --device-id`).
pub fn device_id_of_home(dir: &Path) -> String {
    let out = syncthing_command(PeerVersion::V1_19_2)
        .args(["serve", "--device-id", "--home"])
        .arg(dir)
        .output()
        .expect("run syncthing serve --device-id");
    assert!(
        out.status.success(),
        "syncthing --device-id failed: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 63 && l.matches('-').count() == 7)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no device ID printed: {out:?}"))
}

/// A real node in `dir` listening on `tcp://127.0.0.1:PORT` (a free port),
/// started; returns it with PORT.
pub fn start_tcp(dir: &Path) -> (Syncthing, u16) {
    start_tcp_version(dir, PeerVersion::V1_19_2)
}

/// [`start_tcp`] for a given Syncthing version.
pub fn start_tcp_version(dir: &Path, version: PeerVersion) -> (Syncthing, u16) {
    let port = pick_port();
    let node =
        SyncthingHome::init_version(dir, &[format!("tcp://127.0.0.1:{port}")], version).start();
    (node, port)
}

/// `syncthing serve` as every test starts it: no browser, no restarts or
/// upgrades, the log on standard output; the home directory follows.
pub const SERVE_ARGS: [&str; 7] = [
    "serve",
    "--no-browser",
    "--no-restart",
    "--no-upgrade",
    "--logflags=7",
    "--logfile=-",
    "--home",
];

/// A generated, isolated but not yet running Syncthing home.
#[derive(Clone)]
pub struct SyncthingHome {
    pub dir: PathBuf,
    pub id: String,
    pub gui_port: u16,
    pub api_key: String,
    pub version: PeerVersion,
}

impl SyncthingHome {
    /// Generates keys and config of Syncthing 1.19.2 in `dir` and isolates
    /// it. `listen` are the listen URIs (`tcp://127.0.0.1:P`, `relay://…`);
    /// empty means none.
    pub fn init(dir: &Path, listen: &[String]) -> SyncthingHome {
        SyncthingHome::init_version(dir, listen, PeerVersion::V1_19_2)
    }

    /// [`SyncthingHome::init`] for a given Syncthing version.
    pub fn init_version(dir: &Path, listen: &[String], version: PeerVersion) -> SyncthingHome {
        let id = generate_version(dir, version);
        let gui_port = pick_port();
        let api_key: String = (0..32)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect();
        let path = dir.join("config.xml");
        let mut xml = std::fs::read_to_string(&path).expect("read config.xml");
        xml = set_gui(&xml, "address", &format!("127.0.0.1:{gui_port}"));
        xml = set_gui(&xml, "apikey", &api_key);
        let listen: Vec<&str> = if listen.is_empty() {
            vec![""]
        } else {
            listen.iter().map(String::as_str).collect()
        };
        let dead = |p: &str| format!("{DEAD_URL}/{p}");
        let settings: Vec<(&str, Vec<String>)> = vec![
            (
                "listenAddress",
                listen.iter().map(|s| s.to_string()).collect(),
            ),
            ("globalAnnounceServer", vec![String::new()]),
            ("globalAnnounceEnabled", vec!["false".into()]),
            ("localAnnounceEnabled", vec!["false".into()]),
            ("relaysEnabled", vec!["false".into()]),
            ("startBrowser", vec!["false".into()]),
            ("natEnabled", vec!["false".into()]),
            ("urAccepted", vec!["-1".into()]),
            ("urURL", vec![dead("newdata")]),
            ("autoUpgradeIntervalH", vec!["0".into()]),
            ("releasesURL", vec![dead("meta.json")]),
            ("crashReportingEnabled", vec!["false".into()]),
            ("crashReportingURL", vec![dead("newcrash")]),
            ("stunKeepaliveStartS", vec!["0".into()]),
            ("stunServer", vec![String::new()]),
            ("announceLANAddresses", vec!["false".into()]),
            ("restartOnWakeup", vec!["false".into()]),
            ("setLowPriority", vec!["false".into()]),
            ("reconnectionIntervalS", vec!["5".into()]),
        ];
        for (tag, values) in settings {
            // restartOnWakeup went away after 1.19.2.
            if tag == "restartOnWakeup" && version != PeerVersion::V1_19_2 {
                continue;
            }
            xml = set_elements(&xml, tag, &values);
        }
        let public = [
            "<listenAddress>default<",
            "<globalAnnounceServer>default<",
            "<stunServer>default<",
            "syncthing.net",
        ];
        assert!(
            !public.iter().any(|p| xml.contains(p)),
            "isolation of {} incomplete",
            path.display()
        );
        std::fs::write(&path, xml).expect("write config.xml");
        SyncthingHome {
            dir: dir.to_path_buf(),
            id,
            gui_port,
            api_key,
            version,
        }
    }

    /// Starts `syncthing serve` and waits for its REST API.
    pub fn start(self) -> Syncthing {
        self.start_with_env(&[])
    }

    /// [`SyncthingHome::start`] with extra environment variables (e.g.
    /// `TZ`, which names the versions it archives).
    ///
    /// The GUI port was free when it was picked, but another process on
    /// the machine (a second test run, a benchmark) may bind it before
    /// Syncthing does; Syncthing then exits. That case gets a new GUI port
    /// and another start (the device's listen port is the caller's and is
    /// kept).
    pub fn start_with_env(mut self, env: &[(&str, &str)]) -> Syncthing {
        for attempt in 1..=3 {
            let mut cmd = syncthing_command(self.version);
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.args(SERVE_ARGS).arg(&self.dir);
            let proc = Proc::spawn("syncthing", cmd, &self.dir.join("syncthing.log"));
            let gui = format!("127.0.0.1:{}: bind: address already in use", self.gui_port);
            let mut node = Syncthing { home: self, proc };
            let up = wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
                if !node.proc.alive() || node.proc.log().contains(&gui) {
                    return Some(false);
                }
                // A short timeout: whoever holds a taken port may accept
                // and never answer, and the log says so within a second.
                let ping = Rest {
                    timeout: Duration::from_secs(2),
                    ..node.rest()
                };
                ping.get("/rest/system/ping").ok().map(|_| true)
            });
            if up == Some(true) {
                return node;
            }
            let log = node.proc.log_tail(30);
            if attempt < 3 && log.contains(&gui) {
                eprintln!(
                    "syncthing: GUI port {} taken by another process; trying another",
                    node.home.gui_port
                );
                node.proc.stop(Duration::from_secs(2));
                self = node.home.clone();
                drop(node);
                self.move_gui(crate::ports::pick_port());
                continue;
            }
            panic!("syncthing {} did not come up:\n{log}", node.home.version);
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Points the GUI (and REST API) at `port`.
    fn move_gui(&mut self, port: u16) {
        let path = self.dir.join("config.xml");
        let xml = std::fs::read_to_string(&path).expect("read config.xml");
        let xml = set_gui(&xml, "address", &format!("127.0.0.1:{port}"));
        std::fs::write(&path, xml).expect("write config.xml");
        self.gui_port = port;
    }
}

/// Replaces every single-line `<tag>…</tag>` element by one element per
/// value, at the place of the first. (An absent list element means
/// "default" to Syncthing, hence one empty element for "none".)
fn set_elements(xml: &str, tag: &str, values: &[String]) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::with_capacity(xml.len() + 256);
    let mut done = false;
    for line in xml.lines() {
        if line.contains(&open) && line.contains(&close) {
            if !done {
                let indent = &line[..line.len() - line.trim_start().len()];
                for v in values {
                    out.push_str(&format!("{indent}{open}{}{close}\n", xml_escape(v)));
                }
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(done, "config.xml has no <{tag}> element");
    out
}

/// Sets one element inside the `<gui>` block.
fn set_gui(xml: &str, tag: &str, value: &str) -> String {
    let mut out = String::with_capacity(xml.len() + 64);
    let mut in_gui = false;
    for line in xml.lines() {
        if line.trim_start().starts_with("<gui ") {
            in_gui = true;
        }
        if in_gui && line.contains(&format!("<{tag}>")) {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}<{tag}>{}</{tag}>\n", xml_escape(value)));
            continue;
        }
        if line.contains("</gui>") {
            in_gui = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A running real Syncthing node with its REST API.
pub struct Syncthing {
    pub home: SyncthingHome,
    pub proc: Proc,
}

pub use crate::rest::RestResult;

impl Syncthing {
    pub fn id(&self) -> &str {
        &self.home.id
    }

    pub fn version(&self) -> PeerVersion {
        self.home.version
    }

    fn rest(&self) -> Rest<'_> {
        Rest {
            port: self.home.gui_port,
            api_key: &self.home.api_key,
            timeout: Duration::from_secs(30),
            https: None,
        }
    }

    pub fn get(&self, path: &str) -> RestResult {
        self.rest().get(path)
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> RestResult {
        self.rest().send(method, path, body)
    }

    pub fn post(&self, path: &str) -> RestResult {
        self.rest().post(path)
    }

    /// PATCH `/rest/config/options` (applied live).
    pub fn set_options(&self, options: Value) {
        self.send("PATCH", "/rest/config/options", &options)
            .expect("patch options");
    }

    /// Adds or replaces a device; `addresses` like `tcp://127.0.0.1:P`,
    /// `dynamic`, `relay://…`.
    pub fn add_device(&self, id: &str, addresses: &[&str]) {
        let device = json!({
            "deviceID": id, "name": id, "addresses": addresses, "compression": "metadata",
            "introducer": false, "paused": false, "autoAcceptFolders": false,
        });
        self.send("POST", "/rest/config/devices", &device)
            .expect("add device");
    }

    /// Shares folder `folder_id` at `path` (created) with `peers`; watcher
    /// off and hourly rescans, so only explicit scans count.
    pub fn share_folder(&self, folder_id: &str, path: &Path, kind: &str, peers: &[&str]) {
        std::fs::create_dir_all(path).expect("create folder");
        let mut devices = vec![json!({ "deviceID": self.id() })];
        devices.extend(peers.iter().map(|p| json!({ "deviceID": p })));
        let folder = json!({
            "id": folder_id, "label": folder_id, "path": path, "type": kind, "devices": devices,
            "rescanIntervalS": 3600, "fsWatcherEnabled": false, "fsWatcherDelayS": 1, "paused": false,
        });
        self.send("POST", "/rest/config/folders", &folder)
            .expect("share folder");
    }

    pub fn scan(&self, folder_id: &str) {
        self.post(&format!("/rest/db/scan?folder={folder_id}"))
            .expect("scan");
    }

    pub fn folder_status(&self, folder_id: &str) -> RestResult {
        self.get(&format!("/rest/db/status?folder={folder_id}"))
    }

    /// The connection type to `id` (`tcp-client`, `relay-server`, …) once connected.
    pub fn wait_connected(&self, id: &str, limit: Duration) -> Option<String> {
        wait::until(limit, Duration::from_millis(200), || {
            let c = self.get("/rest/system/connections").ok()?;
            let conn = c.get("connections")?.get(id)?;
            if conn.get("connected")?.as_bool()? {
                conn.get("type")?.as_str().map(str::to_string)
            } else {
                None
            }
        })
    }

    /// Waits until this node has everything the cluster has, with exactly
    /// `files` files in the global state.
    pub fn wait_synced(&self, folder_id: &str, files: u64, limit: Duration) -> Result<(), String> {
        let mut last = Value::Null;
        let ok = wait::until(limit, Duration::from_millis(200), || {
            let s = self.folder_status(folder_id).ok()?;
            let n = |k: &str| s.get(k).and_then(Value::as_u64);
            let synced = s.get("state").and_then(Value::as_str) == Some("idle")
                && n("needTotalItems") == Some(0)
                && n("needBytes") == Some(0)
                && n("globalFiles") == Some(files)
                && n("localFiles") == n("globalFiles")
                && n("localBytes") == n("globalBytes")
                && n("pullErrors").unwrap_or(0) == 0;
            last = s;
            synced.then_some(())
        });
        ok.ok_or_else(|| format!("not synced: {last}"))
    }

    /// Device IDs this node has seen knocking without being configured.
    pub fn pending_devices(&self) -> Vec<String> {
        self.get("/rest/cluster/pending/devices")
            .ok()
            .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default()
    }

    /// Asks the node to shut down, then stops the process for good; then
    /// fails the test if the real device closed any connection for a
    /// protocol error. Every peer a real device meets in these tests is
    /// ours or another real device, so over the whole suite this shows
    /// that no version of Syncthing ever disconnects our node for what
    /// it sent.
    pub fn shutdown(mut self) {
        let _ = self.post("/rest/system/shutdown");
        if self.proc.wait_exit(Duration::from_secs(10)).is_none() {
            self.proc.stop(Duration::from_secs(5));
        }
        let errors = self.protocol_errors();
        assert!(
            errors.is_empty(),
            "Syncthing {} closed connections for protocol errors:\n{}",
            self.home.version,
            errors.join("\n")
        );
    }

    /// Lines of the real device's log where it dropped a connection for
    /// a protocol error (1.x and 2.x both say "protocol error").
    pub fn protocol_errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.home.dir.join("syncthing.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("protocol error"))
            .map(str::to_string)
            .collect()
    }
}
