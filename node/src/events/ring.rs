//! A fixed-capacity ring of the most recent items: the oldest is dropped
//! when a new one arrives, so an absent reader never grows memory.

use std::collections::VecDeque;

pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(1);
        Ring {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn keeps_the_newest_and_never_grows() {
        let mut r = Ring::new(1000);
        let cap = r.capacity();
        for i in 0..100_000u64 {
            r.push(i);
        }
        assert_eq!(r.len(), 1000);
        assert_eq!(r.capacity(), cap, "no reallocation past the bound");
        assert_eq!(r.iter().next(), Some(&99_000));
        assert_eq!(r.iter().last(), Some(&99_999));
    }
}
