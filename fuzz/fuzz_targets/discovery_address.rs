//! Announced addresses and their rewriting against the request's source,
//! by the discovery server and by local discovery: a rewritten address
//! parses, and rewriting it again changes nothing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::discovery::address::{rewrite_address, rewrite_addresses, AnnouncedAddress, Source};
use proto::discovery::local::rewrite_local_address;

#[derive(Arbitrary, Debug)]
struct Input {
    addresses: Vec<String>,
    v6: bool,
    ip: [u8; 16],
    port: u16,
    known_ip: bool,
}

fuzz_target!(|input: Input| {
    let ip = if input.v6 {
        IpAddr::V6(Ipv6Addr::from(input.ip))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            input.ip[0],
            input.ip[1],
            input.ip[2],
            input.ip[3],
        ))
    };
    let mut source = Source::new(ip, input.port);
    if !input.known_ip {
        source.ip = None;
    }
    for text in &input.addresses {
        if let Ok(a) = AnnouncedAddress::parse(text) {
            let printed = a.to_string();
            let b = AnnouncedAddress::parse(&printed)
                .unwrap_or_else(|e| panic!("{printed:?} from {text:?}: {e:?}"));
            assert_eq!(b, a, "{text:?} printed as {printed:?}");
        }
        if let Some(out) = rewrite_address(text, &source) {
            AnnouncedAddress::parse(&out)
                .unwrap_or_else(|e| panic!("{out:?} from {text:?}: {e:?}"));
            assert_eq!(
                rewrite_address(&out, &source).as_deref(),
                Some(out.as_str()),
                "{text:?}"
            );
        }
        if let Some(out) = rewrite_local_address(text, SocketAddr::new(ip, input.port)) {
            AnnouncedAddress::parse(&out)
                .unwrap_or_else(|e| panic!("{out:?} from {text:?}: {e:?}"));
        }
    }
    let all = rewrite_addresses(&input.addresses, &source);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
});
