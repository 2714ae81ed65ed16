use proptest::prelude::*;

use super::*;
use crate::bep::wire::{BlockInfo, Counter, Device, FileInfo, Folder, Vector};

fn arb_vector() -> impl Strategy<Value = Option<Vector>> {
    proptest::option::of(
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4).prop_map(|c| Vector {
            counters: c
                .into_iter()
                .map(|(id, value)| Counter { id, value })
                .collect(),
        }),
    )
}

fn arb_file() -> impl Strategy<Value = FileInfo> {
    (
        "[a-z/ ]{1,30}",
        0i32..5,
        any::<i64>(),
        any::<u32>(),
        any::<bool>(),
        arb_vector(),
        any::<i64>(),
        proptest::collection::vec((any::<i64>(), any::<i32>(), any::<[u8; 32]>()), 0..5),
    )
        .prop_map(
            |(name, r#type, size, permissions, deleted, version, sequence, blocks)| FileInfo {
                name,
                r#type,
                size,
                permissions,
                modified_s: size / 3,
                deleted,
                version,
                sequence,
                block_size: 131072,
                blocks: blocks
                    .into_iter()
                    .map(|(offset, size, hash)| BlockInfo {
                        offset,
                        size,
                        hash: hash.to_vec(),
                    })
                    .collect(),
                ..Default::default()
            },
        )
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Ping),
        ".{0,50}".prop_map(|reason| Message::Close(wire::Close { reason })),
        (
            any::<i32>(),
            ".{0,20}",
            ".{0,40}",
            any::<i64>(),
            any::<i32>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(id, folder, name, offset, size, hash)| {
                Message::Request(wire::Request {
                    id,
                    folder,
                    name,
                    offset,
                    size,
                    hash: hash.to_vec(),
                    ..Default::default()
                })
            }),
        (
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..2000),
            0i32..4
        )
            .prop_map(|(id, data, code)| Message::Response(wire::Response {
                id,
                data,
                code
            })),
        ("[a-z]{1,10}", proptest::collection::vec(arb_file(), 0..20)).prop_map(
            |(folder, files)| Message::Index(wire::Index {
                folder,
                files,
                ..Default::default()
            })
        ),
        ("[a-z]{1,10}", proptest::collection::vec(arb_file(), 0..5)).prop_map(|(folder, files)| {
            Message::IndexUpdate(wire::Index {
                folder,
                files,
                ..Default::default()
            })
        }),
        proptest::collection::vec(("[a-z]{1,10}", any::<[u8; 32]>(), any::<u64>()), 0..4).prop_map(
            |folders| Message::ClusterConfig(wire::ClusterConfig {
                folders: folders
                    .into_iter()
                    .map(|(id, dev, index_id)| Folder {
                        label: id.clone(),
                        id,
                        devices: vec![Device {
                            id: dev.to_vec(),
                            index_id,
                            addresses: vec!["dynamic".into()],
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
                secondary: false,
            })
        ),
    ]
}

fn arb_compress() -> impl Strategy<Value = Compress> {
    prop_oneof![
        Just(Compress::Metadata),
        Just(Compress::Never),
        Just(Compress::Always)
    ]
}

proptest! {
    #[test]
    fn round_trip(msg in arb_message(), compress in arb_compress(), tail in proptest::collection::vec(any::<u8>(), 0..10)) {
        let mut bytes = encode_frame(&msg, compress).unwrap();
        let n = bytes.len();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode_frame(&bytes).unwrap(), Decoded::Frame { message: msg, consumed: n });
        for cut in [0, 1, 2, n / 2, n - 1] {
            let partial = decode_frame(&bytes[..cut.min(n - 1)]).unwrap();
            prop_assert!(matches!(partial, Decoded::Incomplete { .. }), "{:?}", partial);
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_frame(&data);
    }

    #[test]
    fn corrupted_frames_never_panic(msg in arb_message(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode_frame(&msg, Compress::Always).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_frame(&bytes);
    }
}

#[test]
fn compression_follows_the_mode_and_threshold() {
    let big = Message::Response(wire::Response {
        id: 1,
        data: vec![0; 4096],
        code: 0,
    });
    let header_of = |m: &Message, c| {
        let f = encode_frame(m, c).unwrap();
        let hl = u16::from_be_bytes([f[0], f[1]]) as usize;
        f[2..2 + hl].to_vec()
    };
    // Responses are not compressed by the default mode.
    assert_eq!(header_of(&big, Compress::Metadata), vec![0x08, 0x04]);
    assert_eq!(
        header_of(&big, Compress::Always),
        vec![0x08, 0x04, 0x10, 0x01]
    );
    assert_eq!(header_of(&big, Compress::Never), vec![0x08, 0x04]);
    // Below 128 bytes nothing is compressed.
    let small = Message::Close(wire::Close {
        reason: "x".repeat(100),
    });
    assert_eq!(header_of(&small, Compress::Always), vec![0x08, 0x07]);
}

#[test]
fn malformed_frames_are_errors() {
    // Negative header length.
    assert_eq!(
        decode_frame(&[0x80, 0x00]),
        Err(FrameError::NegativeHeaderLength(i16::MIN))
    );
    // Negative and oversized message lengths, judged before the body.
    assert_eq!(
        decode_frame(&[0, 0, 0xff, 0xff, 0xff, 0xff]),
        Err(FrameError::NegativeMessageLength(-1))
    );
    assert_eq!(
        decode_frame(&[0, 0, 0x1d, 0xcd, 0x65, 0x01]),
        Err(FrameError::MessageTooLarge(500_000_001))
    );
    // Each type has its own, lower limit, also judged before the body:
    // a ClusterConfig (type 0) of 500 MB is refused at once...
    assert_eq!(
        decode_frame(&[0, 0, 0x1d, 0xcd, 0x65, 0x00]),
        Err(FrameError::BodyTooLarge {
            kind: "ClusterConfig",
            len: 500_000_000,
            limit: crate::bep::limits::MAX_CLUSTER_CONFIG_BODY
        })
    );
    // ...and a Response (type 4) of exactly its limit waits for the body.
    let limit = crate::bep::limits::MAX_RESPONSE_BODY as u32;
    let mut f = vec![0, 2, 0x08, 0x04];
    f.extend_from_slice(&limit.to_be_bytes());
    assert_eq!(
        decode_frame(&f),
        Ok(Decoded::Incomplete {
            needed: 8 + limit as usize
        })
    );
    f[4..8].copy_from_slice(&(limit + 1).to_be_bytes());
    assert!(matches!(
        decode_frame(&f),
        Err(FrameError::BodyTooLarge {
            kind: "Response",
            ..
        })
    ));
    // Unknown compression.
    assert_eq!(
        decode_frame(&[0, 2, 0x10, 0x05, 0, 0, 0, 0]),
        Err(FrameError::UnknownCompression(5))
    );
    // LZ4 bomb: a Ping claiming 400 KB from 8 bytes.
    let mut bomb = vec![0, 4, 0x08, 0x06, 0x10, 0x01, 0, 0, 0, 12];
    bomb.extend_from_slice(&400_000u32.to_be_bytes());
    bomb.extend_from_slice(&[0xf0; 8]);
    assert!(matches!(
        decode_frame(&bomb),
        Err(FrameError::Lz4(Lz4Error::Bomb { .. }))
    ));
    // Claiming more than a Ping may ever hold: refused before that check.
    bomb[10..14].copy_from_slice(&400_000_000u32.to_be_bytes());
    assert!(matches!(
        decode_frame(&bomb),
        Err(FrameError::Lz4(Lz4Error::TooLarge(400_000_000)))
    ));
    // A body that is not protobuf: refused by the walk that bounds what
    // decoding would allocate, before prost sees it.
    assert!(matches!(
        decode_frame(&[0, 2, 0x08, 0x03, 0, 0, 0, 2, 0xff, 0xff]),
        Err(FrameError::Budget(BudgetError::Malformed {
            kind: "Request"
        }))
    ));
}

#[test]
fn unknown_message_types_are_skipped_whole() {
    let frame = [0, 2, 0x08, 0x63, 0, 0, 0, 3, 1, 2, 3, 9];
    assert_eq!(
        decode_frame(&frame),
        Ok(Decoded::Frame {
            message: Message::Unknown(99),
            consumed: 11
        })
    );
}
