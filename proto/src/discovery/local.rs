//! Local discovery v4: the UDP datagram (magic + protobuf `Announce`) and
//! the receiver's address rewriting. Sockets, intervals and the cache are
//! the node's business.

use std::net::{IpAddr, SocketAddr};

use prost::Message as _;

use super::address::{AnnouncedAddress, Host};
use crate::device_id::DeviceId;

/// First four bytes of a v4 announcement (same value as the BEP Hello magic).
pub const MAGIC: u32 = 0x2EA7_D90B;
/// Magic of the v0.13 format, ignored (with a warning) by receivers.
pub const MAGIC_V13: u32 = 0x7D79_BC40;
/// Default UDP port.
pub const DEFAULT_PORT: u16 = 21027;
/// Default IPv6 multicast group.
pub const MULTICAST_GROUP: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0, 0x8384);
/// Largest datagram accepted or produced; the reference reader uses 64 KiB
/// buffers, real packets are a few hundred bytes.
pub const MAX_PACKET: usize = 65_536;
/// Most addresses taken from one packet.
pub const MAX_ADDRESSES: usize = 100;
/// Longest address taken from a packet.
pub const MAX_ADDRESS_LEN: usize = 1024;

#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, repeated, tag = "2")]
    addresses: Vec<String>,
    #[prost(int64, tag = "3")]
    instance_id: i64,
}

/// One decoded announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAnnounce {
    pub id: DeviceId,
    pub addresses: Vec<String>,
    /// Random per sender start; a change means the sender restarted.
    pub instance_id: i64,
}

/// Why a datagram was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("datagram of {0} bytes is larger than {MAX_PACKET}")]
    TooLarge(usize),
    #[error("old (v0.13) local discovery packet")]
    OldVersion,
    #[error("unknown magic {0:#010x}")]
    BadMagic(u32),
    #[error("announcement does not decode: {0}")]
    Decode(String),
    #[error("announcement carries a device ID of {0} bytes")]
    BadId(usize),
    #[error("announcement carries {0} addresses; at most {MAX_ADDRESSES} are accepted")]
    TooManyAddresses(usize),
}

impl LocalAnnounce {
    /// The datagram to send.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            id: self.id.as_bytes().to_vec(),
            addresses: self.addresses.clone(),
            instance_id: self.instance_id,
        };
        let mut out = Vec::with_capacity(4 + wire.encoded_len());
        out.extend_from_slice(&MAGIC.to_be_bytes());
        wire.encode(&mut out).unwrap_or_default();
        out
    }

    /// A received datagram. Overlong addresses are dropped, not fatal.
    pub fn decode(packet: &[u8]) -> Result<LocalAnnounce, LocalError> {
        if packet.len() > MAX_PACKET {
            return Err(LocalError::TooLarge(packet.len()));
        }
        let Some((magic, body)) = packet.split_first_chunk::<4>() else {
            return Err(LocalError::TooShort(packet.len()));
        };
        match u32::from_be_bytes(*magic) {
            MAGIC => {}
            MAGIC_V13 => return Err(LocalError::OldVersion),
            other => return Err(LocalError::BadMagic(other)),
        }
        let wire = Wire::decode(body).map_err(|e| LocalError::Decode(e.to_string()))?;
        let id = DeviceId::from_slice(&wire.id).map_err(|_| LocalError::BadId(wire.id.len()))?;
        if wire.addresses.len() > MAX_ADDRESSES {
            return Err(LocalError::TooManyAddresses(wire.addresses.len()));
        }
        let addresses = wire
            .addresses
            .into_iter()
            .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_LEN)
            .collect();
        Ok(LocalAnnounce {
            id,
            addresses,
            instance_id: wire.instance_id,
        })
    }
}

/// The receiver's rewriting of one announced address: an empty or
/// unspecified host becomes the datagram's source IP (`tcp4` from an IPv6
/// source and `tcp6` from an IPv4 source are dropped); anything else is
/// kept verbatim. An IPv6 link-local source keeps its zone (`[fe80::1%2]`,
/// the interface index), without which it could not be dialed. `None` for
/// addresses that do not parse.
pub fn rewrite_local_address(address: &str, source: SocketAddr) -> Option<String> {
    let parsed = AnnouncedAddress::parse(address).ok()?;
    let unspecified = match parsed.host {
        Host::Empty => true,
        Host::Ip(ip) => ip.is_unspecified(),
        Host::ScopedIpv6(_) | Host::Name(_) => false,
    };
    if !unspecified {
        return Some(address.to_owned());
    }
    let ip = source.ip().to_canonical();
    match (parsed.scheme.as_str(), ip) {
        ("tcp4", IpAddr::V6(_)) | ("tcp6", IpAddr::V4(_)) => return None,
        _ => {}
    }
    let host = match (ip, source) {
        (IpAddr::V4(ip), _) => ip.to_string(),
        (IpAddr::V6(ip), SocketAddr::V6(s)) if ip.is_unicast_link_local() && s.scope_id() != 0 => {
            format!("[{ip}%{}]", s.scope_id())
        }
        (IpAddr::V6(ip), _) => format!("[{ip}]"),
    };
    Some(format!(
        "{}://{host}:{}{}",
        parsed.scheme, parsed.port, parsed.rest
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let a = LocalAnnounce {
            id: DeviceId::from_slice(&[7; 32]).unwrap(),
            addresses: vec!["tcp://0.0.0.0:22000".into(), "relay://r:1/?id=x".into()],
            instance_id: 12345,
        };
        let bytes = a.encode();
        assert_eq!(&bytes[..4], &[0x2e, 0xa7, 0xd9, 0x0b]);
        assert_eq!(LocalAnnounce::decode(&bytes).unwrap(), a);
        assert_eq!(LocalAnnounce::decode(b"ab"), Err(LocalError::TooShort(2)));
        assert!(matches!(
            LocalAnnounce::decode(&[0x7d, 0x79, 0xbc, 0x40, 1]),
            Err(LocalError::OldVersion)
        ));
        assert!(matches!(
            LocalAnnounce::decode(&[1, 2, 3, 4, 5]),
            Err(LocalError::BadMagic(_))
        ));
        let mut junk = MAGIC.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 40]);
        assert!(LocalAnnounce::decode(&junk).is_err());
        // A short ID is refused.
        let mut short = MAGIC.to_be_bytes().to_vec();
        short.extend_from_slice(&[0x0a, 0x02, 1, 2]);
        assert_eq!(LocalAnnounce::decode(&short), Err(LocalError::BadId(2)));
        assert!(LocalAnnounce::decode(&vec![0; MAX_PACKET + 1]).is_err());
    }

    #[test]
    fn rewriting() {
        let v4: SocketAddr = "192.168.1.5:21027".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:21027".parse().unwrap();
        let ll = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            21027,
            0,
            3,
        ));
        assert_eq!(
            rewrite_local_address("tcp://0.0.0.0:22000", ll).as_deref(),
            Some("tcp://[fe80::1%3]:22000")
        );
        assert_eq!(
            rewrite_local_address("tcp://0.0.0.0:22000", v4).as_deref(),
            Some("tcp://192.168.1.5:22000")
        );
        assert_eq!(
            rewrite_local_address("tcp://:22000", v6).as_deref(),
            Some("tcp://[2001:db8::1]:22000")
        );
        assert_eq!(rewrite_local_address("tcp4://0.0.0.0:1", v6), None);
        assert_eq!(rewrite_local_address("tcp6://[::]:1", v4), None);
        assert_eq!(
            rewrite_local_address("tcp://10.0.0.1:22000", v4).as_deref(),
            Some("tcp://10.0.0.1:22000")
        );
        assert_eq!(rewrite_local_address("garbage", v4), None);
    }
}
