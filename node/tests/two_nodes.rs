//! Two of our nodes in one process, syncing a folder over real TCP on
//! 127.0.0.1: index exchange, pulls, deletions, conflicts, a dropped
//! connection, folder types. Needs no other program (no Syncthing, Redis
//! or nginx): `cargo test -p node` runs it anywhere.

mod cluster;

use cluster::{connected, pair, until, Kind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_deletions_and_conflicts_reach_the_other_node() {
    let (mut a, mut b) = pair(Kind::SendReceive, Kind::SendReceive).await;
    connected(&a, &b).await;

    // New files, in a subdirectory too, and a larger one of several blocks.
    a.write("hello.txt", b"hello from a\n");
    a.write("shots/010/plate.exr", &vec![7u8; 300_000]);
    a.write("gone.txt", b"to be deleted\n");
    a.rescan();
    until("b has a's files", || b.files(), |f| *f == a.files()).await;

    // A deletion on a is applied on b.
    std::fs::remove_file(a.folder.join("gone.txt")).unwrap();
    a.rescan();
    until(
        "b deleted gone.txt",
        || b.files(),
        |f| !f.contains_key("gone.txt") && f.len() == 2,
    )
    .await;

    // b edits too: changes flow both ways.
    b.write("hello.txt", b"b was here\n");
    b.rescan();
    until(
        "a has b's edit",
        || a.files(),
        |f| f.get("hello.txt").map(Vec::as_slice) == Some(&b"b was here\n"[..]),
    )
    .await;

    // A conflict: while b is stopped, both change the same file. Once
    // they meet again one version wins everywhere and the other survives
    // as a conflict copy on both (nothing is lost).
    b.stop().await;
    a.write("hello.txt", b"a's version\n");
    a.rescan();
    b.write("hello.txt", b"b's version, written later\n");
    b.start().await;
    connected(&a, &b).await;
    a.rescan();
    b.rescan();
    let files = until(
        "both settle on one version and one conflict copy",
        || (a.files(), b.files()),
        |(fa, fb)| {
            fa == fb
                && fa
                    .keys()
                    .filter(|n| n.starts_with("hello.sync-conflict-"))
                    .count()
                    == 1
        },
    )
    .await
    .0;
    let versions: Vec<&[u8]> = files
        .iter()
        .filter(|(n, _)| n.starts_with("hello"))
        .map(|(_, d)| d.as_slice())
        .collect();
    assert!(versions.contains(&&b"a's version\n"[..]), "{files:?}");
    assert!(
        versions.contains(&&b"b's version, written later\n"[..]),
        "{files:?}"
    );

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_only_folder_ignores_remote_changes_and_receive_only_keeps_local_ones() {
    let (mut a, mut b) = pair(Kind::SendOnly, Kind::ReceiveOnly).await;
    connected(&a, &b).await;
    a.write("from-a.txt", b"a\n");
    a.rescan();
    until(
        "b received a's file",
        || b.files(),
        |f| f.contains_key("from-a.txt"),
    )
    .await;

    // b's local change stays on b (receive-only) and never reaches a
    // (send-only ignores remote changes anyway).
    b.write("local-on-b.txt", b"b\n");
    b.rescan();
    // a's next change still arrives, which shows b's index was exchanged
    // in between.
    a.write("from-a-2.txt", b"a2\n");
    a.rescan();
    until(
        "b received a's second file",
        || b.files(),
        |f| f.contains_key("from-a-2.txt"),
    )
    .await;
    assert!(b.files().contains_key("local-on-b.txt"));
    assert!(!a.files().contains_key("local-on-b.txt"));

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_node_is_awaited_and_its_port_is_free_again() {
    let (mut a, mut b) = pair(Kind::SendReceive, Kind::SendReceive).await;
    connected(&a, &b).await;
    let started = std::time::Instant::now();
    a.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // b sees the connection end (a sent Close), and a starts again on the
    // same port: nothing of the old node holds it.
    until("b saw a leave", || b.connected_to(&a), |c| !c).await;
    a.start().await;
    connected(&a, &b).await;
    a.stop().await;
    b.stop().await;
}
