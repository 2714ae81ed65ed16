//! BEP framing from a peer: every frame in the buffer is decoded; each
//! decoded message must encode again and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::bep::{decode_frame, encode_frame, Compress, Decoded, Message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode_frame(rest) {
            Err(_) => return,
            Ok(Decoded::Incomplete { needed }) => {
                // A known total is always more than we hold.
                assert!(needed == 0 || needed > rest.len());
                return;
            }
            Ok(Decoded::Frame { message, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
                round_trip(&message);
            }
        }
    }
});

fn round_trip(message: &Message) {
    if let Message::Unknown(_) = message {
        return;
    }
    for compress in [Compress::Never, Compress::Always, Compress::Metadata] {
        let bytes = encode_frame(message, compress).expect("a decoded message encodes");
        match decode_frame(&bytes) {
            Ok(Decoded::Frame {
                message: again,
                consumed,
            }) => {
                assert_eq!(consumed, bytes.len());
                assert_eq!(&again, message);
            }
            other => panic!("own frame does not decode: {other:?}"),
        }
    }
}
