//! Versioning (issue 17), the quick sanity check: our node pulls from the
//! newest real Syncthing available with simple versioning set over REST;
//! the peer modifies and deletes files; the old contents appear in our
//! `.stversions` under Syncthing's names, `GET /rest/folder/versions`
//! lists them, and a restore brings one back and syncs it to the peer.
//! (The thorough tests, every versioner and layout compatibility, are in
//! their own files.)

use std::path::Path;
use std::time::Duration;

use e2e::node::NodeHome;
use e2e::rest::Rest;
use e2e::{wait, PeerProgram, PeerVersion};
use serde_json::{json, Value};

fn newest_peer() -> PeerVersion {
    let mut all = PeerVersion::ALL;
    all.reverse();
    all.into_iter()
        .find(|v| v.locate(PeerProgram::Syncthing).is_ok())
        .unwrap_or(PeerVersion::V1_19_2)
}

fn versions_of(dir: &Path, stem: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .filter(|n| n.starts_with(&format!("{stem}~")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn remote_changes_are_versioned_listed_and_restored() {
    let version = newest_peer();
    eprintln!("peer: Syncthing {}", version.label());
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("st-src");
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a.txt"), b"first a").unwrap();
    std::fs::write(src.join("sub/b.txt"), b"first b").unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("v", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("v", &dst, "sendreceive", &[st.id()]);

    // The peer versions too, so its answer can be compared with ours.
    st.send(
        "PATCH",
        "/rest/config/folders/v",
        &json!({"versioning": {"type": "simple", "params": {"keep": "5"}}}),
    )
    .unwrap();
    let node = ours.start();
    let log = || node.proc.log_tail(40);
    let rest = Rest {
        port: ours.gui_port,
        api_key: &ours.api_key,
        timeout: Duration::from_secs(30),
        https: None,
    };
    // Set over REST, read back in Syncthing's shape.
    rest.send(
        "PATCH",
        "/rest/config/folders/v",
        &json!({"versioning": {"type": "simple", "params": {"keep": "5"}}}),
    )
    .unwrap();
    let cfg = rest.get("/rest/config/folders/v").unwrap();
    assert_eq!(
        cfg["versioning"],
        json!({"type": "simple", "params": {"keep": "5"}, "cleanupIntervalS": 3600,
               "fsPath": "", "fsType": "basic"})
    );
    let e = rest
        .send(
            "PATCH",
            "/rest/config/folders/v",
            &json!({"versioning": {"params": {"keep": "x"}}}),
        )
        .unwrap_err();
    assert!(e.contains("params.keep"), "{e}");

    let pulled = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("sub/b.txt")).ok()? == b"first b").then_some(())
    });
    assert!(pulled.is_some(), "not pulled:\n{}", log());

    // The peer modifies one file and deletes the other.
    std::fs::write(src.join("a.txt"), b"second a, longer").unwrap();
    std::fs::remove_file(src.join("sub/b.txt")).unwrap();
    st.scan("v");
    let applied = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("a.txt")).ok()? == b"second a, longer"
            && !dst.join("sub/b.txt").exists())
        .then_some(())
    });
    assert!(applied.is_some(), "changes not applied:\n{}", log());
    let vs = dst.join(".stversions");
    let a = versions_of(&vs, "a");
    let b = versions_of(&vs.join("sub"), "b");
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    assert!(a[0].ends_with(".txt") && a[0].len() == "a~YYYYMMDD-HHMMSS.txt".len());
    assert_eq!(std::fs::read(vs.join(&a[0])).unwrap(), b"first a");
    assert_eq!(
        std::fs::read(vs.join("sub").join(&b[0])).unwrap(),
        b"first b"
    );

    let listed = rest.get("/rest/folder/versions?folder=v").unwrap();
    let keys: Vec<&String> = listed.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["a.txt", "sub/b.txt"], "{listed}");
    let entry = &listed["a.txt"][0];
    assert_eq!(entry["size"], 7);
    let when = entry["versionTime"].as_str().unwrap().to_string();
    assert!(entry["modTime"].is_string(), "{entry}");

    // Nothing of .stversions reaches the peer.
    let browse = st.get("/rest/db/browse?folder=v").unwrap_or(Value::Null);
    assert!(!browse.to_string().contains("stversions"), "{browse}");

    // Restore: the old bytes come back (the replaced file is versioned)
    // and reach the peer.
    let errors = rest
        .send(
            "POST",
            "/rest/folder/versions?folder=v",
            &json!({"a.txt": when}),
        )
        .unwrap();
    assert_eq!(errors, json!({}), "{}", log());
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"first a");
    assert_eq!(
        versions_of(&vs, "a").len(),
        1,
        "the restored version left, the replaced one came"
    );
    let synced = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(src.join("a.txt")).ok()? == b"first a").then_some(())
    });
    assert!(
        synced.is_some(),
        "restore not synced to the peer:\n{}",
        log()
    );

    // The peer kept what the restore replaced on its side ("second a,
    // longer", with the mtime both sides gave it): its answer and ours
    // agree field by field on that version but for versionTime (each
    // side's own archive time), and both print times alike.
    let theirs = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        let l = st.get("/rest/folder/versions?folder=v").ok()?;
        l["a.txt"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| a[0].clone())
    })
    .expect("the peer lists its version of a.txt");
    let ours_now = rest.get("/rest/folder/versions?folder=v").unwrap();
    let mine = ours_now["a.txt"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["size"] == theirs["size"])
        .cloned()
        .unwrap_or_else(|| panic!("ours {ours_now}, theirs {theirs}"));
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&mine), keys(&theirs));
    assert_eq!(
        mine["modTime"], theirs["modTime"],
        "ours {mine}, theirs {theirs}"
    );
    let shape = |t: &str| -> String {
        t.chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect()
    };
    assert_eq!(
        shape(mine["versionTime"].as_str().unwrap()),
        shape(theirs["versionTime"].as_str().unwrap())
    );

    let cleaned = rest
        .send("POST", "/rest/folder/versions/cleanup?folder=v", &json!({}))
        .unwrap();
    assert_eq!(cleaned, json!({"removed": 0}));
    node.stop();
}

/// A small tmpfs (root only), unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs at {}", at.display());
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Versions on another disk (the copy path), and that disk full: the
/// pull of the replaced file fails with a clear error and the file stays
/// as it was; once space is freed the pull resumes and the version holds
/// the old bytes and mtime.
#[test]
fn a_full_versions_disk_fails_the_pull_and_keeps_the_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED a_full_versions_disk_…: needs root to mount a small tmpfs");
        return;
    }
    let version = newest_peer();
    let tmp = tempfile::tempdir().unwrap();
    let vdisk = tmp.path().join("vdisk");
    let _disk = SmallDisk::mount(&vdisk, "1m");
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("st-src");
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("a.bin"), &old).unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("v", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("v", &dst, "sendreceive", &[st.id()]);
    let mut c = ours.config();
    c["folders"][0]["versioning"] = json!({"type": "simple", "params": {"keep": "3"},
        "fsPath": vdisk.to_str().unwrap()});
    ours.set_config(&c);

    let node = ours.start();
    let log = || node.proc.log_tail(40);
    let pulled = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("a.bin")).ok()? == old).then_some(())
    });
    assert!(pulled.is_some(), "not pulled:\n{}", log());
    let mtime = std::fs::metadata(dst.join("a.bin"))
        .unwrap()
        .modified()
        .unwrap();

    // Fill the versions disk, then the peer changes the file.
    let filler = vdisk.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
    }
    std::fs::write(src.join("a.bin"), b"new contents").unwrap();
    st.scan("v");
    let failed = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        let e = node.get("/rest/folder/errors?folder=v").ok()?;
        e["errors"]
            .as_array()?
            .iter()
            .find(|x| x["path"] == "a.bin")
            .map(|x| x["error"].as_str().unwrap_or("").to_string())
    });
    let msg = failed.unwrap_or_else(|| panic!("no pull error:\n{}", log()));
    assert!(msg.contains("disk is full"), "{msg}");
    assert_eq!(
        std::fs::read(dst.join("a.bin")).unwrap(),
        old,
        "the file stays as it was"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&vdisk)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from("filler")],
        "no partial version left"
    );

    // Space freed: the pull resumes (the retry comes by itself).
    std::fs::remove_file(&filler).unwrap();
    let resumed = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("a.bin")).ok()? == b"new contents").then_some(())
    });
    assert!(resumed.is_some(), "did not resume:\n{}", log());
    let kept = versions_of(&vdisk, "a");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(vdisk.join(&kept[0])).unwrap(), old);
    assert_eq!(
        std::fs::metadata(vdisk.join(&kept[0]))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    node.stop();
}

/// The fault point of the crash test: the node dies right after archiving
/// the old version, before the new file is in place. The file is then the
/// old one and its version the same inode; after a restart the pull is
/// redone without a second copy of the old version.
#[test]
fn a_crash_between_archive_and_swap_loses_nothing_and_copies_nothing_twice() {
    use std::os::unix::fs::MetadataExt;
    let version = newest_peer();
    let tmp = tempfile::tempdir().unwrap();
    let ours = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("st-src");
    let dst = tmp.path().join("our-dst");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("d/a.txt"), b"old").unwrap();
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("v", &src, "sendreceive", &[&ours.id]);
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("v", &dst, "sendreceive", &[st.id()]);
    let mut c = ours.config();
    c["folders"][0]["versioning"] = json!({"type": "staggered"});
    ours.set_config(&c);

    let mut node = ours.start_with_env(&[("NODE_TEST_ABORT_AFTER_ARCHIVE", Path::new("d/a.txt"))]);
    let pulled = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("d/a.txt")).ok()? == b"old").then_some(())
    });
    assert!(pulled.is_some(), "not pulled:\n{}", node.proc.log_tail(40));
    std::fs::write(src.join("d/a.txt"), b"new!").unwrap();
    st.scan("v");
    assert!(
        node.proc.wait_exit(Duration::from_secs(60)).is_some(),
        "the node did not abort:\n{}",
        node.proc.log_tail(40)
    );
    let vdir = dst.join(".stversions/d");
    let kept = versions_of(&vdir, "a");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(dst.join("d/a.txt")).unwrap(), b"old");
    assert_eq!(
        std::fs::metadata(vdir.join(&kept[0])).unwrap().ino(),
        std::fs::metadata(dst.join("d/a.txt")).unwrap().ino()
    );

    let node = ours.start();
    let done = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(dst.join("d/a.txt")).ok()? == b"new!").then_some(())
    });
    assert!(done.is_some(), "not redone:\n{}", node.proc.log_tail(40));
    assert_eq!(
        versions_of(&vdir, "a"),
        kept,
        "no second copy of the old version"
    );
    assert_eq!(std::fs::read(vdir.join(&kept[0])).unwrap(), b"old");
    node.stop();
}
