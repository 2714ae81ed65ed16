//! BEP's LZ4 form: hostile payloads must be refused without panicking or
//! allocating beyond the limit; what we compress must decompress back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::bep::lz4;

fuzz_target!(|data: &[u8]| {
    let (limit, payload) = match data.split_first_chunk::<3>() {
        Some((l, p)) => (u32::from_le_bytes([l[0], l[1], l[2], 0]) as usize, p),
        None => (0, data),
    };
    if let Ok(out) = lz4::decompress_within(payload, limit) {
        assert!(out.len() <= limit);
        let claimed = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
        assert_eq!(out.len(), claimed);
    }
    let _ = lz4::decompress(payload);
    if let Some(c) = lz4::compress_if_worth_it(data) {
        assert!(c.len() <= data.len() - data.len() / 32);
        assert_eq!(
            lz4::decompress(&c).expect("own compression decompresses"),
            data
        );
    }
});
