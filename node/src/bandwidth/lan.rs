//! Whether a peer's address is on the LAN, as Syncthing decides it for its
//! bandwidth exemption and `isLocal` (`lib/connections`, `lanChecker`):
//! loopback, link-local, one of `alwaysLocalNets`, or inside a network of
//! one of our running interfaces other than point-to-point links (VPNs,
//! which Syncthing does not count); only when the interfaces cannot be
//! read, a private address (RFC 1918, fc00::/7) counts instead. Relayed
//! connections are never LAN (the caller decides that by kind).

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `ip` is on the LAN, with the configured `always_local` networks
/// (CIDR text, checked when the configuration is; a bad one is skipped).
pub fn is_lan(ip: IpAddr, always_local: &[String]) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || is_link_local(ip) {
        return true;
    }
    if always_local
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
    {
        return true;
    }
    match interface_networks() {
        Some(nets) => nets.iter().any(|n| n.contains(&ip)),
        None => is_private(ip),
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// The networks (address and netmask) of our running interfaces that are
/// not point-to-point; `None` when they cannot be listed.
fn interface_networks() -> Option<Vec<IpNet>> {
    let mut nets = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that is freed below with
    // freeifaddrs; every pointer is checked for null before it is read,
    // and a sockaddr is read as the type its family says.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return None;
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            let flags = ifa.ifa_flags;
            if flags & libc::IFF_RUNNING as u32 == 0
                || flags & libc::IFF_POINTOPOINT as u32 != 0
                || ifa.ifa_addr.is_null()
                || ifa.ifa_netmask.is_null()
            {
                continue;
            }
            let (addr, mask) = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    (
                        IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                        IpAddr::from(u32::from_be(m.sin_addr.s_addr).to_be_bytes()),
                    )
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                    (
                        IpAddr::from(a.sin6_addr.s6_addr),
                        IpAddr::from(m.sin6_addr.s6_addr),
                    )
                }
                _ => continue,
            };
            if let Ok(net) = IpNet::with_netmask(addr, mask) {
                nets.push(net);
            }
        }
        libc::freeifaddrs(ifap);
    }
    Some(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_and_configured_networks_are_lan() {
        for a in [
            "127.0.0.1",
            "127.0.0.3",
            "::1",
            "169.254.10.1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_lan(a.parse().unwrap(), &[]), "{a}");
        }
        let vpn = ["198.51.100.0/24".to_string(), "2001:db8::/32".to_string()];
        assert!(is_lan("198.51.100.7".parse().unwrap(), &vpn));
        assert!(is_lan("2001:db8::5".parse().unwrap(), &vpn));
        // Documentation addresses are on no interface of a test machine.
        assert!(!is_lan("203.0.113.9".parse().unwrap(), &vpn));
        assert!(!is_lan("203.0.113.9".parse().unwrap(), &["bad".into()]));
    }

    #[test]
    fn our_interfaces_are_listed() {
        let nets = interface_networks().expect("getifaddrs");
        assert!(
            nets.iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())),
            "{nets:?}"
        );
    }
}
