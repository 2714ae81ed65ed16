//! Our node stops on SIGTERM by awaiting its tasks — within 5 s, with a
//! pull in flight, REST clients busy, a long poll waiting and strangers'
//! half-open connections — and its peer is told why (BEP Close).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::node::NodeHome;
use e2e::rest::Rest;
use e2e::wait;

const FILES: usize = 48;
const FILE_BYTES: usize = 4 << 20;

fn fill(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    // Distinct content per file: nothing can be reused, every byte is
    // pulled over the connection.
    for i in 0..FILES {
        let data = e2e::tree::bytes(i as u64 + 1, FILE_BYTES);
        std::fs::write(dir.join(format!("shot-{i:03}.bin")), data).unwrap();
    }
}

#[test]
fn sigterm_under_load_exits_cleanly_within_5_s() {
    let tmp = tempfile::tempdir().unwrap();
    let a = NodeHome::generate(&tmp.path().join("a"), "a");
    let b = NodeHome::generate(&tmp.path().join("b"), "b");
    let (fa, fb) = (tmp.path().join("fa"), tmp.path().join("fb"));
    fill(&fa);
    std::fs::create_dir_all(&fb).unwrap();
    a.add_device(&b.id, &[&b.address()]);
    a.add_folder("shots", &fa, "sendreceive", &[&b.id]);
    b.add_device(&a.id, &[&a.address()]);
    b.add_folder("shots", &fb, "sendreceive", &[&a.id]);

    let node_a = a.start();
    node_a.wait_scanned("shots", FILES as u64, Duration::from_secs(120));
    let mut node_b = b.start();

    // The pull is under way: some bytes in, most still needed.
    let pulling = wait::until(Duration::from_secs(60), Duration::from_millis(20), || {
        let s = node_b.get("/rest/db/status?folder=shots").ok()?;
        let need = s["needBytes"].as_u64()?;
        let have = s["inSyncBytes"].as_u64()?;
        (have > 0 && need > 0).then_some(need)
    });
    assert!(
        pulling.is_some(),
        "b never started pulling:\n{}",
        node_b.proc.log_tail(30)
    );

    // REST clients in a loop, a long poll, strangers holding sockets open.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for path in [
        "/rest/system/status",
        "/rest/db/status?folder=shots",
        "/rest/system/connections",
    ] {
        let (stop, answered) = (stop.clone(), answered.clone());
        let (port, key) = (b.gui_port, b.api_key.clone());
        clients.push(std::thread::spawn(move || {
            let rest = Rest {
                port,
                api_key: &key,
                timeout: Duration::from_secs(10),
                https: None,
            };
            while !stop.load(Ordering::Relaxed) {
                if rest.get(path).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    {
        let (port, key) = (b.gui_port, b.api_key.clone());
        clients.push(std::thread::spawn(move || {
            let rest = Rest {
                port,
                api_key: &key,
                timeout: Duration::from_secs(70),
                https: None,
            };
            // Nothing of this kind will come: it waits until the stop.
            let _ = rest.get("/rest/events?events=LoginAttempt&since=999999&timeout=60");
        }));
    }
    let mut strangers = Vec::new();
    for i in 0..8 {
        let port = if i % 2 == 0 {
            b.listen_port
        } else {
            b.gui_port
        };
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        match i % 4 {
            0 => {} // silent on BEP
            1 => s
                .write_all(b"GET /rest/system/status HTTP/1.1\r\nHo")
                .unwrap(), // half a request
            2 => s.write_all(&[0x16, 0x03, 0x01]).unwrap(), // a TLS record begun
            _ => {} // silent on REST
        }
        strangers.push(s);
    }
    let busy = wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
        (answered.load(Ordering::Relaxed) >= 20).then_some(())
    });
    assert!(busy.is_some(), "REST load never got going");
    let need_at_signal = node_b
        .get("/rest/db/status?folder=shots")
        .ok()
        .and_then(|s| s["needBytes"].as_u64())
        .unwrap_or(0);

    let asked = Instant::now();
    node_b.proc.signal(libc::SIGTERM);
    let status = node_b.proc.wait_exit(Duration::from_secs(5));
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let log_b = node_b.proc.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "b still running 5 s after SIGTERM:\n{}",
            node_b.proc.log_tail(40)
        )
    });
    eprintln!(
        "b exited {status} {took:?} after SIGTERM, {} REST answers, {need_at_signal} bytes still needed",
        answered.load(Ordering::Relaxed)
    );
    assert!(status.success(), "exit status {status}:\n{log_b}");
    assert!(
        !log_b.contains("did not stop in time"),
        "tasks left running:\n{log_b}"
    );
    assert!(
        need_at_signal > 0,
        "the pull had finished before the signal"
    );

    // a was told: the connection ended with b's Close.
    let told = wait::until(Duration::from_secs(10), Duration::from_millis(50), || {
        node_a
            .proc
            .log()
            .contains("device is shutting down")
            .then_some(())
    });
    assert!(
        told.is_some(),
        "a did not see b's Close:\n{}",
        node_a.proc.log()
    );

    // a stops as promptly, with its (now idle) REST API busy too.
    let mut node_a = node_a;
    let asked = Instant::now();
    node_a.proc.signal(libc::SIGTERM);
    let status = node_a
        .proc
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("a still running 5 s after SIGTERM"));
    eprintln!("a exited {status} {:?} after SIGTERM", asked.elapsed());
    assert!(status.success());
    for c in clients {
        c.join().unwrap();
    }
    drop(strangers);
}
