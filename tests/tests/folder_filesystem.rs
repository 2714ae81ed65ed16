//! Folder settings for the storage a folder lives on (issue 18), against a
//! real Syncthing device (the newest available): `ignorePerms` on a FAT
//! volume without permissions, a `markerName` of the operator's choosing,
//! and `copyOwnershipFromParent`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use e2e::node::{Node, NodeHome};
use e2e::peers::PeerVersion;
use e2e::{wait, Syncthing};
use serde_json::{json, Value};

/// Generous: two cores shared by several builds.
const SYNC_WITHIN: Duration = Duration::from_secs(90);

/// Waits until `f` holds, or panics with what `show` says then.
fn wait_for(what: &str, show: &dyn Fn() -> String, f: &mut dyn FnMut() -> bool) {
    if wait::until(SYNC_WITHIN, Duration::from_millis(250), || {
        f().then_some(())
    })
    .is_none()
    {
        panic!("{what} not reached within {SYNC_WITHIN:?}:\n{}", show());
    }
}

fn report(node: &Node, st: &Syncthing) -> String {
    format!(
        "ours: {:?}\nerrors: {:?}\nreal: {:?}\n{}",
        node.get("/rest/db/status?folder=f"),
        node.get("/rest/folder/errors?folder=f"),
        st.get("/rest/db/status?folder=f"),
        node.proc.log_tail(30)
    )
}

/// Our node's folder `f` at `dst`, shared with the real device `st`;
/// `options` are set on the folder in the configuration file.
fn our_node(tmp: &Path, st: &Syncthing, st_port: u16, dst: &Path, options: Value) -> NodeHome {
    let ours = NodeHome::generate(&tmp.join("node"), "rust");
    ours.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    ours.add_folder("f", dst, "sendreceive", &[st.id()]);
    let mut c = ours.config();
    for (k, v) in options.as_object().unwrap() {
        c["folders"][0][k] = v.clone();
    }
    ours.set_config(&c);
    ours
}

/// A folder's local sequence, once it is idle with nothing needed.
fn settled_sequence(v: &Value) -> Option<u64> {
    (v["state"] == "idle" && v["needTotalItems"] == 0).then(|| v["sequence"].as_u64())?
}

/// `ignorePerms` on a FAT volume (which has no permission bits: every
/// chmod fails): files with various modes sync from a real device, a file
/// made on the volume syncs back, and rescans on both sides then find
/// nothing to announce — no pull error from a refused chmod, no new
/// version from a mode the volume reports differently.
#[test]
fn ignore_perms_on_a_fat_volume_syncs_both_ways_without_permission_churn() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fat) = e2e::fat::FatMount::new(tmp.path()) else {
        return;
    };
    // The volume really has no permissions.
    let probe = fat.mount.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    assert!(
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o600)).is_err(),
        "chmod works on this FAT mount: the test proves nothing"
    );
    std::fs::remove_file(&probe).unwrap();

    let version = PeerVersion::newest_available();
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for (name, data, mode) in [
        ("script.sh", "#!/bin/sh\necho hi\n", 0o755),
        ("data.txt", "data\n", 0o644),
        ("sub/private.txt", "private\n", 0o600),
    ] {
        std::fs::write(src.join(name), data).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dst = fat.mount.join("share");
    let ours = our_node(tmp.path(), &st, st_port, &dst, json!({"ignorePerms": true}));
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("f", &src, "sendreceive", &[&ours.id]);
    let node = ours.start();
    let cfg = node.get("/rest/config/folders/f").unwrap();
    assert_eq!(cfg["ignorePerms"], true, "{cfg}");

    let show = || report(&node, &st);
    wait_for(
        "the real device's files on the FAT volume",
        &show,
        &mut || {
            std::fs::read(dst.join("sub/private.txt")).is_ok_and(|d| d == b"private\n")
                && std::fs::read(dst.join("script.sh")).is_ok_and(|d| d.starts_with(b"#!"))
                && std::fs::read(dst.join("data.txt")).is_ok_and(|d| d == b"data\n")
        },
    );
    // A file made on the volume reaches the real device, marked as having
    // no meaningful permissions.
    std::fs::write(dst.join("from-fat.txt"), b"made on FAT\n").unwrap();
    node.post("/rest/db/scan?folder=f").unwrap();
    wait_for("the FAT file on the real device", &show, &mut || {
        std::fs::read(src.join("from-fat.txt")).is_ok_and(|d| d == b"made on FAT\n")
    });
    let announced = st.get("/rest/db/file?folder=f&file=from-fat.txt").unwrap();
    assert_eq!(announced["global"]["noPermissions"], true, "{announced}");
    // The real device's modes are untouched by the round trip.
    let mode = |p: &str| std::fs::metadata(src.join(p)).unwrap().mode() & 0o777;
    assert_eq!(
        (mode("script.sh"), mode("sub/private.txt"), mode("sub")),
        (0o755, 0o600, 0o700)
    );

    // Settled on both sides, then rescans change nothing.
    let mut before = None;
    wait_for("both sides settled", &show, &mut || {
        let ours = node.get("/rest/db/status?folder=f").ok();
        let real = st.get("/rest/db/status?folder=f").ok();
        before = ours
            .as_ref()
            .and_then(settled_sequence)
            .zip(real.as_ref().and_then(settled_sequence));
        before.is_some()
    });
    for _ in 0..2 {
        node.post("/rest/db/scan?folder=f").unwrap();
        st.scan("f");
    }
    let mut after = None;
    wait_for("both sides settled after rescans", &show, &mut || {
        let ours = node.get("/rest/db/status?folder=f").ok();
        let real = st.get("/rest/db/status?folder=f").ok();
        after = ours
            .as_ref()
            .and_then(settled_sequence)
            .zip(real.as_ref().and_then(settled_sequence));
        after.is_some()
    });
    assert_eq!(
        before,
        after,
        "a rescan announced changes (permission churn):\n{}",
        show()
    );
    let errors = node.get("/rest/folder/errors?folder=f").unwrap();
    assert_eq!(errors["errors"], json!([]), "{errors}");
    let real_errors = st.get("/rest/folder/errors?folder=f").unwrap();
    assert!(
        real_errors["errors"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{real_errors}"
    );
    node.stop();
}

/// `markerName` of the operator's choosing: never created by the node; the
/// folder stays in error and pulls nothing until the operator's marker is
/// there, then syncs. No `.stfolder` is made.
#[test]
fn a_marker_of_the_operators_choosing_gates_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a\n").unwrap();
    let dst = tmp.path().join("volume");
    std::fs::create_dir_all(&dst).unwrap();
    let ours = our_node(
        tmp.path(),
        &st,
        st_port,
        &dst,
        json!({"markerName": ".volume-mounted"}),
    );
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("f", &src, "sendreceive", &[&ours.id]);
    let node = ours.start();
    let cfg = node.get("/rest/config/folders/f").unwrap();
    assert_eq!(cfg["markerName"], ".volume-mounted", "{cfg}");
    let show = || report(&node, &st);
    wait_for(
        "the folder in error for its missing marker",
        &show,
        &mut || {
            node.get("/rest/db/status?folder=f").is_ok_and(|s| {
                s["state"] == "error"
                    && s["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains(".volume-mounted")
            })
        },
    );
    assert!(st.wait_connected(&ours.id, SYNC_WITHIN).is_some());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!dst.join("a.txt").exists(), "pulled without the marker");
    assert!(
        !dst.join(".stfolder").exists(),
        "the default marker was made"
    );

    std::fs::write(dst.join(".volume-mounted"), b"").unwrap();
    node.post("/rest/db/scan?folder=f").unwrap();
    wait_for("the file once the marker is there", &show, &mut || {
        std::fs::read(dst.join("a.txt")).is_ok_and(|d| d == b"a\n")
    });
    assert!(
        !dst.join(".stfolder").exists(),
        "the default marker was made"
    );

    // A marker outside the folder is refused.
    let e = node
        .send(
            "PATCH",
            "/rest/config/folders/f",
            &json!({"markerName": "../elsewhere"}),
        )
        .unwrap_err();
    assert!(e.contains("markerName"), "{e}");
    node.stop();
}

/// `copyOwnershipFromParent`: what is pulled (a file, a directory, a
/// symlink) gets the owner and group of the directory it lands in.
#[test]
fn pulled_items_take_their_directorys_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root: changing owners needs it"
        );
        eprintln!("SKIPPED: changing owners needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let version = PeerVersion::newest_available();
    let (st, st_port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("shots")).unwrap();
    std::fs::write(src.join("plate.exr"), b"pixels").unwrap();
    std::fs::write(src.join("shots/010.txt"), b"shot 10").unwrap();
    std::os::unix::fs::symlink("plate.exr", src.join("latest")).unwrap();
    let dst = tmp.path().join("share");
    std::fs::create_dir_all(&dst).unwrap();
    let (uid, gid) = (4242, 4343);
    std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).unwrap();
    let ours = our_node(
        tmp.path(),
        &st,
        st_port,
        &dst,
        json!({"copyOwnershipFromParent": true}),
    );
    st.add_device(&ours.id, &[&ours.address()]);
    st.share_folder("f", &src, "sendreceive", &[&ours.id]);
    let node = ours.start();
    let show = || report(&node, &st);
    wait_for("the files", &show, &mut || {
        std::fs::read(dst.join("shots/010.txt")).is_ok_and(|d| d == b"shot 10")
            && std::fs::symlink_metadata(dst.join("latest")).is_ok()
            && dst.join("plate.exr").exists()
    });
    for name in ["plate.exr", "shots", "shots/010.txt", "latest"] {
        let m = std::fs::symlink_metadata(dst.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{name}");
    }
    node.stop();
}
