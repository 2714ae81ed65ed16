//! Local discovery v4 on the LAN: our addresses sent every 30 s by UDP
//! broadcast (IPv4, to each interface's broadcast address) and multicast
//! (IPv6, `ff12::8384`), announcements of others received and kept for
//! 90 s. On only with `localAnnounceEnabled`; port `localAnnouncePort`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use proto::discovery::local::{rewrite_local_address, LocalAnnounce, MAX_PACKET, MULTICAST_GROUP};
use tokio::net::UdpSocket;

use crate::model::Node;

const INTERVAL: Duration = Duration::from_secs(30);
/// Next round after a send that failed somewhere (an interface not ready).
const RETRY_SOON: Duration = Duration::from_secs(5);
/// Least time between two announcements sent in reply to new devices.
const MIN_EXTRA_GAP: Duration = Duration::from_secs(2);
/// Bad packets are logged at most this often.
const BAD_LOG_GAP: Duration = Duration::from_secs(10);

fn reuse_socket(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Several programs (another node, Syncthing) may listen on the same port.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_multicast_hops_v6(1)?;
    } else {
        s.set_broadcast(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("cannot bind UDP {addr}"))?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// IPv4 broadcast addresses of broadcast-capable interfaces with a
/// non-loopback address, and the indexes of multicast-capable interfaces.
fn interfaces() -> (Vec<Ipv4Addr>, Vec<u32>) {
    let mut bcast = Vec::new();
    let mut mcast = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs; every
    // pointer is checked for null before it is read.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return (bcast, mcast);
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            let flags = ifa.ifa_flags;
            if flags & libc::IFF_UP as u32 == 0 || ifa.ifa_addr.is_null() {
                continue;
            }
            let family = (*ifa.ifa_addr).sa_family as i32;
            if family == libc::AF_INET
                && flags & libc::IFF_BROADCAST as u32 != 0
                && !ifa.ifa_ifu.is_null()
            {
                let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let b = &*(ifa.ifa_ifu as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_link_local() {
                    bcast.push(Ipv4Addr::from(u32::from_be(b.sin_addr.s_addr)));
                }
            }
            if family == libc::AF_INET6
                && flags & libc::IFF_MULTICAST as u32 != 0
                && flags & libc::IFF_LOOPBACK as u32 == 0
            {
                let idx = libc::if_nametoindex(ifa.ifa_name);
                if idx != 0 && !mcast.contains(&idx) {
                    mcast.push(idx);
                }
            }
        }
        libc::freeifaddrs(ifap);
    }
    bcast.sort();
    bcast.dedup();
    (bcast, mcast)
}

/// `localAnnouncePort`, 0 meaning the default (21027).
fn effective_port(configured: u16) -> u16 {
    if configured == 0 {
        proto::discovery::local::DEFAULT_PORT
    } else {
        configured
    }
}

/// Runs local discovery while it is enabled; reopens the sockets when the
/// port changes.
pub async fn run(node: Arc<Node>) {
    loop {
        let config = node.config();
        let options = &config.options;
        if !options.local_announce_enabled {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let port = effective_port(options.local_announce_port);
        if let Err(e) = run_on(&node, port).await {
            tracing::warn!(port, error = %format!("{e:#}"), "local discovery stopped; retrying in 30 s");
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

async fn run_on(node: &Arc<Node>, port: u16) -> Result<()> {
    let v4 = reuse_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?;
    let v6 = match reuse_socket(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
        Ok(s) => {
            let (_, idx) = interfaces();
            let joined = idx
                .iter()
                .filter(|i| s.join_multicast_v6(&MULTICAST_GROUP, **i).is_ok())
                .count();
            if joined == 0 {
                tracing::info!("local discovery: no IPv6 multicast interface");
            }
            Some(s)
        }
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "local discovery without IPv6");
            None
        }
    };
    tracing::info!(port, "local discovery on");
    // Each start has its own instance ID, so peers notice our restarts.
    let instance: i64 = (rand::random::<u64>() >> 1) as i64;
    let mut next = Instant::now();
    let mut sent: Vec<String> = Vec::new();
    let mut last_extra = Instant::now() - MIN_EXTRA_GAP;
    let mut last_bad_log = Instant::now() - BAD_LOG_GAP;
    let mut bad = 0u64;
    let mut buf4 = vec![0u8; MAX_PACKET];
    let mut buf6 = vec![0u8; MAX_PACKET];
    loop {
        let config = node.config();
        let options = &config.options;
        if !options.local_announce_enabled || effective_port(options.local_announce_port) != port {
            tracing::info!("local discovery off");
            return Ok(());
        }
        // Our addresses changed (a listener came or went): tell the LAN now.
        if lan_addresses(node) != sent {
            next = Instant::now();
        }
        if Instant::now() >= next {
            let (addresses, failed) = send(node, &v4, v6.as_ref(), port, instance).await;
            sent = addresses;
            next = Instant::now() + if failed { RETRY_SOON } else { INTERVAL };
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        let received = tokio::select! {
            r = v4.recv_from(&mut buf4) => r.ok().map(|(n, from)| (buf4[..n].to_vec(), from)),
            r = async {
                match &v6 {
                    Some(s) => s.recv_from(&mut buf6).await,
                    None => std::future::pending().await,
                }
            } => r.ok().map(|(n, from)| (buf6[..n].to_vec(), from)),
            _ = tokio::time::sleep(wait) => None,
        };
        let Some((packet, from)) = received else {
            continue;
        };
        match LocalAnnounce::decode(&packet) {
            Ok(a) if a.id == node.my_id => {}
            Ok(a) => {
                let v6 = !from.ip().to_canonical().is_ipv4();
                let addrs: Vec<String> = a
                    .addresses
                    .iter()
                    .filter_map(|x| rewrite_local_address(x, from))
                    .collect();
                tracing::debug!(device = %a.id, from = %from, addresses = ?addrs, "local announcement");
                let fresh = node.discovery.local.put(a.id, v6, addrs, a.instance_id);
                if fresh && last_extra.elapsed() >= MIN_EXTRA_GAP {
                    last_extra = Instant::now();
                    next = Instant::now();
                }
            }
            Err(e) => {
                bad += 1;
                if last_bad_log.elapsed() >= BAD_LOG_GAP {
                    last_bad_log = Instant::now();
                    tracing::info!(from = %from, error = %e, ignored_so_far = bad, "local discovery packet ignored");
                }
            }
        }
    }
}

/// Our addresses worth telling the LAN: loopback ones are useless to
/// anyone else (Syncthing ≥ 1.25 drops them too).
fn lan_addresses(node: &Node) -> Vec<String> {
    use proto::discovery::address::{AnnouncedAddress, Host};
    node.connect
        .announced_addresses()
        .into_iter()
        .filter(|a| match AnnouncedAddress::parse(a).map(|p| p.host) {
            Ok(Host::Ip(ip)) => !ip.is_loopback(),
            Ok(Host::Name(n)) => !n.eq_ignore_ascii_case("localhost"),
            _ => true,
        })
        .collect()
}

/// Sends one announcement; returns the addresses announced and whether
/// any destination failed (then the next round comes sooner).
async fn send(
    node: &Arc<Node>,
    v4: &UdpSocket,
    v6: Option<&UdpSocket>,
    port: u16,
    instance: i64,
) -> (Vec<String>, bool) {
    let addresses = lan_addresses(node);
    if addresses.is_empty() {
        return (addresses, false);
    }
    let packet = LocalAnnounce {
        id: node.my_id,
        addresses: addresses.clone(),
        instance_id: instance,
    }
    .encode();
    if packet.len() > MAX_PACKET {
        return (addresses, false);
    }
    let mut failed = false;
    let (bcast, mcast) = interfaces();
    let targets: Vec<Ipv4Addr> = if bcast.is_empty() {
        vec![Ipv4Addr::BROADCAST]
    } else {
        bcast
    };
    for b in targets {
        let to = SocketAddr::new(IpAddr::V4(b), port);
        match tokio::time::timeout(Duration::from_secs(1), v4.send_to(&packet, to)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failed = true;
                tracing::debug!(%to, error = %e, "local announcement not sent");
            }
            Err(_) => failed = true,
        }
    }
    if let Some(s) = v6 {
        let sock = socket2::SockRef::from(s);
        for idx in mcast {
            // Interfaces that appeared since the start join now (an
            // interface already joined just answers "in use").
            let _ = s.join_multicast_v6(&MULTICAST_GROUP, idx);
            if sock.set_multicast_if_v6(idx).is_err() {
                continue;
            }
            let to = SocketAddr::new(IpAddr::V6(MULTICAST_GROUP), port);
            match tokio::time::timeout(Duration::from_secs(1), s.send_to(&packet, to)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    failed = true;
                    tracing::debug!(interface = idx, error = %e, "local announcement not sent");
                }
                Err(_) => failed = true,
            }
        }
    }
    (addresses, failed)
}
