//! Announced addresses: parsing, and the rewriting a discovery server
//! applies before storing them.
//!
//! An address is `scheme://host:port[/path][?query]`, e.g.
//! `tcp://192.0.2.7:22000`, `quic6://[2001:db8::1]:22000`,
//! `relay://relay.example:22067/?id=…`. The server
//!
//! 1. drops what does not parse or has no `host:port`;
//! 2. drops loopback and multicast IPs (they mean nothing to another device);
//! 3. replaces an empty or unspecified host with the request's source IP,
//!    unless that source is unknown, loopback, multicast or unspecified, or
//!    of the wrong family for a `…4` / `…6` scheme (then drops it);
//! 4. replaces port 0 with the request's source port, or drops the address
//!    when that port is unknown;
//! 5. removes duplicates and sorts.
//!
//! Host *names* are kept as they are: they are the way to announce a
//! loopback-only listener on a test machine (`tcp://localhost:22000`).
//!
//! Stricter than the reference server, on purpose: user info (`user@`),
//! non-numeric or out-of-range ports, empty ports, control characters,
//! spaces and non-ASCII bytes make an address invalid instead of being
//! stored for every client to choke on.

use std::fmt;
use std::net::IpAddr;

/// Where a request came from, as far as the server knows. Behind an
/// untrusted path either part may be unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// Known and non-zero, or `None`.
    pub port: Option<u16>,
}

impl Source {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Source {
            ip: Some(ip.to_canonical()),
            port: (port != 0).then_some(port),
        }
    }
}

/// Why an announced address is not usable at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address has no scheme:// prefix")]
    NoScheme,
    #[error("address scheme is not valid")]
    BadScheme,
    #[error("address has no host:port")]
    NoPort,
    #[error("address port is not a number from 0 to 65535")]
    BadPort,
    #[error("address host is not a valid name or IP address")]
    BadHost,
    #[error("address contains user info, spaces, control or non-ASCII characters")]
    BadCharacter,
}

/// The host of an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// Empty host (`tcp://:22000`).
    Empty,
    Ip(IpAddr),
    /// IPv6 with a zone, kept as written (`fe80::1%25eth0`).
    ScopedIpv6(&'a str),
    Name(&'a str),
}

/// One parsed address, borrowing from the announced text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedAddress<'a> {
    /// Lower-case.
    pub scheme: String,
    pub host: Host<'a>,
    pub port: u16,
    /// Everything after the authority: path, query, fragment (may be empty).
    pub rest: &'a str,
}

impl<'a> AnnouncedAddress<'a> {
    pub fn parse(text: &'a str) -> Result<Self, AddressError> {
        if text.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(AddressError::BadCharacter);
        }
        let (scheme, after) = text.split_once("://").ok_or(AddressError::NoScheme)?;
        let mut sb = scheme.bytes();
        let scheme_ok = sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            && sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err(AddressError::BadScheme);
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if authority.contains('@') {
            return Err(AddressError::BadCharacter);
        }
        let (host, port) = split_host_port(authority)?;
        Ok(AnnouncedAddress {
            scheme: scheme.to_ascii_lowercase(),
            host,
            port,
            rest,
        })
    }

    fn with(&self, host: HostOut<'_>, port: u16) -> String {
        let mut out = String::with_capacity(self.scheme.len() + 3 + 48 + self.rest.len());
        out.push_str(&self.scheme);
        out.push_str("://");
        match host {
            HostOut::Ip(IpAddr::V4(ip)) => out.push_str(&ip.to_string()),
            HostOut::Ip(IpAddr::V6(ip)) => {
                out.push('[');
                out.push_str(&ip.to_string());
                out.push(']');
            }
            HostOut::Bracketed(h) => {
                out.push('[');
                out.push_str(h);
                out.push(']');
            }
            HostOut::Plain(h) => out.push_str(h),
        }
        out.push(':');
        out.push_str(&port.to_string());
        out.push_str(self.rest);
        out
    }
}

enum HostOut<'a> {
    Ip(IpAddr),
    Bracketed(&'a str),
    Plain(&'a str),
}

impl fmt::Display for AnnouncedAddress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            Host::Empty => HostOut::Plain(""),
            Host::Ip(ip) => HostOut::Ip(*ip),
            Host::ScopedIpv6(h) => HostOut::Bracketed(h),
            Host::Name(h) => HostOut::Plain(h),
        };
        f.write_str(&self.with(host, self.port))
    }
}

fn split_host_port(authority: &str) -> Result<(Host<'_>, u16), AddressError> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or(AddressError::BadHost)?;
        let port = after.strip_prefix(':').ok_or(AddressError::NoPort)?;
        let host = match h.split_once('%') {
            Some((ip, zone)) => {
                let ok = ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && !zone.is_empty()
                    && zone.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'%' | b'-' | b'_' | b'.')
                    });
                if !ok {
                    return Err(AddressError::BadHost);
                }
                Host::ScopedIpv6(h)
            }
            None => Host::Ip(IpAddr::V6(h.parse().map_err(|_| AddressError::BadHost)?)),
        };
        (host, port)
    } else {
        let (h, port) = authority.rsplit_once(':').ok_or(AddressError::NoPort)?;
        let host = if h.is_empty() {
            Host::Empty
        } else if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if valid_name(h) {
            Host::Name(h)
        } else {
            return Err(AddressError::BadHost);
        };
        (host, port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort);
    }
    let port = port.parse::<u16>().map_err(|_| AddressError::BadPort)?;
    Ok((host, port))
}

/// A DNS-ish host name: letters, digits, `-`, `_`, `.`; at most 253 bytes.
fn valid_name(h: &str) -> bool {
    h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn useless_ip(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_multicast()
}

/// Applies the server-side rules (module docs) to one address; `None` when
/// it is dropped.
pub fn rewrite_address(text: &str, source: &Source) -> Option<String> {
    let addr = AnnouncedAddress::parse(text).ok()?;
    let unspecified = match &addr.host {
        Host::Empty => true,
        Host::Ip(ip) if useless_ip(*ip) => return None,
        Host::Ip(ip) => ip.to_canonical().is_unspecified(),
        Host::ScopedIpv6(_) | Host::Name(_) => false,
    };
    let port = match addr.port {
        0 => source.port?,
        p => p,
    };
    if !unspecified {
        if port == addr.port {
            return Some(addr.to_string());
        }
        let mut a = addr.clone();
        a.port = port;
        return Some(a.to_string());
    }
    let src = source.ip?.to_canonical();
    if useless_ip(src) || src.is_unspecified() {
        return None;
    }
    let wrong_family = (addr.scheme.ends_with('4') && src.is_ipv6())
        || (addr.scheme.ends_with('6') && src.is_ipv4());
    if wrong_family {
        return None;
    }
    Some(addr.with(HostOut::Ip(src), port))
}

/// Rewrites every announced address against `source`; the result is sorted
/// and free of duplicates, and empty when nothing usable was announced.
pub fn rewrite_addresses<S: AsRef<str>>(addresses: &[S], source: &Source) -> Vec<String> {
    let mut out: Vec<String> = addresses
        .iter()
        .filter_map(|a| rewrite_address(a.as_ref(), source))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Source::new(sa.ip(), sa.port())
    }

    #[test]
    fn verified_example_from_the_reference_server() {
        // From 198.51.100.20:40000 the reference server stored exactly these.
        let got = rewrite_addresses(
            &["tcp://0.0.0.0:22000", "tcp://:0", "quic://0.0.0.0:22000"],
            &src("198.51.100.20:40000"),
        );
        assert_eq!(
            got,
            [
                "quic://198.51.100.20:22000",
                "tcp://198.51.100.20:22000",
                "tcp://198.51.100.20:40000"
            ]
        );
    }

    #[test]
    fn rewriting_table() {
        let v4 = src("198.51.100.20:40000");
        let v6 = src("[2001:db8::5]:41000");
        let lo = src("127.0.0.1:40000");
        let mapped = src("[::ffff:198.51.100.20]:40000");
        let none = Source::default();
        let ip_only = Source {
            ip: Some("198.51.100.20".parse().unwrap()),
            port: None,
        };
        let cases: &[(&str, &Source, Option<&str>)] = &[
            // kept as is
            ("tcp://192.0.2.7:22000", &v4, Some("tcp://192.0.2.7:22000")),
            (
                "tcp://192.0.2.7:22000",
                &none,
                Some("tcp://192.0.2.7:22000"),
            ),
            ("TCP://192.0.2.7:22000", &v4, Some("tcp://192.0.2.7:22000")),
            (
                "tcp6://[2001:db8::1]:22000",
                &v4,
                Some("tcp6://[2001:db8::1]:22000"),
            ),
            ("tcp://localhost:22000", &lo, Some("tcp://localhost:22000")),
            (
                "tcp://Host.example:22000",
                &v4,
                Some("tcp://Host.example:22000"),
            ),
            (
                "tcp://[fe80::1%25eth0]:22000",
                &v4,
                Some("tcp://[fe80::1%25eth0]:22000"),
            ),
            (
                "relay://192.0.2.9:22067/?id=ABC&token=x",
                &v4,
                Some("relay://192.0.2.9:22067/?id=ABC&token=x"),
            ),
            // loopback and multicast dropped, whatever the source
            ("tcp://127.0.0.1:22000", &v4, None),
            ("tcp://127.8.9.1:22000", &v4, None),
            ("tcp://[::1]:22000", &v4, None),
            ("tcp://[::ffff:127.0.0.1]:22000", &v4, None),
            ("tcp://224.0.0.1:22000", &v4, None),
            ("tcp://[ff02::1]:22000", &v4, None),
            // unspecified host replaced by the source
            (
                "tcp://0.0.0.0:22000",
                &v4,
                Some("tcp://198.51.100.20:22000"),
            ),
            ("tcp://[::]:22000", &v4, Some("tcp://198.51.100.20:22000")),
            ("tcp://:22000", &v4, Some("tcp://198.51.100.20:22000")),
            (
                "tcp://0.0.0.0:22000",
                &mapped,
                Some("tcp://198.51.100.20:22000"),
            ),
            (
                "tcp://0.0.0.0:22000",
                &v6,
                Some("tcp://[2001:db8::5]:22000"),
            ),
            (
                "tcp4://0.0.0.0:22000",
                &v4,
                Some("tcp4://198.51.100.20:22000"),
            ),
            ("tcp4://0.0.0.0:22000", &v6, None),
            (
                "quic6://[::]:22000",
                &v6,
                Some("quic6://[2001:db8::5]:22000"),
            ),
            ("tcp6://[::]:22000", &v4, None),
            ("tcp://0.0.0.0:22000", &lo, None),
            ("tcp://0.0.0.0:22000", &none, None),
            // port 0 replaced by the source port
            ("tcp://:0", &v4, Some("tcp://198.51.100.20:40000")),
            ("tcp://0.0.0.0:0", &v6, Some("tcp://[2001:db8::5]:41000")),
            ("tcp://192.0.2.7:0", &v4, Some("tcp://192.0.2.7:40000")),
            ("tcp://192.0.2.7:0", &ip_only, None),
            ("tcp://0.0.0.0:0", &ip_only, None),
            ("tcp://0.0.0.0:0", &lo, None),
            // invalid
            ("", &v4, None),
            ("192.0.2.7:22000", &v4, None),
            ("tcp://192.0.2.7", &v4, None),
            ("tcp://192.0.2.7:", &v4, None),
            ("tcp://192.0.2.7:65536", &v4, None),
            ("tcp://192.0.2.7:22x", &v4, None),
            ("tcp://192.0.2.7:-1", &v4, None),
            ("tcp://::1:22000", &v4, None),
            ("tcp://[::1:22000", &v4, None),
            ("tcp://[192.0.2.7]:22000", &v4, None),
            ("tcp://user@192.0.2.7:22000", &v4, None),
            ("tcp://bad host:22000", &v4, None),
            ("tcp://bad\nhost:22000", &v4, None),
            ("tcp://hö.st:22000", &v4, None),
            ("1tcp://192.0.2.7:22000", &v4, None),
            ("://192.0.2.7:22000", &v4, None),
            ("tcp://[fe80::1%]:22000", &v4, None),
        ];
        for (input, source, want) in cases {
            assert_eq!(
                rewrite_address(input, source).as_deref(),
                *want,
                "{input} from {source:?}"
            );
        }
    }

    #[test]
    fn duplicates_removed_and_sorted() {
        let got = rewrite_addresses(
            &[
                "tcp://192.0.2.7:22000",
                "tcp://0.0.0.0:22000",
                "quic://192.0.2.7:22000",
                "tcp://192.0.2.7:22000",
            ],
            &src("192.0.2.7:1"),
        );
        assert_eq!(got, ["quic://192.0.2.7:22000", "tcp://192.0.2.7:22000"]);
        assert!(rewrite_addresses::<&str>(&[], &src("192.0.2.7:1")).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_output_reparses(s in "\\PC{0,80}", port in 0u16..) {
            let source = Source::new("203.0.113.1".parse().unwrap(), port);
            if let Some(out) = rewrite_address(&s, &source) {
                let again = rewrite_address(&out, &source);
                proptest::prop_assert_eq!(again.as_deref(), Some(out.as_str()));
            }
        }
    }
}
