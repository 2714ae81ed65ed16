//! Version vectors: `compare` and `merge` against a reference model (a map
//! from device to counter, missing = 0), and the laws the model implies.
//! Input vectors come from peers, so they may be unsorted or repeat a
//! device: the reference reads a repeated device as its largest counter.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::bep::vector::{self, Ordering};
use proto::bep::wire::{Counter, Vector};

#[derive(Arbitrary, Debug)]
struct Input {
    a: Vec<(u8, u64)>,
    b: Vec<(u8, u64)>,
    update_id: u8,
    now: u64,
}

fn to_vector(c: &[(u8, u64)]) -> Vector {
    Vector {
        counters: c
            .iter()
            .map(|&(id, value)| Counter {
                id: u64::from(id),
                value,
            })
            .collect(),
    }
}

fn model(v: &Vector) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for c in &v.counters {
        let e = m.entry(c.id).or_insert(0);
        *e = (*e).max(c.value);
    }
    m.retain(|_, v| *v != 0);
    m
}

fn model_compare(a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>) -> Ordering {
    let ids: std::collections::BTreeSet<u64> = a.keys().chain(b.keys()).copied().collect();
    let (mut greater, mut lesser, mut first) = (false, false, None);
    for id in ids {
        let (x, y) = (
            a.get(&id).copied().unwrap_or(0),
            b.get(&id).copied().unwrap_or(0),
        );
        if x != y && first.is_none() {
            first = Some(x > y);
        }
        greater |= x > y;
        lesser |= x < y;
    }
    match (greater, lesser, first) {
        (false, false, _) => Ordering::Equal,
        (true, false, _) => Ordering::Greater,
        (false, true, _) => Ordering::Lesser,
        (true, true, Some(true)) => Ordering::ConcurrentGreater,
        (true, true, _) => Ordering::ConcurrentLesser,
    }
}

fn flip(o: Ordering) -> Ordering {
    match o {
        Ordering::Equal => Ordering::Equal,
        Ordering::Greater => Ordering::Lesser,
        Ordering::Lesser => Ordering::Greater,
        Ordering::ConcurrentGreater => Ordering::ConcurrentLesser,
        Ordering::ConcurrentLesser => Ordering::ConcurrentGreater,
    }
}

fuzz_target!(|input: Input| {
    let (a, b) = (to_vector(&input.a), to_vector(&input.b));
    let (ma, mb) = (model(&a), model(&b));
    let unique = |v: &Vector| {
        let mut ids: Vec<u64> = v.counters.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.windows(2).all(|w| w[0] != w[1])
    };

    let ab = vector::compare(&a, &b);
    assert_eq!(vector::compare(&b, &a), flip(ab));
    assert_eq!(vector::compare(&a, &a), Ordering::Equal);
    if unique(&a) && unique(&b) {
        assert_eq!(
            ab,
            model_compare(&ma, &mb),
            "compare differs from the model"
        );
    }

    let m = vector::merge(&a, &b);
    assert!(vector::is_sorted(&m) || !unique(&a) || !unique(&b));
    assert_eq!(
        model(&m),
        model(&vector::merge(&b, &a)),
        "merge not commutative"
    );
    if unique(&a) && unique(&b) {
        let mut want = ma.clone();
        for (id, v) in &mb {
            let e = want.entry(*id).or_insert(0);
            *e = (*e).max(*v);
        }
        assert_eq!(model(&m), want, "merge differs from the model");
        assert!(matches!(
            vector::compare(&m, &a),
            Ordering::Greater | Ordering::Equal
        ));
        assert!(matches!(
            vector::compare(&m, &b),
            Ordering::Greater | Ordering::Equal
        ));
        assert_eq!(vector::compare(&vector::merge(&m, &a), &m), Ordering::Equal);
    }

    // A local change makes a sorted vector a strict descendant (unless the
    // counter is already at its maximum).
    let mut sorted = to_vector(&input.a);
    sorted.counters.sort_by_key(|c| c.id);
    sorted.counters.dedup_by_key(|c| c.id);
    let id = u64::from(input.update_id);
    let before = vector::counter(&sorted, id);
    let mut updated = sorted.clone();
    vector::update(&mut updated, id, input.now);
    assert!(vector::is_sorted(&updated));
    if before < u64::MAX {
        assert!(vector::counter(&updated, id) > before);
        assert_eq!(vector::compare(&updated, &sorted), Ordering::Greater);
    }
});
