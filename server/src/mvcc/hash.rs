//! Hashes of the key space, for checking that members hold the same data.
//!
//! `hash_kv` covers exactly what a read at or below a revision can observe, so it is
//! equal on every member that has applied that revision, however far each one's
//! background (physical) compaction has got.

use super::{MvccError, ReadView, Revision};
use crate::schema::{self, CF_HISTORY, STATE_MACHINE_CFS};

impl ReadView<'_> {
    /// CRC-32 of every key version visible at `revision` or later up to it: all
    /// versions in `(compact_revision, revision]`, plus each key's newest version at
    /// or below the compaction point when that is not a deletion. `revision` 0 means
    /// the current one. Returns the hash and the revision it covers.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        let revision = if revision <= 0 { self.revision } else { revision };
        if revision > self.revision {
            return Err(MvccError::FutureRevision { current_revision: self.revision });
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted { compact_revision: self.compact_revision });
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut it = self.snap.raw_iterator_cf(schema::cf(self.db, CF_HISTORY));
        it.seek_to_first();
        // The escaped user key of the group being read, and whether its entry at or
        // below the compaction point has been seen.
        let mut group: Vec<u8> = Vec::new();
        let mut group_done = false;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (escaped, _) = k.split_at(k.len() - 8);
            if escaped != group.as_slice() {
                group.clear();
                group.extend_from_slice(escaped);
                group_done = false;
            }
            if !group_done {
                let (_, rev) = schema::decode_history_key(k);
                if rev <= revision {
                    let is_deletion = v == super::range::encode(&Option::<super::range::KvRecord>::None).as_slice();
                    if rev > self.compact_revision {
                        hasher.update(k);
                        hasher.update(v);
                    } else {
                        if !is_deletion {
                            hasher.update(k);
                            hasher.update(v);
                        }
                        group_done = true;
                    }
                }
            }
            it.next();
        }
        if let Err(e) = it.status() {
            panic!("reading key history failed: {e}");
        }
        Ok((hasher.finalize(), revision))
    }

    /// CRC-32 of the whole state machine (every table) in this view.
    pub fn hash_all(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        for name in STATE_MACHINE_CFS {
            let mut it = self.snap.raw_iterator_cf(schema::cf(self.db, name));
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                hasher.update(k);
                hasher.update(v);
                it.next();
            }
            if let Err(e) = it.status() {
                panic!("reading the state machine failed: {e}");
            }
        }
        hasher.finalize()
    }
}
