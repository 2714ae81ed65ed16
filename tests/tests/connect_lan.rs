//! Local discovery (issue 7): two of our nodes, each in its own network
//! namespace on one bridge, find each other by local discovery alone
//! (addresses `dynamic`, no discovery server, no static address) and sync
//! a folder; garbage datagrams on the discovery port are ignored. Needs
//! root for `ip netns`; otherwise the test says so and passes.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use e2e::netns::{rest, Lan};
use e2e::node::NodeHome;
use e2e::{pick_port, wait, SyncthingHome};
use serde_json::{json, Value};

#[test]
fn two_nodes_find_each_other_by_local_discovery_in_namespaces() {
    if let Err(why) = Lan::available() {
        eprintln!("SKIPPED two_nodes_find_each_other_by_local_discovery_in_namespaces: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lan = Lan::create(2).expect("create namespaces");
    let homes: Vec<NodeHome> = (0..2)
        .map(|i| NodeHome::generate(&tmp.path().join(format!("n{i}")), &format!("lan{i}")))
        .collect();
    let mut nodes = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        nodes.push(lan.start_node(i, h));
    }
    let folders: Vec<_> = (0..2).map(|i| tmp.path().join(format!("f{i}"))).collect();
    for i in 0..2 {
        let (me, peer) = (&homes[i], &homes[1 - i]);
        let folder = &folders[i];
        std::fs::create_dir_all(folder).unwrap();
        lan.run_in(i, || {
            let r = rest(me);
            r.send(
                "PATCH",
                "/rest/config/options",
                &json!({"listenAddresses": [format!("tcp://0.0.0.0:{}", me.listen_port)],
                        "localAnnounceEnabled": true, "reconnectionIntervalS": 5}),
            )
            .unwrap();
            r.send(
                "POST",
                "/rest/config/devices",
                &json!({"deviceID": peer.id, "name": "peer", "addresses": ["dynamic"]}),
            )
            .unwrap();
        });
        let _ = folder;
    }

    for n in &nodes {
        let on = wait::until(Duration::from_secs(20), Duration::from_millis(100), || {
            n.proc.log().contains("local discovery on").then_some(())
        });
        assert!(on.is_some(), "{}", n.proc.log_tail(20));
    }
    // Garbage on the discovery port, from the other host: broadcast and
    // unicast, short, wrong magic, old magic, a valid magic with junk.
    let target_ip = lan.ips[0].clone();
    let bcast = {
        let mut parts: Vec<&str> = target_ip.split('.').collect();
        parts[3] = "255";
        parts.join(".")
    };
    lan.run_in(1, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_broadcast(true).unwrap();
        let junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2],
            vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
            vec![0x7d, 0x79, 0xbc, 0x40, 0, 0],
            [&[0x2e, 0xa7, 0xd9, 0x0b][..], &[0xff; 200]].concat(),
            [&[0x2e, 0xa7, 0xd9, 0x0b][..], &[0x0a, 0x03, 1, 2, 3]].concat(),
            vec![0x2e; 60000],
        ];
        for _ in 0..20 {
            for j in &junk {
                let _ = s.send_to(j, format!("{bcast}:21027"));
                let _ = s.send_to(j, format!("{target_ip}:21027"));
            }
        }
    });

    let t0 = Instant::now();
    for i in 0..2 {
        let folder = folders[i].clone();
        lan.run_in(i, || {
            let peer = &homes[1 - i].id;
            rest(&homes[i])
                .send(
                    "POST",
                    "/rest/config/folders",
                    &json!({"id": "lan", "label": "lan", "path": folder, "type": "sendreceive",
                            "devices": [{"deviceID": peer}], "rescanIntervalS": 3600}),
                )
                .unwrap();
        });
    }
    let connected = lan.run_in(0, || {
        wait::until(Duration::from_secs(60), Duration::from_millis(200), || {
            let c: Value = rest(&homes[0]).get("/rest/system/connections").ok()?;
            let conn = &c["connections"][&homes[1].id];
            conn["connected"]
                .as_bool()
                .filter(|x| *x)
                .map(|_| conn.clone())
        })
    });
    let conn = connected.unwrap_or_else(|| {
        panic!(
            "not connected by local discovery:\n{}\n{}",
            nodes[0].proc.log_tail(30),
            nodes[1].proc.log_tail(30)
        )
    });
    eprintln!(
        "connected after {:.1} s: {conn}",
        t0.elapsed().as_secs_f64()
    );
    let addr = conn["address"].as_str().unwrap_or_default().to_string();
    assert!(
        addr.starts_with(&lan.ips[1]) || conn["type"] == "tcp-server",
        "{conn}"
    );
    // What node 0 learnt came from node 1's announcement, rewritten to its
    // source address.
    let disco = lan.run_in(0, || rest(&homes[0]).get("/rest/system/discovery").unwrap());
    let learnt = disco[&homes[1].id]["addresses"].to_string();
    assert!(learnt.contains(&lan.ips[1]), "{disco}");
    // Also by IPv6 multicast: the link-local source, with its zone.
    assert!(
        learnt.contains("[fe80::") && learnt.contains('%'),
        "{disco}"
    );

    std::fs::write(folders[0].join("from-lan0.txt"), b"found by broadcast\n").unwrap();
    lan.run_in(0, || {
        rest(&homes[0]).post("/rest/db/scan?folder=lan").unwrap()
    });
    let synced = wait::until(Duration::from_secs(45), Duration::from_millis(200), || {
        std::fs::read(folders[1].join("from-lan0.txt")).ok()
    });
    assert_eq!(
        synced.as_deref(),
        Some(&b"found by broadcast\n"[..]),
        "{}",
        nodes[1].proc.log_tail(30)
    );
    eprintln!(
        "synced {:.1} s after the folders were shared",
        t0.elapsed().as_secs_f64()
    );
    // The garbage was seen, logged and survived.
    assert!(nodes[0].proc.alive());
    let log = nodes[0].proc.log();
    assert!(log.contains("local discovery packet ignored"), "{log}");
    for mut n in nodes {
        n.proc.stop(Duration::from_secs(5));
    }
    drop(lan);
}

/// Our node and a real Syncthing 1.19.2, each in its own namespace, find
/// each other by local discovery alone (both directions of the v4 wire
/// format: each must understand the other's broadcast) and sync.
#[test]
fn our_node_and_real_syncthing_find_each_other_on_the_lan() {
    if let Err(why) = Lan::available() {
        eprintln!("SKIPPED our_node_and_real_syncthing_find_each_other_on_the_lan: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lan = Lan::create(2).expect("create namespaces");
    let home = NodeHome::generate(&tmp.path().join("node"), "lan-ours");
    let node = lan.start_node(0, &home);
    let st_port = pick_port();
    let st_home = SyncthingHome::init(
        &tmp.path().join("st"),
        &[format!("tcp://0.0.0.0:{st_port}")],
    );
    let st_id = st_home.id.clone();
    let st = lan.start_syncthing(1, st_home);
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(&ours).unwrap();
    lan.run_in(0, || {
        let r = rest(&home);
        r.send(
            "PATCH",
            "/rest/config/options",
            &json!({"listenAddresses": [format!("tcp://0.0.0.0:{}", home.listen_port)],
                    "localAnnounceEnabled": true, "reconnectionIntervalS": 5}),
        )
        .unwrap();
        r.send(
            "POST",
            "/rest/config/devices",
            &json!({"deviceID": st_id, "name": "real", "addresses": ["dynamic"]}),
        )
        .unwrap();
        r.send(
            "POST",
            "/rest/config/folders",
            &json!({"id": "lanst", "label": "lanst", "path": ours, "type": "sendreceive",
                    "devices": [{"deviceID": st_id}], "rescanIntervalS": 3600}),
        )
        .unwrap();
    });
    let t0 = Instant::now();
    lan.run_in(1, || {
        st.set_options(json!({"localAnnounceEnabled": true}));
        st.add_device(&home.id, &["dynamic"]);
        st.share_folder("lanst", &theirs, "sendreceive", &[&home.id]);
    });
    // Each learnt the other from its broadcast.
    let learnt = lan.run_in(1, || {
        wait::until(Duration::from_secs(45), Duration::from_millis(200), || {
            let d = st.get("/rest/system/discovery").ok()?;
            d.get(&home.id).map(|v| v.to_string())
        })
    });
    let learnt = learnt.unwrap_or_else(|| {
        panic!(
            "Syncthing never heard our node:\n{}",
            node.proc.log_tail(30)
        )
    });
    eprintln!(
        "real Syncthing learnt {learnt} after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(learnt.contains(&lan.ips[0]), "{learnt}");
    let ours_learnt = lan.run_in(0, || {
        wait::until(Duration::from_secs(45), Duration::from_millis(200), || {
            let d = rest(&home).get("/rest/system/discovery").ok()?;
            d.get(&st_id).map(|v| v.to_string())
        })
    });
    let ours_learnt = ours_learnt.unwrap_or_else(|| {
        panic!(
            "our node never heard Syncthing:\n{}",
            node.proc.log_tail(30)
        )
    });
    eprintln!("our node learnt {ours_learnt}");
    assert!(ours_learnt.contains(&lan.ips[1]), "{ours_learnt}");
    let kind = lan.run_in(1, || st.wait_connected(&home.id, Duration::from_secs(45)));
    assert!(kind.is_some(), "not connected:\n{}", node.proc.log_tail(30));
    eprintln!(
        "connected ({kind:?}) after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    std::fs::write(ours.join("lan.txt"), b"over the LAN\n").unwrap();
    lan.run_in(0, || {
        rest(&home).post("/rest/db/scan?folder=lanst").unwrap()
    });
    let synced = lan.run_in(1, || st.wait_synced("lanst", 1, Duration::from_secs(45)));
    synced.unwrap_or_else(|e| panic!("{e}\n{}", node.proc.log_tail(30)));
    assert_eq!(
        std::fs::read(theirs.join("lan.txt")).unwrap(),
        b"over the LAN\n"
    );
    let mut node = node;
    node.proc.stop(Duration::from_secs(5));
    let mut st = st;
    st.proc.stop(Duration::from_secs(5));
    drop(lan);
}
