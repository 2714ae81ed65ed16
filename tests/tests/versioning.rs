//! File versioning (issue 17): a real Syncthing device (the newest built
//! here) modifies and deletes files in a shared folder; the *receiver*
//! keeps what those remote changes replace as its versioner says.
//!
//! Every scenario runs against a receiver that is either our node (the
//! acceptance test) or a real Syncthing device (`*_reference` and the
//! first half of the layout tests): the same REST calls drive both, so the
//! expectations here are Syncthing's own behaviour, checked against
//! Syncthing. The layout tests hand a folder with its `.stversions` from
//! one implementation to the other and compare `GET /rest/folder/versions`
//! field by field, both ways.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::node::NodeHome;
use e2e::tree::bytes;
use e2e::versioning::{
    files, listing, mtime_of, start_ours, synced_files, tag_at, tag_time, tagged, unix_now,
    version_tag, write_file, Kind, Receiver,
};
use e2e::{wait, PeerVersion, Syncthing};
use serde_json::{json, Value};

const FOLDER: &str = "v";
/// Our node's external versioner gives up on a command after this many
/// seconds (Syncthing waits forever; it ignores the parameter).
const EXTERNAL_TIMEOUT_PARAM: &str = "timeoutS";

fn reference() -> Kind {
    Kind::Syncthing(PeerVersion::newest_available())
}

/// The versioners, with the parameters these tests give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Versioner {
    Trashcan,
    Simple,
    Staggered,
    External,
}

const DAY: i64 = 86_400;

/// A real Syncthing source and a receiver sharing folder [`FOLDER`].
struct Pair {
    tmp: tempfile::TempDir,
    source: Syncthing,
    src: PathBuf,
    recv: Receiver,
    dst: PathBuf,
    /// `.stversions` in the folder, or the versioning's `fsPath`.
    versions: PathBuf,
}

impl Pair {
    /// Starts both, writes `initial` (path → bytes, mtime `base`) into the
    /// source folder and waits until the receiver has it all.
    fn start(
        kind: Kind,
        versioning: impl FnOnce(&Path) -> Value,
        env: &[(&str, &str)],
        initial: &[(&str, Vec<u8>)],
        base: i64,
    ) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let (source, port) = e2e::syncthing::start_tcp_version(
            &tmp.path().join("st-source"),
            PeerVersion::newest_available(),
        );
        let recv = Receiver::start(kind, &tmp.path().join("receiver"), env);
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        for (name, data) in initial {
            write_file(&src.join(name), data, base);
        }
        source.add_device(&recv.id(), &[&recv.address()]);
        recv.add_device(source.id(), &format!("tcp://127.0.0.1:{port}"));
        source.share_folder(FOLDER, &src, "sendreceive", &[&recv.id()]);
        let versioning = versioning(tmp.path());
        recv.add_folder(FOLDER, &dst, &[source.id()], &versioning);
        let versions = match versioning["fsPath"].as_str() {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => dst.join(".stversions"),
        };
        let pair = Pair {
            tmp,
            source,
            src,
            recv,
            dst,
            versions,
        };
        pair.wait_same(Duration::from_secs(90));
        pair
    }

    fn versions_dir(&self) -> PathBuf {
        self.versions.clone()
    }

    /// The source scans; waits until the receiver's folder has the same
    /// files with the same bytes and reports itself in sync.
    fn sync(&self) {
        self.source.scan(FOLDER);
        self.wait_same(Duration::from_secs(60));
    }

    fn wait_same(&self, limit: Duration) {
        let same = wait::until(limit, Duration::from_millis(200), || {
            (synced_files(&self.src) == synced_files(&self.dst)).then_some(())
        });
        if same.is_none() {
            let (a, b) = (synced_files(&self.src), synced_files(&self.dst));
            let differ: Vec<&String> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .collect();
            panic!(
                "{}: folders differ after {limit:?} at {differ:?}; status {}\n{}",
                self.recv.kind(),
                self.recv.status(FOLDER),
                self.recv.log_tail(30)
            );
        }
        let n = synced_files(&self.src).len() as u64;
        self.recv.wait_synced(FOLDER, n, limit);
    }

    /// Nothing of the versions folder reached the source: the receiver
    /// rescans, then the source's global state has exactly the files of
    /// its folder, no `.stversions` anywhere, and the receiver at 100 %.
    fn assert_versions_not_announced(&self) {
        self.recv.scan(FOLDER);
        let n = synced_files(&self.src).len() as u64;
        self.recv.wait_synced(FOLDER, n, Duration::from_secs(60));
        let completion = format!(
            "/rest/db/completion?folder={FOLDER}&device={}",
            self.recv.id()
        );
        let mut last = (Value::Null, Value::Null);
        let ok = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
            let s = self.source.folder_status(FOLDER).ok()?;
            let c = self.source.get(&completion).ok()?;
            let good = s["globalFiles"].as_u64() == Some(n)
                && s["localFiles"].as_u64() == Some(n)
                && c["completion"].as_f64() == Some(100.0);
            last = (s, c);
            good.then_some(())
        });
        assert!(ok.is_some(), "source's view with {n} files: {last:?}");
        let browse = self
            .source
            .get(&format!("/rest/db/browse?folder={FOLDER}"))
            .unwrap()
            .to_string();
        assert!(
            !browse.contains("stversions"),
            "the source knows of .stversions: {browse}"
        );
        assert!(
            !self.src.join(".stversions").exists(),
            "the source got a .stversions"
        );
        let file = self
            .source
            .get(&format!("/rest/db/file?folder={FOLDER}&file=.stversions"));
        assert!(
            file.is_err(),
            "the source has .stversions in its index: {file:?}"
        );
    }
}

/// The mtimes a test gives its files: distinct, whole seconds, in the past.
fn base_time() -> i64 {
    unix_now() - 3 * DAY
}

/// Waits until the wall clock is past the second this is called in, so a
/// version archived from now on has a later tag than any before.
fn next_second() {
    let s = unix_now();
    wait::until(Duration::from_secs(5), Duration::from_millis(20), || {
        (unix_now() > s).then_some(())
    });
}

fn content(name: &str, round: u64) -> Vec<u8> {
    let seed = name.bytes().fold(round * 1000, |a, b| {
        a.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    bytes(seed, 200 + (seed % 700) as usize + round as usize)
}

/// The files of the versioner scenario; `gone.txt` is deleted, the next
/// three are changed once, `a.txt` three times, `keep.txt` never.
const SCENARIO: [&str; 6] = [
    "a.txt",
    "dir/archive.tar.gz",
    "Makefile",
    "dir/sub/.hidden",
    "gone.txt",
    "keep.txt",
];
const CHANGED_ONCE: [&str; 3] = ["dir/archive.tar.gz", "Makefile", "dir/sub/.hidden"];

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The moving script of the external versioner: `$1` is the folder, `$2`
/// the file in it; the file goes to `moved/` under a unique name.
fn mover(tmp: &Path) -> (PathBuf, PathBuf) {
    let dest = tmp.join("moved");
    let script = write_script(
        tmp,
        "mover.sh",
        &format!(
            "set -e\nmkdir -p '{}'\nmv \"$1/$2\" '{}'/\"$(echo \"$2\" | tr / _).$$\"\n",
            dest.display(),
            dest.display()
        ),
    );
    (script, dest)
}

fn versioning_json(v: Versioner, kind: Kind, tmp: &Path) -> Value {
    // Our node cleans on demand through REST where the test asks it to;
    // Syncthing only on its timer, so it gets a 1 s one (trash can: both).
    let interval = if kind == Kind::Ours && matches!(v, Versioner::Simple | Versioner::Staggered) {
        3600
    } else {
        1
    };
    let mut fs_path = String::new();
    let (kind_name, params) = match v {
        Versioner::Trashcan => {
            // Elsewhere (another disk, say), and created as needed.
            fs_path = tmp.join("elsewhere/trash").display().to_string();
            ("trashcan", json!({"cleanoutDays": "5"}))
        }
        Versioner::Simple => ("simple", json!({"keep": "2", "cleanoutDays": "5"})),
        Versioner::Staggered => ("staggered", json!({"maxAge": (40 * DAY).to_string()})),
        Versioner::External => {
            let (script, _) = mover(tmp);
            (
                "external",
                json!({"command": format!("{} %FOLDER_PATH% %FILE_PATH%", script.display()),
                       EXTERNAL_TIMEOUT_PARAM: "30"}),
            )
        }
    };
    json!({"type": kind_name, "params": params, "cleanupIntervalS": interval,
           "fsPath": fs_path, "fsType": "basic"})
}

/// The tagged versions of `path` in `versions`: (tag, bytes), oldest first.
fn tagged_versions(versions: &BTreeMap<String, Vec<u8>>, path: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = versions
        .iter()
        .filter_map(|(k, v)| version_tag(k, path).map(|t| (t, v.clone())))
        .collect();
    out.sort();
    out
}

/// What Syncthing lists for a versions folder, computed from the disk:
/// a name tagged `~YYYYMMDD-HHMMSS` is that file's version of the tag's
/// time; any other file is a version of itself at its mtime.
fn listing_of_disk(root: &Path) -> BTreeMap<String, Vec<(i64, i64, u64)>> {
    let mut out: BTreeMap<String, Vec<(i64, i64, u64)>> = BTreeMap::new();
    for (rel, data) in files(root) {
        let mtime = mtime_of(&root.join(&rel));
        let size = data.len() as u64;
        let untagged = rel.rfind('~').and_then(|i| {
            let rest = &rel[i + 1..];
            let (tag, ext) = rest
                .find('.')
                .map_or((rest, ""), |d| (&rest[..d], &rest[d..]));
            let t = tag_time(tag)?;
            Some((format!("{}{ext}", &rel[..i]), t))
        });
        let (name, vt) = untagged.unwrap_or((rel, mtime));
        out.entry(name).or_default().push((vt, mtime, size));
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

fn assert_listing_matches_disk(recv: &Receiver, versions: &Path) {
    let want = listing_of_disk(versions);
    let mut got = BTreeMap::new();
    let ok = wait::until(Duration::from_secs(20), Duration::from_millis(250), || {
        got = listing(&recv.versions(FOLDER));
        (got == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{}: GET /rest/folder/versions lists\n{got:#?}\nthe versions folder holds\n{want:#?}",
        recv.kind()
    );
}

/// Scenario 1 for one versioner: three rounds of remote changes, the
/// versions they leave, cleanup of planted expired versions, nothing
/// announced. Returns the pair for a layout hand-over.
fn versioner_case(kind: Kind, v: Versioner) -> (Pair, Value) {
    let base = base_time();
    let initial: Vec<(&str, Vec<u8>)> = SCENARIO.iter().map(|n| (*n, content(n, 0))).collect();
    let mut versioning = Value::Null;
    let pair = Pair::start(
        kind,
        |tmp| {
            versioning = versioning_json(v, kind, tmp);
            versioning.clone()
        },
        &[],
        &initial,
        base,
    );
    let (src, dst) = (&pair.src, &pair.dst);

    // Three rounds, each archived in a later second than the last.
    next_second();
    let t_start = unix_now();
    for round in 1..=3u64 {
        write_file(
            &src.join("a.txt"),
            &content("a.txt", round),
            base + round as i64 * 100,
        );
        if round == 1 {
            for n in CHANGED_ONCE {
                write_file(&src.join(n), &content(n, 1), base + 100);
            }
            std::fs::remove_file(src.join("gone.txt")).unwrap();
        }
        pair.sync();
        next_second();
    }
    let t_end = unix_now();
    assert_eq!(
        std::fs::read(dst.join("keep.txt")).unwrap(),
        content("keep.txt", 0)
    );

    // The replaced and deleted contents, as the versioner keeps them.
    let old = |n: &str| content(n, 0);
    let versions = files(&pair.versions_dir());
    let mut others: Vec<&str> = CHANGED_ONCE.to_vec();
    others.push("gone.txt");
    match v {
        Versioner::Trashcan => {
            let mut want: BTreeMap<String, Vec<u8>> =
                others.iter().map(|n| (n.to_string(), old(n))).collect();
            // Each replacement replaced the previous one: the newest old
            // content of a.txt is round 2's.
            want.insert("a.txt".into(), content("a.txt", 2));
            assert_eq!(
                versions.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            assert!(versions == want, "trash can contents differ");
            for n in want.keys() {
                // Moved to the trash can "now": the time cleanoutDays counts from.
                let m = mtime_of(&pair.versions_dir().join(n));
                assert!(
                    (t_start - 1..=t_end + 1).contains(&m),
                    "{n}: trash can mtime {m} outside {t_start}..{t_end}"
                );
            }
        }
        Versioner::Simple | Versioner::Staggered => {
            let a = tagged_versions(&versions, "a.txt");
            let mut want_count = a.len();
            if v == Versioner::Simple {
                // keep = 2: the oldest (round 0's) went.
                let got: Vec<&Vec<u8>> = a.iter().map(|(_, d)| d).collect();
                assert_eq!(
                    got,
                    vec![&content("a.txt", 1), &content("a.txt", 2)],
                    "a.txt versions: {:?}",
                    a.iter().map(|(t, _)| t).collect::<Vec<_>>()
                );
                // A version keeps the mtime of the file it was.
                let m = mtime_of(&pair.versions_dir().join(tagged("a.txt", &a[0].0)));
                assert_eq!(m, base + 100, "mtime of a.txt's version of round 1");
            } else {
                // One version per 30 s in the first hour: the oldest of a
                // burst stays.
                assert_eq!(a.first().map(|(_, d)| d), Some(&old("a.txt")), "{a:?}");
                let times: Vec<i64> = a.iter().map(|(t, _)| tag_time(t).unwrap()).collect();
                if t_end - t_start < 30 {
                    assert_eq!(a.len(), 1, "three versions within 30 s: {times:?}");
                }
                for w in times.windows(2) {
                    assert!(w[1] - w[0] >= 30, "versions closer than 30 s: {times:?}");
                }
            }
            for (tag, _) in &a {
                let t = tag_time(tag).unwrap();
                assert!(
                    (t_start - 1..=t_end + 1).contains(&t),
                    "tag {tag} outside the test's {t_start}..{t_end}"
                );
            }
            for n in &others {
                let list = tagged_versions(&versions, n);
                assert_eq!(list.len(), 1, "{n}: {:?}", versions.keys());
                assert_eq!(list[0].1, old(n), "{n}");
                assert_eq!(
                    mtime_of(&pair.versions_dir().join(tagged(n, &list[0].0))),
                    base,
                    "{n}: mtime of its version"
                );
            }
            want_count += others.len();
            assert_eq!(versions.len(), want_count, "{:?}", versions.keys());
        }
        Versioner::External => {
            assert!(versions.is_empty(), "external left {:?}", versions.keys());
            let moved = files(&pair.tmp.path().join("moved"));
            let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
            for (k, data) in moved {
                let name = k.rsplit_once('.').unwrap().0.replace('_', "/");
                got.entry(name).or_default().push(data);
            }
            let mut want: BTreeMap<String, Vec<Vec<u8>>> = others
                .iter()
                .map(|n| (n.to_string(), vec![old(n)]))
                .collect();
            want.insert(
                "a.txt".into(),
                (0..3).map(|r| content("a.txt", r)).collect(),
            );
            for list in got.values_mut().chain(want.values_mut()) {
                list.sort();
            }
            assert!(got == want, "moved by the command: {:?}", got.keys());
            pair.assert_versions_not_announced();
            return (pair, versioning);
        }
    }
    assert_listing_matches_disk(&pair.recv, &pair.versions_dir());

    // Cleanup: plant expired and kept versions, oldest first (so a timer
    // firing mid-way removes what the whole set would), then clean.
    let now = unix_now();
    let vd = pair.versions_dir();
    let plant_tagged = |name: &str, age: i64| {
        let rel = tagged(name, &tag_at(now - age));
        write_file(&vd.join(&rel), rel.as_bytes(), now - age);
        rel
    };
    let (planted, removed): (Vec<String>, Vec<String>) = match v {
        Versioner::Trashcan => {
            // cleanoutDays = 5 counts from the mtime (the time of trashing).
            write_file(&vd.join("planted-old.txt"), b"old", now - 10 * DAY);
            write_file(&vd.join("dir/planted-new.txt"), b"new", now - DAY);
            (
                vec!["planted-old.txt".into(), "dir/planted-new.txt".into()],
                vec!["planted-old.txt".into()],
            )
        }
        Versioner::Simple => {
            // cleanoutDays = 5 removes a lone old version; keep = 2 the
            // oldest of three recent ones.
            let list = vec![
                plant_tagged("dir/old.txt", 10 * DAY),
                plant_tagged("planted.txt", 3 * 3600),
                plant_tagged("planted.txt", 2 * 3600),
                plant_tagged("planted.txt", 3600),
            ];
            // (Syncthing 1.19.2's timer cleanup only applied
            // cleanoutDays; keep was enforced when archiving. 1.30.0 and
            // 2.x, and our node, apply both.)
            let removed = if kind == Kind::Syncthing(PeerVersion::V1_19_2) {
                vec![list[0].clone()]
            } else {
                vec![list[0].clone(), list[1].clone()]
            };
            (list, removed)
        }
        Versioner::Staggered => {
            // maxAge 40 days; one version per week after 30 days, per day
            // after a day, per hour after an hour, per 30 s before: each
            // kept if that far from the last kept (oldest first).
            let ages = [
                (50 * DAY, false), // beyond maxAge
                (20 * DAY, true),
                (20 * DAY - DAY / 2, false), // half a day after the last kept
                (18 * DAY, true),
                (10 * 3600, true),
                (10 * 3600 - 1800, false), // half an hour after the last kept
                (8 * 3600, true),
                (1800, true),
                (1790, false), // 10 s after the last kept
                (1700, true),
            ];
            let list: Vec<(String, bool)> = ages
                .iter()
                .map(|(age, kept)| (plant_tagged("dir/p.bin", *age), *kept))
                .collect();
            (
                list.iter().map(|(n, _)| n.clone()).collect(),
                list.iter()
                    .filter(|(_, k)| !k)
                    .map(|(n, _)| n.clone())
                    .collect(),
            )
        }
        Versioner::External => unreachable!(),
    };
    let before = files(&vd);
    let want: BTreeMap<String, Vec<u8>> = before
        .iter()
        .filter(|(k, _)| !removed.contains(k))
        .map(|(k, d)| (k.clone(), d.clone()))
        .collect();
    if kind == Kind::Ours && v != Versioner::Trashcan {
        let answer = pair
            .recv
            .post(&format!("/rest/folder/versions/cleanup?folder={FOLDER}"))
            .expect("on-demand cleanup");
        assert_eq!(answer, json!({"removed": removed.len()}), "cleanup answer");
        assert!(files(&vd) == want, "after cleanup: {:?}", files(&vd).keys());
    } else {
        let ok = wait::until(Duration::from_secs(30), Duration::from_millis(200), || {
            (files(&vd) == want).then_some(())
        });
        assert!(
            ok.is_some(),
            "{}: after cleanup {:?}, want {:?} (planted {planted:?})\n{}",
            kind,
            files(&vd).keys(),
            want.keys(),
            pair.recv.log_tail(20)
        );
    }
    assert_listing_matches_disk(&pair.recv, &vd);
    pair.assert_versions_not_announced();
    (pair, versioning)
}

/// Layout compatibility: the receiver stops; `by` takes the folder over
/// (same path, same versioning, no timer cleanup) and must list the
/// versions exactly as the receiver did, field by field.
fn hand_over(pair: Pair, versioning: &Value, by: Kind) {
    let before = listing(&pair.recv.versions(FOLDER));
    assert!(!before.is_empty());
    let on_disk = files(&pair.versions_dir());
    let Pair {
        tmp,
        source,
        recv,
        dst,
        versions,
        ..
    } = pair;
    let from = recv.kind();
    recv.stop();
    source.shutdown();
    let next = Receiver::start(by, &tmp.path().join("next"), &[]);
    let mut versioning = versioning.clone();
    versioning["cleanupIntervalS"] = 3600.into();
    next.add_folder(FOLDER, &dst, &[], &versioning);
    let mut got = BTreeMap::new();
    let ok = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        got = next
            .get(&format!("/rest/folder/versions?folder={FOLDER}"))
            .ok()
            .map(|v| listing(&v))?;
        (got == before).then_some(())
    });
    if ok.is_none() {
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(got.keys()).collect();
        for k in keys {
            if before.get(k) != got.get(k) {
                eprintln!(
                    "{k}: {from} lists {:?}, {by} lists {:?}",
                    before.get(k),
                    got.get(k)
                );
            }
        }
        panic!(
            "{by} lists the versions {from} wrote differently (versionTime, modTime, size in Unix seconds and bytes)\n{}",
            next.log_tail(20)
        );
    }
    assert!(
        files(&versions) == on_disk,
        "taking over changed the versions"
    );
    next.stop();
}

// 1. Each versioner, against real Syncthing (the reference) and our node.

#[test]
fn trashcan_reference() {
    versioner_case(reference(), Versioner::Trashcan)
        .0
        .source
        .shutdown();
}

#[test]
fn trashcan_our_node() {
    versioner_case(Kind::Ours, Versioner::Trashcan)
        .0
        .source
        .shutdown();
}

#[test]
fn external_reference() {
    versioner_case(reference(), Versioner::External)
        .0
        .source
        .shutdown();
}

#[test]
fn external_our_node() {
    versioner_case(Kind::Ours, Versioner::External)
        .0
        .source
        .shutdown();
}

// 1 + 2. Simple and staggered, with the layout hand-over both ways: what
// Syncthing wrote, our node lists the same; what our node wrote,
// Syncthing lists the same.

#[test]
fn simple_written_by_syncthing_listed_by_our_node() {
    let (pair, versioning) = versioner_case(reference(), Versioner::Simple);
    hand_over(pair, &versioning, Kind::Ours);
}

#[test]
fn simple_our_node_written_listed_by_syncthing() {
    let (pair, versioning) = versioner_case(Kind::Ours, Versioner::Simple);
    hand_over(pair, &versioning, reference());
}

#[test]
fn staggered_written_by_syncthing_listed_by_our_node() {
    let (pair, versioning) = versioner_case(reference(), Versioner::Staggered);
    hand_over(pair, &versioning, Kind::Ours);
}

#[test]
fn staggered_our_node_written_listed_by_syncthing() {
    let (pair, versioning) = versioner_case(Kind::Ours, Versioner::Staggered);
    hand_over(pair, &versioning, reference());
}

// 3. Restore over REST (and a local edit, which is never versioned).

fn restore_case(kind: Kind) {
    let base = base_time();
    let r0 = bytes(31, 300_000);
    let r1 = bytes(32, 200_000);
    let g0 = bytes(33, 1000);
    let pair = Pair::start(
        kind,
        |_| {
            json!({"type": "simple", "params": {"keep": "5", "cleanoutDays": "0"},
                   "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"})
        },
        &[],
        &[
            ("d/r.bin", r0.clone()),
            ("gone.txt", g0.clone()),
            ("local.txt", b"before".to_vec()),
        ],
        base,
    );
    next_second();
    write_file(&pair.src.join("d/r.bin"), &r1, base + 100);
    std::fs::remove_file(pair.src.join("gone.txt")).unwrap();
    pair.sync();
    // A local edit is never versioned; it goes to the source.
    write_file(&pair.dst.join("local.txt"), b"edited here", base + 200);
    pair.recv.scan(FOLDER);
    let sent = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(pair.src.join("local.txt")).ok()? == b"edited here").then_some(())
    });
    assert!(
        sent.is_some(),
        "{kind}: the local edit did not reach the source"
    );
    pair.wait_same(Duration::from_secs(30));
    next_second();

    let raw = pair.recv.versions(FOLDER);
    let time_of = |path: &str| {
        let list = raw[path]
            .as_array()
            .unwrap_or_else(|| panic!("no versions of {path}: {raw}"));
        assert_eq!(list.len(), 1, "{path}: {raw}");
        list[0]["versionTime"].clone()
    };
    let (vt_r, vt_g) = (time_of("d/r.bin"), time_of("gone.txt"));
    let answer = pair
        .recv
        .send(
            "POST",
            &format!("/rest/folder/versions?folder={FOLDER}"),
            &json!({"d/r.bin": vt_r, "gone.txt": vt_g}),
        )
        .expect("restore");
    assert_eq!(answer, json!({}), "restore errors");

    // Exact bytes and mtime back; the replaced file is itself a version.
    assert_eq!(std::fs::read(pair.dst.join("d/r.bin")).unwrap(), r0);
    assert_eq!(mtime_of(&pair.dst.join("d/r.bin")), base);
    assert_eq!(std::fs::read(pair.dst.join("gone.txt")).unwrap(), g0);
    let versions = files(&pair.versions_dir());
    let r = tagged_versions(&versions, "d/r.bin");
    assert_eq!(r.len(), 1, "{:?}", versions.keys());
    assert!(
        r[0].1 == r1,
        "the version of d/r.bin is not what the restore replaced"
    );
    assert_eq!(
        mtime_of(&pair.versions_dir().join(tagged("d/r.bin", &r[0].0))),
        base + 100
    );
    assert!(tagged_versions(&versions, "gone.txt").is_empty());
    assert_eq!(
        versions.len(),
        1,
        "only the replaced d/r.bin is a version: {:?}",
        versions.keys()
    );

    // The receiver rescans by itself (no watcher here) and the source
    // gets the restored files, bytes and mtime.
    let ok = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        (std::fs::read(pair.src.join("d/r.bin")).ok()? == r0
            && mtime_of(&pair.src.join("d/r.bin")) == base
            && std::fs::read(pair.src.join("gone.txt")).ok()? == g0)
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "{}: the restored files did not reach the source\n{}",
        kind,
        pair.recv.log_tail(30)
    );

    // A version that does not exist: an error for that path only.
    let answer = pair
        .recv
        .send(
            "POST",
            &format!("/rest/folder/versions?folder={FOLDER}"),
            &json!({"nothing.txt": "2001-02-03T04:05:06Z"}),
        )
        .expect("restore of a missing version");
    let err = answer["nothing.txt"].as_str().unwrap_or_default();
    assert!(
        !err.is_empty() && answer.as_object().map(|m| m.len()) == Some(1),
        "{answer}"
    );
    pair.wait_same(Duration::from_secs(30));
    pair.assert_versions_not_announced();
    pair.source.shutdown();
}

#[test]
fn restore_reference() {
    restore_case(reference());
}

#[test]
fn restore_our_node() {
    restore_case(Kind::Ours);
}

// 4. External commands that fail or hang.

/// The pull errors the receiver lists for the folder, by path.
fn pull_errors(recv: &Receiver) -> BTreeMap<String, String> {
    recv.get(&format!("/rest/folder/errors?folder={FOLDER}"))
        .ok()
        .and_then(|e| {
            e["errors"].as_array().map(|list| {
                list.iter()
                    .map(|x| {
                        (
                            x["path"].as_str().unwrap_or_default().to_string(),
                            x["error"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn external_fails_case(kind: Kind) {
    let base = base_time();
    let pair = Pair::start(
        kind,
        |tmp| {
            let script = write_script(tmp, "fail.sh", "echo 'no archive today' >&2\nexit 1\n");
            json!({"type": "external",
                   "params": {"command": format!("{} %FOLDER_PATH% %FILE_PATH%", script.display()),
                              EXTERNAL_TIMEOUT_PARAM: "30"},
                   "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"})
        },
        &[],
        &[
            ("a.txt", content("a.txt", 0)),
            ("gone.txt", content("gone.txt", 0)),
        ],
        base,
    );
    write_file(&pair.src.join("a.txt"), &content("a.txt", 1), base + 100);
    std::fs::remove_file(pair.src.join("gone.txt")).unwrap();
    pair.source.scan(FOLDER);
    let mut errors = BTreeMap::new();
    let ok = wait::until(Duration::from_secs(60), Duration::from_millis(250), || {
        errors = pull_errors(&pair.recv);
        (errors.contains_key("a.txt") && errors.contains_key("gone.txt")).then_some(())
    });
    assert!(
        ok.is_some(),
        "{kind}: pull errors {errors:?}, status {}\n{}",
        pair.recv.status(FOLDER),
        pair.recv.log_tail(30)
    );
    assert!(pair.recv.status(FOLDER)["pullErrors"].as_u64() >= Some(2));
    assert_eq!(
        std::fs::read(pair.dst.join("a.txt")).unwrap(),
        content("a.txt", 0)
    );
    assert_eq!(
        std::fs::read(pair.dst.join("gone.txt")).unwrap(),
        content("gone.txt", 0)
    );
    pair.source.shutdown();
}

#[test]
fn external_command_failing_reference() {
    external_fails_case(reference());
}

#[test]
fn external_command_failing_our_node() {
    external_fails_case(Kind::Ours);
}

/// Syncthing waits for an external command forever; our node kills it
/// after the timeout and reports a pull error, the file left in place.
#[test]
fn external_command_hanging_is_killed_after_timeout_our_node() {
    let base = base_time();
    let mut pid_file = PathBuf::new();
    let pair = Pair::start(
        Kind::Ours,
        |tmp| {
            pid_file = tmp.join("hang.pid");
            let script = write_script(
                tmp,
                "hang.sh",
                &format!("echo $$ > '{}'\nexec sleep 600\n", pid_file.display()),
            );
            json!({"type": "external",
                   "params": {"command": format!("{} %FOLDER_PATH% %FILE_PATH%", script.display()),
                              EXTERNAL_TIMEOUT_PARAM: "2"},
                   "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"})
        },
        &[],
        &[("a.txt", content("a.txt", 0))],
        base,
    );
    write_file(&pair.src.join("a.txt"), &content("a.txt", 1), base + 100);
    pair.source.scan(FOLDER);
    let pid = wait::until(Duration::from_secs(60), Duration::from_millis(100), || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    })
    .unwrap_or_else(|| panic!("the command never ran\n{}", pair.recv.log_tail(30)));
    let gone = wait::until(Duration::from_secs(60), Duration::from_millis(100), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    if gone.is_none() {
        // Do not leave it behind: it is ours (the test's script).
        // SAFETY: kill(2) of the PID the test's own script wrote.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        panic!("the hanging command {pid} is still there after 60 s");
    }
    let errors = wait::until(Duration::from_secs(30), Duration::from_millis(250), || {
        let e = pull_errors(&pair.recv);
        e.contains_key("a.txt").then_some(e)
    });
    assert!(
        errors.is_some(),
        "no pull error for a.txt\n{}",
        pair.recv.log_tail(30)
    );
    assert_eq!(
        std::fs::read(pair.dst.join("a.txt")).unwrap(),
        content("a.txt", 0)
    );
    pair.source.shutdown();
}

// 5. Crash between archiving the old file and renaming the new one in.

#[test]
fn crash_after_archiving_loses_nothing_our_node() {
    let base = base_time();
    let c0 = bytes(41, 3 << 20);
    let c1 = bytes(42, (3 << 20) + 5);
    let other = bytes(43, 1000);
    let pair = Pair::start(
        Kind::Ours,
        |_| {
            json!({"type": "simple", "params": {"keep": "5"},
                   "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"})
        },
        &[("NODE_TEST_ABORT_AFTER_ARCHIVE", "d/c.bin")],
        &[("d/c.bin", c0.clone()), ("other.txt", other.clone())],
        base,
    );
    let Receiver::Ours(mut node) = pair.recv else {
        unreachable!()
    };
    write_file(&pair.src.join("d/c.bin"), &c1, base + 100);
    pair.source.scan(FOLDER);
    let aborted = node.proc.wait_exit(Duration::from_secs(60));
    assert!(
        aborted.is_some_and(|s| !s.success()),
        "the node did not abort at the fault point: {aborted:?}\n{}",
        node.proc.log_tail(30)
    );
    let home: NodeHome = node.home.clone();
    drop(node);

    let file = pair.dst.join("d/c.bin");
    let versions_of = || tagged_versions(&files(&pair.dst.join(".stversions")), "d/c.bin");
    let node = start_ours(&home, &[("TZ", e2e::versioning::tz().0)]);
    // Restarted: the file is whole, old or new, and at most the old one
    // is a version.
    let check = |when: &str| {
        let now = std::fs::read(&file).unwrap_or_else(|e| panic!("{when}: d/c.bin: {e}"));
        assert!(
            now == c0 || now == c1,
            "{when}: d/c.bin is neither version ({} bytes)",
            now.len()
        );
        let v = versions_of();
        assert!(v.len() <= 1, "{when}: {} versions", v.len());
        assert!(
            v.iter().all(|(_, d)| *d == c0),
            "{when}: a version is not the old file"
        );
    };
    check("after restart");
    eprintln!(
        "after restart d/c.bin is the {} version; {} version(s) of it kept",
        if std::fs::read(&file).unwrap() == c0 {
            "old"
        } else {
            "new"
        },
        versions_of().len()
    );
    let t0 = Instant::now();
    let done = wait::until(Duration::from_secs(90), Duration::from_millis(100), || {
        check("while pulling");
        let s = node.get(&format!("/rest/db/status?folder={FOLDER}")).ok()?;
        (std::fs::read(&file).ok()? == c1
            && s["state"].as_str() == Some("idle")
            && s["needTotalItems"].as_u64() == Some(0)
            && s["pullErrors"].as_u64() == Some(0))
        .then_some(())
    });
    assert!(
        done.is_some(),
        "pull not complete after {:?}: {:?}\n{}",
        t0.elapsed(),
        node.get(&format!("/rest/db/status?folder={FOLDER}")),
        node.proc.log_tail(30)
    );
    let v = versions_of();
    assert_eq!(v.len(), 1, "the old file is kept once as a version");
    assert!(v[0].1 == c0);
    // Nothing was lost on the source either: no deletion went out.
    assert!(std::fs::read(pair.src.join("d/c.bin")).unwrap() == c1);
    assert_eq!(std::fs::read(pair.dst.join("other.txt")).unwrap(), other);
    let s = pair.source.folder_status(FOLDER).unwrap();
    assert_eq!(s["globalFiles"].as_u64(), Some(2), "{s}");
    node.stop();
    pair.source.shutdown();
}

// 6. Benchmark: pulling modified files with `simple` versioning on vs off.

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The benchmark's file `i` in round `round`: small, its size one byte
/// more each round, so a receiver's byte total says which round it has.
fn bench_file(i: usize, round: usize) -> (String, Vec<u8>) {
    (
        format!("d{:03}/f{i}.txt", i % 200),
        bytes((i + round * 1_000_003) as u64, 64 + (i * 13) % 900 + round),
    )
}

/// Benchmark (documented command: `scripts/bench-versioning`, release
/// build): `BENCH_VERSIONING_FILES` small files (default 100,000) synced
/// from a real Syncthing device into two of our nodes, one with `simple`
/// versioning (keep 5), one without; then, `BENCH_VERSIONING_RUNS` times
/// (default 3), the source modifies every file while both nodes are
/// paused, and each node in turn (alternating who goes first) is resumed
/// and timed from connected to in sync. Medians and their ratio; the
/// target is at most 15 % more time with versioning.
#[test]
#[ignore = "benchmark: run explicitly, in release (scripts/bench-versioning)"]
fn bench_pull_modified_files_versioning_on_vs_off() {
    let n = env_usize("BENCH_VERSIONING_FILES", 100_000);
    let runs = env_usize("BENCH_VERSIONING_RUNS", 3).clamp(1, 5);
    let version = PeerVersion::newest_available();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let write_round = |round: usize| -> u64 {
        let mut total = 0;
        for i in 0..n {
            let (name, data) = bench_file(i, round);
            let path = src.join(name);
            if round == 0 && i < 200 {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            }
            std::fs::write(&path, &data).unwrap();
            total += data.len() as u64;
        }
        total
    };
    let mut total = write_round(0);
    let (source, port) = e2e::syncthing::start_tcp_version(&tmp.path().join("st"), version);
    let source_addr = format!("tcp://127.0.0.1:{port}");
    let tz = [("TZ", e2e::versioning::tz().0)];
    let mut nodes = Vec::new();
    for (label, versioning) in [
        (
            "off",
            json!({"type": "", "params": {}, "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"}),
        ),
        (
            "on",
            json!({"type": "simple", "params": {"keep": "5", "cleanoutDays": "0"},
                      "cleanupIntervalS": 3600, "fsPath": "", "fsType": "basic"}),
        ),
    ] {
        let home = NodeHome::generate(&tmp.path().join(format!("node-{label}")), label);
        home.add_device(source.id(), &[&source_addr]);
        source.add_device(&home.id, &[&home.address()]);
        let node = start_ours(&home, &tz);
        let dst = tmp.path().join(format!("dst-{label}"));
        std::fs::create_dir_all(&dst).unwrap();
        node.send(
            "POST",
            "/rest/config/folders",
            &json!({"id": "b", "path": dst, "type": "sendreceive",
                    "devices": [{"deviceID": source.id()}], "fsWatcherEnabled": false,
                    "rescanIntervalS": 3600, "versioning": versioning}),
        )
        .unwrap();
        nodes.push((label, node, dst));
    }
    let ids: Vec<String> = nodes.iter().map(|(_, n, _)| n.home.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    source.share_folder("b", &src, "sendonly", &ids);

    let limit = Duration::from_secs(3600);
    let synced_with = |node: &e2e::node::Node, bytes_total: u64| {
        let ok = wait::until(limit, Duration::from_millis(100), || {
            let s = node.get("/rest/db/status?folder=b").ok()?;
            let k = |key: &str| s[key].as_u64();
            (s["state"].as_str() == Some("idle")
                && k("globalFiles") == Some(n as u64)
                && k("globalBytes") == Some(bytes_total)
                && k("localBytes") == Some(bytes_total)
                && k("needTotalItems") == Some(0)
                && k("pullErrors") == Some(0))
            .then_some(())
        });
        assert!(ok.is_some(), "not synced\n{}", node.proc.log_tail(20));
    };
    let t0 = Instant::now();
    for (_, node, _) in &nodes {
        synced_with(node, total);
    }
    println!(
        "BENCH initial sync of {n} files into both nodes: {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let pause = |node: &e2e::node::Node, on: bool| {
        let verb = if on { "pause" } else { "resume" };
        node.post(&format!("/rest/system/{verb}?device={}", source.id()))
            .unwrap();
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (_, node, _) in &nodes {
            pause(node, true);
        }
        for (_, node, _) in &nodes {
            let gone = wait::until(Duration::from_secs(60), Duration::from_millis(50), || {
                (!node.connected(source.id())).then_some(())
            });
            assert!(gone.is_some(), "still connected after pausing");
        }
        total = write_round(run);
        // Rescanning 100,000 changed files outlasts a REST timeout: ask,
        // then wait for the source to have the new byte total.
        let _ = source.post("/rest/db/scan?folder=b");
        let scanned = wait::until(limit, Duration::from_millis(250), || {
            let s = source.folder_status("b").ok()?;
            (s["state"].as_str() == Some("idle") && s["localBytes"].as_u64() == Some(total))
                .then_some(())
        });
        assert!(scanned.is_some(), "the source did not rescan");
        let order: Vec<usize> = if run % 2 == 1 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (label, node, _) = &nodes[i];
            pause(node, false);
            wait::until(Duration::from_secs(120), Duration::from_millis(20), || {
                node.connected(source.id()).then_some(())
            })
            .expect("connected again");
            let t = Instant::now();
            synced_with(node, total);
            let secs = t.elapsed().as_secs_f64();
            println!("BENCH run {run}: {n} modified files into our node, versioning {label}: {secs:.2} s");
            if *label == "on" {
                on.push(secs)
            } else {
                off.push(secs)
            }
        }
    }
    // Every modification of the versioned node left a version, none of
    // the other's.
    let kept = files(&nodes[1].2.join(".stversions")).len();
    assert_eq!(kept, n * runs, "versions kept");
    assert!(!nodes[0].2.join(".stversions").exists());
    let (m_off, m_on) = (median(&off), median(&on));
    println!(
        "BENCH pull of {n} modified small files from Syncthing {version}: versioning off median {m_off:.2} s {off:.2?}, \
         simple versioning median {m_on:.2} s {on:.2?}, ratio {:.3} (target ≤ 1.15)",
        m_on / m_off
    );
    for (_, node, _) in nodes {
        node.stop();
    }
    source.shutdown();
}
