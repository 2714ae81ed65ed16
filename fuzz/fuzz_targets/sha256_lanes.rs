//! The multi-lane SHA-256 that verifies received blocks (`tape-sha256`
//! through `sha256_each`, and `hash_blocks`) against the portable `sha2`:
//! any number of blocks, any lengths, lanes of unequal length.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::bep::blocks::{hash_blocks, sha256_each};
use sha2::{Digest, Sha256};

#[derive(Arbitrary, Debug)]
struct Input {
    data: Vec<u8>,
    /// Cut points into `data` (each block is a slice of it, lengths vary).
    cuts: Vec<(u16, u16)>,
    /// A large block made of one repeated byte, up to 1 MiB.
    big: Option<(u8, u32)>,
    block_size: u16,
}

fuzz_target!(|input: Input| {
    let big = input.big.map(|(b, n)| vec![b; (n as usize) % (1 << 20)]);
    let mut blocks: Vec<&[u8]> = Vec::new();
    for &(start, len) in &input.cuts {
        let start = usize::from(start).min(input.data.len());
        let end = (start + usize::from(len)).min(input.data.len());
        blocks.push(&input.data[start..end]);
    }
    if let Some(big) = &big {
        blocks.push(big);
    }
    let mut digests = vec![[0u8; 32]; blocks.len()];
    sha256_each(&blocks, &mut digests);
    for (block, digest) in blocks.iter().zip(&digests) {
        assert_eq!(
            digest[..],
            Sha256::digest(block)[..],
            "block of {} bytes",
            block.len()
        );
    }
    let bs = usize::from(input.block_size).max(1);
    let infos = hash_blocks(7, &input.data, bs);
    let mut offset = 0usize;
    for (info, chunk) in infos.iter().zip(input.data.chunks(bs)) {
        assert_eq!(info.offset as usize, 7 + offset);
        assert_eq!(info.size as usize, chunk.len());
        assert_eq!(info.hash[..], Sha256::digest(chunk)[..]);
        offset += chunk.len();
    }
    assert_eq!(infos.len(), input.data.len().div_ceil(bs));
});
