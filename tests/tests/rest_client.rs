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

/// How stman reaches the node.
enum Transport {
    Http,
    /// HTTPS, trusting this certificate (`REQUESTS_CA_BUNDLE`).
    Https(PathBuf),
}

/// stman's command line has no HTTPS switch, but the library under it
/// (python-syncthing) has one (`is_https`): stman runs unchanged, its
/// `main` started by the interpreter of its own script with that switch
/// turned on for every client it makes.
const STMAN_OVER_HTTPS: &str = "import sys, syncthing
plain = syncthing.Syncthing.__init__
def over_https(self, *args, **kwargs):
    kwargs['is_https'] = True
    plain(self, *args, **kwargs)
syncthing.Syncthing.__init__ = over_https
from syncthingmanager import main
sys.argv[0] = 'stman'
sys.exit(main())
";

fn run(stman: &PathBuf, via: &Transport, conf: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = match via {
        Transport::Http => Command::new(stman),
        Transport::Https(cert) => {
            let script = std::fs::read_to_string(stman).expect("read the stman script");
            let python = script
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("#!"))
                .expect("stman is a Python script")
                .trim()
                .to_string();
            let mut c = Command::new(python);
            c.arg("-c")
                .arg(STMAN_OVER_HTTPS)
                .env("REQUESTS_CA_BUNDLE", cert);
            c
        }
    };
    let out = cmd
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
    stman_session(false);
}

/// The same over HTTPS (`useTLS`), with an operator's certificate for
/// `localhost` in place of the generated one, made by `openssl req` as an
/// operator would: python-syncthing verifies the certificate, and the
/// generated one (like Syncthing's) names this machine and is a leaf that
/// OpenSSL will not take as its own trust anchor.
#[test]
fn stman_works_over_https() {
    stman_session(true);
}

fn stman_session(https: bool) {
    let stman = stman();
    let dir = tempfile::tempdir().unwrap();
    let mut home = NodeHome::generate(&dir.path().join("n"), "studio-nas");
    let (via, host) = if https {
        let cert = home.dir.join("https-cert.pem");
        let out = Command::new(e2e::require_program("openssl", "openssl"))
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .arg("-keyout")
            .arg(home.dir.join("https-key.pem"))
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl req: {out:?}");
        home.use_tls();
        (Transport::Https(cert), "localhost")
    } else {
        (Transport::Http, "127.0.0.1")
    };
    let node = home.start();
    let conf = dir.path().join("stman.conf");
    let port = home.gui_port.to_string();
    run(
        &stman,
        &via,
        &conf,
        &[
            "configure",
            "-k",
            &home.api_key,
            "-a",
            host,
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
        &via,
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
        &via,
        &conf,
        &["folder", "add", &p, "projects", "-l", "Projects"],
    );
    run(
        &stman,
        &via,
        &conf,
        &["folder", "share", "projects", "edit-bay"],
    );

    let devices = run(&stman, &via, &conf, &["device", "list"]);
    let folders = run(&stman, &via, &conf, &["folder", "list"]);
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
