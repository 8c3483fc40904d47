//! What the applier remembers of recently written live keys, so that a put need not
//! read the key's current record from RocksDB.
//!
//! A put needs three things of the version it replaces: its create revision, its
//! version and its lease. Reading them was a RocksDB point lookup in a memtable of up
//! to 64 MiB, on every member: 8% of all CPU in a 64-client put benchmark of three
//! members. etcd keeps an index of every key in memory; Cairn keeps one for the keys
//! written most recently, within [`LIVE_KEY_CACHE_BYTES_MAX`], so that memory stays
//! bounded however many keys the store holds. A key not in the cache is read from
//! RocksDB as before. The put's event then carries no previous version: a watcher
//! that asks for it reads it from history, as etcd's watchers do.
//!
//! The cache holds exactly what the `kv` table holds for each key it has: the applier
//! (the only writer of that table, under the applier lock) updates it after each
//! committed write, and clears it whenever the tables are replaced (open, snapshot
//! install, restore).

use lru::LruCache;

use super::range::{KvRecord, Overlay};
use super::Revision;
use crate::limits::LIVE_KEY_CACHE_BYTES_MAX;

/// Bytes one cached key costs besides the key itself: the LRU node (key and
/// metadata, two links), the hash table slot, the allocator's headers and the
/// allocator's slack. Measured: a member's RSS after 600k puts of new 32-byte keys
/// grew by 220 bytes per cached key.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 192;

/// What a put reads of the version it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    pub create_revision: Revision,
    pub version: i64,
    pub lease: i64,
}

impl KvRecord {
    pub fn meta(&self) -> KeyMeta {
        KeyMeta { create_revision: self.create_revision, version: self.version, lease: self.lease }
    }
}

/// Live keys written recently, least recently written evicted first.
pub(crate) struct LiveKeys {
    lru: LruCache<Vec<u8>, KeyMeta>,
    bytes: usize,
    bytes_max: usize,
}

impl LiveKeys {
    /// A cache of at most [`LIVE_KEY_CACHE_BYTES_MAX`].
    pub fn new() -> Self {
        Self::with_capacity(LIVE_KEY_CACHE_BYTES_MAX)
    }

    /// A cache of at most `bytes_max` (0 caches nothing).
    pub fn with_capacity(bytes_max: usize) -> Self {
        LiveKeys { lru: LruCache::unbounded(), bytes: 0, bytes_max }
    }

    /// The metadata of live `key`, if cached. `None` says nothing about the key.
    pub fn get(&self, key: &[u8]) -> Option<KeyMeta> {
        self.lru.peek(key).copied()
    }

    /// Records a committed change: `key` now holds `record`, or was deleted (`None`).
    pub fn set(&mut self, key: Vec<u8>, record: Option<&KvRecord>) {
        let Some(record) = record else {
            if self.lru.pop(&key).is_some() {
                self.bytes -= cost(&key);
            }
            return;
        };
        if let Some(meta) = self.lru.get_mut(&key) {
            *meta = record.meta();
            return;
        }
        let cost = cost(&key);
        if cost > self.bytes_max {
            return;
        }
        self.bytes += cost;
        self.lru.push(key, record.meta());
        while self.bytes > self.bytes_max {
            let (evicted, _) = self.lru.pop_lru().expect("a cache over its size holds a key");
            self.bytes -= self::cost(&evicted);
        }
    }

    /// Records every change of a committed write (its overlay).
    pub fn set_all(&mut self, changes: Overlay) {
        for (key, record) in changes {
            self.set(key, record.as_ref());
        }
    }

    /// Forgets everything (the tables were replaced).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lru.len()
    }
}

fn cost(key: &[u8]) -> usize {
    key.len() + ENTRY_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: i64) -> KvRecord {
        KvRecord { create_revision: 7, mod_revision: 7 + version, version, lease: 3, value: b"v".to_vec() }
    }

    #[test]
    fn keeps_the_latest_metadata_and_forgets_deleted_keys() {
        let mut keys = LiveKeys::with_capacity(1 << 20);
        keys.set(b"a".to_vec(), Some(&record(1)));
        keys.set(b"a".to_vec(), Some(&record(2)));
        assert_eq!(keys.get(b"a"), Some(KeyMeta { create_revision: 7, version: 2, lease: 3 }));
        keys.set(b"a".to_vec(), None);
        assert_eq!(keys.get(b"a"), None);
        assert_eq!((keys.len(), keys.bytes), (0, 0));
    }

    #[test]
    fn evicts_the_least_recently_written_key_beyond_its_size() {
        let mut keys = LiveKeys::with_capacity(3 * (1 + ENTRY_OVERHEAD_BYTES));
        for k in [b"a", b"b", b"c"] {
            keys.set(k.to_vec(), Some(&record(1)));
        }
        keys.set(b"a".to_vec(), Some(&record(2))); // written again: now the most recent
        keys.set(b"d".to_vec(), Some(&record(1)));
        assert_eq!(keys.get(b"b"), None, "b was written least recently");
        for k in [b"a", b"c", b"d"] {
            assert!(keys.get(k).is_some());
        }
        assert_eq!(keys.bytes, 3 * (1 + ENTRY_OVERHEAD_BYTES));
    }

    #[test]
    fn a_cache_of_no_bytes_holds_nothing() {
        let mut keys = LiveKeys::with_capacity(0);
        keys.set(b"a".to_vec(), Some(&record(1)));
        assert_eq!((keys.get(b"a"), keys.len()), (None, 0));
    }
}
