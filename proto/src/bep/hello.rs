//! The Hello exchange: each side sends `magic (u32 BE) | length (u16 BE) |
//! protobuf Hello` right after TLS and reads the peer's, in any order.

use prost::Message as _;

use super::limits::MAX_HELLO;
use super::wire::Hello;

/// Magic of the current (v0.14+) Hello.
pub const MAGIC: u32 = 0x2EA7_D90B;
/// Magics of pre-v0.14 protocols: recognised only to say "too old".
const OLD_MAGICS: [u32; 3] = [0x0001_0000, 0x0001_0001, 0x9F79_BC40];

/// Why a Hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("the peer speaks a pre-v0.14 Syncthing protocol (magic {0:#010x}): too old")]
    TooOld(u32),
    #[error("not the Syncthing protocol (magic {0:#010x})")]
    UnknownMagic(u32),
    #[error("Hello of {0} bytes exceeds the limit of 32767")]
    TooLarge(usize),
    #[error("Hello is not valid protobuf: {0}")]
    Decode(String),
    #[error("our Hello is too large to send ({0} bytes)")]
    OwnTooLarge(usize),
}

/// Encodes a Hello with magic and length.
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, HelloError> {
    let body = hello.encode_to_vec();
    if body.len() > MAX_HELLO {
        return Err(HelloError::OwnTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a Hello from the start of `buf`: `Ok(None)` while more bytes are
/// needed, else the Hello and how many bytes it took. The magic is judged
/// as soon as 4 bytes are there, so a wrong protocol fails fast.
pub fn decode_hello(buf: &[u8]) -> Result<Option<(Hello, usize)>, HelloError> {
    let Some(magic) = buf.first_chunk::<4>().map(|m| u32::from_be_bytes(*m)) else {
        return Ok(None);
    };
    if magic != MAGIC {
        return Err(if OLD_MAGICS.contains(&magic) {
            HelloError::TooOld(magic)
        } else {
            HelloError::UnknownMagic(magic)
        });
    }
    let Some(len) = buf
        .get(4..6)
        .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
    else {
        return Ok(None);
    };
    if len > MAX_HELLO {
        return Err(HelloError::TooLarge(len));
    }
    let Some(body) = buf.get(6..6 + len) else {
        return Ok(None);
    };
    let hello = Hello::decode(body).map_err(|e| HelloError::Decode(e.to_string()))?;
    Ok(Some((hello, 6 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_old_and_foreign_protocols() {
        assert_eq!(
            decode_hello(&[0x9f, 0x79, 0xbc, 0x40, 0, 0]),
            Err(HelloError::TooOld(0x9F79_BC40))
        );
        assert_eq!(
            decode_hello(b"GET / HTTP/1.1"),
            Err(HelloError::UnknownMagic(0x4745_5420))
        );
        assert_eq!(
            decode_hello(&[0x2e, 0xa7, 0xd9, 0x0b, 0x80, 0x00]),
            Err(HelloError::TooLarge(32768))
        );
        assert_eq!(decode_hello(&[0x2e, 0xa7]), Ok(None));
        assert_eq!(decode_hello(&[0x2e, 0xa7, 0xd9, 0x0b, 0, 5, 1]), Ok(None));
    }

    proptest! {
        #[test]
        fn round_trip(name in ".{0,40}", client in "[a-z]{0,12}", version in ".{0,20}",
                      num in any::<i32>(), ts in any::<i64>(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let hello = Hello { device_name: name, client_name: client, client_version: version,
                                num_connections: num, timestamp: ts };
            let mut bytes = encode_hello(&hello).unwrap();
            let n = bytes.len();
            bytes.extend_from_slice(&extra);
            prop_assert_eq!(decode_hello(&bytes).unwrap(), Some((hello, n)));
            for cut in 0..n {
                prop_assert_eq!(decode_hello(&bytes[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = MAGIC.to_be_bytes().to_vec();
            d.extend_from_slice(&data);
            let _ = decode_hello(&d);
        }
    }
}
