//! The interop matrix (issue 16): our node against each Syncthing version
//! users run — Debian's 1.19.2, 1.30.0 and 2.1.3 (built by
//! `scripts/build-go-peers`; a 2.1.3 case prints `SKIPPED` with the
//! reason when the module proxy would not serve it).
//!
//! For each version, in both directions: a tree with nested directories,
//! an empty file, odd names, a symlink, an executable and a few MiB of
//! random data arrives byte-identical; then a 300 MiB file arrives, one
//! block of it changes, and only about that block crosses the wire
//! (counted by our node's `pulledBytes` / `servedBytes`).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::node::{Node, NodeHome};
use e2e::peers::PeerVersion;
use e2e::syncthing::start_tcp_version;
use e2e::tree::{build_tree, tree, write_mib_file};
use e2e::{wait, Syncthing};

e2e::per_version!(serve_tree:
    our_node_serves_a_tree_to_1_19_2 => PeerVersion::V1_19_2,
    our_node_serves_a_tree_to_1_30_0 => PeerVersion::V1_30_0,
    our_node_serves_a_tree_to_2_1_3 => PeerVersion::V2_1_3,
);

e2e::per_version!(pull_tree:
    our_node_pulls_a_tree_from_1_19_2 => PeerVersion::V1_19_2,
    our_node_pulls_a_tree_from_1_30_0 => PeerVersion::V1_30_0,
    our_node_pulls_a_tree_from_2_1_3 => PeerVersion::V2_1_3,
);

e2e::per_version!(serve_large_file:
    our_node_serves_300_mib_then_one_block_to_1_19_2 => PeerVersion::V1_19_2,
    our_node_serves_300_mib_then_one_block_to_1_30_0 => PeerVersion::V1_30_0,
    our_node_serves_300_mib_then_one_block_to_2_1_3 => PeerVersion::V2_1_3,
);

e2e::per_version!(pull_large_file:
    our_node_pulls_300_mib_then_one_block_from_1_19_2 => PeerVersion::V1_19_2,
    our_node_pulls_300_mib_then_one_block_from_1_30_0 => PeerVersion::V1_30_0,
    our_node_pulls_300_mib_then_one_block_from_2_1_3 => PeerVersion::V2_1_3,
);

/// A real device of `version` and our node, connected, sharing folder
/// `id`: `theirs` on their side, `ours` on ours, of the given types.
struct Pair {
    st: Syncthing,
    node: Node,
    _tmp: tempfile::TempDir,
}

fn pair(
    version: PeerVersion,
    tmp: tempfile::TempDir,
    id: &str,
    (theirs, their_type): (&Path, &str),
    (ours, our_type): (&Path, &str),
) -> Pair {
    let home = NodeHome::generate(&tmp.path().join("node"), "rust");
    let (st, st_port) = start_tcp_version(&tmp.path().join("st"), version);
    st.add_device(&home.id, &[&home.address()]);
    st.share_folder(id, theirs, their_type, &[&home.id]);
    home.add_device(st.id(), &[&format!("tcp://127.0.0.1:{st_port}")]);
    home.add_folder(id, ours, our_type, &[st.id()]);
    let node = home.start();
    assert!(
        st.wait_connected(&home.id, Duration::from_secs(60))
            .is_some(),
        "Syncthing {version} did not connect to our node:\n{}\n--- theirs:\n{}",
        node.proc.log_tail(30),
        st.proc.log_tail(30)
    );
    Pair {
        st,
        node,
        _tmp: tmp,
    }
}

impl Pair {
    fn logs(&self) -> String {
        format!(
            "--- our node:\n{}\n--- Syncthing {}:\n{}",
            self.node.proc.log_tail(40),
            self.st.version(),
            self.st.proc.log_tail(40)
        )
    }

    fn wait_same_tree(&self, a: &Path, b: &Path, limit: Duration) {
        let same = wait::until(limit, Duration::from_millis(250), || {
            (tree(a) == tree(b)).then_some(())
        });
        if same.is_none() {
            let (ta, tb) = (tree(a), tree(b));
            for (k, v) in &ta {
                if tb.get(k) != Some(v) {
                    eprintln!("{k}: source {v:?}, copy {:?}", tb.get(k));
                }
            }
            for k in tb.keys().filter(|k| !ta.contains_key(*k)) {
                eprintln!("{k}: only in the copy");
            }
            panic!("trees differ after {limit:?}\n{}", self.logs());
        }
    }

    /// Both sides agree that both are complete for `folder`.
    fn wait_both_complete(&self, folder: &str, limit: Duration) {
        let theirs = format!(
            "/rest/db/completion?folder={folder}&device={}",
            self.node.home.id
        );
        let ours = format!(
            "/rest/db/completion?folder={folder}&device={}",
            self.st.id()
        );
        let done = wait::until(limit, Duration::from_millis(250), || {
            let a = self.st.get(&theirs).ok()?;
            let b = self.node.get(&ours).ok()?;
            let s = self
                .node
                .get(&format!("/rest/db/status?folder={folder}"))
                .ok()?;
            (a["completion"].as_f64() == Some(100.0)
                && b["completion"].as_f64() == Some(100.0)
                && s["needTotalItems"].as_u64() == Some(0)
                && s["pullErrors"].as_u64() == Some(0))
            .then_some(())
        });
        assert!(
            done.is_some(),
            "{folder} not complete: theirs {:?}, ours {:?}\n{}",
            self.st.get(&theirs),
            self.node.get(&ours),
            self.logs()
        );
    }

    fn stop(self) {
        // Warnings of the real device go to the test output: they are
        // where a peer says what it disliked without failing anything.
        let log =
            std::fs::read_to_string(self.st.home.dir.join("syncthing.log")).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains(" WRN ") || l.contains("WARNING"))
        {
            eprintln!("Syncthing {} warned: {line}", self.st.version());
        }
        self.node.stop();
        // Fails on any "protocol error" in the real device's log.
        self.st.shutdown();
    }
}

fn change_one_block(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(b"one changed block", at).unwrap();
}

fn serve_tree(version: PeerVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ours");
    let dst = tmp.path().join("theirs");
    let files = build_tree(&src, 300, 4);
    let p = pair(
        version,
        tmp,
        "tree",
        (&dst, "sendreceive"),
        (&src, "sendreceive"),
    );
    let t0 = Instant::now();
    p.st.wait_synced("tree", files, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.wait_same_tree(&src, &dst, Duration::from_secs(30));
    eprintln!(
        "{version}: {files} files served in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // Changes on our side: content, a new file, a deletion, a rename.
    change_one_block(&src.join("big.bin"), 1 << 20);
    std::fs::write(src.join("dir1/added.txt"), b"added\n").unwrap();
    std::fs::remove_file(src.join("name with spaces.txt")).unwrap();
    std::fs::rename(src.join("dir2"), src.join("dir2 renamed")).unwrap();
    p.node.post("/rest/db/scan?folder=tree").unwrap();
    p.wait_same_tree(&src, &dst, Duration::from_secs(60));
    p.wait_both_complete("tree", Duration::from_secs(60));
    p.stop();
}

fn pull_tree(version: PeerVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("theirs");
    let dst = tmp.path().join("ours");
    build_tree(&src, 300, 4);
    std::fs::create_dir_all(&dst).unwrap();
    let p = pair(
        version,
        tmp,
        "tree",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let t0 = Instant::now();
    p.wait_same_tree(&src, &dst, Duration::from_secs(120));
    eprintln!(
        "{version}: tree pulled in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    p.wait_both_complete("tree", Duration::from_secs(60));
    change_one_block(&src.join("big.bin"), 2 << 20);
    std::fs::write(src.join("dir1/added.txt"), b"added\n").unwrap();
    std::fs::remove_file(src.join("name with spaces.txt")).unwrap();
    std::fs::rename(src.join("dir2"), src.join("dir2 renamed")).unwrap();
    p.st.scan("tree");
    p.wait_same_tree(&src, &dst, Duration::from_secs(60));
    p.wait_both_complete("tree", Duration::from_secs(60));
    p.stop();
}

/// 300 MiB from our node, then one changed block: what our node serves
/// for the change is about one block.
fn serve_large_file(version: PeerVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ours");
    let dst = tmp.path().join("theirs");
    std::fs::create_dir_all(&src).unwrap();
    write_mib_file(&src.join("large.bin"), 300, 7000 + version as u64);
    let p = pair(
        version,
        tmp,
        "big",
        (&dst, "sendreceive"),
        (&src, "sendreceive"),
    );
    let t0 = Instant::now();
    p.st.wait_synced("big", 1, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.wait_same_tree(&src, &dst, Duration::from_secs(60));
    let served = p.node.status_u64("servedBytes");
    eprintln!(
        "{version}: 300 MiB served in {:.2} s ({served} bytes)",
        t0.elapsed().as_secs_f64()
    );
    assert!(served >= 300 << 20, "served only {served} bytes");
    change_one_block(&src.join("large.bin"), 150 << 20);
    p.node.post("/rest/db/scan?folder=big").unwrap();
    p.wait_same_tree(&src, &dst, Duration::from_secs(300));
    p.wait_both_complete("big", Duration::from_secs(60));
    let delta = p.node.status_u64("servedBytes") - served;
    eprintln!("{version}: one changed block of 300 MiB: {delta} bytes served");
    assert!(
        delta < 2 << 20,
        "{delta} bytes served for one changed block"
    );
    p.stop();
}

/// 300 MiB into our node, then one changed block: our node pulls about
/// one block for the change.
fn pull_large_file(version: PeerVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("theirs");
    let dst = tmp.path().join("ours");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    write_mib_file(&src.join("large.bin"), 300, 8000 + version as u64);
    let p = pair(
        version,
        tmp,
        "big",
        (&src, "sendreceive"),
        (&dst, "sendreceive"),
    );
    let t0 = Instant::now();
    p.wait_same_tree(&src, &dst, Duration::from_secs(600));
    p.wait_both_complete("big", Duration::from_secs(60));
    let pulled = p.node.status_u64("pulledBytes");
    eprintln!(
        "{version}: 300 MiB pulled in {:.2} s ({pulled} bytes)",
        t0.elapsed().as_secs_f64()
    );
    change_one_block(&src.join("large.bin"), 150 << 20);
    p.st.scan("big");
    p.wait_same_tree(&src, &dst, Duration::from_secs(300));
    p.wait_both_complete("big", Duration::from_secs(60));
    let delta = p.node.status_u64("pulledBytes") - pulled;
    eprintln!("{version}: one changed block of 300 MiB: {delta} bytes pulled");
    assert!(
        delta < 2 << 20,
        "{delta} bytes pulled for one changed block"
    );
    p.stop();
}
