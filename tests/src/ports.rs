//! Free TCP ports on loopback.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Ports are taken from below the kernel's ephemeral range (32768–60999) so
/// they never clash with the source port of an outgoing connection.
const MIN: u16 = 20000;
const MAX: u16 = 32767;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that is free for TCP and UDP now and was not handed
/// out before in this process. Other processes may still race for it, so
/// callers check that their server really listens.
pub fn pick_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random_range(MIN..=MAX);
        if used.contains(&port) {
            continue;
        }
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if free {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port found in {MIN}..={MAX} on 127.0.0.1");
}
