//! Which synced watchers want a key: exact keys and prefixes are found by hashing
//! (one lookup per prefix length of the key), "from key" watchers by an ordered
//! map, and only other ranges by scanning, so an event does not visit every watcher.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::hub::WatcherKey;
use crate::mvcc::RangeEnd;

#[derive(Default)]
pub(crate) struct WatchIndex {
    exact: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    prefixes: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    from_key: BTreeMap<Vec<u8>, HashSet<WatcherKey>>,
    ranges: HashMap<WatcherKey, (Vec<u8>, Vec<u8>)>,
}

/// How a range is indexed.
enum Shape {
    Exact,
    Prefix,
    FromKey,
    Range(Vec<u8>),
}

/// The smallest key above every key that starts with `prefix`, or `None` when there
/// is none (the prefix is empty or all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn shape(start: &[u8], end: &RangeEnd) -> Shape {
    match end {
        RangeEnd::Single => Shape::Exact,
        RangeEnd::Unbounded => Shape::FromKey,
        RangeEnd::Before(e) if prefix_end(start).as_deref() == Some(e.as_slice()) => Shape::Prefix,
        RangeEnd::Before(e) => Shape::Range(e.clone()),
    }
}

impl WatchIndex {
    pub fn insert(&mut self, watcher: WatcherKey, start: &[u8], end: &RangeEnd) {
        match shape(start, end) {
            Shape::Exact => self.exact.entry(start.to_vec()).or_default().insert(watcher),
            Shape::Prefix => self.prefixes.entry(start.to_vec()).or_default().insert(watcher),
            Shape::FromKey => self.from_key.entry(start.to_vec()).or_default().insert(watcher),
            Shape::Range(e) => self.ranges.insert(watcher, (start.to_vec(), e)).is_none(),
        };
    }

    pub fn remove(&mut self, watcher: WatcherKey, start: &[u8], end: &RangeEnd) {
        fn take<M: std::borrow::BorrowMut<HashSet<WatcherKey>>>(set: Option<&mut M>, w: WatcherKey) -> bool {
            set.map(|s| {
                let s = s.borrow_mut();
                s.remove(&w);
                s.is_empty()
            })
            .unwrap_or(false)
        }
        match shape(start, end) {
            Shape::Exact => {
                if take(self.exact.get_mut(start), watcher) {
                    self.exact.remove(start);
                }
            }
            Shape::Prefix => {
                if take(self.prefixes.get_mut(start), watcher) {
                    self.prefixes.remove(start);
                }
            }
            Shape::FromKey => {
                if take(self.from_key.get_mut(start), watcher) {
                    self.from_key.remove(start);
                }
            }
            Shape::Range(_) => {
                self.ranges.remove(&watcher);
            }
        }
    }

    /// Adds to `out` every watcher whose range holds `key`.
    pub fn matching(&self, key: &[u8], out: &mut Vec<WatcherKey>) {
        if let Some(set) = self.exact.get(key) {
            out.extend(set);
        }
        if !self.prefixes.is_empty() {
            for len in 0..=key.len() {
                if let Some(set) = self.prefixes.get(&key[..len]) {
                    out.extend(set);
                }
            }
        }
        for (_, set) in self.from_key.range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key))) {
            out.extend(set);
        }
        for (watcher, (start, end)) in &self.ranges {
            if key >= start.as_slice() && key < end.as_slice() {
                out.push(*watcher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(n: i64) -> WatcherKey {
        WatcherKey { stream: 1, watch: n }
    }

    fn matches(index: &WatchIndex, key: &[u8]) -> Vec<i64> {
        let mut out = Vec::new();
        index.matching(key, &mut out);
        let mut ids: Vec<i64> = out.iter().map(|k| k.watch).collect();
        ids.sort();
        ids
    }

    #[test]
    fn every_shape_matches_exactly_its_keys() {
        let mut index = WatchIndex::default();
        index.insert(w(1), b"a/b", &RangeEnd::Single);
        index.insert(w(2), b"a/", &RangeEnd::Before(b"a0".to_vec()));
        index.insert(w(3), b"b", &RangeEnd::Unbounded);
        index.insert(w(4), b"a/c", &RangeEnd::Before(b"a/e".to_vec()));
        index.insert(w(5), b"\xff\xff", &RangeEnd::Unbounded);
        assert_eq!(matches(&index, b"a/b"), vec![1, 2]);
        assert_eq!(matches(&index, b"a/d"), vec![2, 4]);
        assert_eq!(matches(&index, b"a/e"), vec![2]);
        assert_eq!(matches(&index, b"a0"), Vec::<i64>::new());
        assert_eq!(matches(&index, b"zz"), vec![3]);
        assert_eq!(matches(&index, b"\xff\xff\x01"), vec![3, 5]);
        index.remove(w(2), b"a/", &RangeEnd::Before(b"a0".to_vec()));
        index.remove(w(3), b"b", &RangeEnd::Unbounded);
        assert_eq!(matches(&index, b"a/d"), vec![4]);
        assert_eq!(matches(&index, b"zz"), Vec::<i64>::new());
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
