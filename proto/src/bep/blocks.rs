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

/// Blocks hashed in one multi-buffer call: 16 fill the AVX-512 lanes.
const LANES: usize = 16;
/// Fewer blocks than this are hashed one by one.
const MIN_LANES: usize = 4;

/// The BlockInfos of `data`, found at `offset` and cut into blocks of `bs`
/// bytes (the last may be shorter). Independent blocks are hashed several
/// at once, one per SIMD lane, which runs about twice as fast per core as
/// one SHA-256 stream with the SHA extensions.
pub fn hash_blocks(offset: u64, data: &[u8], bs: usize) -> Vec<BlockInfo> {
    let bs = bs.max(1);
    let mut out = Vec::with_capacity(data.len().div_ceil(bs));
    let mut digests = [[0u8; 32]; LANES];
    let mut pos = 0usize;
    while pos < data.len() {
        let group: Vec<&[u8]> = data[pos..].chunks(bs).take(LANES).collect();
        let n = group.len();
        sha256_each(&group, &mut digests[..n]);
        for (block, digest) in group.iter().zip(&digests[..n]) {
            out.push(BlockInfo {
                offset: (offset + pos as u64) as i64,
                size: block.len() as i32,
                hash: digest.to_vec(),
            });
            pos += block.len();
        }
    }
    out
}

/// The SHA-256 of each of `blocks` into `digests` (one each): up to
/// [`LANES`] at once in SIMD lanes when there are enough of them to fill
/// lanes, one stream each (SHA extensions) otherwise.
pub fn sha256_each(blocks: &[&[u8]], digests: &mut [[u8; 32]]) {
    for (group, out) in blocks.chunks(LANES).zip(digests.chunks_mut(LANES)) {
        let n = group.len().min(out.len());
        if n < MIN_LANES {
            for (d, block) in out.iter_mut().zip(group) {
                d.copy_from_slice(&Sha256::digest(block));
            }
        } else {
            tape_sha256::hash_many(&group[..n], &mut out[..n]);
        }
    }
}

/// The BlockInfo of `data` found at `offset`.
pub fn hash_block(offset: u64, data: &[u8]) -> BlockInfo {
    BlockInfo {
        offset: offset as i64,
        size: data.len() as i32,
        hash: Sha256::digest(data).to_vec(),
    }
}

/// The block list of an empty file: one empty block (size 0, the SHA-256
/// of nothing), as every Syncthing version announces it; 2.1.2 refuses a
/// valid file with no blocks at all.
pub fn empty_file_blocks() -> Vec<BlockInfo> {
    vec![hash_block(0, &[])]
}

/// `blocks_hash` as 2.x computes it: SHA-256 over each block's hash.
/// (1.19.2 appended each block's weak hash; weak hashes are gone in 2.x.)
/// 1.x uses it only as a shortcut before comparing block lists in full,
/// but 2.x compares a change's `previous_blocks_hash` with the
/// `blocks_hash` it holds to tell an update from a conflict, so ours must
/// be what a 2.x device computes for the same blocks.
pub fn blocks_hash(blocks: &[BlockInfo]) -> Vec<u8> {
    let mut h = Sha256::new();
    for b in blocks {
        h.update(&b.hash);
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
        // Block hashes as the real v1.19.2 scanner computes them;
        // blocks_hash as 2.x does (SHA-256 of the block hashes only).
        let b = hash_block(0, b"hello world\n");
        assert_eq!(
            hex(&blocks_hash(&[b])),
            "f83e4b6bba3efac41f1ff56ee97adf7454680fee778924cb5ba06311d136ad1c"
        );
        let empty = empty_file_blocks();
        assert_eq!(
            hex(&empty[0].hash),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&blocks_hash(&empty)),
            "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
        );
    }

    proptest::proptest! {
        #[test]
        fn many_blocks_at_once_hash_as_one_at_a_time(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40_000),
            bs in 1usize..3000,
            offset in 0u64..1 << 40,
        ) {
            let one_by_one: Vec<BlockInfo> = data
                .chunks(bs)
                .enumerate()
                .map(|(i, c)| hash_block(offset + (i * bs) as u64, c))
                .collect();
            proptest::prop_assert_eq!(hash_blocks(offset, &data, bs), one_by_one);
        }

        #[test]
        fn independent_blocks_of_any_sizes_hash_as_one_at_a_time(
            blocks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000), 0..40),
        ) {
            let slices: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
            let mut digests = vec![[0u8; 32]; slices.len()];
            sha256_each(&slices, &mut digests);
            for (block, digest) in slices.iter().zip(&digests) {
                proptest::prop_assert_eq!(&Sha256::digest(block)[..], &digest[..]);
            }
        }
    }
}
