//! Folder options against a real Syncthing device (issue 17): `ignoreDelete`
//! (compared field by field with a real Syncthing receiver set the same
//! way), `maxConflicts`, and folder creation: a new folder's missing path
//! is created, a synced folder whose directory vanished stops with an
//! error and announces no deletions.
//!
//! Each test uses the newest Syncthing available (2.1.3 here, 1.30.0
//! where 2.1.3 cannot be built).

use std::path::Path;
use std::time::{Duration, SystemTime};

use e2e::node::{Node, NodeHome};
use e2e::peers::PeerVersion;
use e2e::tree::tree;
use e2e::{wait, Syncthing};
use serde_json::{json, Value};

/// Generous: two cores shared by several builds.
const SYNC_WITHIN: Duration = Duration::from_secs(60);

fn start_real(dir: &Path, version: PeerVersion) -> (Syncthing, u16) {
    e2e::syncthing::start_tcp_version(dir, version)
}

/// Waits until `f` holds, or panics with what `show` says then.
fn wait_for(what: &str, limit: Duration, show: &dyn Fn() -> String, f: &mut dyn FnMut() -> bool) {
    if wait::until(limit, Duration::from_millis(250), || f().then_some(())).is_none() {
        panic!("{what} not reached within {limit:?}:\n{}", show());
    }
}

/// `keys` of a JSON object, as a smaller object (for comparisons).
/// Numbers are compared by value: Go writes 95.0 as `95`, we as `95.0`.
fn pick(v: &Value, keys: &[&str]) -> Value {
    let by_value = |x: Value| match x.as_f64() {
        Some(n) => json!(n),
        None => x,
    };
    Value::Object(
        keys.iter()
            .map(|k| {
                let x = v.get(*k).cloned().unwrap_or(Value::Null);
                (k.to_string(), by_value(x))
            })
            .collect(),
    )
}

const STATUS_KEYS: &[&str] = &[
    "state",
    "error",
    "errors",
    "pullErrors",
    "globalFiles",
    "globalDeleted",
    "globalBytes",
    "localFiles",
    "localDeleted",
    "localBytes",
    "needFiles",
    "needDeletes",
    "needBytes",
    "needTotalItems",
    "inSyncFiles",
    "inSyncBytes",
];

const COMPLETION_KEYS: &[&str] = &[
    "completion",
    "globalBytes",
    "globalItems",
    "needBytes",
    "needItems",
    "needDeletes",
];

fn write_with_mtime(path: &Path, data: &[u8], mtime: SystemTime) {
    std::fs::write(path, data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// A real device deletes files; our node with `ignoreDelete` keeps them
/// and reports the folder exactly as a real Syncthing receiver with
/// `ignoreDelete` does (`db/status`, `db/completion`, and the source's
/// view of each receiver); a later local edit of a kept file still syncs,
/// and turning the option off live applies the deletions.
#[test]
fn ignore_delete_keeps_remote_deletions_and_reports_as_syncthing() {
    let version = PeerVersion::newest_available();
    let tmp = tempfile::tempdir().unwrap();
    let (src_st, src_port) = start_real(&tmp.path().join("src-st"), version);
    let (twin, _) = start_real(&tmp.path().join("twin-st"), version);
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");

    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for (name, data) in [
        ("keep-a.txt", "a\n"),
        ("keep-b.txt", "bb\n"),
        ("sub/keep-c.txt", "ccc\n"),
        ("stays.txt", "stays\n"),
    ] {
        std::fs::write(src.join(name), data).unwrap();
    }
    let (dst, twin_dst) = (tmp.path().join("ours"), tmp.path().join("twin"));
    std::fs::create_dir_all(&twin_dst).unwrap();

    // The source shares with both receivers; they do not know each other.
    src_st.add_device(&ours.id, &[&ours.address()]);
    src_st.add_device(twin.id(), &["dynamic"]);
    src_st.share_folder("f", &src, "sendreceive", &[&ours.id, twin.id()]);
    twin.add_device(src_st.id(), &[&format!("tcp://127.0.0.1:{src_port}")]);
    twin.share_folder("f", &twin_dst, "sendreceive", &[src_st.id()]);
    twin.send(
        "PATCH",
        "/rest/config/folders/f",
        &json!({"ignoreDelete": true}),
    )
    .expect("twin: ignoreDelete");
    // Ours from the configuration file (the TOML path of the option).
    ours.add_device(src_st.id(), &[&format!("tcp://127.0.0.1:{src_port}")]);
    ours.add_folder("f", &dst, "sendreceive", &[src_st.id()]);
    let mut c = ours.config();
    c["folders"][0]["ignoreDelete"] = true.into();
    ours.set_config(&c);
    // Our folder's path does not exist yet: a folder in the configuration
    // file at start with nothing in the index is created, as Syncthing does.
    assert!(!dst.exists());
    let node = ours.start();
    let cfg = node.get("/rest/config/folders/f").unwrap();
    assert_eq!(cfg["ignoreDelete"], true, "{cfg}");

    let show = || {
        format!(
            "ours {:?}\ntwin {:?}\n{}",
            node.get("/rest/db/status?folder=f"),
            twin.folder_status("f"),
            node.proc.log_tail(20)
        )
    };
    wait_for("initial sync", SYNC_WITHIN, &show, &mut || {
        tree(&src) == tree(&dst) && tree(&src) == tree(&twin_dst)
    });
    assert!(dst.join(".stfolder").is_dir());

    // The source deletes three files.
    let before = tree(&dst);
    for name in ["keep-a.txt", "keep-b.txt", "sub/keep-c.txt"] {
        std::fs::remove_file(src.join(name)).unwrap();
    }
    src_st.scan("f");

    // Both receivers learn of the deletions and stay as they were; their
    // figures, and the source's view of each, agree field by field.
    let status = |v: Result<Value, String>| v.map(|s| pick(&s, STATUS_KEYS)).ok();
    let completion = |v: Result<Value, String>| v.map(|s| pick(&s, COMPLETION_KEYS)).ok();
    let figures = || {
        let ours_s = status(node.get("/rest/db/status?folder=f"));
        let twin_s = status(twin.folder_status("f"));
        let ours_c = completion(node.get("/rest/db/completion?folder=f"));
        let twin_c = completion(twin.get("/rest/db/completion?folder=f"));
        let seen_ours =
            completion(src_st.get(&format!("/rest/db/completion?folder=f&device={}", ours.id)));
        let seen_twin = completion(src_st.get(&format!(
            "/rest/db/completion?folder=f&device={}",
            twin.id()
        )));
        (ours_s, twin_s, ours_c, twin_c, seen_ours, seen_twin)
    };
    // 1.x counts a directory as 128 bytes in these totals, 2.x (and our
    // node) as 0: against a 1.x twin only the counts can agree.
    let same = |a: &Option<Value>, b: &Option<Value>| {
        let strip = |v: &Option<Value>| {
            let mut v = v.clone()?;
            if !version.is_v2() {
                v.as_object_mut()?.retain(|k, _| !k.ends_with("Bytes"));
            }
            Some(v)
        };
        strip(a) == strip(b)
    };
    let mut last = None;
    let agreed = wait::until(SYNC_WITHIN, Duration::from_millis(300), || {
        let f = figures();
        last = Some(f.clone());
        let (os, ts, oc, tc, so, st) = f;
        let deleted_seen =
            os.as_ref()?["globalDeleted"] == 3.0 && ts.as_ref()?["globalDeleted"] == 3.0;
        let idle = os.as_ref()?["state"] == "idle" && ts.as_ref()?["state"] == "idle";
        let source_saw = so.as_ref()?["needDeletes"] == 3.0 && st.as_ref()?["needDeletes"] == 3.0;
        (deleted_seen && idle && source_saw && same(&os, &ts) && same(&oc, &tc) && so == st)
            .then_some(())
    });
    let (os, ts, oc, tc, so, st) = last.unwrap();
    eprintln!("db/status ours {os:?}\n          twin {ts:?}");
    eprintln!("db/completion ours {oc:?}\n              twin {tc:?}");
    eprintln!("source's view of ours {so:?}\n                 twin {st:?}");
    assert!(
        agreed.is_some(),
        "our node does not report the folder as Syncthing does\n{}",
        node.proc.log_tail(30)
    );
    let os = os.unwrap();
    assert_eq!(
        (os["needDeletes"].as_f64(), os["needTotalItems"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(tree(&dst), before, "our node applied a remote deletion");
    assert_eq!(tree(&twin_dst), before);
    let need = node.get("/rest/db/need?folder=f").unwrap();
    assert_eq!(need["rest"].as_array().map(Vec::len), Some(0), "{need}");

    // A later local edit of a kept file syncs back (it wins over the
    // deletion it is concurrent with).
    std::fs::write(dst.join("keep-a.txt"), b"edited on the archive\n").unwrap();
    node.post("/rest/db/scan?folder=f").unwrap();
    wait_for(
        "the edit reaches the source",
        SYNC_WITHIN,
        &show,
        &mut || {
            std::fs::read(src.join("keep-a.txt")).ok().as_deref()
                == Some(&b"edited on the archive\n"[..])
        },
    );

    // Turned off live: the remaining deletions are applied.
    node.send(
        "PATCH",
        "/rest/config/folders/f",
        &json!({"ignoreDelete": false}),
    )
    .unwrap();
    node.post("/rest/db/scan?folder=f").unwrap();
    wait_for(
        "deletions applied once ignoreDelete is off",
        SYNC_WITHIN,
        &show,
        &mut || !dst.join("keep-b.txt").exists() && !dst.join("sub/keep-c.txt").exists(),
    );
    assert!(dst.join("keep-a.txt").exists() && dst.join("stays.txt").exists());
    node.stop();
    twin.shutdown();
    src_st.shutdown();
}

/// Conflict copies of `name` (its stem and extension) in `dir`, sorted.
fn conflict_copies(dir: &Path, stem: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{stem}.sync-conflict-")))
        .collect();
    v.sort();
    v
}

/// With `maxConflicts` 3, a file edited concurrently on both sides round
/// after round keeps exactly its 3 newest conflict copies on our node.
/// Each round is made deterministic: our node pauses the real device,
/// both sides edit (theirs with the later mtime, so ours loses and is
/// kept as a copy here), then the device is resumed and both converge.
#[test]
fn max_conflicts_keeps_only_the_newest_copies() {
    const ROUNDS: usize = 5;
    let version = PeerVersion::newest_available();
    let tmp = tempfile::tempdir().unwrap();
    let (st, st_port) = start_real(&tmp.path().join("st"), version);
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (src, dst) = (tmp.path().join("theirs"), tmp.path().join("ours"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("hot.txt"), b"base\n").unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("c", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("c", &dst, "sendreceive", &[st.id()]);
    let node = ours.start();
    node.send(
        "PATCH",
        "/rest/config/folders/c",
        &json!({"maxConflicts": 3}),
    )
    .unwrap();
    assert_eq!(
        node.get("/rest/config/folders/c").unwrap()["maxConflicts"],
        3
    );
    let show = || {
        format!(
            "ours {:?}\ntheirs {:?}\n{}",
            tree(&dst),
            tree(&src),
            node.proc.log_tail(25)
        )
    };
    wait_for("initial sync", SYNC_WITHIN, &show, &mut || {
        tree(&src) == tree(&dst)
    });

    let base = SystemTime::now();
    let mut made: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        node.post(&format!("/rest/system/pause?device={}", st.id()))
            .unwrap();
        wait_for("disconnected", SYNC_WITHIN, &show, &mut || {
            !node.connected(st.id())
        });
        // Ours first, theirs later: theirs wins the conflict.
        let t = base + Duration::from_secs(10 * round as u64 + 10);
        let our_edit = format!("our edit {round}\n");
        write_with_mtime(&dst.join("hot.txt"), our_edit.as_bytes(), t);
        write_with_mtime(
            &src.join("hot.txt"),
            format!("their edit {round}\n").as_bytes(),
            t + Duration::from_secs(5),
        );
        node.post("/rest/db/scan?folder=c").unwrap();
        st.scan("c");
        wait_for("both scanned", SYNC_WITHIN, &show, &mut || {
            let ours_has = node
                .get("/rest/db/file?folder=c&file=hot.txt")
                .ok()
                .and_then(|f| f["local"]["size"].as_u64())
                == Some(our_edit.len() as u64);
            let theirs_has = st
                .get("/rest/db/file?folder=c&file=hot.txt")
                .ok()
                .and_then(|f| f["local"]["size"].as_u64())
                == Some(our_edit.len() as u64 + 2);
            ours_has && theirs_has
        });
        let before = conflict_copies(&dst, "hot");
        node.post(&format!("/rest/system/resume?device={}", st.id()))
            .unwrap();
        wait_for("the conflict resolved", SYNC_WITHIN, &show, &mut || {
            std::fs::read(dst.join("hot.txt")).ok()
                == Some(format!("their edit {round}\n").into_bytes())
                && conflict_copies(&dst, "hot")
                    .iter()
                    .any(|c| !before.contains(c))
        });
        let new: Vec<String> = conflict_copies(&dst, "hot")
            .into_iter()
            .filter(|c| !before.contains(c))
            .collect();
        assert_eq!(new.len(), 1, "round {round}: {new:?}");
        assert_eq!(
            std::fs::read(dst.join(&new[0])).unwrap(),
            our_edit.as_bytes()
        );
        made.push(new[0].clone());
        wait_for("converged", SYNC_WITHIN, &show, &mut || {
            tree(&src) == tree(&dst)
        });
        // Copies are named by the second: the next round's must differ.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let kept = conflict_copies(&dst, "hot");
    eprintln!("made {made:?}\nkept {kept:?}");
    assert_eq!(kept.len(), 3, "{kept:?}");
    let newest3: Vec<String> = made[ROUNDS - 3..].to_vec();
    assert_eq!(kept, newest3, "the newest three are kept");
    for removed in &made[..ROUNDS - 3] {
        assert!(
            kept.iter().all(|k| k > removed),
            "{removed} is newer than a kept copy"
        );
    }
    // The peer ends up with the same files (the removals synced too).
    wait_for("converged at the end", SYNC_WITHIN, &show, &mut || {
        tree(&src) == tree(&dst)
    });
    node.stop();
    st.shutdown();
}

/// `maxConflicts` 0 discards the losing local edit in Syncthing; with
/// versioning on, our node keeps it in the versions folder instead (no
/// remote change destroys what cannot be restored): no conflict copy, the
/// peer's edit in place, ours as a version with its bytes.
#[test]
fn max_conflicts_zero_with_versioning_keeps_the_losing_edit_as_a_version() {
    let version = PeerVersion::newest_available();
    let tmp = tempfile::tempdir().unwrap();
    let (st, st_port) = start_real(&tmp.path().join("st"), version);
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (src, dst) = (tmp.path().join("theirs"), tmp.path().join("ours"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("hot.txt"), b"base\n").unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("c", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("c", &dst, "sendreceive", &[st.id()]);
    let node = ours.start();
    node.send(
        "PATCH",
        "/rest/config/folders/c",
        &json!({"maxConflicts": 0, "versioning": {"type": "simple", "params": {"keep": "5"}}}),
    )
    .unwrap();
    let show = || format!("ours {:?}\n{}", tree(&dst), node.proc.log_tail(25));
    wait_for("initial sync", SYNC_WITHIN, &show, &mut || {
        std::fs::read(dst.join("hot.txt")).ok() == Some(b"base\n".to_vec())
    });
    node.post(&format!("/rest/system/pause?device={}", st.id()))
        .unwrap();
    wait_for("disconnected", SYNC_WITHIN, &show, &mut || {
        !node.connected(st.id())
    });
    let t = SystemTime::now() + Duration::from_secs(10);
    write_with_mtime(&dst.join("hot.txt"), b"our losing edit\n", t);
    write_with_mtime(
        &src.join("hot.txt"),
        b"their winning edit\n",
        t + Duration::from_secs(5),
    );
    node.post("/rest/db/scan?folder=c").unwrap();
    st.scan("c");
    wait_for("both scanned", SYNC_WITHIN, &show, &mut || {
        let size = |f: Result<Value, _>| f.ok().and_then(|f: Value| f["local"]["size"].as_u64());
        size(node.get("/rest/db/file?folder=c&file=hot.txt")) == Some(16)
            && size(st.get("/rest/db/file?folder=c&file=hot.txt")) == Some(19)
    });
    node.post(&format!("/rest/system/resume?device={}", st.id()))
        .unwrap();
    wait_for("the conflict resolved", SYNC_WITHIN, &show, &mut || {
        std::fs::read(dst.join("hot.txt")).ok() == Some(b"their winning edit\n".to_vec())
    });
    assert!(conflict_copies(&dst, "hot").is_empty(), "{}", show());
    let versions: Vec<Vec<u8>> = std::fs::read_dir(dst.join(".stversions"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("hot~"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(versions, [b"our losing edit\n".to_vec()], "{}", show());
    node.stop();
    st.shutdown();
}

fn report(node: &Node, dst: &Path) -> String {
    format!(
        "ours {:?}\n{:?}\n{}",
        tree(dst),
        node.get("/rest/db/status?folder=n"),
        node.proc.log_tail(25)
    )
}

/// A folder added over REST whose path does not exist gets its directory
/// (parents too) and `.stfolder`, and syncs. Then its directory is
/// removed: the folder stops in error, nothing is recreated (not even
/// after a restart), and the real device sees no deletion.
#[test]
fn a_new_folder_is_created_and_a_vanished_one_stops_without_deletions() {
    let version = PeerVersion::newest_available();
    let tmp = tempfile::tempdir().unwrap();
    let (st, st_port) = start_real(&tmp.path().join("st"), version);
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let src = tmp.path().join("theirs");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for (name, data) in [("a.txt", "a\n"), ("d/b.txt", "b\n"), ("c.bin", "ccc")] {
        std::fs::write(src.join(name), data).unwrap();
    }
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("n", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    let node = ours.start();

    let dst = tmp.path().join("not/yet/there");
    assert!(!tmp.path().join("not").exists());
    node.send(
        "POST",
        "/rest/config/folders",
        &json!({"id": "n", "label": "n", "path": dst, "type": "sendreceive",
                "devices": [{"deviceID": st.id()}]}),
    )
    .unwrap();
    let show = || report(&node, &dst);
    wait_for("the new folder synced", SYNC_WITHIN, &show, &mut || {
        dst.join(".stfolder").is_dir() && tree(&src) == tree(&dst)
    });
    let completion = format!("/rest/db/completion?folder=n&device={}", ours.id);
    wait_for("the peer sees us complete", SYNC_WITHIN, &show, &mut || {
        st.get(&completion)
            .is_ok_and(|c| c["completion"] == 100.0 && c["needDeletes"] == 0)
    });
    let seen_before = st.get(&completion).unwrap();

    // Its marker vanishes: the folder stops, and comes back once the
    // marker is recreated.
    std::fs::remove_dir_all(dst.join(".stfolder")).unwrap();
    node.post("/rest/db/scan?folder=n").unwrap();
    wait_for(
        "the folder in error (marker)",
        SYNC_WITHIN,
        &show,
        &mut || {
            node.get("/rest/db/status?folder=n").is_ok_and(|s| {
                s["state"] == "error" && s["error"].as_str().is_some_and(|e| e.contains("marker"))
            })
        },
    );
    assert!(
        !dst.join(".stfolder").exists(),
        "a known folder's marker was recreated"
    );
    std::fs::create_dir(dst.join(".stfolder")).unwrap();
    node.post("/rest/db/scan?folder=n").unwrap();
    wait_for("the folder back", SYNC_WITHIN, &show, &mut || {
        node.get("/rest/db/status?folder=n")
            .is_ok_and(|s| s["state"] == "idle" && s["error"] == "")
    });

    // The folder's directory vanishes (an unmounted disk looks the same).
    std::fs::remove_dir_all(&dst).unwrap();
    node.post("/rest/db/scan?folder=n").unwrap();
    wait_for("the folder in error", SYNC_WITHIN, &show, &mut || {
        node.get("/rest/db/status?folder=n").is_ok_and(|s| {
            s["state"] == "error"
                && s["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("missing or unmounted"))
        })
    });
    assert!(!dst.exists(), "a known folder's path was recreated");

    // After a restart too: a folder the index knows is never created.
    node.stop();
    let node = ours.start();
    let show = || report(&node, &dst);
    wait_for(
        "the folder in error after a restart",
        SYNC_WITHIN,
        &show,
        &mut || {
            node.get("/rest/db/status?folder=n")
                .is_ok_and(|s| s["state"] == "error")
        },
    );
    assert!(
        !dst.exists(),
        "a known folder's path was recreated at start"
    );
    assert!(st.wait_connected(&ours.id, SYNC_WITHIN).is_some());
    // Barrier: the peer has our whole index (the sequence it holds of
    // ours is ours), so an announced deletion would be visible now.
    let our_seq = seen_before["sequence"].as_u64();
    wait_for("the peer has our index", SYNC_WITHIN, &show, &mut || {
        let ours_now = node
            .get("/rest/db/status?folder=n")
            .ok()
            .and_then(|s| s["sequence"].as_u64());
        ours_now == our_seq
            && st
                .get(&completion)
                .is_ok_and(|c| c["sequence"].as_u64() == our_seq)
    });

    // The peer: every file still there, nothing deleted in its view of
    // our index, and our entries unchanged.
    assert_eq!(tree(&src).len(), 4, "{:?}", tree(&src));
    for name in ["a.txt", "d/b.txt", "c.bin"] {
        let f = st
            .get(&format!("/rest/db/file?folder=n&file={name}"))
            .unwrap();
        assert_eq!(f["global"]["deleted"], false, "{f}");
    }
    let seen_after = st.get(&completion).unwrap();
    assert_eq!(
        pick(&seen_after, COMPLETION_KEYS),
        pick(&seen_before, COMPLETION_KEYS),
        "the peer's view of our node changed"
    );
    let remote_need = st
        .get(&format!("/rest/db/remoteneed?folder=n&device={}", ours.id))
        .unwrap();
    eprintln!("peer's view of our node: {seen_after}\nremote need: {remote_need}");
    node.stop();
    st.shutdown();
}
