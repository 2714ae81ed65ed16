//! The versioner on a real directory: archive (replace and delete, link
//! and copy paths, the crash redo), the rules, listing, restore, cleanup,
//! external commands, symlinks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::{FolderConfig, VersioningConfig};
use crate::dirfd::Dir;

struct Folder {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Folder {
    fn new() -> Folder {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("f");
        fs::create_dir_all(&root).unwrap();
        Folder { _tmp: tmp, root }
    }

    fn outside(&self) -> PathBuf {
        self._tmp.path().join("outside")
    }

    fn versioner(&self, kind: &str, params: &[(&str, &str)], fs_path: &str) -> Versioner {
        self.versioner_with(kind, params, fs_path, Metrics::default())
    }

    fn versioner_with(
        &self,
        kind: &str,
        params: &[(&str, &str)],
        fs_path: &str,
        metrics: Metrics,
    ) -> Versioner {
        let params: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = FolderConfig {
            id: "f".into(),
            label: String::new(),
            versioning: VersioningConfig::new(kind, params)
                .unwrap()
                .with_fs_path(fs_path),
            path: self.root.clone(),
            kind: Default::default(),
            devices: vec![],
            rescan_interval_s: 3600,
            paused: false,
            fs_watcher_enabled: false,
            fs_watcher_delay_s: 1,
            ignore_delete: false,
            max_conflicts: Default::default(),
            ignore_perms: false,
            marker_name: Default::default(),
            copy_ownership_from_parent: false,
        };
        Versioner::for_folder(&f, metrics).unwrap()
    }

    /// Writes `name` with `data` and an mtime of `mtime_s`.
    fn write(&self, name: &str, data: &[u8], mtime_s: u64) {
        let p = self.root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(tag::from_secs(mtime_s as i64)).unwrap();
    }

    fn dir(&self, rel: &str) -> (Dir, Dir) {
        let root = Dir::open(&self.root).unwrap();
        let d = root.open_beneath(rel).unwrap();
        (root, d)
    }

    /// What `swap_into_place` does for the puller: the new file renamed
    /// over the old name.
    fn replace(&self, v: &Versioner, name: &str, data: &[u8], now: SystemTime) {
        let parent = name.rfind('/').map_or("", |i| &name[..i]);
        let (root, d) = self.dir(parent);
        let kept = v.before_replace(&root, &d, name, now).unwrap();
        let temp = self.root.join(format!("{name}.new"));
        fs::write(&temp, data).unwrap();
        fs::rename(&temp, self.root.join(name)).unwrap();
        if let Some(k) = kept {
            k.finish(v, now);
        }
    }

    fn versions(&self, rel_dir: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join(".stversions").join(rel_dir))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn at(tag_text: &str) -> SystemTime {
    tag::parse_tag(tag_text).unwrap()
}

#[test]
fn simple_keeps_tagged_versions_with_their_mtime_and_applies_keep() {
    let f = Folder::new();
    let v = f.versioner("simple", &[("keep", "2")], "");
    f.write("shots/a.exr", b"v1", 1_000_000);
    f.replace(&v, "shots/a.exr", b"v2", at("20250101-100000"));
    f.replace(&v, "shots/a.exr", b"v3", at("20250101-100001"));
    let v3_mtime = fs::metadata(f.root.join("shots/a.exr"))
        .unwrap()
        .modified()
        .unwrap();
    f.replace(&v, "shots/a.exr", b"v4", at("20250101-100002"));
    assert_eq!(
        f.versions("shots"),
        ["a~20250101-100001.exr", "a~20250101-100002.exr"]
    );
    let vp = f.root.join(".stversions/shots/a~20250101-100002.exr");
    assert_eq!(fs::read(&vp).unwrap(), b"v3");
    assert_eq!(fs::read(f.root.join("shots/a.exr")).unwrap(), b"v4");
    // The mtime of the file as it was.
    assert_eq!(fs::metadata(&vp).unwrap().modified().unwrap(), v3_mtime);
    // The first version (of 1 000 000 s) went with keep = 2.
    assert!(f.versions("shots").iter().all(|n| !n.contains("100000")));
}

#[test]
fn trashcan_keeps_one_per_name_the_newest_dated_now() {
    let f = Folder::new();
    let v = f.versioner("trashcan", &[], "");
    f.write("a.txt", b"one", 1_000_000);
    let now = at("20250101-100000");
    f.replace(&v, "a.txt", b"two", now);
    f.replace(&v, "a.txt", b"three", now + Duration::from_secs(5));
    assert_eq!(f.versions(""), ["a.txt"]);
    let kept = f.root.join(".stversions/a.txt");
    assert_eq!(fs::read(&kept).unwrap(), b"two");
    // Dated when it was archived, so cleanoutDays counts from there.
    let m = fs::metadata(&kept).unwrap().modified().unwrap();
    assert_eq!(m, now + Duration::from_secs(5));
    // The folder's file kept its own mtime (the link was dated after the
    // swap, when the inode was the version's alone).
    assert_ne!(
        fs::metadata(f.root.join("a.txt")).unwrap().mtime(),
        1_000_000
    );
}

#[test]
fn an_archive_interrupted_before_the_swap_is_not_repeated() {
    for copy in [false, true] {
        let f = Folder::new();
        let mut v = f.versioner("simple", &[("keep", "10")], "");
        v.force_copy = copy;
        f.write("a.txt", b"old", 1_000_000);
        let (root, d) = f.dir("");
        // Archived, then the crash: the new file never arrived.
        let _ = v
            .before_replace(&root, &d, "a.txt", at("20250101-100000"))
            .unwrap();
        assert_eq!(f.versions(""), ["a~20250101-100000.txt"]);
        let version = f.root.join(".stversions/a~20250101-100000.txt");
        let same_inode = fs::metadata(&version).unwrap().ino()
            == fs::metadata(f.root.join("a.txt")).unwrap().ino();
        assert_eq!(same_inode, !copy, "copy path: {copy}");
        assert_eq!(fs::metadata(&version).unwrap().mtime(), 1_000_000);
        // After the restart the pull is redone, later: no second copy.
        let v = f.versioner("simple", &[("keep", "10")], "");
        let mut v2 = v;
        v2.force_copy = copy;
        f.replace(&v2, "a.txt", b"new", at("20250101-100500"));
        assert_eq!(
            f.versions(""),
            ["a~20250101-100000.txt"],
            "copy path: {copy}"
        );
        assert_eq!(fs::read(&version).unwrap(), b"old");
        assert_eq!(fs::read(f.root.join("a.txt")).unwrap(), b"new");
        // A real change afterwards is kept again.
        f.replace(&v2, "a.txt", b"newer", at("20250101-100600"));
        assert_eq!(f.versions("").len(), 2);
    }
}

#[test]
fn deletions_are_moved_in_by_rename_or_copy() {
    for copy in [false, true] {
        let f = Folder::new();
        let mut v = f.versioner("staggered", &[], "");
        v.force_copy = copy;
        f.write("d/e/gone.bin", b"data", 1_000_000);
        let ino = fs::metadata(f.root.join("d/e/gone.bin")).unwrap().ino();
        let (root, d) = f.dir("d/e");
        assert!(v
            .archive_deleted(&root, &d, "d/e/gone.bin", at("20250101-100000"))
            .unwrap());
        assert!(!f.root.join("d/e/gone.bin").exists());
        let kept = f.root.join(".stversions/d/e/gone~20250101-100000.bin");
        assert_eq!(fs::read(&kept).unwrap(), b"data");
        assert_eq!(fs::metadata(&kept).unwrap().mtime(), 1_000_000);
        assert_eq!(fs::metadata(&kept).unwrap().ino() == ino, !copy);
        // Symlinks are not versioned: the caller removes them.
        std::os::unix::fs::symlink("/etc/passwd", f.root.join("d/e/link")).unwrap();
        assert!(!v
            .archive_deleted(&root, &d, "d/e/link", at("20250101-100000"))
            .unwrap());
    }
}

#[test]
fn versions_elsewhere_are_made_as_needed() {
    let f = Folder::new();
    let elsewhere = f.outside().join("deep/versions");
    let v = f.versioner("simple", &[], elsewhere.to_str().unwrap());
    f.write("x/a", b"1", 1_000_000);
    f.replace(&v, "x/a", b"2", at("20250101-100000"));
    assert_eq!(
        fs::read(elsewhere.join("x/a~20250101-100000")).unwrap(),
        b"1"
    );
    assert!(!f.root.join(".stversions").exists());
}

#[test]
fn symlinks_in_the_versions_folder_are_never_crossed() {
    let f = Folder::new();
    let outside = f.outside();
    fs::create_dir_all(&outside).unwrap();
    // The versions folder itself is a symlink to the outside.
    std::os::unix::fs::symlink(&outside, f.root.join(".stversions")).unwrap();
    let v = f.versioner("simple", &[], "");
    f.write("a.txt", b"precious", 1_000_000);
    let (root, d) = f.dir("");
    let e = v
        .before_replace(&root, &d, "a.txt", at("20250101-100000"))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(v
        .archive_deleted(&root, &d, "a.txt", at("20250101-100000"))
        .is_err());
    // A directory inside it is a symlink.
    fs::remove_file(f.root.join(".stversions")).unwrap();
    fs::create_dir_all(f.root.join(".stversions")).unwrap();
    std::os::unix::fs::symlink(&outside, f.root.join(".stversions/sub")).unwrap();
    f.write("sub/b.txt", b"precious", 1_000_000);
    let (root, d) = f.dir("sub");
    assert!(v
        .before_replace(&root, &d, "sub/b.txt", at("20250101-100000"))
        .is_err());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(fs::read(f.root.join("a.txt")).unwrap(), b"precious");
    assert_eq!(fs::read(f.root.join("sub/b.txt")).unwrap(), b"precious");
}

#[test]
fn listing_and_restoring_as_syncthing_does() {
    let f = Folder::new();
    let v = f.versioner("simple", &[("keep", "5")], "");
    f.write("a/b.txt", b"first", 1_000_000);
    f.replace(&v, "a/b.txt", b"second", at("20250101-100000"));
    f.replace(&v, "a/b.txt", b"third", at("20250102-100000"));
    let (root, _) = f.dir("");
    let list = v.list(&root).unwrap();
    let entries = &list["a/b.txt"];
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].version_time, at("20250101-100000"));
    assert_eq!(entries[0].mod_time, tag::from_secs(1_000_000));
    assert_eq!(entries[0].size, 5);
    assert!(entries[0].version_time < entries[1].version_time);
    let j = entries[0].to_json();
    assert_eq!(j["size"], 5);
    assert_eq!(
        tag::parse_rfc3339(j["versionTime"].as_str().unwrap()),
        Some(at("20250101-100000"))
    );

    // Restore the first: exact bytes and mtime; "third" kept as a version.
    let now = at("20250103-100000");
    v.restore(&root, "a/b.txt", at("20250101-100000"), now)
        .unwrap();
    assert_eq!(fs::read(f.root.join("a/b.txt")).unwrap(), b"first");
    assert_eq!(
        fs::metadata(f.root.join("a/b.txt")).unwrap().mtime(),
        1_000_000
    );
    assert_eq!(
        f.versions("a"),
        ["b~20250102-100000.txt", "b~20250103-100000.txt"]
    );
    assert_eq!(
        fs::read(f.root.join(".stversions/a/b~20250103-100000.txt")).unwrap(),
        b"third"
    );
    // A version that is not there changes nothing.
    assert!(matches!(
        v.restore(&root, "a/b.txt", at("20200101-000000"), now),
        Err(Error::NotFound)
    ));
    assert_eq!(fs::read(f.root.join("a/b.txt")).unwrap(), b"first");
    // Nor on top of a directory.
    fs::create_dir_all(f.root.join("a/dir")).unwrap();
    fs::write(f.root.join(".stversions/a/dir~20250101-000000"), b"x").unwrap();
    assert!(matches!(
        v.restore(&root, "a/dir", at("20250101-000000"), now),
        Err(Error::Directory)
    ));
}

#[test]
fn trashcan_restore_swaps_with_the_current_file() {
    let f = Folder::new();
    let v = f.versioner("trashcan", &[], "");
    f.write("a.txt", b"old", 1_000_000);
    f.replace(&v, "a.txt", b"new", at("20250101-100000"));
    let (root, _) = f.dir("");
    let listed = v.list(&root).unwrap();
    let t = listed["a.txt"][0].version_time;
    assert_eq!(t, at("20250101-100000"));
    v.restore(&root, "a.txt", t, at("20250101-110000")).unwrap();
    assert_eq!(fs::read(f.root.join("a.txt")).unwrap(), b"old");
    assert_eq!(fs::read(f.root.join(".stversions/a.txt")).unwrap(), b"new");
}

#[test]
fn cleanup_applies_the_rules_and_removes_empty_directories() {
    let f = Folder::new();
    let vs = f.root.join(".stversions");
    for (name, mtime) in [
        ("d1/x~20250101-000000.txt", 1),
        ("d1/x~20250105-000000.txt", 1),
        ("d1/x~20250110-000000.txt", 1),
        ("d2/deep/y~20240101-000000", 1),
        ("d3/empty/.keep-not", 1),
    ] {
        let p = vs.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"v").unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(tag::from_secs(mtime))
            .unwrap();
    }
    fs::remove_file(vs.join("d3/empty/.keep-not")).unwrap();
    let (root, _) = f.dir("");
    // Keep 2, and nothing older than 30 days at 2025-01-20.
    let v = f.versioner("simple", &[("keep", "2"), ("cleanoutDays", "30")], "");
    let done = v.cleanup(&root, at("20250120-000000")).unwrap();
    assert_eq!(done.removed, 2);
    assert_eq!(
        f.versions("d1"),
        ["x~20250105-000000.txt", "x~20250110-000000.txt"]
    );
    assert!(!vs.join("d2").exists() && !vs.join("d3").exists());
    assert!(vs.is_dir());
    assert_eq!((done.kept, done.bytes), (2, 2));

    // The trash can removes by mtime, only with cleanoutDays.
    let t = f.versioner("trashcan", &[], "");
    assert_eq!(t.cleanup(&root, at("20250120-000000")).unwrap().removed, 0);
    let t = f.versioner("trashcan", &[("cleanoutDays", "1")], "");
    assert_eq!(t.cleanup(&root, at("20250120-000000")).unwrap().removed, 2);
}

#[test]
fn external_commands_must_remove_the_file() {
    let f = Folder::new();
    f.write("a b.txt", b"x", 1_000_000);
    let (root, d) = f.dir("");
    // Fails: the file stays, the error says why.
    let v = f.versioner(
        "external",
        &[("command", "sh -c 'echo refused >&2; exit 1'")],
        "",
    );
    let e = v
        .before_replace(&root, &d, "a b.txt", SystemTime::now())
        .err()
        .unwrap();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(f.root.join("a b.txt").exists());
    // Succeeds without removing it: still an error.
    let v = f.versioner("external", &[("command", "true")], "");
    let e = v
        .archive_deleted(&root, &d, "a b.txt", SystemTime::now())
        .err()
        .unwrap();
    assert!(e.to_string().contains("did not remove"), "{e}");
    // Moves it away (through the environment variables).
    let v = f.versioner(
        "external",
        &[(
            "command",
            "sh -c 'mv \"$FOLDER_PATH/$FILE_PATH\" \"$FOLDER_PATH/../moved\"'",
        )],
        "",
    );
    assert!(v
        .before_replace(&root, &d, "a b.txt", SystemTime::now())
        .unwrap()
        .is_none());
    assert!(!f.root.join("a b.txt").exists());
    assert!(f._tmp.path().join("moved").exists());
    // Hangs: killed after its timeout, the file stays.
    f.write("c.txt", b"x", 1_000_000);
    let v = f.versioner(
        "external",
        &[("command", "sh -c 'sleep 100'"), ("timeoutS", "1")],
        "",
    );
    let e = v
        .before_replace(&root, &d, "c.txt", SystemTime::now())
        .err()
        .unwrap();
    assert!(e.to_string().contains("did not finish"), "{e}");
    assert!(f.root.join("c.txt").exists());
    assert!(matches!(v.list(&root), Err(Error::NotSupported)));
}

#[test]
fn versions_folders_are_never_scanned_or_pulled_into() {
    let f = Folder::new();
    f.write("real.txt", b"x", 1_000_000);
    f.write(".stversions/a~20250101-000000.txt", b"v", 1_000_000);
    f.write(".stversions/deep/b~20250101-000000", b"v", 1_000_000);
    f.write("old-versions/c~20250101-000000.txt", b"v", 1_000_000);
    let home = tempfile::tempdir().unwrap();
    let db = crate::db::Db::open(home.path()).unwrap();
    let events = crate::events::Events::default();
    let target = crate::scan::Target {
        folder: "f",
        root: &f.root,
        short_id: 1,
        receive_only: false,
        versions_dir: Some("old-versions".into()),
        perms: crate::config::Perms::Honour,
        marker: &Default::default(),
    };
    let live = crate::scan::Live::default();
    crate::scan::scan_folder(&db, &events, target, &|_| {}, &live).unwrap();
    let mut names: Vec<String> = db
        .local_infos("f")
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, ["real.txt"]);
    // A peer's file under that name is ignored by the puller too.
    let ign = crate::ignore::Ignores::default().with_internal_dir(Some("old-versions".into()));
    assert!(ign.is_ignored("old-versions") && ign.is_ignored("old-versions/c.txt"));
    assert!(!ign.is_ignored("old-versions2/c.txt"));
}

#[test]
fn versions_of_the_same_second_are_all_kept() {
    let f = Folder::new();
    let v = f.versioner("simple", &[("keep", "10")], "");
    f.write("a.txt", b"1", 1_000_000);
    let now = at("20250101-100000");
    f.replace(&v, "a.txt", b"2", now);
    f.replace(&v, "a.txt", b"3", now);
    assert_eq!(
        f.versions(""),
        ["a~20250101-100000.txt", "a~20250101-100001.txt"]
    );
    // A restore in the second its version was made keeps both.
    let (root, _) = f.dir("");
    v.restore(&root, "a.txt", now, now).unwrap();
    assert_eq!(fs::read(f.root.join("a.txt")).unwrap(), b"1");
    let kept: Vec<Vec<u8>> = f
        .versions("")
        .iter()
        .map(|n| fs::read(f.root.join(".stversions").join(n)).unwrap())
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(
        kept.contains(&b"2".to_vec()) && kept.contains(&b"3".to_vec()),
        "{kept:?}"
    );
}

#[test]
fn metrics_follow_archives_cleanups_and_errors() {
    let f = Folder::new();
    let m = crate::metrics::Metrics::new();
    let v = f.versioner_with("simple", &[("keep", "1")], "", Metrics::of(&m, "f"));
    f.write("a.txt", b"12345", 1_000_000);
    f.replace(&v, "a.txt", b"x", at("20250101-100000"));
    f.replace(&v, "a.txt", b"y", at("20250101-100001"));
    let text = daemon::metrics::classic_text(&m.encode());
    for line in [
        "node_folder_versions{folder=\"f\"} 1",
        "node_folder_versions_bytes{folder=\"f\"} 1",
        "node_versioning_errors_total{folder=\"f\",kind=\"disk_full\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    let e = f.versioner_with(
        "external",
        &[("command", "false")],
        "",
        Metrics::of(&m, "f"),
    );
    let (root, d) = f.dir("");
    assert!(e
        .before_replace(&root, &d, "a.txt", SystemTime::now())
        .is_err());
    let text = daemon::metrics::classic_text(&m.encode());
    assert!(
        text.contains("node_versioning_errors_total{folder=\"f\",kind=\"external\"} 1"),
        "{text}"
    );
}
