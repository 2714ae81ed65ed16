//! A *known* device turned hostile (issue 14, M5): it may send anything a
//! connection allows, so what it can make the node allocate must be
//! bounded by the node, not by the peer's good manners.

use std::time::{Duration, Instant};

use e2e::bep_peer::{cluster_config, RawPeer};
use e2e::node::{Node, NodeHome};
use proto::bep::{wire, Message};
use proto::{DeviceId, Identity, KeyKind};

/// A frame of BEP message type `kind` whose body is `payload` as given
/// (LZ4 prefix + block when `lz4`), built by hand: the point is to send
/// what no honest encoder would.
fn raw_frame(kind: u8, lz4: bool, payload: &[u8]) -> Vec<u8> {
    let header = [0x08, kind, 0x10, u8::from(lz4)];
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.extend_from_slice(&(header.len() as u16).to_be_bytes());
    f.extend_from_slice(&header);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const INDEX: u8 = 1;
const CLUSTER_CONFIG: u8 = 0;

struct Setup {
    _dir: tempfile::TempDir,
    node: Node,
    raw: Identity,
    our_id: DeviceId,
    port: u16,
    big_hash: Vec<u8>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();
    let root = dir.path().join("f");
    std::fs::create_dir_all(&root).unwrap();
    // 32 MiB, the largest Request the protocol allows.
    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| i.wrapping_mul(2654435761) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let big_hash = proto::bep::blocks::hash_block(0, &big).hash;
    home.add_device(&raw_id, &["dynamic"]);
    home.add_folder("f", &root, "sendonly", &[&raw_id]);
    let node = home.start();
    node.wait_scanned("f", 1, Duration::from_secs(60));
    Setup {
        our_id: home.id.parse().unwrap(),
        port: home.listen_port,
        node,
        raw,
        big_hash,
        _dir: dir,
    }
}

impl Setup {
    fn peer(&self) -> RawPeer {
        let mut p = RawPeer::connect(&self.raw, self.port, Duration::from_secs(20));
        p.hello();
        p.send(&cluster_config("f", &[self.our_id, self.raw.device_id()]));
        p
    }

    fn alive(&mut self) {
        assert!(
            self.node.proc.alive(),
            "node died:\n{}",
            self.node.proc.log_tail(30)
        );
        assert!(self.node.get("/rest/system/ping").is_ok());
    }
}

#[test]
fn decompression_and_decoding_bombs_close_the_connection_with_bounded_memory() {
    let mut s = setup();
    let pid = s.node.proc.pid();
    let base = e2e::process::peak_rss(pid);

    // 16 Mi empty FileInfos: 32 MiB decompressed, about 130 KiB on the
    // wire, several GB once decoded into structs.
    let body: Vec<u8> = [0x12u8, 0x00].repeat(16 << 20);
    let lz = proto::bep::lz4::compress_if_worth_it(&body).unwrap();
    println!(
        "Index bomb: {} bytes on the wire, {} decompressed",
        lz.len(),
        body.len()
    );
    let mut p = s.peer();
    p.send_raw(&raw_frame(INDEX, true, &lz));
    assert!(p.closed_by_node(), "Index bomb: connection not closed");
    drop(p);
    s.alive();

    // A ClusterConfig offering 1,000,000 folders, each listing both
    // devices as the protocol requires: 86 MB raw, LZ4-compressed.
    let mut cc = Vec::with_capacity(86_000_000);
    let dev = |id: &DeviceId| {
        let mut d = vec![0x82, 0x01, 34, 0x0a, 32];
        d.extend_from_slice(id.as_bytes());
        d
    };
    let (ours, theirs) = (dev(&s.our_id), dev(&s.raw.device_id()));
    for i in 0..1_000_000u32 {
        let id = format!("f{i:07}");
        let len = 2 + id.len() + ours.len() + theirs.len();
        cc.extend_from_slice(&[0x0a, len as u8, 0x0a, id.len() as u8]);
        cc.extend_from_slice(id.as_bytes());
        cc.extend_from_slice(&ours);
        cc.extend_from_slice(&theirs);
    }
    let lz = proto::bep::lz4::compress_if_worth_it(&cc).unwrap();
    drop(cc);
    let mut p = RawPeer::connect(&s.raw, s.port, Duration::from_secs(20));
    p.hello();
    p.send_raw(&raw_frame(CLUSTER_CONFIG, true, &lz));
    assert!(
        p.closed_by_node(),
        "ClusterConfig bomb: connection not closed"
    );
    drop(p);
    s.alive();
    // Nothing of it reached the pending folders.
    let pending = s.node.get("/rest/cluster/pending/folders").unwrap();
    assert!(
        pending.as_object().is_none_or(|o| o.len() < 10),
        "pending folders: {}",
        pending.to_string().chars().take(200).collect::<String>()
    );

    // Within every limit, 1,500 folders offered: at most 1,000 offers are
    // kept pending (an operator accepts them one by one).
    let mut p = RawPeer::connect(&s.raw, s.port, Duration::from_secs(20));
    p.hello();
    let devices = vec![
        wire::Device {
            id: s.our_id.as_bytes().to_vec(),
            ..Default::default()
        },
        wire::Device {
            id: s.raw.device_id().as_bytes().to_vec(),
            ..Default::default()
        },
    ];
    p.send(&Message::ClusterConfig(wire::ClusterConfig {
        folders: (0..1500)
            .map(|i| wire::Folder {
                id: format!("offer-{i}"),
                devices: devices.clone(),
                ..Default::default()
            })
            .collect(),
        secondary: false,
    }));
    let offers = e2e::wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
        let n = s
            .node
            .get("/rest/cluster/pending/folders")
            .ok()?
            .as_object()?
            .len();
        (n >= 1000).then_some(n)
    });
    assert_eq!(
        offers,
        Some(1000),
        "pending folder offers not capped at 1000"
    );
    drop(p);
    s.alive();

    let grew = e2e::process::peak_rss(pid).saturating_sub(base);
    println!(
        "bombs: peak RSS {} MiB → grew {} MiB",
        base >> 20,
        grew >> 20
    );
    assert!(grew < 200 << 20, "peak RSS grew by {} MiB", grew >> 20);
    s.node.stop();
}

#[test]
fn a_peer_that_requests_much_and_never_reads_holds_only_the_budget() {
    let mut s = setup();
    let pid = s.node.proc.pid();
    let base = e2e::process::peak_rss(pid);
    let mut p = s.peer();
    // 2,000 Requests for 32 MiB each (64 GB in all), then never a read.
    let started = Instant::now();
    for id in 0..2000 {
        p.send(&Message::Request(wire::Request {
            id,
            folder: "f".into(),
            name: "big.bin".into(),
            offset: 0,
            size: 32 << 20,
            // With its hash: 2.1.2's rules (which the node follows) close
            // the connection on a Request without one.
            hash: s.big_hash.clone(),
            ..Default::default()
        }));
    }
    println!(
        "2000 requests sent in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Give the node time to read and queue whatever it would.
    std::thread::sleep(Duration::from_secs(8));
    s.alive();
    let grew = e2e::process::peak_rss(pid).saturating_sub(base);
    println!(
        "requests never read: peak RSS {} MiB → grew {} MiB",
        base >> 20,
        grew >> 20
    );
    // The data budget is 32 MiB in flight; a response is copied while
    // framed, and TLS buffers a record or two.
    assert!(grew < 300 << 20, "peak RSS grew by {} MiB", grew >> 20);
    drop(p);
    s.alive();
    s.node.stop();
}

/// The connection wakes at the session's next deadline, not only when
/// the peer or the node has something to say: a known peer that falls
/// silent after its ClusterConfig gets a Ping once the node has been
/// quiet for the ping interval (45 s), and not before.
#[test]
fn a_silent_peer_gets_a_ping_after_the_ping_interval() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();
    let root = dir.path().join("f");
    std::fs::create_dir_all(&root).unwrap();
    home.add_device(&raw_id, &["dynamic"]);
    // Empty: no Index follows the ClusterConfig, so the Ping is the next
    // thing the node has to send.
    home.add_folder("f", &root, "sendonly", &[&raw_id]);
    let node = home.start();
    node.wait_scanned("f", 0, Duration::from_secs(60));
    let our_id: DeviceId = home.id.parse().unwrap();

    // Every read waits up to 60 s, beyond the interval plus slack.
    let mut p = RawPeer::connect(&raw, home.listen_port, Duration::from_secs(60));
    p.hello();
    let quiet_since = Instant::now();
    p.send(&cluster_config("f", &[our_id, raw.device_id()]));
    let mut before_ping = Vec::new();
    let ping_after = loop {
        match p.next_message() {
            Some(Message::Ping) => break quiet_since.elapsed(),
            Some(m) => before_ping.push(m.kind()),
            None => panic!("no Ping (got {before_ping:?});\n{}", node.proc.log_tail(30)),
        }
    };
    assert_eq!(
        before_ping,
        ["ClusterConfig"],
        "the node sent more than expected"
    );
    // The node wrote its ClusterConfig after `quiet_since`, so the Ping
    // cannot come sooner than the interval after it (a second of slack
    // for the clocks' granularity).
    assert!(
        ping_after >= proto::bep::session::PING_INTERVAL - Duration::from_secs(1),
        "Ping after {ping_after:?}"
    );
}

/// One of Syncthing 2.1.2's wire rules, broken on purpose.
enum Broken {
    Entry(wire::FileInfo),
    Request(wire::Request),
}

/// A node sharing `f` (one small file) with a raw peer that breaks
/// `rule`: the node must close the connection (as 2.1.2 does), say which
/// rule in its log, record nothing of the message, and keep its data.
fn refuses(rule: &str, broken: Broken) {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();
    let root = dir.path().join("f");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("keep.txt"), b"kept\n").unwrap();
    home.add_device(&raw_id, &["dynamic"]);
    home.add_folder("f", &root, "sendreceive", &[&raw_id]);
    let mut node = home.start();
    node.wait_scanned("f", 1, Duration::from_secs(60));
    let our_id: DeviceId = home.id.parse().unwrap();

    let mut p = RawPeer::connect(&raw, home.listen_port, Duration::from_secs(20));
    p.hello();
    p.send(&cluster_config("f", &[our_id, raw.device_id()]));
    let name = match &broken {
        Broken::Entry(f) => f.name.clone(),
        Broken::Request(r) => r.name.clone(),
    };
    match broken {
        Broken::Entry(f) => p.send(&Message::Index(wire::Index {
            folder: "f".into(),
            files: vec![f],
            last_sequence: 1,
            prev_sequence: 0,
        })),
        Broken::Request(r) => p.send(&Message::Request(r)),
    }
    assert!(p.closed_by_node(), "{rule}: the node kept the connection");
    // The log names the rule.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = node.proc.log_tail(200);
        if log.contains("protocol error") && log.contains(rule) {
            break;
        }
        assert!(Instant::now() < deadline, "{rule}: not in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.proc.alive(), "node died:\n{}", node.proc.log_tail(30));
    // Nothing of the refused entry was recorded, our data is untouched.
    if !name.is_empty() {
        let file = node.get(&format!("/rest/db/file?folder=f&file={}", urlencode(&name)));
        let known = file.as_ref().is_ok_and(|v| !v["global"].is_null());
        assert!(
            !known || name == "keep.txt",
            "{rule}: {name:?} recorded: {file:?}"
        );
    }
    assert_eq!(std::fs::read(root.join("keep.txt")).unwrap(), b"kept\n");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        2,
        "only keep.txt and .stfolder"
    );
    node.stop();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn entry(name: &str, kind: wire::FileInfoType) -> wire::FileInfo {
    wire::FileInfo {
        name: name.into(),
        r#type: kind as i32,
        sequence: 1,
        modified_s: 1_700_000_000,
        version: Some(wire::Vector {
            counters: vec![wire::Counter { id: 7, value: 1 }],
        }),
        ..Default::default()
    }
}

fn some_blocks() -> Vec<wire::BlockInfo> {
    vec![proto::bep::blocks::hash_block(0, b"evil")]
}

#[test]
fn refuses_a_request_without_hash() {
    refuses(
        "request missing block hash",
        Broken::Request(wire::Request {
            id: 1,
            folder: "f".into(),
            name: "keep.txt".into(),
            size: 5,
            ..Default::default()
        }),
    );
}

#[test]
fn refuses_a_request_over_32_mib() {
    refuses(
        "request size exceeds maximum allowed",
        Broken::Request(wire::Request {
            id: 1,
            folder: "f".into(),
            name: "keep.txt".into(),
            size: (32 << 20) + 1,
            hash: vec![1; 32],
            ..Default::default()
        }),
    );
}

#[test]
fn refuses_a_request_of_negative_size() {
    refuses(
        "request size too small",
        Broken::Request(wire::Request {
            id: 1,
            folder: "f".into(),
            name: "keep.txt".into(),
            size: -1,
            hash: vec![1; 32],
            ..Default::default()
        }),
    );
}

#[test]
fn refuses_a_directory_with_blocks() {
    let mut d = entry("dir", wire::FileInfoType::Directory);
    d.blocks = some_blocks();
    refuses("non-file type with non-empty block list", Broken::Entry(d));
}

#[test]
fn refuses_a_directory_with_a_size() {
    let mut d = entry("dir", wire::FileInfoType::Directory);
    d.size = 4096;
    refuses("non-file type with nonzero size", Broken::Entry(d));
}

#[test]
fn refuses_a_symlink_with_a_size() {
    let mut l = entry("link", wire::FileInfoType::Symlink);
    l.symlink_target = b"keep.txt".to_vec();
    l.size = 8;
    refuses("non-file type with nonzero size", Broken::Entry(l));
}

#[test]
fn refuses_a_deleted_entry_with_blocks() {
    let mut f = entry("gone.txt", wire::FileInfoType::File);
    f.deleted = true;
    f.blocks = some_blocks();
    refuses("deleted file with non-empty block list", Broken::Entry(f));
}

#[test]
fn refuses_a_valid_file_without_blocks() {
    let mut f = entry("hollow.txt", wire::FileInfoType::File);
    f.size = 4;
    refuses("file with empty block list", Broken::Entry(f));
}

#[test]
fn refuses_a_non_canonical_name() {
    let mut f = entry("a//b.txt", wire::FileInfoType::File);
    f.size = 4;
    f.blocks = some_blocks();
    refuses("not in canonical form", Broken::Entry(f));
}
