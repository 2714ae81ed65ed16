//! Two of our nodes in one process, syncing a folder over real TCP on
//! 127.0.0.1: index exchange, pulls, deletions, conflicts, a dropped
//! connection, folder types. Needs no other program (no Syncthing, Redis
//! or nginx): `cargo test -p node` runs it anywhere.

mod cluster;

use cluster::{connected, noise, pair, pair_with, until, Kind, TestNode};

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

/// Requests sent on each of `from`'s connections to `to`: (primary,
/// secondaries in age order).
fn requests(from: &TestNode, to: &TestNode) -> (u64, Vec<u64>) {
    let conns = from.conns_to(to);
    let sent: Vec<u64> = conns.iter().map(|c| c.requester.sent()).collect();
    match sent.split_first() {
        Some((p, s)) => (*p, s.to_vec()),
        None => (0, Vec::new()),
    }
}

/// Syncthing 2.x's multiple connections between two of our nodes: with
/// numConnections 3 three connections come up, the oldest primary; a
/// multi-block file travels as requests on the secondaries only; when the
/// primary is dropped mid-transfer a secondary is promoted, the transfer
/// finishes and index traffic goes on over the promoted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_requests_on_secondaries_and_promotion() {
    let (mut a, mut b) = pair_with(Kind::SendReceive, Kind::SendReceive, Some(3), Some(3)).await;
    connected(&a, &b).await;
    until(
        "three connections on both sides",
        || (a.conns_to(&b).len(), b.conns_to(&a).len()),
        |n| *n == (3, 3),
    )
    .await;
    // Connection IDs as 2.x forms them: 26 base32hex characters.
    for c in b.conns_to(&a) {
        let id = c.id.as_str();
        assert_eq!(id.len(), 26, "{id}");
        assert!(
            id.chars()
                .all(|ch| ch.is_ascii_digit() || ('A'..='V').contains(&ch)),
            "{id}"
        );
    }

    // 8 MiB: 64 blocks of 128 KiB, all requested by b on its secondaries.
    let blocks = 64;
    a.write("plate.exr", &noise(blocks * 128 * 1024, 1));
    a.rescan();
    until("b has plate.exr", || b.files(), |f| *f == a.files()).await;
    let (primary, secondaries) = requests(&b, &a);
    println!("requests after plate.exr: primary {primary}, secondaries {secondaries:?}");
    assert_eq!(primary, 0, "no block request on the primary");
    assert_eq!(secondaries.iter().sum::<u64>(), blocks as u64);
    assert!(
        secondaries.iter().all(|n| *n > 0),
        "requests spread over every secondary: {secondaries:?}"
    );

    // A larger file; once its transfer is under way, b drops its primary.
    let old = b.conns_to(&a);
    let before: u64 = requests(&b, &a).1.iter().sum();
    a.write("comp.exr", &noise(48 * 1024 * 1024, 2));
    a.rescan();
    until(
        "b requests blocks of comp.exr",
        || requests(&b, &a).1.iter().sum::<u64>(),
        |n| *n > before,
    )
    .await;
    let _ = old[0].close.try_send("test: primary dropped".into());
    let promoted = until(
        "a former secondary is b's primary",
        || b.conns_to(&a).first().map(|c| c.id.clone()),
        |p| p.as_ref().is_some_and(|p| *p != old[0].id),
    )
    .await
    .unwrap();
    assert!(
        old[1..].iter().any(|c| c.id == promoted),
        "the promoted primary {promoted} was a secondary"
    );
    until("b has comp.exr", || b.files(), |f| *f == a.files()).await;
    // Index traffic goes on over the promoted primary (and the dropped
    // connection is replaced).
    a.write("notes.txt", b"after the promotion\n");
    a.rescan();
    until("b has notes.txt", || b.files(), |f| *f == a.files()).await;
    until(
        "three connections again",
        || (a.conns_to(&b).len(), b.conns_to(&a).len()),
        |n| *n == (3, 3),
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// numConnections 1 on one side: one connection, which carries the
/// requests too (as with a peer that has no multiple connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_side_wanting_one_connection_gets_one() {
    let (mut a, mut b) = pair_with(Kind::SendReceive, Kind::SendReceive, Some(3), Some(1)).await;
    connected(&a, &b).await;
    a.write("plate.exr", &noise(16 * 128 * 1024, 3));
    a.rescan();
    until("b has plate.exr", || b.files(), |f| *f == a.files()).await;
    assert_eq!(a.conns_to(&b).len(), 1);
    assert_eq!(b.conns_to(&a).len(), 1);
    assert_eq!(requests(&b, &a), (16, Vec::new()));
    a.stop().await;
    b.stop().await;
}
