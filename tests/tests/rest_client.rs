//! A third-party Syncthing client, unchanged, drives the node: `stman`
//! (PyPI's syncthingmanager, built on python-syncthing) configures a
//! device and a folder through the REST API and lists them.

use std::path::PathBuf;
use std::process::Command;

use e2e::node::NodeHome;

/// `$STMAN`, else `stman` on PATH, else the venv scripts/test makes.
fn stman() -> PathBuf {
    if let Some(p) = std::env::var_os("STMAN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = PathBuf::from(home).join(".cache/node-e2e/stman/bin/stman");
        if venv.exists() {
            return venv;
        }
    }
    e2e::require_program(
        "stman",
        "syncthingmanager (PyPI; scripts/test installs it in ~/.cache/node-e2e/stman)",
    )
}

fn run(stman: &PathBuf, conf: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(stman)
        .arg("-c")
        .arg(conf)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run stman");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "stman {args:?} failed:\n{text}");
    text
}

#[test]
fn stman_configures_and_lists_our_folders_and_devices() {
    let stman = stman();
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "studio-nas");
    let node = home.start();
    let conf = dir.path().join("stman.conf");
    let port = home.gui_port.to_string();
    run(
        &stman,
        &conf,
        &[
            "configure",
            "-k",
            &home.api_key,
            "-a",
            "127.0.0.1",
            "-p",
            &port,
            "-n",
            "ours",
            "--default",
        ],
    );

    let peer = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD";
    run(
        &stman,
        &conf,
        &[
            "device",
            "add",
            peer,
            "-n",
            "edit-bay",
            "-a",
            "tcp://127.0.0.1:1",
        ],
    );
    let projects = dir.path().join("projects");
    std::fs::create_dir_all(&projects).unwrap();
    let p = projects.to_string_lossy().into_owned();
    run(
        &stman,
        &conf,
        &["folder", "add", &p, "projects", "-l", "Projects"],
    );
    run(&stman, &conf, &["folder", "share", "projects", "edit-bay"]);

    let devices = run(&stman, &conf, &["device", "list"]);
    let folders = run(&stman, &conf, &["folder", "list"]);
    println!("$ stman device list\n{devices}\n$ stman folder list\n{folders}");
    assert!(
        devices.contains("studio-nas") && devices.contains(&home.id),
        "{devices}"
    );
    assert!(
        devices.contains("edit-bay") && devices.contains(peer),
        "{devices}"
    );
    assert!(devices.contains("Not Connected"), "{devices}");
    assert!(
        folders.contains("Projects") && folders.contains("edit-bay"),
        "{folders}"
    );
    assert!(folders.contains(&p), "{folders}");

    // What stman wrote is the node's configuration now.
    let f = node.get("/rest/config/folders/projects").unwrap();
    assert_eq!(f["type"], "sendreceive", "readwrite is read as sendreceive");
    assert!(f["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["deviceID"] == peer));
    node.stop();
}
