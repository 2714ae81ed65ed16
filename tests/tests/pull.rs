//! Pulling (issue 6): our node receives folders from a real Syncthing
//! 1.19.2 device byte for byte — nested directories, an empty file, a few
//! MiB of random data, names with spaces and non-ASCII, a symlink, an
//! executable — then modifications, deletions and a directory rename,
//! reusing local blocks; the real device sees our node 100 % complete.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::bench::openssl_sha256_mb_s;
use e2e::bep_peer::{cluster_config, RawPeer};
use e2e::node::NodeHome;
use e2e::tree::{build_tree, bytes, tree, write_mib_file};
use e2e::{wait, PeerVersion};
use proto::bep::wire::{self, Counter, FileInfo, Vector};
use proto::bep::Message;
use proto::{DeviceId, Identity, KeyKind};

/// Folder `id` shared between a real Syncthing device (at `theirs`, of
/// that type) and our node (at `ours_at`), each knowing the other's
/// address. Our node is not started.
fn share_with_real_device(
    st: &e2e::Syncthing,
    st_port: u16,
    ours: &NodeHome,
    id: &str,
    (theirs, their_type): (&Path, &str),
    (ours_at, our_type): (&Path, &str),
) {
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder(id, theirs, their_type, &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder(id, ours_at, our_type, &[st.id()]);
}

fn wait_same_tree(theirs: &Path, ours: &Path, limit: Duration, log: &dyn Fn() -> String) {
    let same = wait::until(limit, Duration::from_millis(250), || {
        (tree(theirs) == tree(ours)).then_some(())
    });
    if same.is_none() {
        let (ta, tb) = (tree(theirs), tree(ours));
        for (k, v) in &ta {
            if tb.get(k) != Some(v) {
                eprintln!("{k}: theirs {v:?}, ours {:?}", tb.get(k));
            }
        }
        for k in tb.keys().filter(|k| !ta.contains_key(*k)) {
            eprintln!("{k}: only on our node");
        }
        panic!("trees differ after {limit:?}:\n{}", log());
    }
}

/// Waits until the real device reports our node 100 % complete and our
/// node needs nothing.
fn wait_complete(st: &e2e::Syncthing, node: &e2e::node::Node, folder: &str) {
    let path = format!(
        "/rest/db/completion?folder={folder}&device={}",
        node.home.id
    );
    let done = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        let c = st.get(&path).ok()?;
        let s = node.get(&format!("/rest/db/status?folder={folder}")).ok()?;
        (c["completion"].as_f64() == Some(100.0)
            && c["needItems"].as_u64() == Some(0)
            && s["needTotalItems"].as_u64() == Some(0)
            && s["pullErrors"].as_u64() == Some(0))
        .then_some(())
    });
    assert!(
        done.is_some(),
        "{folder}: real device says {:?}, we say {:?}\n{}",
        st.get(&path),
        node.get(&format!("/rest/db/status?folder={folder}")),
        node.proc.log_tail(30)
    );
}

#[test]
fn our_node_pulls_from_real_syncthing() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));

    let src = tmp.path().join("st-src");
    build_tree(&src, 300, 6);
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "pull",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );

    let started = Instant::now();
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    assert!(
        st.wait_connected(&ours.id, Duration::from_secs(30))
            .is_some(),
        "not connected:\n{}",
        log()
    );
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    eprintln!("initial pull in {:.2} s", started.elapsed().as_secs_f64());
    wait_complete(&st, &node, "pull");
    let pulled = node.status_u64("pulledBytes");
    assert!(pulled >= 6 << 20, "pulled {pulled} bytes");

    // Their side changes: one block of the big file, a new file, a
    // deletion, a directory rename, a mode change.
    {
        use std::os::unix::fs::FileExt;
        let big = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("big.bin"))
            .unwrap();
        big.write_all_at(b"changed!", 3 << 20).unwrap();
    }
    std::fs::write(src.join("dir1/new file.txt"), b"new\n").unwrap();
    std::fs::remove_file(src.join("name with spaces.txt")).unwrap();
    std::fs::rename(src.join("dir2"), src.join("dir2 renamed")).unwrap();
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let t0 = Instant::now();
    st.scan("pull");
    wait_same_tree(&src, &dst, Duration::from_secs(30), &log);
    eprintln!("changes applied in {:.2} s", t0.elapsed().as_secs_f64());
    wait_complete(&st, &node, "pull");
    let delta = node.status_u64("pulledBytes") - pulled;
    // One 128 KiB block and the new file; the renamed directory's files
    // are built from the local copies.
    assert!(delta < 256 << 10, "pulled {delta} bytes for the changes");
    assert!(node.status_u64("reusedBytes") >= 5 << 20);

    // Deletions of a whole directory tree arrive too.
    std::fs::remove_dir_all(src.join("dir3")).unwrap();
    st.scan("pull");
    wait_same_tree(&src, &dst, Duration::from_secs(30), &log);
    wait_complete(&st, &node, "pull");
    assert!(!dst.join("dir3").exists());
    node.stop();
    st.shutdown();
}

#[test]
fn receive_only_keeps_local_changes_until_reverted() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    build_tree(&src, 40, 1);
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "ro",
        (&src, "sendonly"),
        (&dst, "receiveonly"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    wait_complete(&st, &node, "ro");

    // A local edit is kept, announced invalid, and not overwritten by a
    // later remote change.
    std::fs::write(dst.join("name with spaces.txt"), b"local edit\n").unwrap();
    node.post("/rest/db/scan?folder=ro").unwrap();
    let flagged = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let c = st
            .get(&format!(
                "/rest/db/completion?folder=ro&device={}",
                node.home.id
            ))
            .ok()?;
        (c["completion"].as_f64()? < 100.0).then_some(())
    });
    assert!(flagged.is_some(), "the real device still sees us complete");
    std::fs::write(src.join("name with spaces.txt"), b"remote edit\n").unwrap();
    st.scan("ro");
    let errors = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let e = node.get("/rest/folder/errors?folder=ro").ok()?;
        (e["errors"].as_array()?.len() == 1).then_some(e)
    });
    assert!(errors.is_some(), "no pull error listed:\n{}", log());
    assert_eq!(
        std::fs::read(dst.join("name with spaces.txt")).unwrap(),
        b"local edit\n"
    );

    // Revert: the global version comes back.
    node.post("/rest/db/revert?folder=ro").unwrap();
    wait_same_tree(&src, &dst, Duration::from_secs(30), &log);
    wait_complete(&st, &node, "ro");
    node.stop();
    st.shutdown();
}

fn file_entry(name: &str, data: &[u8], peer: &DeviceId) -> FileInfo {
    let blocks: Vec<wire::BlockInfo> = if data.is_empty() {
        proto::bep::blocks::empty_file_blocks()
    } else {
        data.chunks(128 << 10)
            .enumerate()
            .map(|(i, c)| proto::bep::blocks::hash_block((i * (128 << 10)) as u64, c))
            .collect()
    };
    FileInfo {
        name: name.into(),
        size: data.len() as i64,
        permissions: 0o644,
        modified_s: 1_700_000_000,
        version: Some(Vector {
            counters: vec![Counter {
                id: peer.short().0,
                value: 1,
            }],
        }),
        sequence: 1,
        modified_by: peer.short().0,
        block_size: 128 << 10,
        blocks,
        ..Default::default()
    }
}

#[test]
fn hostile_peer_cannot_write_outside_or_inject_bad_data() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_dev = raw.device_id();
    let raw_id = raw_dev.to_string();
    let root = tmp.path().join("f");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    ours.add_device(&raw_id, &["dynamic"]);
    ours.add_folder("f", &root, "sendreceive", &[&raw_id]);
    let node = ours.start();
    node.wait_scanned("f", 0, Duration::from_secs(10));
    let our_id: DeviceId = ours.id.parse().unwrap();
    let cc = cluster_config("f", &[our_id, raw_dev]);
    let index = |files: Vec<FileInfo>| {
        Message::Index(wire::Index {
            folder: "f".into(),
            files,
            ..Default::default()
        })
    };

    // A name leaving the folder is a protocol error: the node hangs up and
    // stores nothing of that index.
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_millis(500));
    p.hello();
    p.send(&cc);
    p.send(&index(vec![file_entry("../escape.txt", b"x", &raw_dev)]));
    let closed = (0..40)
        .any(|_| matches!(p.next_message(), Some(Message::Close(_))) || !node.connected(&raw_id));
    assert!(closed, "node kept a peer announcing ../escape.txt");
    drop(p);
    // Its reconnect backoff: the node may still hold the old connection.
    std::thread::sleep(Duration::from_millis(500));

    // A symlink to the outside followed by a file "inside" it, a good file
    // and a file whose blocks come back with the wrong data.
    let good = bytes(7, 300_000);
    let bad = bytes(8, 200_000);
    let mut link = file_entry("s", b"", &raw_dev);
    link.r#type = wire::FileInfoType::Symlink as i32;
    link.blocks.clear();
    link.no_permissions = true;
    link.permissions = 0;
    link.symlink_target = outside.to_string_lossy().as_bytes().to_vec();
    let entries = vec![
        link,
        file_entry("s/evil.txt", b"evil\n", &raw_dev),
        file_entry("good.bin", &good, &raw_dev),
        file_entry("bad.bin", &bad, &raw_dev),
    ];
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_millis(500));
    p.hello();
    p.send(&cc);
    p.send(&index(entries));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "timed out:\n{}",
            node.proc.log_tail(30)
        );
        if let Some(Message::Request(r)) = p.next_message() {
            let src: &[u8] = match r.name.as_str() {
                "good.bin" => &good,
                "s/evil.txt" => b"evil\n",
                _ => &bad,
            };
            let start = (r.offset.max(0) as usize).min(src.len());
            let end = (start + r.size.max(0) as usize).min(src.len());
            let mut data = src[start..end].to_vec();
            if r.name == "bad.bin" {
                // Corrupted in transit (or by a malicious peer).
                for b in data.iter_mut().take(16) {
                    *b ^= 0xff;
                }
            }
            served += 1;
            p.send(&Message::Response(wire::Response {
                id: r.id,
                data,
                code: 0,
            }));
        }
        let errors = node.get("/rest/folder/errors?folder=f").unwrap();
        let names: Vec<String> = errors["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect();
        if root.join("good.bin").exists() && names.len() == 2 {
            break names;
        }
    };
    assert!(served > 0);
    assert_eq!(std::fs::read(root.join("good.bin")).unwrap(), good);
    assert!(done.contains(&"s/evil.txt".to_string()), "{done:?}");
    assert!(done.contains(&"bad.bin".to_string()), "{done:?}");
    assert!(
        !root.join("bad.bin").exists(),
        "a file with bad data was written"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the folder"
    );
    assert!(!tmp.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_link(root.join("s")).unwrap(),
        outside,
        "the symlink itself is synced"
    );
    node.stop();
}

/// Size of the temp file of `name` in `dir`, if any.
fn temp_len(dir: &Path, name: &str) -> u64 {
    std::fs::metadata(dir.join(format!(".syncthing.{name}.tmp"))).map_or(0, |m| m.len())
}

#[test]
fn kill_9_while_pulling_leaves_old_or_new_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    write_mib_file(&src.join("large.bin"), 160, 5000);
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "big",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );

    let mut node = ours.start();
    let partial = wait::until(Duration::from_secs(60), Duration::from_millis(20), || {
        (temp_len(&dst, "large.bin") >= 20 << 20).then_some(())
    });
    assert!(
        partial.is_some(),
        "no partial temp file:\n{}",
        node.proc.log_tail(30)
    );
    node.proc.signal(9);
    assert!(node.proc.wait_exit(Duration::from_secs(10)).is_some());
    // Either absent or the complete new file, never a part of it.
    if let Ok(now) = std::fs::read(dst.join("large.bin")) {
        assert!(
            now == std::fs::read(src.join("large.bin")).unwrap(),
            "target is incomplete ({} bytes)",
            now.len()
        );
    }
    let kept = temp_len(&dst, "large.bin");
    drop(node);

    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    let reused = node.status_u64("reusedBytes");
    eprintln!("killed with a {kept}-byte temp file; {reused} bytes reused after restart");
    assert!(
        kept == 0 || reused >= kept.min(20 << 20) / 2,
        "temp file of {kept} bytes not reused ({reused})"
    );
    node.stop();
    st.shutdown();
}

/// Contents of every regular file below `root` (temp files excluded).
fn contents(root: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = tree(root)
        .keys()
        .filter_map(|k| {
            let p = root.join(k);
            std::fs::symlink_metadata(&p)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|_| std::fs::read(&p).ok())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn concurrent_edits_converge_and_both_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("shared.txt"), b"base\n").unwrap();
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "c",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    wait_complete(&st, &node, "c");
    node.stop();

    // Both sides edit the same file while apart; theirs is later, so it
    // wins (1.19.2: newer mtime) and our node must keep its own edit as a
    // conflict copy.
    std::fs::write(dst.join("shared.txt"), b"our edit\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("shared.txt"), b"their edit\n").unwrap();
    st.scan("c");
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    let all = contents(&dst);
    assert!(all.contains(&b"their edit\n".to_vec()), "{all:?}");
    assert!(all.contains(&b"our edit\n".to_vec()), "{all:?}");
    assert_eq!(
        std::fs::read(dst.join("shared.txt")).unwrap(),
        b"their edit\n"
    );
    let names: Vec<String> = tree(&dst).into_keys().collect();
    let short = &ours.id[..7];
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("shared.sync-conflict-") && n.ends_with(".txt")),
        "no conflict copy: {names:?} (ours {short})"
    );
    node.stop();
    st.shutdown();
}

/// A conflict copy that a newer version replaces is kept once more: the
/// real 1.19.2 renames a second conflict copy over a first one made in the
/// same second for the same winner, and its scan then announces that as a
/// plain modification; without this the first edit is lost everywhere.
#[test]
fn a_replaced_conflict_copy_is_kept_again_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    let copy = "notes.sync-conflict-20260101-120000-ABCDEFG.txt";
    std::fs::write(src.join(copy), b"first losing edit\n").unwrap();
    std::fs::write(src.join("plain.txt"), b"v1\n").unwrap();
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "c",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    wait_complete(&st, &node, "c");

    // The real device replaces the conflict copy (as its rename does) and
    // edits an ordinary file: only the conflict copy is kept again.
    std::fs::write(src.join(copy), b"second losing edit, same name\n").unwrap();
    std::fs::write(src.join("plain.txt"), b"v2\n").unwrap();
    st.scan("c");
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    let all = contents(&dst);
    assert!(all.contains(&b"first losing edit\n".to_vec()), "{all:?}");
    assert_eq!(
        std::fs::read(dst.join(copy)).unwrap(),
        b"second losing edit, same name\n"
    );
    assert!(!all.contains(&b"v1\n".to_vec()), "{all:?}");
    let kept: Vec<String> = tree(&dst)
        .into_keys()
        .filter(|n| n.starts_with("notes.sync-conflict-20260101-120000-ABCDEFG.sync-conflict-"))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", tree(&dst).keys());
    // `db/file` names the connected device that has the global version.
    let f = node.get("/rest/db/file?folder=c&file=plain.txt").unwrap();
    assert_eq!(f["availability"][0]["id"].as_str(), Some(st.id()), "{f}");
    assert_eq!(f["availability"][0]["fromTemporary"], false, "{f}");
    node.stop();
    st.shutdown();
}

#[test]
fn send_only_ignores_remote_changes_until_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("our-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("master.txt"), b"the master copy\n").unwrap();
    let theirs = tmp.path().join("st-dst");
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "so",
        (&theirs, "sendreceive"),
        (&src, "sendonly"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &theirs, Duration::from_secs(60), &log);

    // Their edit reaches our index but never our disk.
    std::fs::write(theirs.join("master.txt"), b"their change\n").unwrap();
    st.scan("so");
    let need = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let s = node.get("/rest/db/status?folder=so").ok()?;
        (s["needFiles"].as_u64()? == 1).then_some(())
    });
    assert!(need.is_some(), "remote change not seen:\n{}", log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read(src.join("master.txt")).unwrap(),
        b"the master copy\n"
    );

    // A file of theirs that our patterns ignore (we do not have it).
    std::fs::write(src.join(".stignore"), "*.tmpx\n").unwrap();
    node.post("/rest/db/scan?folder=so").unwrap();
    std::fs::write(theirs.join("their.tmpx"), b"theirs, ignored by us\n").unwrap();
    st.scan("so");
    std::thread::sleep(Duration::from_secs(1));

    // Override: our version wins everywhere, except for what we ignore
    // (overriding a name we do not have would delete it everywhere).
    node.post("/rest/db/override?folder=so").unwrap();
    wait_for(Duration::from_secs(30), "the override", &log, &|| {
        std::fs::read(theirs.join("master.txt")).is_ok_and(|d| d == b"the master copy\n")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::read(src.join("master.txt")).unwrap(),
        b"the master copy\n"
    );
    assert_eq!(
        std::fs::read(theirs.join("their.tmpx")).unwrap(),
        b"theirs, ignored by us\n",
        "an ignored name was overridden"
    );
    node.stop();
    st.shutdown();
}

#[test]
#[ignore = "benchmark-sized: run explicitly (cargo test -p e2e --test pull -- --ignored)"]
fn large_file_one_changed_block_transfers_little() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    write_mib_file(&src.join("large.bin"), 300, 9000);
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "big",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    let t0 = Instant::now();
    wait_same_tree(&src, &dst, Duration::from_secs(300), &log);
    eprintln!("300 MiB pulled in {:.2} s", t0.elapsed().as_secs_f64());
    wait_complete(&st, &node, "big");
    let before = node.status_u64("pulledBytes");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("large.bin"))
            .unwrap();
        f.write_all_at(b"one changed block", 150 << 20).unwrap();
    }
    let t1 = Instant::now();
    st.scan("big");
    wait_same_tree(&src, &dst, Duration::from_secs(300), &log);
    wait_complete(&st, &node, "big");
    let delta = node.status_u64("pulledBytes") - before;
    eprintln!(
        "one changed block of 300 MiB: {delta} bytes transferred, applied in {:.2} s",
        t1.elapsed().as_secs_f64()
    );
    assert!(delta < 2 << 20, "{delta} bytes transferred");

    // For comparison: the same file from the same device into a second
    // real Syncthing device.
    let (st2, st2_port) = e2e::syncthing::start_tcp(&tmp.path().join("st2"));
    let dst2 = tmp.path().join("st2-dst");
    st.add_device(st2.id(), &[&format!("tcp://127.0.0.1:{st2_port}")]);
    st2.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    st.share_folder("big", &src, "sendreceive", &[&ours.id, st2.id()]);
    let t2 = Instant::now();
    st2.share_folder("big", &dst2, "sendreceive", &[st.id()]);
    st2.wait_synced("big", 1, Duration::from_secs(300)).unwrap();
    eprintln!(
        "300 MiB Syncthing -> Syncthing in {:.2} s",
        t2.elapsed().as_secs_f64()
    );
    node.stop();
    st.shutdown();
    st2.shutdown();
}

/// Waits until `ok` holds, panicking with `what` and the node's log.
fn wait_for(limit: Duration, what: &str, log: &dyn Fn() -> String, ok: &dyn Fn() -> bool) {
    let done = wait::until(limit, Duration::from_millis(200), || ok().then_some(()));
    assert!(done.is_some(), "timed out waiting for {what}:\n{}", log());
}

#[test]
fn ignored_files_are_neither_sent_nor_pulled_nor_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let theirs = tmp.path().join("st-src");
    let mine = tmp.path().join("our-dst");
    for d in [&theirs, &mine] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Their side: a plain file, files our patterns ignore, and a directory
    // we will later find a local ignored file in.
    std::fs::write(theirs.join("keep.txt"), b"keep\n").unwrap();
    std::fs::write(theirs.join("keep2.txt"), b"keep2\n").unwrap();
    std::fs::write(theirs.join("a.log"), b"their log\n").unwrap();
    std::fs::create_dir_all(theirs.join("build")).unwrap();
    std::fs::write(theirs.join("build/out.bin"), b"artefact").unwrap();
    std::fs::create_dir_all(theirs.join("sub/build")).unwrap();
    std::fs::write(theirs.join("sub/build/x"), b"not rooted: synced").unwrap();
    std::fs::write(theirs.join("Y.BAK"), b"backup").unwrap();
    std::fs::create_dir_all(theirs.join("shared")).unwrap();
    std::fs::write(theirs.join("shared/f.txt"), b"f\n").unwrap();
    // Our side: patterns (with an include), and local files they cover.
    std::fs::write(
        mine.join(".stignore"),
        "// our patterns\n*.log\n/build\n(?d).DS_Store\n#include patterns/more\n",
    )
    .unwrap();
    std::fs::create_dir_all(mine.join("patterns")).unwrap();
    std::fs::write(mine.join("patterns/more"), "(?i)*.bak\n").unwrap();
    std::fs::write(mine.join("local.log"), b"our log\n").unwrap();
    std::fs::write(mine.join("mine.txt"), b"mine\n").unwrap();

    share_with_real_device(
        &st,
        st_port,
        &ours,
        "ig",
        (&theirs, "sendreceive"),
        (&mine, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    let scan_ours = || node.post("/rest/db/scan?folder=ig").unwrap();
    let limit = Duration::from_secs(60);

    // Not pulled: *.log, /build, (?i)*.bak; pulled: the rest.
    wait_for(limit, "the first sync", &log, &|| {
        mine.join("keep.txt").exists()
            && mine.join("sub/build/x").exists()
            && mine.join("shared/f.txt").exists()
            && theirs.join("mine.txt").exists()
            && theirs.join("patterns/more").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!mine.join("a.log").exists(), "ignored file pulled");
    assert!(!mine.join("build").exists(), "rooted ignored dir pulled");
    assert!(
        !mine.join("Y.BAK").exists(),
        "included (?i) pattern not applied"
    );
    // Not sent: our local.log never reaches them.
    assert!(!theirs.join("local.log").exists(), "ignored file sent");
    // Our node needs nothing (ignored names are not needed).
    wait_for(limit, "nothing needed", &log, &|| {
        node.get("/rest/db/status?folder=ig")
            .is_ok_and(|s| s["needTotalItems"].as_u64() == Some(0))
    });

    // Newly ignored: a synced file becomes ignored; their change to it is
    // not pulled and our local deletion of it is not sent.
    std::fs::write(
        mine.join(".stignore"),
        "// our patterns\n*.log\n/build\n(?d).DS_Store\n#include patterns/more\nkeep2.txt\n",
    )
    .unwrap();
    scan_ours();
    node.wait_scanned("ig", 0, Duration::from_secs(20));
    std::fs::write(theirs.join("keep2.txt"), b"their new keep2\n").unwrap();
    std::fs::write(theirs.join("keep.txt"), b"their new keep\n").unwrap();
    st.scan("ig");
    wait_for(limit, "the change to keep.txt", &log, &|| {
        std::fs::read(mine.join("keep.txt")).is_ok_and(|d| d == b"their new keep\n")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::read(mine.join("keep2.txt")).unwrap(), b"keep2\n");
    std::fs::remove_file(mine.join("keep2.txt")).unwrap();
    std::fs::write(mine.join("mine.txt"), b"mine, edited\n").unwrap();
    scan_ours();
    wait_for(limit, "our edit of mine.txt", &log, &|| {
        std::fs::read(theirs.join("mine.txt")).is_ok_and(|d| d == b"mine, edited\n")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read(theirs.join("keep2.txt")).unwrap(),
        b"their new keep2\n",
        "our deletion of an ignored file was sent"
    );

    // A directory deleted on their side: our (?d) .DS_Store goes with
    // it, an ignored file keeps it (and is listed as a pull error).
    std::fs::write(mine.join("shared/.DS_Store"), b"x").unwrap();
    std::fs::write(mine.join("shared/notes.log"), b"precious\n").unwrap();
    std::fs::remove_dir_all(theirs.join("shared")).unwrap();
    st.scan("ig");
    wait_for(limit, "the directory deletion", &log, &|| {
        !mine.join("shared/f.txt").exists()
            && node
                .get("/rest/folder/errors?folder=ig")
                .is_ok_and(|e| e.to_string().contains("ignored"))
    });
    assert_eq!(
        std::fs::read(mine.join("shared/notes.log")).unwrap(),
        b"precious\n"
    );
    assert!(!mine.join("shared/.DS_Store").exists());
    // With the ignored file allowed to go ((?d)), the directory goes too.
    std::fs::write(
        mine.join(".stignore"),
        "(?d)*.log\n/build\n(?d).DS_Store\n#include patterns/more\nkeep2.txt\n",
    )
    .unwrap();
    scan_ours();
    wait_for(limit, "the directory removed", &log, &|| {
        !mine.join("shared").exists()
    });

    // Patterns reloaded: without *.log, their a.log arrives and our
    // local.log is sent.
    std::fs::write(mine.join(".stignore"), "/build\n").unwrap();
    scan_ours();
    wait_for(limit, "*.log files after un-ignoring", &log, &|| {
        std::fs::read(mine.join("a.log")).is_ok_and(|d| d == b"their log\n")
            && std::fs::read(theirs.join("local.log")).is_ok_and(|d| d == b"our log\n")
    });
    assert!(!mine.join("build").exists());
    assert_eq!(
        std::fs::read(theirs.join("build/out.bin")).unwrap(),
        b"artefact"
    );

    // A broken .stignore stops the folder instead of syncing everything.
    std::fs::write(mine.join(".stignore"), "/build\n#include missing-file\n").unwrap();
    std::fs::write(theirs.join("late.txt"), b"late\n").unwrap();
    st.scan("ig");
    scan_ours();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !mine.join("late.txt").exists(),
        "pulled with a broken .stignore"
    );
    assert!(!mine.join("build").exists());
    node.stop();
    st.shutdown();
}

/// A tmpfs mounted for one test, unmounted (lazily, in case a process
/// still holds it) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disk_stops_the_file_with_an_error_and_resumes_when_freed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED full_disk_…: needs root to mount a small tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    let huge = bytes(77, 24 << 20);
    std::fs::write(src.join("huge.bin"), &huge).unwrap();
    std::fs::write(src.join("small.txt"), b"fits\n").unwrap();
    // Our folder: a 16 MiB filesystem already holding 2 MiB of ours.
    let dst = tmp.path().join("small-fs");
    let fs = Tmpfs::mount(&dst, "16m");
    let existing = bytes(78, 2 << 20);
    std::fs::write(dst.join("existing.bin"), &existing).unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "full",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);

    // The file that cannot fit is an error in db/status and
    // /rest/folder/errors; what fits arrives.
    let errors = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        let e = node.get("/rest/folder/errors?folder=full").ok()?;
        let s = node.get("/rest/db/status?folder=full").ok()?;
        let listed = e["errors"].as_array()?.iter().any(|x| {
            x["path"].as_str() == Some("huge.bin")
                && x["error"].as_str().is_some_and(|m| m.contains("space"))
        });
        (listed && s["pullErrors"].as_u64()? >= 1 && dst.join("small.txt").exists()).then_some(e)
    });
    assert!(errors.is_some(), "no disk-space error listed:\n{}", log());
    eprintln!("listed: {}", errors.unwrap());
    assert!(!dst.join("huge.bin").exists());
    assert_eq!(std::fs::read(dst.join("existing.bin")).unwrap(), existing);
    let temp = temp_len(&dst, "huge.bin");
    assert!(temp <= 16 << 20, "temp file of {temp} bytes");
    // Their side sees us incomplete, not in sync.
    let c = st
        .get(&format!(
            "/rest/db/completion?folder=full&device={}",
            ours.id
        ))
        .unwrap();
    assert!(c["completion"].as_f64().unwrap() < 100.0, "{c}");

    // Space freed: the next retry completes it, byte for byte.
    fs.resize("64m");
    let done = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("huge.bin")).ok()? == huge).then_some(())
    });
    assert!(
        done.is_some(),
        "not completed after freeing space:\n{}",
        log()
    );
    wait_complete(&st, &node, "full");
    assert_eq!(std::fs::read(dst.join("existing.bin")).unwrap(), existing);
    assert_eq!(temp_len(&dst, "huge.bin"), 0);
    node.stop();
    st.shutdown();
    drop(fs);
}

/// Waits until our node has everything the cluster has, with exactly
/// `files` files (the same conditions as `Syncthing::wait_synced`).
fn node_synced(node: &e2e::node::Node, folder: &str, files: u64, limit: Duration) {
    let mut last = serde_json::Value::Null;
    let ok = wait::until(limit, Duration::from_millis(100), || {
        let s = node.get(&format!("/rest/db/status?folder={folder}")).ok()?;
        let n = |k: &str| s.get(k).and_then(serde_json::Value::as_u64);
        let synced = s["state"].as_str() == Some("idle")
            && n("needTotalItems") == Some(0)
            && n("globalFiles") == Some(files)
            && n("localFiles") == n("globalFiles")
            && n("localBytes") == n("globalBytes")
            && n("pullErrors").unwrap_or(0) == 0;
        last = s;
        synced.then_some(())
    });
    assert!(
        ok.is_some(),
        "not synced: {last}\n{}",
        node.proc.log_tail(30)
    );
}

/// Seconds from our node's ItemStarted to its ItemFinished for `item`: the
/// file's own pull (blocks, verification, fsync, rename), without the
/// cluster config, index exchange and status polling around it.
fn item_seconds(node: &e2e::node::Node, item: &str) -> Option<f64> {
    let events = node
        .get("/rest/events?events=ItemStarted,ItemFinished&since=0&timeout=0")
        .ok()?;
    // RFC 3339 with nanoseconds, UTC: the time of day is enough here.
    let at = |kind: &str| {
        let e = events
            .as_array()?
            .iter()
            .find(|e| e["type"] == kind && e["data"]["item"] == item)?;
        let t = e["time"].as_str()?.split('T').nth(1)?.trim_end_matches('Z');
        let mut hms = t.split(':').map(|x| x.parse::<f64>().ok());
        Some(hms.next()?? * 3600.0 + hms.next()?? * 60.0 + hms.next()??)
    };
    let d = at("ItemFinished")? - at("ItemStarted")?;
    Some(if d < 0.0 { d + 86400.0 } else { d })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One real Syncthing device serving `src` (send-only, scanned once), and
/// fresh receivers pulling it: our node, or another real Syncthing device.
/// Each receiver is connected first and already knows the folder is
/// offered; the clock starts when the receiver adds the folder and stops
/// when it reports itself in sync.
struct PullBench {
    tmp: std::path::PathBuf,
    src: std::path::PathBuf,
    files: u64,
    source: e2e::Syncthing,
    source_addr: String,
    receivers: Vec<String>,
    version: PeerVersion,
}

impl PullBench {
    /// Source and Syncthing receivers of `version`.
    fn new(tmp: &Path, src: &Path, files: u64, version: PeerVersion) -> PullBench {
        let tmp = tmp.join(version.label());
        let (source, port) = e2e::syncthing::start_tcp_version(&tmp.join("st-source"), version);
        PullBench {
            version,
            tmp: tmp.to_path_buf(),
            src: src.to_path_buf(),
            files,
            source,
            source_addr: format!("tcp://127.0.0.1:{port}"),
            receivers: Vec::new(),
        }
    }

    fn offer_to(&mut self, id: &str, addr: &str) {
        self.source.add_device(id, &[addr]);
        self.receivers.push(id.to_string());
        let peers: Vec<&str> = self.receivers.iter().map(String::as_str).collect();
        self.source.share_folder("b", &self.src, "sendonly", &peers);
    }

    /// The source has scanned the whole tree.
    fn wait_source_scanned(&self, limit: Duration) {
        let files = self.files;
        let ok = wait::until(limit, Duration::from_millis(500), || {
            let s = self.source.folder_status("b").ok()?;
            (s["state"].as_str() == Some("idle") && s["localFiles"].as_u64() == Some(files))
                .then_some(())
        });
        assert!(ok.is_some(), "source did not finish scanning");
    }

    fn pull_into_our_node(&mut self, run: usize, limit: Duration) -> f64 {
        let home = NodeHome::generate(&self.tmp.join(format!("node-{run}")), "rust");
        home.add_device(self.source.id(), &[&self.source_addr]);
        self.offer_to(&home.id.clone(), &home.address());
        let node = home.start();
        assert!(self
            .source
            .wait_connected(&home.id, Duration::from_secs(60))
            .is_some());
        let dst = self.tmp.join(format!("dst-node-{run}"));
        // Made here although the node creates a new folder's missing path
        // (as Syncthing does), so the timing below counts pulling only.
        std::fs::create_dir_all(&dst).unwrap();
        let t0 = Instant::now();
        node.send(
            "POST",
            "/rest/config/folders",
            &serde_json::json!({"id": "b", "path": dst, "type": "receiveonly",
                "devices": [{"deviceID": self.source.id()}], "fsWatcherEnabled": false}),
        )
        .unwrap();
        node_synced(&node, "b", self.files, limit);
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(tree(&self.src), tree(&dst), "our copy differs");
        if let Some(item) = item_seconds(&node, "big.bin") {
            let size = std::fs::metadata(dst.join("big.bin")).map_or(0, |m| m.len());
            println!(
                "BENCH run {run}: big.bin itself (ItemStarted → ItemFinished, fsync included) {item:.2} s, {:.0} MB/s",
                size as f64 / 1e6 / item
            );
        }
        node.stop();
        let _ = std::fs::remove_dir_all(&dst);
        secs
    }

    fn pull_into_syncthing(&mut self, run: usize, limit: Duration) -> f64 {
        let (st, port) = e2e::syncthing::start_tcp_version(
            &self.tmp.join(format!("st-recv-{run}")),
            self.version,
        );
        st.add_device(self.source.id(), &[&self.source_addr]);
        self.offer_to(st.id(), &format!("tcp://127.0.0.1:{port}"));
        assert!(st
            .wait_connected(self.source.id(), Duration::from_secs(60))
            .is_some());
        let dst = self.tmp.join(format!("dst-st-{run}"));
        let t0 = Instant::now();
        st.share_folder("b", &dst, "receiveonly", &[self.source.id()]);
        st.wait_synced("b", self.files, limit).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(tree(&self.src), tree(&dst), "Syncthing's copy differs");
        st.shutdown();
        let _ = std::fs::remove_dir_all(&dst);
        secs
    }
}

/// Benchmark (documented command: `scripts/bench-pull`, release build):
/// the 300 MiB + 1,000-file tree pulled from a real Syncthing device into
/// our node and into a second real Syncthing device, three times each
/// (alternating), medians; our rate beside `openssl speed -evp sha256`.
#[test]
#[ignore = "benchmark: run explicitly, in release (scripts/bench-pull)"]
fn bench_pull_large_tree_into_our_node_vs_syncthing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = e2e::tree::build_tree(&src, 1000, 300);
    let bytes_total: u64 = walk_bytes(&src);
    for version in e2e::peers::bench_versions("bench_pull_large_tree_into_our_node_vs_syncthing") {
        std::fs::remove_dir_all(src.join(".stfolder")).ok();
        let mut bench = PullBench::new(tmp.path(), &src, files, version);
        let limit = Duration::from_secs(600);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..3 {
            if run == 0 {
                // The source scans once, offered to the first receiver.
                let t = bench.pull_into_our_node(100, limit);
                println!("BENCH (warm-up, source scanning too) into our node {t:.2} s");
                bench.wait_source_scanned(limit);
            }
            if run % 2 == 0 {
                ours.push(bench.pull_into_our_node(run, limit));
                theirs.push(bench.pull_into_syncthing(run, limit));
            } else {
                theirs.push(bench.pull_into_syncthing(run, limit));
                ours.push(bench.pull_into_our_node(run, limit));
            }
        }
        let (o, t) = (median(&mut ours.clone()), median(&mut theirs.clone()));
        let rate = bytes_total as f64 / 1e6 / o;
        let sha = openssl_sha256_mb_s();
        println!(
            "BENCH pull 300 MiB + {files} files from Syncthing {version}: into our node median {o:.2} s {ours:.2?}, \
             into Syncthing {version} median {t:.2} s {theirs:.2?}, ratio {:.2}",
            t / o
        );
        println!(
            "BENCH our pull rate {rate:.0} MB/s ({bytes_total} bytes) = {:.0} % of openssl speed -evp sha256 {sha:.0} MB/s per core",
            rate / sha * 100.0
        );
        bench.source.shutdown();
    }
}

/// Benchmark: 100,000 small files pulled from a real Syncthing device into
/// our node and into a second real Syncthing device (one run each).
#[test]
#[ignore = "benchmark: run explicitly, in release (scripts/bench-pull)"]
fn bench_pull_100k_small_files_into_our_node_vs_syncthing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let n = 100_000u64;
    for i in 0..n {
        let dir = src.join(format!("d{:03}", i % 200));
        if i < 200 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            bytes(i, 64 + (i as usize * 13) % 900),
        )
        .unwrap();
    }
    for version in
        e2e::peers::bench_versions("bench_pull_100k_small_files_into_our_node_vs_syncthing")
    {
        std::fs::remove_dir_all(src.join(".stfolder")).ok();
        let mut bench = PullBench::new(tmp.path(), &src, n, version);
        let limit = Duration::from_secs(1200);
        // The source scans first (not timed).
        bench.source.share_folder("b", &src, "sendonly", &[]);
        bench.wait_source_scanned(limit);
        let ours = bench.pull_into_our_node(0, limit);
        let theirs = bench.pull_into_syncthing(0, limit);
        println!(
            "BENCH pull 100,000 small files from Syncthing {version}: into our node {ours:.2} s, into Syncthing {version} {theirs:.2} s, ratio {:.2}",
            theirs / ours
        );
        bench.source.shutdown();
    }
}

fn walk_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Names differing only in case: on a case-sensitive filesystem (this
/// one) they are distinct files, as with Syncthing 1.19.2 there (its case
/// check only refuses when the filesystem folds case; ours too: see
/// `pull::disk::parent_dir`).
#[test]
fn names_differing_only_in_case_are_distinct_on_a_case_sensitive_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(src.join("Dir")).unwrap();
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("Photo.JPG"), b"upper\n").unwrap();
    std::fs::write(src.join("photo.jpg"), b"lower\n").unwrap();
    std::fs::write(src.join("Dir/a"), b"A\n").unwrap();
    std::fs::write(src.join("dir/a"), b"a\n").unwrap();
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&dst).unwrap();
    // A local file whose name differs only in case from an incoming one.
    std::fs::write(dst.join("PHOTO.jpg"), b"ours\n").unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "case",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    wait_same_tree(&src, &dst, Duration::from_secs(60), &log);
    assert_eq!(std::fs::read(dst.join("Photo.JPG")).unwrap(), b"upper\n");
    assert_eq!(std::fs::read(dst.join("photo.jpg")).unwrap(), b"lower\n");
    assert_eq!(std::fs::read(dst.join("PHOTO.jpg")).unwrap(), b"ours\n");
    assert_eq!(std::fs::read(dst.join("dir/a")).unwrap(), b"a\n");
    node.stop();
    st.shutdown();
}

#[test]
fn disk_filling_up_during_a_pull_removes_the_partial_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED disk_filling_up_…: needs root to mount a small tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    // A slow sender (2 MB/s), so the disk can fill up mid-file.
    st.set_options(serde_json::json!({"maxSendKbps": 2000, "limitBandwidthInLan": true}));
    let src = tmp.path().join("st-src");
    std::fs::create_dir_all(&src).unwrap();
    let big = bytes(91, 10 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let dst = tmp.path().join("small-fs");
    let fs = Tmpfs::mount(&dst, "16m");
    let existing = bytes(79, 2 << 20);
    std::fs::write(dst.join("existing.bin"), &existing).unwrap();
    std::fs::write(dst.join(".stignore"), "*.ign\n").unwrap();
    share_with_real_device(
        &st,
        st_port,
        &ours,
        "full",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let node = ours.start();
    let log = || node.proc.log_tail(40);

    // The file fits when its pull starts; then something else (here: an
    // ignored file of the user) takes the space.
    let started = wait::until(Duration::from_secs(60), Duration::from_millis(5), || {
        (temp_len(&dst, "big.bin") > 0).then_some(())
    });
    assert!(started.is_some(), "pull did not start:\n{}", log());
    let filler = dst.join("filler.ign");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        // Until the filesystem is full.
        while f.write_all(&[7u8; 1 << 16]).is_ok() {}
    }
    let failed = wait::until(Duration::from_secs(60), Duration::from_millis(50), || {
        if std::fs::read(dst.join("big.bin")).is_ok_and(|d| d == big) {
            return Some(None);
        }
        let e = node.get("/rest/folder/errors?folder=full").ok()?;
        // Mid-write ENOSPC; or, had a retry already come, the check
        // before writing.
        let text = e.to_string();
        (text.contains("disk is full") || text.contains("insufficient space")).then_some(Some(e))
    });
    let Some(failed) = failed else {
        panic!("no disk-full error:\n{}", log());
    };
    let Some(errors) = failed else {
        // The machine was too slow to fill the disk before the pull ended.
        eprintln!("SKIPPED the mid-write part: the pull finished before the disk filled up");
        assert_eq!(std::fs::read(dst.join("existing.bin")).unwrap(), existing);
        node.stop();
        st.shutdown();
        return;
    };
    eprintln!("errors: {errors}");
    assert!(!dst.join("big.bin").exists(), "a partial file in place");
    assert_eq!(
        temp_len(&dst, "big.bin"),
        0,
        "partial file kept on a full disk"
    );
    assert_eq!(std::fs::read(dst.join("existing.bin")).unwrap(), existing);

    // Space freed: the next retry completes it.
    std::fs::remove_file(&filler).unwrap();
    let done = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("big.bin")).ok()? == big).then_some(())
    });
    assert!(
        done.is_some(),
        "not completed after freeing space:\n{}",
        log()
    );
    wait_complete(&st, &node, "full");
    node.stop();
    st.shutdown();
    drop(fs);
}

/// Benchmark: a 300 MiB file pulled by our node from another of our nodes
/// (a source that is not the bottleneck), beside `openssl speed`: the
/// puller's own rate (request, SHA-256 verify, write, fsync, rename).
#[test]
#[ignore = "benchmark: run explicitly, in release (scripts/bench-pull)"]
fn bench_pull_large_file_between_our_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_mib_file(&src.join("large.bin"), 300, 7000);
    let a = NodeHome::generate(&tmp.path().join("a"), "a");
    let b = NodeHome::generate(&tmp.path().join("b"), "b");
    a.add_device(&b.id, &[&b.address()]);
    a.add_folder("big", &src, "sendonly", &[&b.id]);
    b.add_device(&a.id, &[&a.address()]);
    let sender = a.start();
    sender.wait_scanned("big", 1, Duration::from_secs(120));
    let receiver = b.start();
    let connected = wait::until(Duration::from_secs(30), Duration::from_millis(50), || {
        receiver.connected(&a.id).then_some(())
    });
    assert!(connected.is_some());
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let t0 = Instant::now();
    receiver
        .send(
            "POST",
            "/rest/config/folders",
            &serde_json::json!({"id": "big", "path": dst, "type": "receiveonly",
                "devices": [{"deviceID": a.id}], "fsWatcherEnabled": false}),
        )
        .unwrap();
    node_synced(&receiver, "big", 1, Duration::from_secs(300));
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(tree(&src), tree(&dst));
    let item = item_seconds(&receiver, "large.bin").unwrap_or(f64::NAN);
    let mb = (300u64 << 20) as f64 / 1e6;
    let sha = openssl_sha256_mb_s();
    println!(
        "BENCH 300 MiB file from our node into our node: {secs:.2} s from adding the folder, {:.0} MB/s = {:.0} % of openssl speed -evp sha256 {sha:.0} MB/s per core; the file itself (ItemStarted → ItemFinished, fsync included) {item:.2} s, {:.0} MB/s = {:.0} %",
        mb / secs,
        mb / secs / sha * 100.0,
        mb / item,
        mb / item / sha * 100.0
    );
    receiver.stop();
    sender.stop();
}

/// Requests every block of `file` in folder `folder` from the peer behind
/// `p` with `in_flight` requests outstanding, as a 2.x puller would (hash
/// given; weak hashes are gone), and throws the data away: no hashing, no disk. Returns
/// the seconds from the first request to the last response.
fn fetch_and_discard(p: &mut RawPeer, folder: &str, file: &FileInfo, in_flight: usize) -> f64 {
    let request = |i: usize| {
        let b = &file.blocks[i];
        Message::Request(wire::Request {
            id: i as i32,
            folder: folder.into(),
            name: file.name.clone(),
            offset: b.offset,
            size: b.size,
            hash: b.hash.clone(),
            block_no: i as i32,
            ..Default::default()
        })
    };
    let t0 = Instant::now();
    let (mut sent, mut received, mut bytes) = (0, 0, 0u64);
    while sent < file.blocks.len().min(in_flight) {
        p.send(&request(sent));
        sent += 1;
    }
    while received < file.blocks.len() {
        match p.next_message() {
            Some(Message::Response(r)) => {
                assert_eq!(r.code, 0, "error for block {}", r.id);
                bytes += r.data.len() as u64;
                received += 1;
                if sent < file.blocks.len() {
                    p.send(&request(sent));
                    sent += 1;
                }
            }
            Some(_) => {}
            None => panic!("closed after {received} responses"),
        }
    }
    assert_eq!(bytes, file.size as u64);
    t0.elapsed().as_secs_f64()
}

/// Connects the raw peer `raw` to the device `their_id` on `port`, sends a
/// ClusterConfig sharing `folder`, and waits for the announced `name`.
fn raw_peer_for(
    raw: &Identity,
    their_id: &str,
    port: u16,
    folder: &str,
    name: &str,
) -> (RawPeer, FileInfo) {
    let their: DeviceId = their_id.parse().unwrap();
    let mut p = RawPeer::connect(raw, port, Duration::from_secs(30));
    p.hello();
    p.send(&cluster_config(folder, &[their, raw.device_id()]));
    loop {
        let files = match p.next_message() {
            Some(Message::Index(i)) => i.files,
            Some(Message::IndexUpdate(i)) => i.files,
            Some(_) => continue,
            None => panic!("no index with {name}"),
        };
        if let Some(f) = files.into_iter().find(|f| f.name == name) {
            return (p, f);
        }
    }
}

/// Benchmark: the rate at which a sender serves a 300 MiB file to a client
/// that only requests and discards — the ceiling of any receiver pulling
/// from it, whatever the receiver does. Real Syncthing 1.19.2 and our node
/// serve the same file, three runs each (alternating), 64 requests in
/// flight (our puller's number for 256 KiB blocks) and 256.
#[test]
#[ignore = "benchmark: run explicitly, in release (scripts/bench-pull)"]
fn bench_serving_ceiling_real_syncthing_vs_our_node() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_mib_file(&src.join("large.bin"), 300, 9000);
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();

    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    st.add_device(&raw_id, &["dynamic"]);
    st.share_folder("big", &src, "sendonly", &[&raw_id]);
    let scanned = wait::until(Duration::from_secs(120), Duration::from_millis(200), || {
        let s = st.folder_status("big").ok()?;
        (s["state"] == "idle" && s["localFiles"].as_u64() == Some(1)).then_some(())
    });
    assert!(scanned.is_some(), "Syncthing did not scan the file");

    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    ours.add_device(&raw_id, &["dynamic"]);
    ours.add_folder("big", &src, "sendonly", &[&raw_id]);
    let node = ours.start();
    node.wait_scanned("big", 1, Duration::from_secs(120));

    let mb = (300u64 << 20) as f64 / 1e6;
    for in_flight in [64, 256] {
        let (mut theirs, mut our) = (Vec::new(), Vec::new());
        for run in 0..3 {
            let one = |port: u16, id: &str| {
                let (mut p, f) = raw_peer_for(&raw, id, port, "big", "large.bin");
                assert_eq!(f.size, 300 << 20);
                mb / fetch_and_discard(&mut p, "big", &f, in_flight)
            };
            if run % 2 == 0 {
                theirs.push(one(st_port, st.id()));
                our.push(one(ours.listen_port, &ours.id));
            } else {
                our.push(one(ours.listen_port, &ours.id));
                theirs.push(one(st_port, st.id()));
            }
        }
        let (t, o) = (median(&mut theirs.clone()), median(&mut our.clone()));
        println!(
            "BENCH serving a 300 MiB file, {in_flight} requests in flight, client discards: Syncthing 1.19.2 median {t:.0} MB/s {theirs:.0?}, our node median {o:.0} MB/s {our:.0?}"
        );
    }
    let sha = openssl_sha256_mb_s();
    println!(
        "BENCH openssl speed -evp sha256 {sha:.0} MB/s per core; 80 % of it is {:.0} MB/s",
        sha * 0.8
    );
    node.stop();
    st.shutdown();
}
