//! Reading the key space: scans at the current revision or at a past one, and
//! etcd's Range semantics (limit, count, filters, sort) on top of them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rocksdb::{SnapshotWithThreadMode, DB};
use serde::{Deserialize, Serialize};

use super::{KeyValue, MvccError, RangeRequest, RangeResponse, Revision, SortOrder, SortTarget};
use crate::schema::{self, CF_HISTORY, CF_KV};

/// What is stored for one version of a key (the key itself is the RocksDB key).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct KvRecord {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl KvRecord {
    pub fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode encoding of an in-memory value cannot fail")
}

/// Decodes a stored record; a record that does not decode is corruption.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> T {
    bincode::deserialize(bytes)
        .unwrap_or_else(|e| panic!("corrupt {what} in the state machine ({} bytes): {e}", bytes.len()))
}

/// The upper end of a key range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RangeEnd {
    /// Only the start key.
    Single,
    /// Every key from the start key on (`range_end` = `"\0"`).
    Unbounded,
    /// Keys below this one.
    Before(Vec<u8>),
}

impl RangeEnd {
    pub fn from_request(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    fn admits(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => true,
            RangeEnd::Before(end) => key < end.as_slice(),
        }
    }
}

/// Changes made by a write in progress, visible to its own later reads.
pub(crate) type Overlay = BTreeMap<Vec<u8>, Option<KvRecord>>;

/// A consistent view to read from: a RocksDB snapshot, plus the uncommitted
/// changes of the write being applied, if any.
pub(crate) struct Source<'a> {
    pub db: &'a DB,
    pub snap: &'a SnapshotWithThreadMode<'a, DB>,
    pub overlay: Option<&'a Overlay>,
}

impl Source<'_> {
    /// The live record of `key` at the current revision.
    pub fn get_current(&self, key: &[u8]) -> Option<KvRecord> {
        if let Some(change) = self.overlay.and_then(|o| o.get(key)) {
            return change.clone();
        }
        let cf = schema::cf(self.db, CF_KV);
        let bytes = self.snap.get_pinned_cf(cf, key).unwrap_or_else(|e| panic!("reading key from RocksDB failed: {e}"));
        bytes.map(|b| decode(&b, "key record"))
    }

    /// Visits live keys in `[start, end)` at the current revision, in key order,
    /// until `visit` returns false.
    pub fn scan_current(&self, start: &[u8], end: &RangeEnd, mut visit: impl FnMut(&[u8], &KvRecord) -> bool) {
        if *end == RangeEnd::Single {
            if let Some(record) = self.get_current(start) {
                visit(start, &record);
            }
            return;
        }
        let cf = schema::cf(self.db, CF_KV);
        let mut it = self.snap.raw_iterator_cf(cf);
        it.seek(start);
        let mut pending = self.overlay.map(|o| o.range(start.to_vec()..).peekable());
        loop {
            let stored = it.key().filter(|k| end.admits(start, k));
            let changed =
                pending.as_mut().and_then(|p| p.peek().map(|(k, _)| k.as_slice())).filter(|k| end.admits(start, k));
            // Which comes first: the stored key, the changed key, or both (same key)?
            let first = match (stored, changed) {
                (None, None) => return,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(s), Some(c)) => s.cmp(c),
            };
            if first == Ordering::Equal {
                it.next(); // the change supersedes the stored record
            }
            let take_change = first != Ordering::Less;
            let keep_going = if take_change {
                let (key, change) = pending.as_mut().and_then(|p| p.next()).expect("peeked");
                match change {
                    Some(record) => visit(key, record),
                    None => true,
                }
            } else {
                let key = it.key().expect("valid").to_vec();
                let record: KvRecord = decode(it.value().expect("valid"), "key record");
                it.next();
                visit(&key, &record)
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Visits keys in `[start, end)` as they were at revision `rev`, in key order,
    /// until `visit` returns false. Reads stored history only.
    pub fn scan_at(
        &self,
        start: &[u8],
        end: &RangeEnd,
        rev: Revision,
        mut visit: impl FnMut(&[u8], &KvRecord) -> bool,
    ) {
        let cf = schema::cf(self.db, CF_HISTORY);
        let mut it = self.snap.raw_iterator_cf(cf);
        it.seek(schema::history_key(start, rev));
        while let Some(raw) = it.key() {
            let (key, key_rev) = schema::decode_history_key(raw);
            if key.as_slice() < start || !end.admits(start, &key) {
                return;
            }
            if key_rev > rev {
                it.seek(schema::history_key(&key, rev));
                continue;
            }
            let record: Option<KvRecord> = decode(it.value().expect("valid"), "history record");
            if let Some(record) = record {
                if !visit(&key, &record) {
                    return;
                }
            }
            if *end == RangeEnd::Single {
                return;
            }
            // Skip the older versions of this key.
            let mut past = schema::escape_key(&key);
            past.extend_from_slice(&[0xff; 8]);
            it.seek(past);
            if it.key().is_some_and(|k| schema::decode_history_key(k).0 == key) {
                it.next();
            }
        }
    }
}

/// Executes a Range with etcd's semantics. `current` is the revision the view is at.
pub(crate) fn execute_range(
    src: &Source<'_>,
    req: &RangeRequest,
    current: Revision,
    compact_revision: Revision,
) -> Result<RangeResponse, MvccError> {
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev > current {
        return Err(MvccError::FutureRevision { current_revision: current });
    }
    if rev < compact_revision {
        return Err(MvccError::Compacted { compact_revision });
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Like etcd: sorting and filtering need every key; otherwise fetch one past the
    // limit to learn whether there are more.
    let collect_max = if req.count_only {
        0
    } else if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };
    let end = RangeEnd::from_request(&req.range_end);
    let mut kvs = Vec::new();
    let mut count = 0i64;
    // keys_only drops values, but only after sorting when sorting by value.
    let sorts_by_value = req.sort_target == SortTarget::Value;
    let mut visit = |key: &[u8], record: &KvRecord| {
        count += 1;
        if kvs.len() < collect_max {
            let mut kv = record.to_key_value(key);
            if req.keys_only && !sorts_by_value {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        true
    };
    if rev == current {
        src.scan_current(&req.key, &end, &mut visit);
    } else {
        src.scan_at(&req.key, &end, rev, &mut visit);
    }
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    sort_kvs(&mut kvs, req.sort_order, req.sort_target);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only && sorts_by_value {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse { kvs, more, count })
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd sorts ascending by default when a target other than the key is named.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        _ => kvs.sort_by(by),
    }
}
