//! Blocks: the block-size rule, per-block hashes and `blocks_hash`.

use sha2::{Digest, Sha256};

use super::wire::BlockInfo;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The block sizes a file may use, smallest first.
pub const BLOCK_SIZES: [usize; 8] = [
    128 * KIB,
    256 * KIB,
    512 * KIB,
    MIB,
    2 * MIB,
    4 * MIB,
    8 * MIB,
    16 * MIB,
];
/// Smallest block size; also what a missing or smaller `block_size` means.
pub const MIN_BLOCK_SIZE: usize = BLOCK_SIZES[0];
/// Files aim for fewer than this many blocks.
const DESIRED_BLOCKS_PER_FILE: u64 = 2000;

/// The smallest block size giving fewer than 2000 blocks, else 16 MiB.
pub fn block_size(file_size: u64) -> usize {
    BLOCK_SIZES
        .iter()
        .copied()
        .find(|&b| file_size < DESIRED_BLOCKS_PER_FILE * b as u64)
        .unwrap_or(BLOCK_SIZES[BLOCK_SIZES.len() - 1])
}

/// Block size for a rescanned file that was hashed with `previous` before:
/// the old size is kept while the new one is within a factor of two, so a
/// file growing past a boundary is not rehashed with all-new blocks.
pub fn block_size_for_rescan(file_size: u64, previous: usize) -> usize {
    let new = block_size(file_size);
    if !BLOCK_SIZES.contains(&previous) {
        return new;
    }
    let (small, large) = if new < previous {
        (new, previous)
    } else {
        (previous, new)
    };
    if large / small <= 2 {
        previous
    } else {
        new
    }
}

/// Effective block size of a FileInfo's `block_size` field (0 or anything
/// below 128 KiB means 128 KiB).
pub fn effective_block_size(field: i32) -> usize {
    usize::try_from(field).unwrap_or(0).max(MIN_BLOCK_SIZE)
}

/// Adler-32, the weak hash v1.19.2 still sends with every block.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    // 5552 is the largest run that cannot overflow u32 before the modulo.
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// The BlockInfo of `data` found at `offset`.
pub fn hash_block(offset: u64, data: &[u8]) -> BlockInfo {
    BlockInfo {
        offset: offset as i64,
        size: data.len() as i32,
        hash: Sha256::digest(data).to_vec(),
        weak_hash: adler32(data),
    }
}

/// The block list of an empty file: one empty block. Syncthing gives it no
/// weak hash (0, not Adler-32's 1), which `blocks_hash` depends on.
pub fn empty_file_blocks() -> Vec<BlockInfo> {
    vec![BlockInfo {
        weak_hash: 0,
        ..hash_block(0, &[])
    }]
}

/// `blocks_hash` as v1.19.2 computes it: SHA-256 over each block's hash
/// followed by its weak hash (big-endian). Only a shortcut for comparing
/// block lists, so newer peers computing it differently still interoperate.
pub fn blocks_hash(blocks: &[BlockInfo]) -> Vec<u8> {
    let mut h = Sha256::new();
    for b in blocks {
        h.update(&b.hash);
        h.update(b.weak_hash.to_be_bytes());
    }
    h.finalize().to_vec()
}

/// Whether two block lists describe the same content.
pub fn same_blocks(a: &[BlockInfo], b: &[BlockInfo]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.hash == y.hash && x.size == y.size && x.offset == y.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn block_size_table_of_the_spec() {
        let mib = MIB as u64;
        assert_eq!(block_size(0), 128 * KIB);
        assert_eq!(block_size(250 * mib - 1), 128 * KIB);
        assert_eq!(block_size(250 * mib), 256 * KIB);
        assert_eq!(block_size(500 * mib), 512 * KIB);
        assert_eq!(block_size(1000 * mib), MIB);
        assert_eq!(block_size(2000 * mib), 2 * MIB);
        assert_eq!(block_size(4000 * mib), 4 * MIB);
        assert_eq!(block_size(8000 * mib - 1), 4 * MIB);
        assert_eq!(block_size(8000 * mib), 8 * MIB);
        assert_eq!(block_size(16000 * mib), 16 * MIB);
        assert_eq!(block_size(u64::MAX), 16 * MIB);
    }

    #[test]
    fn rescan_keeps_block_size_within_a_factor_of_two() {
        let mib = MIB as u64;
        assert_eq!(block_size_for_rescan(260 * mib, 128 * KIB), 128 * KIB);
        assert_eq!(block_size_for_rescan(600 * mib, 128 * KIB), 512 * KIB);
        assert_eq!(block_size_for_rescan(10 * mib, 256 * KIB), 256 * KIB);
        assert_eq!(block_size_for_rescan(10 * mib, 512 * KIB), 128 * KIB);
        assert_eq!(block_size_for_rescan(10 * mib, 12345), 128 * KIB);
    }

    #[test]
    fn effective_block_size_floors_at_128k() {
        assert_eq!(effective_block_size(0), MIN_BLOCK_SIZE);
        assert_eq!(effective_block_size(-5), MIN_BLOCK_SIZE);
        assert_eq!(effective_block_size(1 << 20), 1 << 20);
    }

    #[test]
    fn hashes_match_what_syncthing_1_19_2_computes() {
        // Values verified against the real v1.19.2 scanner.
        let b = hash_block(0, b"hello world\n");
        assert_eq!(b.weak_hash, 510788711);
        assert_eq!(
            hex(&blocks_hash(&[b])),
            "3f239ad116d5263377587b05e995ce95142f530fd76a1e33681bc9b2e34f582b"
        );
        let empty = empty_file_blocks();
        assert_eq!(
            hex(&empty[0].hash),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&blocks_hash(&empty)),
            "d3bfe98e8f1ce891614854569a20f5f4508d6ab4025b872b7b3a8282ef75b12a"
        );
    }

    #[test]
    fn adler32_handles_long_inputs() {
        // Reference value of Adler-32 over 1 MiB of 0xff, computed naively.
        let data = vec![0xffu8; MIB];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &data {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(adler32(&data), ((b << 16) | a) as u32);
    }
}
