//! Codec tests: the exact bytes observed from strelaysrv 1.19.2, limits,
//! and round trips of arbitrary messages.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(bytes: &[u8]) -> Message {
    let (msg, used) = Message::decode_frame(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    msg
}

#[test]
fn join_relay_request_forms_match_the_spec() {
    let old = hex("9e79bc40 00000002 00000000");
    assert_eq!(
        decode_all(&old),
        Message::JoinRelayRequest(JoinRelayRequest { token: None })
    );
    assert_eq!(
        Message::JoinRelayRequest(JoinRelayRequest::default())
            .encode()
            .unwrap(),
        old
    );

    let empty_token = hex("9e79bc40 00000002 00000004 00000000");
    let msg = Message::JoinRelayRequest(JoinRelayRequest {
        token: Some(String::new()),
    });
    assert_eq!(decode_all(&empty_token), msg);
    assert_eq!(msg.encode().unwrap(), empty_token);

    let with_token = Message::JoinRelayRequest(JoinRelayRequest {
        token: Some("abcde".into()),
    });
    assert_eq!(
        with_token.encode().unwrap(),
        hex("9e79bc40 00000002 0000000c 00000005 6162636465 000000")
    );
}

#[test]
fn responses_match_the_observed_bytes() {
    let cases = [
        (0, "9e79bc40 00000004 00000010 00000000 00000007 73756363657373 00"),
        (1, "9e79bc40 00000004 00000014 00000001 00000009 6e6f7420666f756e64 000000"),
        (2, "9e79bc40 00000004 0000001c 00000002 00000011 616c726561647920636f6e6e6563746564 000000"),
        (100, "9e79bc40 00000004 0000001c 00000064 00000012 756e6578706563746564206d657373616765 0000"),
    ];
    for (code, bytes) in cases {
        let bytes = hex(bytes);
        let msg = Message::Response(Response::with_code(code));
        assert_eq!(msg.encode().unwrap(), bytes, "code {code}");
        assert_eq!(decode_all(&bytes), msg);
    }
    assert_eq!(Response::with_code(3).message, "wrong token");
}

#[test]
fn connect_request_and_invitation_match_the_spec() {
    let id: Vec<u8> = (1..=32).collect();
    let mut bytes = hex("9e79bc40 00000005 00000024 00000020");
    bytes.extend_from_slice(&id);
    let msg = Message::ConnectRequest(ConnectRequest {
        id: ShortBytes::new(&id).unwrap(),
    });
    assert_eq!(msg.encode().unwrap(), bytes);
    assert_eq!(decode_all(&bytes), msg);

    let from = [0xaa; 32];
    let key = [0xbb; 32];
    let ip = hex("00000000000000000000ffff7f000001");
    let mut payload = hex("00000020");
    payload.extend_from_slice(&from);
    payload.extend_from_slice(&hex("00000020"));
    payload.extend_from_slice(&key);
    payload.extend_from_slice(&hex("00000010"));
    payload.extend_from_slice(&ip);
    payload.extend_from_slice(&hex("00005633 00000001"));
    assert_eq!(payload.len(), 100);
    let mut frame = hex("9e79bc40 00000006 00000064");
    frame.extend_from_slice(&payload);
    let msg = Message::SessionInvitation(SessionInvitation {
        from: ShortBytes::from_array(from),
        key: ShortBytes::from_array(key),
        address: ShortBytes::new(&ip).unwrap(),
        port: 22067,
        server_socket: true,
    });
    assert_eq!(msg.encode().unwrap(), frame);
    assert_eq!(decode_all(&frame), msg);
}

#[test]
fn empty_messages() {
    for (msg, t) in [
        (Message::Ping, 0),
        (Message::Pong, 1),
        (Message::RelayFull, 7),
    ] {
        let bytes = msg.encode().unwrap();
        assert_eq!(bytes, hex(&format!("9e79bc40 0000000{t} 00000000")));
        assert_eq!(decode_all(&bytes), msg);
    }
}

#[test]
fn header_limits_are_enforced() {
    let bad_magic = hex("16030100 00000000 00000000");
    assert!(matches!(
        Message::decode_frame(&bad_magic),
        Err(CodecError::BadMagic(0x1603_0100))
    ));
    let too_long = hex("9e79bc40 00000004 00000401");
    assert_eq!(
        Message::decode_frame(&too_long),
        Err(CodecError::BadLength(1025))
    );
    let negative = hex("9e79bc40 00000004 ffffffff");
    assert_eq!(
        Message::decode_frame(&negative),
        Err(CodecError::BadLength(-1))
    );
    let unknown = hex("9e79bc40 00000008 00000000");
    assert_eq!(
        Message::decode_frame(&unknown),
        Err(CodecError::UnknownType(8))
    );
    let max = hex("9e79bc40 00000000 00000400");
    assert_eq!(
        Header::decode(max[..12].try_into().unwrap())
            .unwrap()
            .length,
        1024
    );
}

#[test]
fn opaque_fields_are_bounded_before_use() {
    // A key claiming 33 bytes.
    let mut bytes = hex("9e79bc40 00000003 00000028 00000021");
    bytes.extend_from_slice(&[0; 36]);
    assert!(matches!(
        Message::decode_frame(&bytes),
        Err(CodecError::TooLong {
            len: 33,
            max: 32,
            ..
        })
    ));
    // A length that runs past the payload.
    let short = hex("9e79bc40 00000003 00000008 00000020 01020304");
    assert!(matches!(
        Message::decode_frame(&short),
        Err(CodecError::Truncated(_))
    ));
    // A string claiming 4 GiB.
    let huge = hex("9e79bc40 00000004 00000008 00000000 ffffffff");
    assert!(matches!(
        Message::decode_frame(&huge),
        Err(CodecError::TooLong { .. })
    ));
    assert!(ShortBytes::new(&[0; 33]).is_err());
    // Too long to send.
    let msg = Message::Response(Response {
        code: 0,
        message: "x".repeat(1100),
    });
    assert!(msg.encode().is_err());
}

#[test]
fn partial_frames_ask_for_more() {
    let bytes = Message::Response(Response::with_code(1)).encode().unwrap();
    for cut in 0..bytes.len() {
        assert_eq!(Message::decode_frame(&bytes[..cut]), Ok(None), "cut {cut}");
    }
    let mut two = bytes.clone();
    two.extend_from_slice(&Message::Ping.encode().unwrap());
    let (_, used) = Message::decode_frame(&two).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(
        Message::decode_frame(&two[used..]).unwrap().unwrap().0,
        Message::Ping
    );
}

#[test]
fn lenient_where_the_reference_is() {
    // Trailing bytes after the fields, a uint16's high half, a bool's
    // non-canonical value: ignored as by the reference reader.
    let ping = hex("9e79bc40 00000000 00000004 deadbeef");
    assert_eq!(decode_all(&ping), Message::Ping);
    let mut inv = hex("9e79bc40 00000006 00000014 00000000 00000000 00000000 ffff5633 00000101");
    inv.truncate(12 + 20);
    let Message::SessionInvitation(i) = decode_all(&inv) else {
        panic!("not an invitation")
    };
    assert_eq!((i.port, i.server_socket), (22067, true));
}

#[test]
fn relay_uris() {
    let id = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2";
    let uri: RelayUri =
        format!("relay://127.0.0.1:22067/?id={id}&pingInterval=1m0s&token=s%20e%26c")
            .parse()
            .unwrap();
    assert_eq!(uri.host, "127.0.0.1");
    assert_eq!(uri.port, 22067);
    assert_eq!(uri.id.unwrap().to_string(), id);
    assert_eq!(uri.token.as_deref(), Some("s e&c"));
    assert_eq!(uri.params, vec![("pingInterval".into(), "1m0s".into())]);
    let again: RelayUri = uri.to_string().parse().unwrap();
    assert_eq!(again, uri);
    assert!(!uri.without_token().to_string().contains("token"));

    let v6: RelayUri = "relay://[::1]:443".parse().unwrap();
    assert_eq!((v6.host.as_str(), v6.port, v6.id), ("::1", 443, None));
    assert_eq!(v6.authority(), "[::1]:443");
    assert_eq!(v6.to_string(), "relay://[::1]:443/");
    let default_port: RelayUri = "relay://relay.example".parse().unwrap();
    assert_eq!(default_port.port, DEFAULT_PORT);

    assert!(matches!(
        "tcp://1.2.3.4:5".parse::<RelayUri>(),
        Err(RelayUriError::Scheme(_))
    ));
    assert!(matches!(
        "relay://1.2.3.4:5/?id=nonsense".parse::<RelayUri>(),
        Err(RelayUriError::BadId(..))
    ));
    assert!("relay://:22067/".parse::<RelayUri>().is_err());
    // The form 1.19.2 prints: raw spaces in providedBy.
    let raw: RelayUri = format!("relay://127.0.0.1:22067/?id={id}&providedBy=test relay")
        .parse()
        .unwrap();
    assert_eq!(raw.params[0].1, "test relay");
}

#[test]
fn go_durations() {
    let cases = [
        (0, "0s"),
        (200, "200ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (60_000, "1m0s"),
        (120_000, "2m0s"),
        (90_250, "1m30.25s"),
        (3_600_000, "1h0m0s"),
    ];
    for (ms, s) in cases {
        assert_eq!(format_go_duration(Duration::from_millis(ms)), s);
    }
}

fn short_bytes() -> impl Strategy<Value = ShortBytes> {
    proptest::collection::vec(any::<u8>(), 0..=32).prop_map(|v| ShortBytes::new(&v).unwrap())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Ping),
        Just(Message::Pong),
        Just(Message::RelayFull),
        proptest::option::of(".{0,200}")
            .prop_map(|token| Message::JoinRelayRequest(JoinRelayRequest { token })),
        short_bytes().prop_map(|key| Message::JoinSessionRequest(JoinSessionRequest { key })),
        (any::<i32>(), ".{0,200}")
            .prop_map(|(code, message)| Message::Response(Response { code, message })),
        short_bytes().prop_map(|id| Message::ConnectRequest(ConnectRequest { id })),
        (
            short_bytes(),
            short_bytes(),
            short_bytes(),
            any::<u16>(),
            any::<bool>()
        )
            .prop_map(|(from, key, address, port, server_socket)| {
                Message::SessionInvitation(SessionInvitation {
                    from,
                    key,
                    address,
                    port,
                    server_socket,
                })
            }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let bytes = msg.encode().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let (back, used) = Message::decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = Message::decode_frame(&bytes);
        let mut framed = MAGIC.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = Message::decode_frame(&framed);
    }
}
