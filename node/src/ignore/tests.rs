//! The examples of Syncthing's "Ignoring Files" documentation, and the
//! 1.19.2 parsing rules around them.

use super::*;

fn ign(text: &str) -> Ignores {
    Ignores::parse(text).unwrap()
}

#[test]
fn documented_pattern_examples() {
    // "foo matches the files foo, subdir/foo as well as any directory foo"
    let i = ign("foo");
    assert!(i.is_ignored("foo"));
    assert!(i.is_ignored("subdir/foo"));
    assert!(i.is_ignored("foo/inside/anything"));
    assert!(!i.is_ignored("foobar"));
    // Asterisk, double asterisk, question mark.
    let i = ign("te*st");
    assert!(i.is_ignored("test") && i.is_ignored("subdir/telerest"));
    assert!(!i.is_ignored("tele/rest"));
    let i = ign("te**st");
    assert!(i.is_ignored("test") && i.is_ignored("subdir/telerest"));
    assert!(i.is_ignored("tele/sub/dir/rest"));
    let i = ign("te??st");
    assert!(i.is_ignored("tebest"));
    assert!(!i.is_ignored("teb/st") && !i.is_ignored("test"));
    // Ranges and alternatives, escaping.
    let i = ign("[a-c]at");
    assert!(i.is_ignored("bat") && !i.is_ignored("rat"));
    let i = ign("{banana,pineapple}");
    assert!(i.is_ignored("banana") && i.is_ignored("x/pineapple"));
    let i = ign("\\{banana\\}");
    assert!(i.is_ignored("{banana}") && !i.is_ignored("banana"));
    // Leading slash: the folder root only.
    let i = ign("/foo");
    assert!(i.is_ignored("foo") && i.is_ignored("foo/bar"));
    assert!(!i.is_ignored("subdir/foo"));
    // Case-insensitive, also combined with negation.
    let i = ign("(?i)test");
    assert!(i.is_ignored("test") && i.is_ignored("TEST") && i.is_ignored("tEsT"));
    let i = ign("(?i)!picture*.png\n*.png");
    assert!(!i.is_ignored("Picture1.PNG"));
    assert!(i.is_ignored("other.png"));
    // Case matters without (?i) (Linux).
    assert!(!ign("test").is_ignored("TEST"));
}

#[test]
fn documented_full_example() {
    // The example .stignore of the documentation.
    let i =
        ign("// This is a comment\n(?d).DS_Store\n!frobble\n!quuz\nfoo\n*2\nqu*\n/baz\n**/bar\n");
    assert!(i.check(".DS_Store").deletable);
    assert!(i.check("a/.DS_Store").deletable);
    assert!(!i.is_ignored("frobble") && !i.is_ignored("x/quuz"));
    assert!(i.is_ignored("foo") && i.is_ignored("a/foo"));
    assert!(i.is_ignored("foo2") && i.is_ignored("x/bar2"));
    assert!(i.is_ignored("qux") && i.is_ignored("a/quark"));
    assert!(!i.is_ignored("quuz"));
    assert!(i.is_ignored("baz") && !i.is_ignored("a/baz"));
    assert!(i.is_ignored("bar") && i.is_ignored("a/b/bar") && i.is_ignored("a/bar/c"));
    assert!(!i.is_ignored("// This is a comment"));
    assert!(!i.is_ignored("other"));
    assert!(!i.check("foo").deletable);
}

#[test]
fn first_match_decides_and_prefixes_combine() {
    let i = ign("!keep.txt\n*.txt");
    assert!(!i.is_ignored("keep.txt") && i.is_ignored("drop.txt"));
    let i = ign("*.txt\n!keep.txt");
    assert!(i.is_ignored("keep.txt"));
    // Prefixes in any order, each once; a repeated one is literal.
    let i = ign("(?d)(?i)!X\n(?i)(?d)y");
    assert!(!i.is_ignored("x"));
    assert!(i.check("Y").deletable);
    let i = ign("!!a");
    assert!(!i.is_ignored("a") && !i.is_ignored("!a"));
    // `#` is no comment (only `//` is): the line is a pattern.
    assert!(ign("#notes").is_ignored("#notes"));
    // A trailing slash: the directory's content and the name in any
    // directory, with `dir/` itself matching only below.
    let i = ign("build/");
    assert!(i.is_ignored("build/x") && i.is_ignored("a/build/x"));
    assert!(!i.is_ignored("build"));
    // Surrounding spaces are trimmed, inner ones kept.
    assert!(ign("  my file  ").is_ignored("my file"));
}

#[test]
fn errors_stop_the_folder() {
    for bad in ["[abc", "!", "(?i)", "#include", "#include   ", "a{b"] {
        assert!(Ignores::parse(bad).is_err(), "{bad:?}");
    }
    assert!(ign("").is_empty());
    assert!(ign("// only a comment\n\n").is_empty());
}

#[test]
fn skipping_ignored_directories() {
    assert!(ign("foo\n*.tmp").skip_ignored_dirs());
    assert!(ign("!/keep\n*").skip_ignored_dirs());
    assert!(!ign("!keep\n*").skip_ignored_dirs());
    assert!(!ign("!/a/keep\n*").skip_ignored_dirs());
    assert!(!ign("!/a**b\n*").skip_ignored_dirs());
}

/// Found by fuzz/node_ignore: a pattern of multi-byte characters made the
/// skip check slice inside a character and panic (the scanner and the REST
/// handler with it). Non-ASCII patterns are as ordinary as ASCII ones.
#[test]
fn non_ascii_patterns_load_and_match() {
    let i = ign("éé\n/日本/\n(?i)ÜBER\n!/ñ");
    assert!(i.is_ignored("éé"));
    assert!(i.is_ignored("sub/éé/x"));
    assert!(i.is_ignored("日本/x"));
    assert!(!i.is_ignored("a/日本"));
    assert!(i.is_ignored("über"));
    assert!(!i.is_ignored("ñ"));
    assert!(ign("éé").skip_ignored_dirs());
    assert!(ign("\u{34c}\u{34c}").is_ignored("\u{34c}\u{34c}"));
}

/// Lines full of `{…}` alternatives used to be expanded into every
/// combination (up to 256 copies of the line, each then matched once per
/// character of a name): a 4 KiB `.stignore` held hundreds of MiB and took
/// over a second per name (fuzz/node_ignore). They are now compiled once,
/// and checking names costs about what plain lines do.
#[test]
fn alternatives_cost_what_plain_lines_cost() {
    let line = |k: usize| format!("{}{k}{}", "{a,b}".repeat(8), "x".repeat(40));
    let text: String = (0..60).map(|k| line(k) + "\n").collect();
    let i = ign(&text);
    let held: usize = i.patterns.iter().map(|p| p.glob.size()).sum();
    assert!(
        held < 8 * text.len(),
        "{held} instructions for {} bytes",
        text.len()
    );
    let names = [
        "a".repeat(3000),
        format!("d/{}", "ab".repeat(1500)),
        format!("d/{}7{}/f", "ab".repeat(4), "x".repeat(40)),
    ];
    assert!(!i.is_ignored(&names[0]));
    assert!(!i.is_ignored(&names[1]));
    assert!(i.is_ignored(&names[2]));
    for name in &names {
        let work: usize = i.patterns.iter().map(|p| p.glob.work(name)).sum();
        // A few live positions per pattern and character (expanded, it
        // was hundreds).
        let per = work / (i.patterns.len() * name.len());
        assert!(per <= 4, "{per} positions per pattern and character");
    }
}

/// What a user's (or REST client's) patterns make the node hold is
/// bounded as a whole, not only per file: past the bound, a clear error.
#[test]
fn the_patterns_held_are_bounded() {
    let line = format!("{}\n", "y".repeat(4000));
    let lines = MAX_INSTRUCTIONS / (4 * 4000) + 2;
    let text: String = (0..lines).map(|k| format!("{k}{line}")).collect();
    let e = Ignores::parse(&text).unwrap_err();
    assert!(format!("{e:#}").contains("too large"), "{e:#}");
}

#[test]
fn includes_stay_inside_the_folder_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("f");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join(FILE), "#include sub/more\n*.a\n").unwrap();
    fs::write(
        root.join("sub/more"),
        "// relative to this file\n!keep.b\n#include other\n",
    )
    .unwrap();
    fs::write(root.join("sub/other"), "*.b\n").unwrap();
    let i = Ignores::load(&root).unwrap();
    assert!(i.is_ignored("x.a") && i.is_ignored("d/x.b") && !i.is_ignored("keep.b"));

    // Missing include, include of the same file twice, outside the folder.
    fs::write(root.join(FILE), "#include nope\n").unwrap();
    assert!(Ignores::load(&root).is_err());
    fs::write(root.join(FILE), "#include .stignore\n").unwrap();
    assert!(Ignores::load(&root).is_err());
    fs::write(dir.path().join("outside"), "*\n").unwrap();
    fs::write(root.join(FILE), "#include ../outside\n").unwrap();
    let e = Ignores::load(&root).unwrap_err();
    assert!(format!("{e:#}").contains("inside the folder"), "{e:#}");
    fs::write(root.join(FILE), "#include /etc/passwd\n").unwrap();
    assert!(Ignores::load(&root).is_err());
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
    fs::write(root.join(FILE), "#include link\n").unwrap();
    let e = Ignores::load(&root).unwrap_err();
    assert!(format!("{e:#}").contains("outside the folder"), "{e:#}");

    // A chain deeper than the bound.
    for k in 0..=MAX_INCLUDE_DEPTH + 1 {
        fs::write(
            root.join(format!("i{k}")),
            format!("#include i{}\nx{k}\n", k + 1),
        )
        .unwrap();
    }
    fs::write(root.join(FILE), "#include i0\n").unwrap();
    let e = Ignores::load(&root).unwrap_err();
    assert!(format!("{e:#}").contains("deeper"), "{e:#}");

    // No file: nothing ignored.
    fs::remove_file(root.join(FILE)).unwrap();
    assert!(Ignores::load(&root).unwrap().is_empty());
}

/// The scanner and ignore patterns: newly ignored entries are announced
/// invalid with their version (never deleted), an entry that vanished
/// while ignored gets an empty version (the cluster's version comes
/// back), and a file back from being ignored keeps only our counter (a
/// conflict, not a silent overwrite, if the cluster moved on).
#[test]
fn scanner_marks_ignored_entries_and_never_deletes_them() {
    use crate::db::{Change, Db};
    use crate::scan::{scan, Live};
    use proto::bep::wire::{Counter, FileInfo, Vector};
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let root = dir.path().join("f");
    fs::create_dir_all(&root).unwrap();
    let scan_now = || scan(&db, "f", &root, 1, &|_| {}, &Live::default()).unwrap();
    let entry = |name: &str| db.file("f", name).unwrap().unwrap();
    fs::write(root.join("a.txt"), b"a").unwrap();
    fs::write(root.join("b.txt"), b"b").unwrap();
    scan_now();
    // As if a.txt had last been changed by device 2 and pulled here.
    let mut pulled = entry("a.txt");
    pulled.version = Some(Vector {
        counters: vec![Counter { id: 1, value: 1 }, Counter { id: 2, value: 9 }],
    });
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(root.join("a.txt")).unwrap());
    db.apply(
        "f",
        vec![Change {
            info: pulled.clone(),
            inode,
        }],
    )
    .unwrap();

    fs::write(root.join(FILE), "*.txt\n").unwrap();
    scan_now();
    let a = entry("a.txt");
    assert!(a.invalid && !a.deleted && a.blocks.is_empty());
    assert_eq!(
        a.version, pulled.version,
        "ignoring does not bump the version"
    );
    let seq = a.sequence;
    scan_now();
    assert_eq!(
        entry("a.txt").sequence,
        seq,
        "announced once, not every scan"
    );

    // Deleted while ignored: nothing announced.
    fs::remove_file(root.join("b.txt")).unwrap();
    scan_now();
    assert!(!entry("b.txt").deleted);

    // Un-ignored: b.txt is gone with an empty version; a.txt (edited
    // meanwhile) keeps only our counter.
    fs::write(root.join("a.txt"), b"a, edited while ignored").unwrap();
    fs::remove_file(root.join(FILE)).unwrap();
    scan_now();
    let b = entry("b.txt");
    assert!(b.deleted && !b.invalid);
    assert!(b.version.unwrap_or_default().counters.is_empty());
    let a: FileInfo = entry("a.txt");
    assert!(!a.invalid);
    let ids: Vec<u64> = a.version.unwrap().counters.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1]);
}
