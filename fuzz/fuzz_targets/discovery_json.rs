//! Global discovery bodies: an announcement as the server reads it, and a
//! lookup answer as clients read it. What parses prints and parses back
//! the same; `LookupReply::to_json` writes exactly what serde_json would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::discovery::messages::{parse_announcement, LookupReply};

fuzz_target!(|data: &[u8]| {
    if let Ok(ann) = parse_announcement(data) {
        let again = parse_announcement(&ann.to_json()).expect("own announcement parses");
        assert_eq!(again, ann);
    }
    if let Ok(reply) = LookupReply::from_json(data) {
        let json = reply.to_json();
        assert_eq!(json, serde_json::to_vec(&reply).unwrap());
        assert_eq!(
            LookupReply::from_json(&json).expect("own reply parses"),
            reply
        );
    }
});
