//! LZ4 as BEP uses it: a 4-byte big-endian uncompressed length followed by
//! one raw LZ4 block (no frame header, no checksum).

use super::limits::{MAX_LZ4_RATIO, MAX_MESSAGE};

/// Why a compressed payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    #[error("LZ4 payload of {0} bytes is shorter than its 4-byte length prefix")]
    Short(usize),
    #[error("LZ4 payload announces {0} uncompressed bytes, over the limit")]
    TooLarge(usize),
    #[error("LZ4 payload announces {claimed} bytes from {compressed} compressed bytes: impossible ratio (decompression bomb)")]
    Bomb { claimed: usize, compressed: usize },
    #[error("LZ4 block is corrupt: {0}")]
    Corrupt(String),
    #[error("LZ4 block decompressed to {got} bytes, but {claimed} were announced")]
    LengthMismatch { claimed: usize, got: usize },
}

/// Compresses `data` into prefix + block, or returns None when it would not
/// save at least 1/32 of the size (Syncthing's rule: at most `n - n/32`).
pub fn compress_if_worth_it(data: &[u8]) -> Option<Vec<u8>> {
    let n = data.len();
    let budget = n - n / 32;
    let prefix = u32::try_from(n).ok()?;
    let block = lz4_flex::block::compress(data);
    if block.len() + 4 > budget {
        return None;
    }
    let mut out = Vec::with_capacity(block.len() + 4);
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(&block);
    Some(out)
}

/// Decompresses prefix + block, refusing sizes over `MAX_MESSAGE` and
/// ratios LZ4 cannot produce, before allocating.
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, Lz4Error> {
    decompress_within(payload, MAX_MESSAGE)
}

/// `decompress` with a lower limit than `MAX_MESSAGE` (a message type's).
pub fn decompress_within(payload: &[u8], limit: usize) -> Result<Vec<u8>, Lz4Error> {
    let Some((prefix, block)) = payload.split_first_chunk::<4>() else {
        return Err(Lz4Error::Short(payload.len()));
    };
    let claimed = u32::from_be_bytes(*prefix) as usize;
    if claimed > limit.min(MAX_MESSAGE) {
        return Err(Lz4Error::TooLarge(claimed));
    }
    if claimed > block.len().saturating_mul(MAX_LZ4_RATIO).saturating_add(16) {
        return Err(Lz4Error::Bomb {
            claimed,
            compressed: block.len(),
        });
    }
    let out = lz4_flex::block::decompress(block, claimed)
        .map_err(|e| Lz4Error::Corrupt(e.to_string()))?;
    if out.len() != claimed {
        return Err(Lz4Error::LengthMismatch {
            claimed,
            got: out.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn incompressible_data_is_left_alone() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(compress_if_worth_it(&data), None);
    }

    #[test]
    fn repetitive_data_compresses_and_round_trips() {
        let data = vec![7u8; 10_000];
        let c = compress_if_worth_it(&data).unwrap();
        assert_eq!(&c[..4], &10_000u32.to_be_bytes());
        assert_eq!(decompress(&c).unwrap(), data);
    }

    #[test]
    fn bombs_and_garbage_are_refused_without_allocating() {
        // 400 MB claimed from 10 bytes.
        let mut bomb = 400_000_000u32.to_be_bytes().to_vec();
        bomb.extend_from_slice(&[0x1f; 10]);
        assert!(matches!(decompress(&bomb), Err(Lz4Error::Bomb { .. })));
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 100]);
        assert!(matches!(decompress(&huge), Err(Lz4Error::TooLarge(_))));
        assert!(matches!(decompress(&[0, 0]), Err(Lz4Error::Short(2))));
        let mut bad = 100u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decompress(&bad).is_err());
        // A block that decodes to less than announced.
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(&lz4_flex::block::compress(b"hello"));
        assert!(decompress(&short).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 0..5000)) {
            if let Some(c) = compress_if_worth_it(&data) {
                prop_assert!(c.len() <= data.len() - data.len() / 32);
                prop_assert_eq!(decompress(&c).unwrap(), data);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decompress(&data);
        }
    }
}
