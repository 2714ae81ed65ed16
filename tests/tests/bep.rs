//! BEP v1 against real Syncthing 1.19.2 (issue 5): a real device pulls our
//! folders byte for byte, changes propagate with only changed blocks
//! served, a restart rehashes nothing and sends no full index, unknown or
//! impostor devices are refused, malformed input never harms the node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::bench::openssl_sha256_mb_s;
use e2e::bep_peer::{cluster_config, RawPeer};
use e2e::node::NodeHome;
use e2e::tree::{build_tree, bytes, sha256, tree};
use e2e::{pick_port, wait, PeerVersion, SyncthingHome};
use proto::bep::wire;
use proto::bep::Message;
use proto::{DeviceId, Identity, KeyKind};

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    if ta != tb {
        for (k, v) in &ta {
            if tb.get(k) != Some(v) {
                eprintln!("{k}: ours {v:?}, theirs {:?}", tb.get(k));
            }
        }
        for k in tb.keys().filter(|k| !ta.contains_key(*k)) {
            eprintln!("{k}: only on the real device");
        }
        panic!("trees differ: {} vs {}", a.display(), b.display());
    }
}

fn completion(st: &e2e::Syncthing, folder: &str, device: &str) -> serde_json::Value {
    st.get(&format!(
        "/rest/db/completion?folder={folder}&device={device}"
    ))
    .unwrap()
}

#[test]
fn real_syncthing_pulls_our_folders_then_changes_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));

    let send_src = tmp.path().join("send-src");
    let both_src = tmp.path().join("both-src");
    let mut send_files = build_tree(&send_src, 1000, 300);
    // A 16 MiB file for the block-level change below (a 300 MiB one would
    // make the real device rebuild 300 MiB, slow on a loaded machine).
    std::fs::write(send_src.join("medium.bin"), bytes(4242, 16 << 20)).unwrap();
    send_files += 1;
    let both_files = build_tree(&both_src, 120, 2);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("send", &send_src, "sendonly", &[st.id()]);
    ours.add_folder("both", &both_src, "sendreceive", &[st.id()]);

    let send_dst = tmp.path().join("send-dst");
    let both_dst = tmp.path().join("both-dst");
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("send", &send_dst, "receiveonly", &[&ours.id]);
    st.share_folder("both", &both_dst, "sendreceive", &[&ours.id]);

    let started = Instant::now();
    let node = ours.start();
    let kind = st.wait_connected(&ours.id, Duration::from_secs(30));
    assert!(kind.is_some(), "not connected:\n{}", node.proc.log_tail(30));
    st.wait_synced("send", send_files, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", node.proc.log_tail(30)));
    st.wait_synced("both", both_files, Duration::from_secs(60))
        .unwrap();
    eprintln!(
        "initial sync of {} + {} files in {:.2} s (connection {kind:?})",
        send_files,
        both_files,
        started.elapsed().as_secs_f64()
    );
    assert_same_tree(&send_src, &send_dst);
    assert_same_tree(&both_src, &both_dst);
    for folder in ["send", "both"] {
        let c = completion(&st, folder, &ours.id);
        assert_eq!(c["completion"].as_f64(), Some(100.0), "{folder}: {c}");
        assert_eq!(c["needItems"].as_u64(), Some(0), "{folder}: {c}");
    }
    // And our node sees the real device complete, from the index it sent.
    for folder in ["send", "both"] {
        let path = format!("/rest/db/completion?folder={folder}&device={}", st.id());
        let done = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
            let c = node.get(&path).ok()?;
            (c["completion"].as_f64() == Some(100.0) && c["needItems"].as_u64() == Some(0))
                .then_some(())
        });
        assert!(done.is_some(), "{folder}: {:?}", node.get(&path));
    }

    // Changes: one block of the big file, a new file, a deleted file, a
    // renamed directory. Only the changed data may be served; they must
    // arrive within 10 s.
    let served_before = node.status_u64("servedBytes");
    let seq_before = node.wait_scanned("send", 1, Duration::from_secs(5));
    let t0 = Instant::now();
    {
        use std::os::unix::fs::FileExt;
        let medium = std::fs::OpenOptions::new()
            .write(true)
            .open(send_src.join("medium.bin"))
            .unwrap();
        // Inside one 128 KiB block.
        medium
            .write_all_at(&bytes(7, 100), 10 * 131_072 + 5)
            .unwrap();
    }
    std::fs::write(send_src.join("new file.txt"), b"brand new\n").unwrap();
    std::fs::remove_file(send_src.join("dir1/sub1/file 1.dat")).unwrap();
    std::fs::rename(send_src.join("dir2"), send_src.join("dir2-renamed")).unwrap();
    // No explicit scan: the watcher (on by default, 1 s delay) finds them.
    node.wait_scanned("send", seq_before + 1, Duration::from_secs(10));
    // Timed on cheap checks of the changed entries only; the whole tree is
    // compared afterwards.
    let medium_src = std::fs::read(send_src.join("medium.bin")).unwrap();
    let arrived = wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
        let d = &send_dst;
        let done = std::fs::read(d.join("new file.txt")).ok()? == b"brand new\n"
            && !d.join("dir1/sub1/file 1.dat").exists()
            && d.join("dir2-renamed").is_dir()
            && !d.join("dir2").exists()
            && std::fs::read(d.join("medium.bin")).ok()? == medium_src;
        done.then_some(())
    });
    let propagation = t0.elapsed();
    assert!(arrived.is_some(), "changes did not arrive");
    st.wait_synced("send", send_files, Duration::from_secs(30))
        .unwrap();
    wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        (tree(&send_src) == tree(&send_dst)).then_some(())
    })
    .unwrap_or_else(|| assert_same_tree(&send_src, &send_dst));
    let served = node.status_u64("servedBytes") - served_before;
    eprintln!(
        "changes propagated in {:.2} s, {served} bytes served",
        propagation.as_secs_f64()
    );
    assert!(propagation < Duration::from_secs(10));
    // One 128 KiB block + the new 10-byte file; renamed files are copied
    // from local blocks by Syncthing.
    assert!(
        served <= 131_072 + 10,
        "served {served} bytes for the changes"
    );

    // Restart: nothing rehashed, no full index again.
    let seq = node.wait_scanned("send", 1, Duration::from_secs(5));
    let full_index = "folder=send from_sequence=0";
    let log_before = node.stop();
    // (node.log is appended to by both runs.)
    assert_eq!(log_before.matches(full_index).count(), 1);
    let node = ours.start();
    node.wait_scanned("send", seq, Duration::from_secs(20));
    node.wait_scanned("both", 1, Duration::from_secs(20));
    assert_eq!(node.status_u64("hashedFiles"), 0, "rehashed after restart");
    st.wait_connected(&ours.id, Duration::from_secs(30))
        .expect("reconnected");
    let delta = format!("folder=send from_sequence={seq} our_sequence={seq}");
    let line = wait::until(Duration::from_secs(15), Duration::from_millis(100), || {
        node.proc.log().contains(&delta).then_some(())
    });
    assert!(
        line.is_some(),
        "no delta index:\n{}",
        node.proc.log_tail(20)
    );
    assert_eq!(node.proc.log().matches(full_index).count(), 1);
    let c = completion(&st, "send", &ours.id);
    assert_eq!(c["completion"].as_f64(), Some(100.0), "{c}");
    node.stop();
    st.shutdown();
}

#[test]
fn unknown_and_impostor_devices_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    // An impostor: our config expects device X at the address where the
    // real node (a different certificate) listens.
    let x = e2e::syncthing::generate(&tmp.path().join("x"));
    ours.add_device(&x, &[&format!("tcp://127.0.0.1:{st_port}")]);
    let node = ours.start();
    // The real node dials us without being configured here.
    st.add_device(&ours.id, &[&ours.address()]);
    let pending = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
        let p = node.get("/rest/cluster/pending/devices").ok()?;
        p.get(st.id()).cloned()
    });
    assert!(
        pending.is_some(),
        "not pending:\n{}",
        node.proc.log_tail(20)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(st
        .wait_connected(&ours.id, Duration::from_secs(1))
        .is_none());
    assert!(!node.connected(&x));
    assert!(!node.connected(st.id()));
    node.stop();
    st.shutdown();
}

#[test]
fn malformed_frames_and_escaping_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let raw = Identity::generate("syncthing", KeyKind::Ed25519).unwrap();
    let raw_id = raw.device_id().to_string();
    let root = tmp.path().join("f");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/data.txt"), b"hello world\n").unwrap();
    // Ignored: on disk, never announced, so never served either.
    std::fs::write(root.join(".stignore"), b"private.txt\n").unwrap();
    std::fs::write(root.join("private.txt"), b"private\n").unwrap();
    std::fs::write(tmp.path().join("secret"), b"secret\n").unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("outside")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("secret-link")).unwrap();
    ours.add_device(&raw_id, &["dynamic"]);
    ours.add_folder("f", &root, "sendonly", &[&raw_id]);
    let node = ours.start();
    node.wait_scanned("f", 1, Duration::from_secs(10));
    let our_id: DeviceId = ours.id.parse().unwrap();

    let cc = cluster_config("f", &[our_id, raw.device_id()]);
    let request = |id: i32, name: &str, data: &[u8]| {
        Message::Request(wire::Request {
            id,
            folder: "f".into(),
            name: name.into(),
            size: data.len() as i32,
            hash: sha256(data),
            ..Default::default()
        })
    };

    // Requests: one good, the rest trying to leave the folder.
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
    p.hello();
    p.send(&cc);
    assert!(matches!(p.next_message(), Some(Message::ClusterConfig(_))));
    let cases: [(&str, &[u8], i32); 5] = [
        ("sub/data.txt", b"hello world\n", 0),
        ("private.txt", b"private\n", 2),
        ("outside/secret", b"secret\n", 2),
        ("secret-link", b"secret\n", 2),
        (".stfolder", b"", 3),
    ];
    for (i, (name, data, _)) in cases.iter().enumerate() {
        p.send(&request(i as i32, name, data));
    }
    // Responses come in any order.
    let mut responses = BTreeMap::new();
    while responses.len() < cases.len() {
        match p.next_message() {
            Some(Message::Response(r)) => {
                responses.insert(r.id, r);
            }
            Some(_) => {}
            None => panic!("closed with {} responses", responses.len()),
        }
    }
    for (i, (name, data, code)) in cases.iter().enumerate() {
        let r = &responses[&(i as i32)];
        assert_eq!(r.code, *code, "{name}");
        if *code == 0 {
            assert_eq!(r.data, *data);
        } else {
            assert!(r.data.is_empty(), "{name}");
        }
    }

    drop(p);
    // A Request whose name is not canonical (it would leave the folder)
    // is a protocol error, as in Syncthing 2.1.2: the connection closes.
    for name in ["../secret", "/etc/hostname", "sub/../../secret"] {
        let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
        p.hello();
        p.send(&cc);
        p.send(&request(1, name, b"secret\n"));
        assert!(p.closed_by_node(), "{name}: connection kept");
    }
    // Frames that must end the connection.
    let mut bomb = vec![0, 4, 0x08, 0x06, 0x10, 0x01, 0, 0, 0, 12];
    bomb.extend_from_slice(&400_000_000u32.to_be_bytes());
    bomb.extend_from_slice(&[0xf0; 8]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("LZ4 bomb", bomb),
        ("oversized length", vec![0, 0, 0x7f, 0xff, 0xff, 0xff]),
        ("negative header length", vec![0x80, 0, 0, 0, 0, 0]),
        ("unknown compression", vec![0, 2, 0x10, 0x09, 0, 0, 0, 0]),
        (
            "garbage body",
            vec![0, 2, 0x08, 0x03, 0, 0, 0, 3, 0xff, 0xff, 0xff],
        ),
    ];
    for (what, frame) in bad {
        let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
        p.hello();
        p.send(&cc);
        p.send_raw(&frame);
        assert!(p.closed_by_node(), "{what}: connection not closed");
    }
    std::thread::sleep(Duration::from_millis(300));
    // A message before ClusterConfig, and garbage instead of a Hello.
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
    p.hello();
    p.send(&request(1, "sub/data.txt", b"hello world\n"));
    assert!(p.closed_by_node(), "request before ClusterConfig");
    drop(p);
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
    p.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(p.closed_by_node(), "garbage Hello");
    drop(p);
    // The node notices the closed connections before the next one.
    std::thread::sleep(Duration::from_millis(300));

    // Still alive and serving.
    assert!(node.get("/rest/system/ping").is_ok());
    let mut p = RawPeer::connect(&raw, ours.listen_port, Duration::from_secs(10));
    p.hello();
    p.send(&cc);
    p.send(&request(5, "sub/data.txt", b"hello world\n"));
    let log = node.proc.log_path().to_path_buf();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.response(5)));
    let r = r.unwrap_or_else(|_| panic!("{}", std::fs::read_to_string(&log).unwrap()));
    assert_eq!(r.data, b"hello world\n");
    node.stop();
}

/// Benchmark (documented command, one run; build in release first):
/// `cargo build --release -p node && cargo test --release -p e2e --test bep -- --ignored --nocapture --test-threads=1 bench_`
///
/// Time until a real Syncthing device has pulled 300 MiB + 1,000 files from
/// our node, beside the same transfer from a real Syncthing device, and our
/// scan rate beside `openssl speed -evp sha256`.
/// Benchmark (`scripts/bench-node`, release build): a 300 MiB + 1,000-file
/// tree served by our node to a real Syncthing device of each version in
/// `BENCH_PEERS` (default 1.19.2 and 2.1.3), beside the same tree served
/// by a device of that version to another one of that version; three runs
/// each, alternating, medians.
#[test]
#[ignore = "benchmark: run explicitly, in release"]
fn bench_pull_from_our_node_vs_from_syncthing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = build_tree(&src, 1000, 300);
    let mut scan_line = String::new();
    for version in e2e::peers::bench_versions("bench_pull_from_our_node_vs_from_syncthing") {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..3 {
            let dir = tmp.path().join(format!("{version}-{run}"));
            if run % 2 == 0 {
                ours.push(serve_from_our_node(
                    &dir,
                    &src,
                    files,
                    version,
                    &mut scan_line,
                ));
                theirs.push(serve_from_syncthing(&dir, &src, files, version));
            } else {
                theirs.push(serve_from_syncthing(&dir, &src, files, version));
                ours.push(serve_from_our_node(
                    &dir,
                    &src,
                    files,
                    version,
                    &mut scan_line,
                ));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (o, t) = (median(&mut ours.clone()), median(&mut theirs.clone()));
        println!(
            "BENCH serve 300 MiB + 1000 files to Syncthing {version}: from our node median {o:.2} s {ours:.2?}, \
             from Syncthing {version} median {t:.2} s {theirs:.2?}, ratio {:.2}",
            t / o
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("BENCH our scan: {scan_line}");
    println!(
        "BENCH openssl speed -evp sha256: {:.0} MB/s per core, {cores} cores",
        openssl_sha256_mb_s()
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Ours → Syncthing `version`: connected first, the receiver already
/// shares the folder; the clock starts when the folder is added to our
/// node (which scans it, then sends its index), exactly as for Syncthing
/// in [`serve_from_syncthing`].
fn serve_from_our_node(
    dir: &Path,
    src: &Path,
    files: u64,
    version: PeerVersion,
    scan_line: &mut String,
) -> f64 {
    std::fs::remove_dir_all(src.join(".stfolder")).ok();
    let ours = NodeHome::generate(&dir.join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp_version(&dir.join("st-recv-1"), version);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    st.add_device(&ours.id, &[&ours.address()]);
    let node = ours.start();
    st.wait_connected(&ours.id, Duration::from_secs(30))
        .unwrap();
    st.share_folder("b", &dir.join("dst-1"), "receiveonly", &[&ours.id]);
    let t0 = Instant::now();
    node.send(
        "POST",
        "/rest/config/folders",
        &serde_json::json!({"id": "b", "path": src, "type": "sendonly",
            "devices": [{"deviceID": st.id()}], "fsWatcherEnabled": false}),
    )
    .unwrap();
    st.wait_synced("b", files, Duration::from_secs(600))
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_same_tree(src, &dir.join("dst-1"));
    let log = node.stop();
    st.shutdown();
    if let Some(line) = log.lines().find(|l| l.starts_with("Scanned folder b")) {
        *scan_line = line.to_string();
    }
    secs
}

/// Syncthing → Syncthing of one version: from the sender's folder share
/// (it scans first) to synced; both already connected.
fn serve_from_syncthing(dir: &Path, src: &Path, files: u64, version: PeerVersion) -> f64 {
    std::fs::remove_dir_all(src.join(".stfolder")).ok();
    let (p1, p2) = (pick_port(), pick_port());
    let s1 = SyncthingHome::init_version(
        &dir.join("st-send"),
        &[format!("tcp://127.0.0.1:{p1}")],
        version,
    )
    .start();
    let s2 = SyncthingHome::init_version(
        &dir.join("st-recv-2"),
        &[format!("tcp://127.0.0.1:{p2}")],
        version,
    )
    .start();
    s1.add_device(s2.id(), &[&format!("tcp://127.0.0.1:{p2}")]);
    s2.add_device(s1.id(), &[&format!("tcp://127.0.0.1:{p1}")]);
    s1.wait_connected(s2.id(), Duration::from_secs(30)).unwrap();
    s2.share_folder("b", &dir.join("dst-2"), "receiveonly", &[s1.id()]);
    let t1 = Instant::now();
    s1.share_folder("b", src, "sendonly", &[s2.id()]);
    s2.wait_synced("b", files, Duration::from_secs(600))
        .unwrap();
    let secs = t1.elapsed().as_secs_f64();
    s1.shutdown();
    s2.shutdown();
    secs
}

/// Index memory per file (documented command, one run):
/// `cargo test --release -p e2e --test bep -- --ignored --nocapture --test-threads=1 bench_index_memory`
#[test]
#[ignore = "benchmark: run explicitly, in release"]
fn bench_index_memory_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let measure = |n: usize| {
        let src = tmp.path().join(format!("src-{n}"));
        for i in 0..n {
            let dir = src.join(format!("d{}", i % 100));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("file-{i}.txt")), i.to_string()).unwrap();
        }
        std::fs::create_dir_all(&src).unwrap();
        let home = NodeHome::generate(&tmp.path().join(format!("node-{n}")), "rust");
        let peer = e2e::syncthing::generate(&tmp.path().join(format!("peer-{n}")));
        home.add_folder("m", &src, "sendonly", &[&peer]);
        let t0 = std::time::Instant::now();
        let node = home.start();
        node.wait_scanned("m", n as u64, Duration::from_secs(600));
        if n >= 100_000 {
            println!(
                "BENCH first scan of {n} small files (from start): {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
        // Twice: the second scan compares all entries with the index.
        node.post("/rest/db/scan?folder=m").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        node.wait_scanned("m", n as u64, Duration::from_secs(600));
        let rss = e2e::process::peak_rss(node.proc.pid());
        node.stop();
        rss
    };
    let base = measure(100);
    let big = measure(100_000);
    println!(
        "BENCH peak RSS (scan only): {} KiB with 100 files, {} KiB with 100,000 files: {:.0} bytes per file",
        base / 1024,
        big / 1024,
        (big.saturating_sub(base)) as f64 / 99_900.0
    );
    // The same with a real device that pulls the whole folder from us: our
    // index is sent to it and its index (100,000 remote entries) comes
    // back, and the global state is computed over both.
    let with_peer = |n: usize| {
        let src = tmp.path().join(format!("src-{n}"));
        let home = NodeHome::generate(&tmp.path().join(format!("node-peer-{n}")), "rust");
        let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join(format!("st-{n}")));
        home.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
        home.add_folder("m", &src, "sendonly", &[st.id()]);
        st.add_device(&home.id, &[&home.address()]);
        let node = home.start();
        st.share_folder(
            "m",
            &tmp.path().join(format!("dst-{n}")),
            "receiveonly",
            &[&home.id],
        );
        st.wait_synced("m", n as u64, Duration::from_secs(900))
            .unwrap();
        // Their index update of the last files reaches us, and the
        // completion the REST API reports is computed over all of it.
        let done = e2e::wait::until(Duration::from_secs(120), Duration::from_millis(500), || {
            node.get(&format!("/rest/db/completion?folder=m&device={}", st.id()))
                .ok()
                .filter(|c| c["completion"] == 100.0)
        });
        assert!(done.is_some(), "our node never saw the peer complete");
        let rss = e2e::process::peak_rss(node.proc.pid());
        node.stop();
        st.shutdown();
        rss
    };
    let base = with_peer(100);
    let big = with_peer(100_000);
    println!(
        "BENCH peak RSS (a real device pulled everything): {} KiB with 100 files, {} KiB with 100,000 files: {:.0} bytes per file",
        base / 1024,
        big / 1024,
        (big.saturating_sub(base)) as f64 / 99_900.0
    );
}

#[test]
fn rest_configuration_applies_live_and_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp(&tmp.path().join("st"));
    let node = ours.start();
    // Without the key: refused.
    let anon = ureq::get(&format!(
        "http://127.0.0.1:{}/rest/system/status",
        ours.gui_port
    ))
    .call();
    assert!(matches!(anon, Err(ureq::Error::Status(403, _))));
    let status = node.get("/rest/system/status").unwrap();
    assert_eq!(status["myID"].as_str(), Some(ours.id.as_str()));
    // `Authorization: Bearer KEY` works too (scrapers).
    let bearer = ureq::get(&format!("http://127.0.0.1:{}/metrics", ours.gui_port))
        .set("Authorization", &format!("Bearer {}", ours.api_key))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(bearer.contains("node_hashed_files_total"));
    // A second node on the same home refuses to start.
    let second = std::process::Command::new(e2e::our_binary("node"))
        .args(["serve", "--home"])
        .arg(&ours.dir)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    let src = tmp.path().join("src");
    let files = build_tree(&src, 50, 1);
    // Syncthing-shaped objects, as its own REST API takes them.
    node.send(
        "POST",
        "/rest/config/devices",
        &serde_json::json!({"deviceID": st.id(), "name": "st", "compression": "metadata",
            "addresses": [format!("tcp://127.0.0.1:{st_port}")], "introducer": false}),
    )
    .unwrap();
    node.send(
        "POST",
        "/rest/config/folders",
        &serde_json::json!({"id": "live", "label": "live", "path": src, "type": "sendonly",
            "devices": [{"deviceID": st.id()}], "rescanIntervalS": 3600, "fsWatcherEnabled": false}),
    )
    .unwrap();
    // A folder type this version cannot run is refused, not half-applied.
    let bad = node.send(
        "POST",
        "/rest/config/folders",
        &serde_json::json!({"id": "x", "path": src, "type": "receiveencrypted"}),
    );
    assert!(bad.unwrap_err().contains("400"));
    node.send(
        "PATCH",
        "/rest/config/options",
        &serde_json::json!({"relaysEnabled": false, "globalAnnounceEnabled": false}),
    )
    .unwrap();

    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("live", &tmp.path().join("dst"), "receiveonly", &[&ours.id]);
    st.wait_synced("live", files, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", node.proc.log_tail(20)));
    assert_same_tree(&src, &tmp.path().join("dst"));

    let f = node
        .get("/rest/db/file?folder=live&file=name%20with%20spaces.txt")
        .unwrap();
    assert_eq!(f["local"]["size"], 7);
    // Written back to the configuration file.
    let saved = ours.config();
    assert_eq!(saved["folders"][0]["id"], "live");
    assert_eq!(saved["devices"][0]["deviceID"], st.id());
    node.send(
        "PATCH",
        "/rest/config/folders/live",
        &serde_json::json!({"rescanIntervalS": 60}),
    )
    .unwrap();
    assert_eq!(ours.config()["folders"][0]["rescanIntervalS"], 60);
    let conns = node.get("/rest/system/connections").unwrap();
    assert_eq!(conns["connections"][st.id()]["connected"], true);

    // A folder the real device offers but we do not share shows as pending.
    st.share_folder(
        "offered",
        &tmp.path().join("offered"),
        "sendreceive",
        &[&ours.id],
    );
    let pending = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
        let p = node.get("/rest/cluster/pending/folders").ok()?;
        p["offered"]["offeredBy"].get(st.id()).cloned()
    });
    assert!(
        pending.is_some(),
        "{:?}",
        node.get("/rest/cluster/pending/folders")
    );
    node.stop();
    st.shutdown();
}

/// Scan rate on 1 GiB in four files (documented command, one run):
/// `cargo test --release -p e2e --test bep -- --ignored --nocapture --test-threads=1 bench_scan_rate`
#[test]
#[ignore = "benchmark: run explicitly, in release"]
fn bench_scan_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        e2e::tree::write_mib_file(&src.join(format!("f{i}")), 256, i * 1000);
    }
    let home = NodeHome::generate(&tmp.path().join("node"), "rust");
    let peer = e2e::syncthing::generate(&tmp.path().join("peer"));
    home.add_folder("s", &src, "sendonly", &[&peer]);
    let node = home.start();
    node.wait_scanned("s", 4, Duration::from_secs(300));
    let log = node.stop();
    let line = log
        .lines()
        .find(|l| l.starts_with("Scanned folder s"))
        .unwrap_or_default()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("BENCH scan 1 GiB: {line}");
    println!(
        "BENCH openssl speed -evp sha256: {:.0} MB/s per core, {cores} cores",
        openssl_sha256_mb_s()
    );
}
