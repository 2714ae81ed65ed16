//! Relay protocol v1 frames from a device: every frame in the buffer is
//! decoded; each message must encode again to a frame that decodes to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::relay::{Header, Message, HEADER_LEN, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<HEADER_LEN>() {
        if let Ok(h) = Header::decode(head) {
            assert!(h.length <= MAX_PAYLOAD);
        }
    }
    let mut rest = data;
    while let Ok(Some((message, used))) = Message::decode_frame(rest) {
        assert!(used >= HEADER_LEN && used <= rest.len());
        rest = &rest[used..];
        let bytes = message.encode().expect("a decoded message encodes");
        let (again, n) = Message::decode_frame(&bytes)
            .expect("own frame decodes")
            .expect("own frame is complete");
        assert_eq!(n, bytes.len());
        assert_eq!(again, message);
    }
});
