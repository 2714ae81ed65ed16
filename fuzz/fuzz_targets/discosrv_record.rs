//! The embedded store's compact record: any bytes are checked by
//! `View::new` without panicking; what `encode` writes is accepted and
//! reads back as the same addresses (exactly the same text, and the same
//! expiry within the 2 h window a record can express); `merge` keeps its
//! bounds.
#![no_main]

use arbitrary::Arbitrary;
use discosrv::fuzzing::{encode, merge, Addr, View, MAX_ADDRESSES};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    id: [u8; 32],
    seen_s: u32,
    addrs: Vec<(String, u16)>,
    new: Vec<String>,
    now_delta: u16,
}

fuzz_target!(|input: Input| {
    if let Ok(view) = View::new(&input.raw) {
        assert_eq!(view.addrs().count(), view.count());
        assert_eq!(view.expiries().count(), view.count());
    }

    let seen_ns = i64::from(input.seen_s) * 1_000_000_000;
    // The latest expiry a record holds: its announcement + 2 h.
    let base = input.seen_s.saturating_add(7200);
    let addrs: Vec<Addr> = input
        .addrs
        .iter()
        .map(|(url, back)| Addr {
            url: url.clone(),
            expires: base.saturating_sub(u32::from(*back)),
        })
        .collect();
    let bytes = encode(&input.id, seen_ns, &addrs);
    let view = View::new(&bytes).expect("an encoded record is well-formed");
    assert_eq!(view.id(), input.id);
    assert_eq!(view.seen_ns(), seen_ns);
    let back: Vec<Addr> = view.addrs().collect();
    let kept = addrs.len().min(MAX_ADDRESSES);
    assert_eq!(back, addrs[..kept], "record does not read back");

    let now = input.seen_s.saturating_add(u32::from(input.now_delta));
    let merged = merge(back.into_iter(), &input.new, base, now);
    assert!(merged.len() <= MAX_ADDRESSES);
    assert!(
        merged.windows(2).all(|w| w[0].url < w[1].url),
        "merge not sorted and unique"
    );
    assert!(merged
        .iter()
        .all(|a| a.expires > now || input.new.contains(&a.url)));
});
