//! Puller path races (issue 14, M2): while a slow peer serves the blocks of
//! files inside a directory of the folder, a local process keeps swapping
//! that directory with a symlink to a directory outside the folder. Every
//! write, rename, peer-chosen chmod and delete of the puller must land in
//! the real directory or fail: the outside directory keeps its listing,
//! contents and modes, and the node stays up and finishes the pull once
//! the swapping stops.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::bep_peer::{cluster_config, RawPeer};
use e2e::node::NodeHome;
use e2e::tree::bytes;
use proto::bep::wire::{self, Counter, FileInfo, FileInfoType, Vector};
use proto::bep::Message;
use proto::{DeviceId, Identity, KeyKind};

const FILES: usize = 32;
/// Three 128 KiB blocks each: each file's pull spans several Responses.
const FILE_LEN: usize = 300_000;
/// How long the slow peer holds each Response at least.
const DELAY: Duration = Duration::from_millis(80);

fn entry(name: &str, data: &[u8], peer: &DeviceId, version: u64, seq: i64) -> FileInfo {
    let blocks = data
        .chunks(128 << 10)
        .enumerate()
        .map(|(i, c)| proto::bep::blocks::hash_block((i * (128 << 10)) as u64, c))
        .collect();
    FileInfo {
        name: name.into(),
        size: data.len() as i64,
        permissions: 0o644,
        modified_s: 1_700_000_000,
        version: Some(Vector {
            counters: vec![Counter {
                id: peer.short().0,
                value: version,
            }],
        }),
        sequence: seq,
        modified_by: peer.short().0,
        block_size: 128 << 10,
        blocks,
        ..Default::default()
    }
}

/// A directory the peer wants wide open (a peer-chosen chmod).
fn dir_entry(name: &str, peer: &DeviceId, seq: i64) -> FileInfo {
    FileInfo {
        r#type: FileInfoType::Directory as i32,
        size: 0,
        permissions: 0o777,
        blocks: Vec::new(),
        block_size: 0,
        ..entry(name, b"", peer, 1, seq)
    }
}

fn content(i: usize, version: u64) -> Vec<u8> {
    bytes(100 * version + i as u64, FILE_LEN)
}

/// Type and mode, length and a hash of the contents (of a file) or target
/// (of a symlink): compact in a failure message.
type Seen = (u32, usize, u64);

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Everything below `dir` (symlinks not followed), by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.permissions().mode(), data.len(), fnv(&data)),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let m = std::fs::symlink_metadata(dir).unwrap();
    out.insert(PathBuf::from("."), (m.permissions().mode(), 0, 0));
    walk(dir, dir, &mut out);
    out
}

/// Atomically exchanges two entries (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> bool {
    e2e::tree::rename2(a, b, libc::RENAME_EXCHANGE).is_ok()
}

/// The slow peer: answers each Request after [`DELAY`], reading on in the
/// meantime (so many requests wait at once, each pull held open).
struct SlowPeer {
    p: RawPeer,
    files: BTreeMap<String, Vec<u8>>,
    queue: VecDeque<(Instant, wire::Response)>,
    served: u64,
}

impl SlowPeer {
    /// Reads and answers for `limit` or until `done()`.
    fn serve_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            if let Some(Message::Request(r)) = self.p.next_message() {
                let src = self.files.get(&r.name).map_or(&[][..], |v| &v[..]);
                let start = (r.offset.max(0) as usize).min(src.len());
                let end = (start + r.size.max(0) as usize).min(src.len());
                self.queue.push_back((
                    Instant::now() + DELAY,
                    wire::Response {
                        id: r.id,
                        data: src[start..end].to_vec(),
                        code: 0,
                    },
                ));
            }
            while self
                .queue
                .front()
                .is_some_and(|(due, _)| *due <= Instant::now())
            {
                let (_, resp) = self.queue.pop_front().unwrap();
                self.p.send(&Message::Response(resp));
                self.served += 1;
            }
        }
        done(self)
    }
}

#[test]
fn directory_swapped_for_a_symlink_while_pulling_never_leads_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_dev = raw.device_id();
    let raw_id = raw_dev.to_string();
    let root = tmp.path().join("f");
    let outside = tmp.path().join("outside");
    let parking = tmp.path().join("parking");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&parking).unwrap();

    // The outside: restrictive modes throughout; files named like the
    // ones the peer later deletes, a directory named like the one it wants
    // 0777; nothing named like the files it changes (a name that exists
    // outside makes the "changed locally?" check trip, which hides the
    // race rather than closing it).
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    for i in 0..FILES / 2 {
        let p = outside.join(format!("f{i}"));
        std::fs::write(&p, format!("outside {i}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(outside.join("sub/x"), b"outside x\n").unwrap();
    std::fs::set_permissions(outside.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o750)).unwrap();
    let before = snapshot(&outside);
    // The symlink that gets swapped in for the folder's "d".
    std::os::unix::fs::symlink(&outside, parking.join("d")).unwrap();

    ours.add_device(&raw_id, &["dynamic"]);
    ours.add_folder("f", &root, "sendreceive", &[&raw_id]);
    // Scans only when the puller asks for one: the swapping is seen by
    // the puller, not absorbed by watcher-driven rescans.
    let mut c = ours.config();
    c["folders"][0]["fsWatcherEnabled"] = false.into();
    ours.set_config(&c);
    let mut node = ours.start();
    node.wait_scanned("f", 0, Duration::from_secs(20));
    let our_id: DeviceId = ours.id.parse().unwrap();

    // Version 1: "d" and "d/sub" wide open, FILES files in "d".
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut files = BTreeMap::new();
    let mut index = vec![
        dir_entry("d", &raw_dev, next()),
        dir_entry("d/sub", &raw_dev, next()),
    ];
    for i in 0..FILES {
        let name = format!("d/f{i}");
        index.push(entry(&name, &content(i, 1), &raw_dev, 1, next()));
        files.insert(name, content(i, 1));
    }
    // Each read waits at most this long (shorter breaks the TLS handshake
    // under load); due Responses go out between reads.
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_millis(500));
    p.hello();
    p.send(&cluster_config("f", &[our_id, raw_dev]));
    p.send(&Message::Index(wire::Index {
        folder: "f".into(),
        files: index,
        ..Default::default()
    }));
    let mut peer = SlowPeer {
        p,
        files,
        queue: VecDeque::new(),
        served: 0,
    };

    // The node makes "d"; from then on it is swapped with the symlink as
    // fast as the machine allows.
    let made = peer.serve_until(Duration::from_secs(20), |_| {
        std::fs::symlink_metadata(root.join("d")).is_ok_and(|m| m.is_dir())
    });
    assert!(
        made,
        "the node did not create d:\n{}",
        node.proc.log_tail(30)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (a, b) = (root.join("d"), parking.join("d"));
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if exchange(&a, &b) {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                // Alternate short and longer stays in each state, so both
                // quick and slow steps of the puller meet both.
                k += 1;
                std::thread::sleep(Duration::from_micros(if k % 4 < 2 { 50 } else { 700 }));
            }
            // Leave the real directory in the folder.
            if std::fs::symlink_metadata(&a).is_ok_and(|m| m.file_type().is_symlink()) {
                exchange(&a, &b);
            }
        })
    };

    // Phase 1: every block of version 1 served (slowly) under the swapping.
    let all_v1 = (FILES * FILE_LEN.div_ceil(128 << 10)) as u64;
    peer.serve_until(Duration::from_secs(15), |p| p.served >= all_v1);
    let served_v1 = peer.served;
    // Phase 2: half the files deleted, the other half changed, "d/sub"
    // deleted: removals and renames over existing names, still swapping.
    let mut update = Vec::new();
    for i in 0..FILES {
        let name = format!("d/f{i}");
        if i < FILES / 2 {
            update.push(FileInfo {
                deleted: true,
                size: 0,
                blocks: Vec::new(),
                ..entry(&name, b"", &raw_dev, 2, next())
            });
            peer.files.remove(&name);
        } else {
            update.push(entry(&name, &content(i, 2), &raw_dev, 2, next()));
            peer.files.insert(name, content(i, 2));
        }
    }
    update.push(FileInfo {
        deleted: true,
        ..entry("d/sub", b"", &raw_dev, 2, next())
    });
    peer.p.send(&Message::IndexUpdate(wire::Index {
        folder: "f".into(),
        files: update,
        ..Default::default()
    }));
    let target = served_v1 + (FILES / 2 * FILE_LEN.div_ceil(128 << 10)) as u64;
    peer.serve_until(Duration::from_secs(10), |p| p.served >= target);
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let swapped = swaps.load(Ordering::Relaxed);

    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the folder was written, renamed, chmodded or deleted:\n{}",
        node.proc.log_tail(40)
    );
    assert!(node.proc.alive(), "node died:\n{}", node.proc.log_tail(40));

    // Swapping over: the node still finishes (a rescan cuts the retry
    // wait short). Which version of each file wins is not asserted: the
    // scans during the swapping saw "d" as a symlink, i.e. local changes
    // that may win their conflicts, as they would for any local edit.
    assert!(std::fs::symlink_metadata(root.join("d")).unwrap().is_dir());
    let _ = node.post("/rest/db/scan?folder=f");
    let mut last = serde_json::Value::Null;
    let finished = peer.serve_until(Duration::from_secs(40), |_| {
        let Ok(s) = node.get("/rest/db/status?folder=f") else {
            return false;
        };
        let errors = node.get("/rest/folder/errors?folder=f").ok();
        let no_errors =
            errors.is_some_and(|e| e["errors"].as_array().is_some_and(|a| a.is_empty()));
        let done = s["needTotalItems"].as_u64() == Some(0) && s["state"] == "idle" && no_errors;
        last = s;
        done
    });
    assert!(
        finished,
        "the node did not finish the pull after the swapping stopped ({last}):\n{}",
        node.proc.log_tail(40)
    );
    for i in FILES / 2..FILES {
        let p = root.join(format!("d/f{i}"));
        assert!(
            std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()),
            "{}",
            p.display()
        );
    }
    assert_eq!(snapshot(&outside), before);
    assert!(node.get("/rest/system/ping").is_ok());
    eprintln!(
        "{swapped} swaps; {} responses served ({served_v1} for version 1)",
        peer.served
    );
    node.stop();
}
