//! Several nodes in one test process: real sockets on 127.0.0.1, real
//! folders in temporary directories, no other program needed.

#![allow(dead_code)] // each test file uses part of the harness

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node::handle::{NodeHandle, Options};
use proto::{DeviceId, Identity};

/// Generous: the suite runs on 2 busy cores.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A folder type, as the configuration spells it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    SendReceive,
    SendOnly,
    ReceiveOnly,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::SendReceive => "sendreceive",
            Kind::SendOnly => "sendonly",
            Kind::ReceiveOnly => "receiveonly",
        }
    }
}

/// One node of a test cluster: its home and folder, and while it runs,
/// its handle.
pub struct TestNode {
    pub name: &'static str,
    pub id: DeviceId,
    pub home: PathBuf,
    /// The shared folder's directory.
    pub folder: PathBuf,
    pub kind: Kind,
    pub running: Option<NodeHandle>,
    /// `tcp://127.0.0.1:PORT` it listens on (fixed after the first start,
    /// so peers' configurations stay right across restarts).
    pub address: Option<String>,
    /// `numConnections` for its peers (`None`: the default).
    pub num_connections: Option<i64>,
    _dir: tempfile::TempDir,
}

pub const FOLDER: &str = "shared";

impl TestNode {
    pub fn new(name: &'static str, kind: Kind) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let folder = dir.path().join("folder");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&folder).unwrap();
        let identity = Identity::load_or_generate(
            &home.join("cert.pem"),
            &home.join("key.pem"),
            proto::identity::COMMON_NAME_SYNCTHING,
            proto::KeyKind::Ed25519,
        )
        .unwrap()
        .into_identity();
        TestNode {
            name,
            id: identity.device_id(),
            home,
            folder,
            kind,
            running: None,
            address: None,
            num_connections: None,
            _dir: dir,
        }
    }

    /// Writes config.toml: listening on our address (port 0 the first
    /// time), sharing [`FOLDER`] with `peers`, dialing those whose address
    /// is known.
    pub fn write_config(&self, peers: &[&TestNode]) {
        let listen = self
            .address
            .clone()
            .unwrap_or_else(|| "tcp://127.0.0.1:0".into());
        let mut s = format!(
            "name = {:?}\n\n[options]\nlistenAddresses = [{listen:?}]\nreconnectionIntervalS = 1\n\
             globalAnnounceEnabled = false\nlocalAnnounceEnabled = false\nrelaysEnabled = false\n\n\
             [gui]\naddress = \"\"\napiKey = \"\"\n\n",
            self.name
        );
        for p in peers {
            let addr = p.address.clone().unwrap_or_else(|| "dynamic".into());
            s += &format!(
                "[[devices]]\ndeviceID = \"{}\"\nname = {:?}\naddresses = [{addr:?}]\n",
                p.id, p.name
            );
            if let Some(n) = self.num_connections {
                s += &format!("numConnections = {n}\n");
            }
            s += "\n";
        }
        let devices: Vec<String> = peers
            .iter()
            .map(|p| format!("{{ deviceID = \"{}\" }}", p.id))
            .collect();
        s += &format!(
            "[[folders]]\nid = {FOLDER:?}\npath = {:?}\ntype = {:?}\nrescanIntervalS = 3600\n\
             fsWatcherEnabled = false\ndevices = [{}]\n",
            self.folder.display().to_string(),
            self.kind.as_str(),
            devices.join(", ")
        );
        std::fs::write(self.home.join("config.toml"), s).unwrap();
    }

    pub async fn start(&mut self) {
        let handle = node::handle::spawn(Options {
            home: self.home.clone(),
            ..Options::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: cannot start: {e:#}", self.name));
        if self.address.is_none() {
            let addrs = handle.listen_addresses();
            self.address = addrs.into_iter().find(|a| a.starts_with("tcp://"));
            assert!(self.address.is_some(), "{}: no TCP listener", self.name);
        }
        self.running = Some(handle);
    }

    /// Stops the node and awaits its tasks.
    pub async fn stop(&mut self) {
        if let Some(h) = self.running.take() {
            h.shutdown()
                .await
                .unwrap_or_else(|e| panic!("{}: stop: {e:#}", self.name));
        }
    }

    pub fn node(&self) -> &std::sync::Arc<node::model::Node> {
        self.running.as_ref().expect("node is running").node()
    }

    /// Asks for a scan (and the pull after it) now.
    pub fn rescan(&self) {
        if let Some(rt) = self.node().folder_runtime(FOLDER) {
            let _ = rt.scan_now.try_send(());
        }
    }

    pub fn connected_to(&self, other: &TestNode) -> bool {
        self.node()
            .connections()
            .iter()
            .any(|(id, _)| *id == other.id)
    }

    /// The live connections to `other`, oldest (the primary) first.
    pub fn conns_to(&self, other: &TestNode) -> Vec<node::model::ConnInfo> {
        self.node()
            .all_connections()
            .remove(&other.id)
            .map(|d| d.conns)
            .unwrap_or_default()
    }

    pub fn write(&self, name: &str, data: &[u8]) {
        let p = self.folder.join(name);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }

    /// Every regular file under the folder (internal names left out), by
    /// name, with its content.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        collect(&self.folder, &self.folder, &mut out);
        out
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".st") || name.starts_with(".syncthing.") {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect(root, &path, out);
        } else if meta.is_file() {
            if let Ok(data) = std::fs::read(&path) {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, data);
            }
        }
    }
}

/// `len` bytes no block of which repeats (so none is reused locally and
/// every block is requested), different for each `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Polls `cond` until it holds, or fails the test with `what` and the last
/// `state` after [`DEADLINE`].
pub async fn until<T: std::fmt::Debug>(
    what: &str,
    mut state: impl FnMut() -> T,
    cond: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let s = state();
        if cond(&s) {
            return s;
        }
        if start.elapsed() > DEADLINE {
            panic!("{what}: not reached in {DEADLINE:?}; last state: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes sharing [`FOLDER`]: `a` listens, `b` dials it. Both running
/// (not necessarily connected yet).
pub async fn pair(kind_a: Kind, kind_b: Kind) -> (TestNode, TestNode) {
    pair_with(kind_a, kind_b, None, None).await
}

/// As [`pair`], with each side's `numConnections` for the other.
pub async fn pair_with(
    kind_a: Kind,
    kind_b: Kind,
    conns_a: Option<i64>,
    conns_b: Option<i64>,
) -> (TestNode, TestNode) {
    let mut a = TestNode::new("a", kind_a);
    let mut b = TestNode::new("b", kind_b);
    a.num_connections = conns_a;
    b.num_connections = conns_b;
    a.write_config(&[&b]);
    a.start().await;
    b.write_config(&[&a]);
    b.start().await;
    // Now that b's port is known, a can dial it too (after restarts).
    a.write_config(&[&b]);
    (a, b)
}

pub async fn connected(a: &TestNode, b: &TestNode) {
    until(
        &format!("{} and {} connected", a.name, b.name),
        || (a.connected_to(b), b.connected_to(a)),
        |s| s.0 && s.1,
    )
    .await;
}
