//! Our `node` binary in end-to-end tests: generate, configure, start, and
//! talk to its REST API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::https::{Endpoint, PinnedCert};
use crate::process::Proc;
use crate::rest::Rest;
use crate::{our_binary, pick_port, wait};

/// A generated home directory of our node, not yet running.
#[derive(Clone)]
pub struct NodeHome {
    pub dir: PathBuf,
    pub id: String,
    pub listen_port: u16,
    pub gui_port: u16,
    pub api_key: String,
    /// Set by [`NodeHome::use_tls`]: REST calls go over HTTPS, trusting
    /// the node's own certificate.
    pub https: Option<Arc<PinnedCert>>,
}

impl NodeHome {
    /// `node generate` in `dir` (ECDSA P-384 like Syncthing 1.x), listening
    /// on a free loopback port.
    pub fn generate(dir: &Path, name: &str) -> NodeHome {
        let listen_port = pick_port();
        let gui_port = pick_port();
        let api_key = format!("key-{}", rand::random::<u64>());
        let out = Command::new(our_binary("node"))
            .args(["generate", "--key-type", "ecdsa-p384", "--name", name])
            .arg("--home")
            .arg(dir)
            .arg(format!("--listen=tcp://127.0.0.1:{listen_port}"))
            .arg(format!("--gui-address=127.0.0.1:{gui_port}"))
            .arg(format!("--gui-apikey={api_key}"))
            .output()
            .expect("run node generate");
        assert!(out.status.success(), "node generate failed: {out:?}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id.len(), 63, "device ID on stdout: {out:?}");
        NodeHome {
            dir: dir.to_path_buf(),
            id,
            listen_port,
            gui_port,
            api_key,
            https: None,
        }
    }

    /// Sets `gui.useTLS` (plain HTTP is then redirected) and makes this
    /// harness's REST calls use HTTPS with the node's certificate.
    pub fn use_tls(&mut self) {
        let mut c = self.config();
        c["gui"]["useTLS"] = true.into();
        self.set_config(&c);
        self.https = Some(Arc::new(PinnedCert {
            cert: self.dir.join("https-cert.pem"),
        }));
    }

    /// Where this node's REST API is, as the test clients reach it.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.gui_port,
            https: self.https.clone(),
        }
    }

    pub fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.listen_port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The configuration file, as the JSON objects the REST API uses.
    pub fn config(&self) -> Value {
        let text = std::fs::read_to_string(self.config_path()).expect("read config.toml");
        toml::from_str(&text).expect("config.toml is TOML")
    }

    /// Replaces the configuration file (the node must be stopped).
    pub fn set_config(&self, config: &Value) {
        std::fs::write(self.config_path(), toml::to_string(config).unwrap())
            .expect("write config.toml");
    }

    /// Adds a device (ID + addresses) to the configuration file.
    pub fn add_device(&self, id: &str, addresses: &[&str]) {
        let mut c = self.config();
        c["devices"]
            .as_array_mut()
            .expect("devices array")
            .push(serde_json::json!({"deviceID": id, "name": id, "addresses": addresses}));
        c["options"]["reconnectionIntervalS"] = 5.into();
        self.set_config(&c);
    }

    /// Adds a folder shared with `peers` to the configuration file.
    pub fn add_folder(&self, id: &str, path: &Path, kind: &str, peers: &[&str]) {
        let mut c = self.config();
        let devices: Vec<Value> = peers
            .iter()
            .map(|p| serde_json::json!({ "deviceID": p }))
            .collect();
        c["folders"]
            .as_array_mut()
            .expect("folders array")
            .push(serde_json::json!({
                "id": id, "label": id, "path": path, "type": kind, "devices": devices,
                "rescanIntervalS": 3600,
            }));
        self.set_config(&c);
    }

    /// Starts `node serve` and waits for its REST API.
    pub fn start(&self) -> Node {
        self.start_with_env(&[])
    }

    /// `start` with extra environment variables (e.g. `SSL_CERT_FILE` for
    /// a private CA).
    pub fn start_with_env(&self, env: &[(&str, &Path)]) -> Node {
        let mut cmd = Command::new(our_binary("node"));
        cmd.arg("serve").arg("--home").arg(&self.dir);
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("node", cmd, &self.dir.join("node.log"));
        let mut node = Node {
            home: self.clone(),
            proc,
        };
        let up = wait::until(Duration::from_secs(30), Duration::from_millis(50), || {
            if !node.proc.alive() {
                return Some(false);
            }
            node.get("/rest/system/ping").ok().map(|_| true)
        });
        assert_eq!(
            up,
            Some(true),
            "node did not come up:\n{}",
            node.proc.log_tail(30)
        );
        node
    }
}

/// Our node, running.
pub struct Node {
    pub home: NodeHome,
    pub proc: Proc,
}

impl Node {
    fn rest(&self) -> Rest<'_> {
        Rest {
            port: self.home.gui_port,
            api_key: &self.home.api_key,
            timeout: Duration::from_secs(10),
            https: self.home.https.clone(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.rest().get(path)
    }

    /// A REST call with a JSON body (POST, PUT, PATCH).
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        self.rest().send(method, path, body).map(|_| ())
    }

    pub fn post(&self, path: &str) -> Result<(), String> {
        self.rest().post(path).map(|_| ())
    }

    /// A number from `/rest/system/status`.
    pub fn status_u64(&self, key: &str) -> u64 {
        self.get("/rest/system/status")
            .ok()
            .and_then(|s| s.get(key).and_then(Value::as_u64))
            .unwrap_or(0)
    }

    /// Waits for the folder's scan to finish with `sequence` at least `min`.
    pub fn wait_scanned(&self, folder: &str, min: u64, limit: Duration) -> u64 {
        wait::until(limit, Duration::from_millis(100), || {
            let s = self.get(&format!("/rest/db/status?folder={folder}")).ok()?;
            let seq = s.get("sequence")?.as_u64()?;
            (s.get("state")?.as_str()? == "idle" && seq >= min).then_some(seq)
        })
        .unwrap_or_else(|| panic!("folder {folder} not scanned:\n{}", self.proc.log_tail(20)))
    }

    pub fn connected(&self, id: &str) -> bool {
        self.get("/rest/system/connections")
            .ok()
            .and_then(|c| c["connections"][id]["connected"].as_bool())
            .unwrap_or(false)
    }

    /// Stops the node: REST shutdown, then the process by PID.
    pub fn stop(mut self) -> String {
        let _ = self.post("/rest/system/shutdown");
        if self.proc.wait_exit(Duration::from_secs(10)).is_none() {
            self.proc.stop(Duration::from_secs(5));
        }
        self.proc.log()
    }
}
