//! Headers a TLS-terminating proxy adds, which a client may also forge:
//! `X-Forwarded-For` lines, the client port, the certificate headers.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::discovery::forwarded::{
    client_cert_from_headers, client_port, forwarded_for, CertHeader, HeaderValues,
    MAX_CERT_HEADER_BYTES,
};

#[derive(Arbitrary, Debug)]
struct Input {
    forwarded: Vec<String>,
    trusted_last_octet: u8,
    port: String,
    expected: u8,
    headers: Vec<(u8, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let trusted = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[3] == input.trusted_last_octet,
        IpAddr::V6(v6) => v6.octets()[15] == input.trusted_last_octet,
    };
    if let Some(ip) = forwarded_for(input.forwarded.iter().map(String::as_str), trusted) {
        // Canonical: an IPv4-mapped IPv6 address is reported as IPv4.
        assert_eq!(ip, ip.to_canonical());
    }
    if let Some(p) = client_port(&input.port) {
        assert_ne!(p, 0);
    }
    let expected = CertHeader::ALL[usize::from(input.expected) % 3];
    let lookup = |name: &str| {
        let mut found = input
            .headers
            .iter()
            .filter(|(i, _)| CertHeader::ALL[usize::from(*i) % 3].name() == name);
        match (found.next(), found.next()) {
            (None, _) => HeaderValues::Absent,
            (Some((_, v)), None) => HeaderValues::One(v.as_slice()),
            (Some(_), Some(_)) => HeaderValues::Many,
        }
    };
    if let Ok(Some(der)) = client_cert_from_headers(expected, lookup) {
        assert!(!der.is_empty() && der.len() <= MAX_CERT_HEADER_BYTES);
    }
});
