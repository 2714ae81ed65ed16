//! The event stream: a long poll sees a change on the sending node, the
//! transfer on the receiving node and the completion, within seconds;
//! `since` neither loses nor repeats; a flood of events with no reader
//! keeps memory flat.

use std::time::{Duration, Instant};

use e2e::node::{Node, NodeHome};
use e2e::rest_api::{keyed, EventReader};
use serde_json::{json, Value};

/// Two of our nodes sharing folder `f` (A → B, both send-receive).
fn pair(dir: &std::path::Path) -> (Node, Node, std::path::PathBuf, std::path::PathBuf) {
    let ha = NodeHome::generate(&dir.join("a"), "a");
    let hb = NodeHome::generate(&dir.join("b"), "b");
    let (fa, fb) = (dir.join("fa"), dir.join("fb"));
    std::fs::create_dir_all(&fa).unwrap();
    std::fs::create_dir_all(&fb).unwrap();
    let a = ha.start();
    let b = hb.start();
    for (me, other, path) in [(&a, &hb, &fa), (&b, &ha, &fb)] {
        let dev = json!({"deviceID": other.id, "name": other.id, "addresses": [other.address()]});
        me.send("POST", "/rest/config/devices", &dev).unwrap();
        let f = json!({"id": "f", "label": "F", "path": path, "type": "sendreceive",
                       "devices": [{"deviceID": other.id}], "fsWatcherEnabled": false});
        me.send("POST", "/rest/config/folders", &f).unwrap();
    }
    let up = e2e::wait::until(Duration::from_secs(60), Duration::from_millis(100), || {
        (a.connected(&hb.id) && b.connected(&ha.id)).then_some(())
    });
    assert!(
        up.is_some(),
        "not connected:\n{}\n{}",
        a.proc.log_tail(20),
        b.proc.log_tail(20)
    );
    (a, b, fa, fb)
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == kind
}

#[test]
fn long_poll_sees_the_change_the_transfer_and_the_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fa, fb) = pair(dir.path());
    let (pa, ka) = (a.home.gui_port, a.home.api_key.clone());
    let (pb, kb) = (b.home.gui_port, b.home.api_key.clone());
    // Start after what happened so far (the startup events).
    let mut on_a = EventReader::new(
        pa,
        &ka,
        "/rest/events?events=LocalChangeDetected,LocalIndexUpdated,FolderCompletion,StateChanged",
    );
    let mut on_b = EventReader::new(
        pb,
        &kb,
        "/rest/events?events=ItemStarted,ItemFinished,RemoteChangeDetected,RemoteIndexUpdated",
    );
    on_a.since = keyed(pa, &ka, "GET", "/rest/events?limit=1&timeout=0", None).json()[0]["id"]
        .as_u64()
        .unwrap_or(0);
    on_b.since = keyed(pb, &kb, "GET", "/rest/events?limit=1&timeout=0", None).json()[0]["id"]
        .as_u64()
        .unwrap_or(0);

    // The long poll is waiting when the file appears.
    let since = on_a.since;
    let poll = std::thread::spawn(move || {
        let a = keyed(
            pa,
            &ka,
            "GET",
            &format!("/rest/events?events=LocalChangeDetected&since={since}&timeout=60"),
            None,
        );
        (a.json(), Instant::now())
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    std::fs::write(fa.join("new.txt"), b"fresh content").unwrap();
    a.post("/rest/db/scan?folder=f").unwrap();
    let (first, at) = poll.join().unwrap();
    let ev = &first[0];
    assert_eq!(ev["type"], "LocalChangeDetected", "{first}");
    assert_eq!(ev["data"]["path"], "new.txt");
    assert_eq!(ev["data"]["action"], "modified");
    let t_local = at - t0;

    let limit = Duration::from_secs(30);
    let (fin, at) = on_b
        .until(limit, |e| {
            e["type"] == "ItemFinished" && e["data"]["item"] == "new.txt"
        })
        .expect("ItemFinished on the receiving node");
    assert!(fin["data"]["error"].is_null(), "{fin}");
    let t_item = at - t0;
    let (done, at) = on_a
        .until(limit, |e| {
            e["type"] == "FolderCompletion"
                && e["data"]["completion"].as_f64() == Some(100.0)
                && e["data"]["globalItems"].as_u64() >= Some(1)
        })
        .expect("FolderCompletion 100 on the sending node");
    let t_done = at - t0;
    assert_eq!(std::fs::read(fb.join("new.txt")).unwrap(), b"fresh content");
    println!("LocalChangeDetected after {t_local:?}, ItemFinished (receiver) after {t_item:?}, FolderCompletion 100 after {t_done:?}: {done}");
    for (what, t) in [
        ("LocalChangeDetected", t_local),
        ("ItemFinished", t_item),
        ("FolderCompletion", t_done),
    ] {
        assert!(t < Duration::from_secs(10), "{what} took {t:?}");
    }
    // The receiving side also saw the index and the disk change.
    assert!(on_b.seen.iter().any(is("RemoteIndexUpdated")));
    assert!(on_b.seen.iter().any(is("ItemStarted")));

    // `since` lost nothing and repeated nothing: what the reader gathered
    // poll by poll is exactly the buffered list for the same filter.
    let path = "/rest/events?events=ItemStarted,ItemFinished,RemoteChangeDetected,RemoteIndexUpdated&since=0&timeout=0";
    let all = keyed(pb, &kb, "GET", path, None).json();
    let first_seen = on_b.seen[0]["id"].as_u64().unwrap();
    let last_seen = on_b.seen.last().unwrap()["id"].as_u64().unwrap();
    let expected: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .filter(|id| (first_seen..=last_seen).contains(id))
        .collect();
    let got: Vec<u64> = on_b
        .seen
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, expected, "events lost or repeated");
    // The disk stream has the change on both sides.
    let disk = keyed(pb, &kb, "GET", "/rest/events/disk?since=0&timeout=0", None).json();
    assert!(
        disk.as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "RemoteChangeDetected" && e["data"]["path"] == "new.txt"),
        "{disk}"
    );
    a.stop();
    b.stop();
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn ten_thousand_events_without_a_reader_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let home = NodeHome::generate(&dir.path().join("n"), "n");
    let folder = dir.path().join("f");
    std::fs::create_dir_all(&folder).unwrap();
    let node = home.start();
    let (port, key) = (home.gui_port, home.api_key.clone());
    let f = json!({"id": "f", "path": folder, "type": "sendonly", "fsWatcherEnabled": false});
    node.send("POST", "/rest/config/folders", &f).unwrap();
    node.wait_scanned("f", 0, Duration::from_secs(30));
    let last_id = || {
        keyed(port, &key, "GET", "/rest/events?limit=1&timeout=0", None).json()[0]["id"]
            .as_u64()
            .unwrap_or(0)
    };
    // Three rounds of 10,000 changed files, each one LocalChangeDetected
    // (plus index and state events), and nobody reading them.
    let mut rss = Vec::new();
    let mut seq = 0;
    for round in 0..3u32 {
        for i in 0..10_000 {
            std::fs::write(folder.join(format!("f{i:05}")), format!("{round}-{i}")).unwrap();
        }
        node.post("/rest/db/scan?folder=f").unwrap();
        seq = node.wait_scanned("f", seq + 10_000, Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(500));
        rss.push(rss_kib(node.proc.pid()));
    }
    let events = last_id();
    let buffered = keyed(
        port,
        &key,
        "GET",
        "/rest/events/disk?since=0&timeout=0",
        None,
    )
    .json();
    println!(
        "events emitted {events}, disk events buffered {}, RSS after each round (KiB): {rss:?}",
        buffered.as_array().unwrap().len()
    );
    assert!(events >= 30_000, "{events}");
    assert_eq!(buffered.as_array().unwrap().len(), 1000, "ring bound");
    // Rounds 2 and 3 add 20,000 events: memory must not follow them.
    let growth = rss[2].saturating_sub(rss[0]);
    assert!(
        growth < 16 * 1024,
        "RSS grew {growth} KiB over 20,000 more events: {rss:?}"
    );
    node.stop();
}
