//! Version vectors: one counter per device that changed a file, kept
//! sorted by short device ID.

use std::cmp::Ordering as Cmp;

use super::wire::{Counter, Vector};

/// How vector `a` relates to vector `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Equal,
    /// `a` is a strict descendant of `b`.
    Greater,
    /// `a` is a strict ancestor of `b`.
    Lesser,
    /// Concurrent; `a` is larger at the lowest differing counter.
    ConcurrentGreater,
    /// Concurrent; `a` is smaller at the lowest differing counter.
    ConcurrentLesser,
}

impl Ordering {
    pub fn is_concurrent(self) -> bool {
        matches!(
            self,
            Ordering::ConcurrentGreater | Ordering::ConcurrentLesser
        )
    }
}

/// Records a local change by device `short_id` at `now_unix_s`: its counter
/// becomes `max(old + 1, now)`, or `max(1, now)` when it had none. Counters
/// stay sorted by id.
pub fn update(v: &mut Vector, short_id: u64, now_unix_s: u64) {
    match v.counters.binary_search_by_key(&short_id, |c| c.id) {
        Ok(i) => {
            let c = &mut v.counters[i];
            c.value = c.value.saturating_add(1).max(now_unix_s);
        }
        Err(i) => v.counters.insert(
            i,
            Counter {
                id: short_id,
                value: now_unix_s.max(1),
            },
        ),
    }
}

/// Counter of `short_id`, 0 when absent.
pub fn counter(v: &Vector, short_id: u64) -> u64 {
    v.counters
        .iter()
        .find(|c| c.id == short_id)
        .map_or(0, |c| c.value)
}

/// Element-wise maximum of `a` and `b`.
pub fn merge(a: &Vector, b: &Vector) -> Vector {
    let mut out = Vec::with_capacity(a.counters.len() + b.counters.len());
    walk(a, b, |id, x, y| {
        out.push(Counter {
            id,
            value: x.max(y),
        })
    });
    Vector { counters: out }
}

/// Compares `a` with `b` (missing counters count as 0).
pub fn compare(a: &Vector, b: &Vector) -> Ordering {
    let (mut greater, mut lesser) = (false, false);
    let mut first_difference: Option<Cmp> = None;
    walk(a, b, |_, x, y| {
        let c = x.cmp(&y);
        if c != Cmp::Equal && first_difference.is_none() {
            first_difference = Some(c);
        }
        greater |= c == Cmp::Greater;
        lesser |= c == Cmp::Less;
    });
    match (greater, lesser) {
        (false, false) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Lesser,
        (true, true) => match first_difference {
            Some(Cmp::Greater) => Ordering::ConcurrentGreater,
            _ => Ordering::ConcurrentLesser,
        },
    }
}

/// Whether the counters are strictly sorted by id, as they must be.
pub fn is_sorted(v: &Vector) -> bool {
    v.counters.windows(2).all(|w| w[0].id < w[1].id)
}

/// Calls `f(id, a_value, b_value)` for every id in either vector, in id
/// order. Tolerates unsorted input from peers by sorting copies.
fn walk(a: &Vector, b: &Vector, mut f: impl FnMut(u64, u64, u64)) {
    let sorted = |v: &Vector| {
        let mut c: Vec<(u64, u64)> = v.counters.iter().map(|c| (c.id, c.value)).collect();
        c.sort_unstable();
        c
    };
    let (a, b) = (sorted(a), sorted(b));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(&(ia, va)), Some(&(ib, vb))) if ia == ib => {
                f(ia, va, vb);
                i += 1;
                j += 1;
            }
            (Some(&(ia, va)), Some(&(ib, _))) if ia < ib => {
                f(ia, va, 0);
                i += 1;
            }
            (Some(_), Some(&(ib, vb))) => {
                f(ib, 0, vb);
                j += 1;
            }
            (Some(&(ia, va)), None) => {
                f(ia, va, 0);
                i += 1;
            }
            (None, Some(&(ib, vb))) => {
                f(ib, 0, vb);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(c: &[(u64, u64)]) -> Vector {
        Vector {
            counters: c.iter().map(|&(id, value)| Counter { id, value }).collect(),
        }
    }

    #[test]
    fn update_uses_time_and_keeps_order() {
        let mut x = Vector::default();
        update(&mut x, 5, 1000);
        assert_eq!(x, v(&[(5, 1000)]));
        update(&mut x, 5, 10); // clock went backwards: still +1
        assert_eq!(x, v(&[(5, 1001)]));
        update(&mut x, 2, 0);
        assert_eq!(x, v(&[(2, 1), (5, 1001)]));
        update(&mut x, 9, 2000);
        assert_eq!(x, v(&[(2, 1), (5, 1001), (9, 2000)]));
        assert!(is_sorted(&x));
        assert_eq!(counter(&x, 5), 1001);
        assert_eq!(counter(&x, 6), 0);
    }

    #[test]
    fn comparisons() {
        assert_eq!(compare(&v(&[]), &v(&[])), Ordering::Equal);
        assert_eq!(compare(&v(&[(1, 0)]), &v(&[])), Ordering::Equal);
        assert_eq!(compare(&v(&[(1, 2)]), &v(&[(1, 1)])), Ordering::Greater);
        assert_eq!(
            compare(&v(&[(1, 1)]), &v(&[(1, 1), (2, 1)])),
            Ordering::Lesser
        );
        assert_eq!(
            compare(&v(&[(1, 2), (2, 1)]), &v(&[(1, 1), (2, 2)])),
            Ordering::ConcurrentGreater
        );
        assert_eq!(
            compare(&v(&[(1, 1), (2, 2)]), &v(&[(1, 2), (2, 1)])),
            Ordering::ConcurrentLesser
        );
        assert_eq!(
            merge(&v(&[(1, 1), (3, 5)]), &v(&[(1, 2), (2, 7)])),
            v(&[(1, 2), (2, 7), (3, 5)])
        );
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric_and_merge_dominates(
            a in proptest::collection::btree_map(0u64..6, 0u64..4, 0..5),
            b in proptest::collection::btree_map(0u64..6, 0u64..4, 0..5)) {
            let a = v(&a.into_iter().collect::<Vec<_>>());
            let b = v(&b.into_iter().collect::<Vec<_>>());
            let ab = compare(&a, &b);
            let ba = compare(&b, &a);
            let expected = match ab {
                Ordering::Equal => Ordering::Equal,
                Ordering::Greater => Ordering::Lesser,
                Ordering::Lesser => Ordering::Greater,
                Ordering::ConcurrentGreater => Ordering::ConcurrentLesser,
                Ordering::ConcurrentLesser => Ordering::ConcurrentGreater,
            };
            prop_assert_eq!(ba, expected);
            let m = merge(&a, &b);
            prop_assert!(matches!(compare(&m, &a), Ordering::Greater | Ordering::Equal));
            prop_assert!(matches!(compare(&m, &b), Ordering::Greater | Ordering::Equal));
            prop_assert!(is_sorted(&m));
        }
    }
}
