//! The discovery server's snapshot file, damaged in any way (torn write,
//! bad disk, a file from elsewhere): loading keeps what was readable,
//! never panics, and everything kept is a well-formed record that the
//! store counts. Input: the load's time (u32 LE, Unix seconds), then the
//! file's bytes (the seeds are real snapshots).
#![no_main]

use discosrv::fuzzing::{load_snapshot, View, MAX_ADDRESSES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((now, file)) = data.split_first_chunk::<4>() else {
        return;
    };
    let now_ns = i64::from(u32::from_le_bytes(*now)) * 1_000_000_000;
    let load = load_snapshot(file, now_ns);
    assert_eq!(load.usage.0, load.held.len() as u64);
    assert!(load.held.len() as u64 <= load.records);
    for record in &load.held {
        let view = View::new(record).expect("a held record is well-formed");
        assert!(view.count() <= MAX_ADDRESSES);
        assert_eq!(view.addrs().count(), view.count());
    }
    if load.complete {
        // A whole file ends with its record count.
        assert!(file.len() >= 16 + 12);
    }
});
