//! Reading past changes in revision order, for watchers that start in the past or
//! fell behind the change feed.

use rocksdb::{DBRawIteratorWithThreadMode, DB};

use super::range::{decode, KvRecord};
use super::write_txn::tombstone;
use super::{Event, EventKind, KeyValue, MvccError, ReadView, Revision, RevisionEvents};
use crate::schema::{self, CF_EVENTS, CF_HISTORY};

impl ReadView<'_> {
    /// The changes of revisions `from..=self.revision`, oldest first, in whole
    /// revisions, stopping once `events_max` events are collected. Fails if `from`
    /// is below the compaction point.
    pub fn history(&self, from: Revision, events_max: usize) -> Result<Vec<RevisionEvents>, MvccError> {
        if from < self.compact_revision {
            return Err(MvccError::Compacted { compact_revision: self.compact_revision });
        }
        let mut it = self.snap.raw_iterator_cf(schema::cf(self.db, CF_EVENTS));
        it.seek(schema::event_key(from.max(0), 0));
        let mut out: Vec<RevisionEvents> = Vec::new();
        let mut count = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (rev, _) = schema::decode_event_key(k);
            if rev > self.revision {
                break;
            }
            if out.last().map(|r| r.revision) != Some(rev) {
                if count >= events_max {
                    break;
                }
                out.push(RevisionEvents { revision: rev, events: Vec::new() });
            }
            let event = self.event_at(v, rev);
            out.last_mut().expect("pushed above").events.push(event);
            count += 1;
            it.next();
        }
        if let Err(e) = it.status() {
            panic!("reading the event log failed: {e}");
        }
        Ok(out)
    }

    /// The version of `key` that the change at `rev` replaced: its newest stored
    /// version before `rev`, if that is live. `None` if the key did not exist then,
    /// or if compaction removed that version.
    pub fn version_before(&self, key: &[u8], rev: Revision) -> Option<KeyValue> {
        let mut it = self.snap.raw_iterator_cf(schema::cf(self.db, CF_HISTORY));
        it.seek(schema::history_key(key, rev - 1));
        live_version_here(&it, key)
    }

    /// The change to `key` at `rev`, with the version before it.
    fn event_at(&self, key: &[u8], rev: Revision) -> Event {
        let mut it = self.snap.raw_iterator_cf(schema::cf(self.db, CF_HISTORY));
        it.seek(schema::history_key(key, rev));
        let found = it.key().map(schema::decode_history_key);
        assert_eq!(found, Some((key.to_vec(), rev)), "event at revision {rev} has no history record");
        let record: Option<KvRecord> = decode(it.value().expect("valid"), "history record");
        it.next();
        let prev = live_version_here(&it, key);
        match record {
            Some(r) => Event { kind: EventKind::Put, kv: r.to_key_value(key), prev_kv: prev },
            None => Event { kind: EventKind::Delete, kv: tombstone(key, rev), prev_kv: prev },
        }
    }
}

/// The history record under `it`, if it is a live version of `key` (not another
/// key's, not a tombstone).
fn live_version_here(it: &DBRawIteratorWithThreadMode<'_, DB>, key: &[u8]) -> Option<KeyValue> {
    let (found, _) = it.key().map(schema::decode_history_key)?;
    if found != key {
        return None;
    }
    let record: Option<KvRecord> = decode(it.value().expect("valid"), "history record");
    record.map(|r| r.to_key_value(key))
}
