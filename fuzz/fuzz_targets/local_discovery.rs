//! Local discovery v4 datagrams from anyone on the LAN: decoded within the
//! limits; a decoded announcement encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::discovery::local::{LocalAnnounce, MAX_ADDRESSES, MAX_ADDRESS_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(ann) = LocalAnnounce::decode(data) else {
        return;
    };
    assert!(ann.addresses.len() <= MAX_ADDRESSES);
    assert!(ann
        .addresses
        .iter()
        .all(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_LEN));
    assert_eq!(
        LocalAnnounce::decode(&ann.encode()).expect("own datagram decodes"),
        ann
    );
});
