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

const ADLER_MOD: u64 = 65521;

/// Adler-32, the weak hash v1.19.2 still sends with every block. It costs
/// almost as much as SHA-256 when computed byte by byte, so it uses AVX2
/// where the CPU has it, else a form the compiler vectorises.
pub fn adler32(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            let (a, b) = unsafe { adler_avx2::sums(1, 0, data) };
            return ((b << 16) | a) as u32;
        }
    }
    let (a, b) = adler_portable(1, 0, data);
    ((b << 16) | a) as u32
}

/// Closed form over 32-byte runs (for n bytes x_i:
/// `b += n*a + sum((n-i)*x_i)`, `a += sum(x_i)`), vectorised by the
/// compiler. u64 sums cannot overflow within 64 KiB between modulos.
fn adler_portable(mut a: u64, mut b: u64, data: &[u8]) -> (u64, u64) {
    const RUN: usize = 64 * 1024;
    const LANES: usize = 32;
    for run in data.chunks(RUN) {
        let mut lanes = run.chunks_exact(LANES);
        for chunk in &mut lanes {
            let (mut s1, mut s2) = (0u32, 0u32);
            for (i, &x) in chunk.iter().enumerate() {
                s1 += u32::from(x);
                s2 += (LANES - i) as u32 * u32::from(x);
            }
            b += LANES as u64 * a + u64::from(s2);
            a += u64::from(s1);
        }
        for &x in lanes.remainder() {
            a += u64::from(x);
            b += a;
        }
        a %= ADLER_MOD;
        b %= ADLER_MOD;
    }
    (a, b)
}

#[cfg(target_arch = "x86_64")]
mod adler_avx2 {
    use std::arch::x86_64::*;

    use super::{adler_portable, ADLER_MOD};

    /// Runs of at most 173 blocks of 32 bytes (zlib's NMAX, 5552 bytes)
    /// keep every 32-bit lane below overflow.
    const BLOCKS_PER_RUN: usize = 5552 / 32;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sums(mut a: u64, mut b: u64, data: &[u8]) -> (u64, u64) {
        let zero = _mm256_setzero_si256();
        let ones = _mm256_set1_epi16(1);
        // Weight of byte i in a 32-byte block is 32 - i (element 0 first).
        let weights = _mm256_set_epi8(
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 27, 28, 29, 30, 31, 32,
        );
        let whole = data.len() / 32 * 32;
        for run in data[..whole].chunks(BLOCKS_PER_RUN * 32) {
            let (mut vs1, mut vs1_prefix, mut vs2) = (zero, zero, zero);
            for block in run.chunks_exact(32) {
                // SAFETY: `block` is exactly 32 readable bytes; unaligned load.
                let v = _mm256_loadu_si256(block.as_ptr().cast::<__m256i>());
                vs1_prefix = _mm256_add_epi32(vs1_prefix, vs1);
                vs1 = _mm256_add_epi32(vs1, _mm256_sad_epu8(v, zero));
                let pairs = _mm256_maddubs_epi16(v, weights);
                vs2 = _mm256_add_epi32(vs2, _mm256_madd_epi16(pairs, ones));
            }
            let n = (run.len() / 32) as u64;
            b += 32 * n * a + 32 * hsum(vs1_prefix) + hsum(vs2);
            a += hsum(vs1);
            a %= ADLER_MOD;
            b %= ADLER_MOD;
        }
        adler_portable(a, b, &data[whole..])
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256i) -> u64 {
        let mut lanes = [0u32; 8];
        // SAFETY: 32 writable bytes; unaligned store.
        _mm256_storeu_si256(lanes.as_mut_ptr().cast::<__m256i>(), v);
        lanes.iter().map(|&x| u64::from(x)).sum()
    }
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
                weak_hash: adler32(block),
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

        #[test]
        fn adler32_matches_the_textbook_loop(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)) {
            let (mut a, mut b) = (1u64, 0u64);
            for &x in &data {
                a = (a + u64::from(x)) % 65521;
                b = (b + a) % 65521;
            }
            proptest::prop_assert_eq!(adler32(&data), ((b << 16) | a) as u32);
            let (pa, pb) = adler_portable(1, 0, &data);
            proptest::prop_assert_eq!(((pb << 16) | pa) as u32, ((b << 16) | a) as u32);
        }
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
