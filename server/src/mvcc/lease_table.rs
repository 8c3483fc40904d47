//! Leases as the state machine stores them: each lease's granted TTL and last
//! checkpointed remaining TTL, and the index from a lease to its attached keys.
//!
//! Only what Raft committed lives here. When a lease expires is the leader's
//! decision (`crate::lease`), which commits it as a `LeaseRevoke`.

use rocksdb::{Direction, IteratorMode, SnapshotWithThreadMode, DB};
use serde::{Deserialize, Serialize};

use super::range::decode;
use crate::schema::{self, CF_LEASES, CF_LEASE_KEYS};

/// A granted lease.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The TTL granted (after raising it to the minimum), in seconds.
    pub ttl_seconds: i64,
    /// The remaining TTL at the last checkpoint, in milliseconds; 0 when none was
    /// taken since the lease was granted or renewed (the whole TTL remains).
    pub remaining_ms: i64,
    /// This grant's sequence number in the store, so that a lease revoked and
    /// granted again under the same ID is told apart from the old one.
    pub grant: u64,
}

impl LeaseRecord {
    /// What a new leader must count on as remaining: the checkpoint if there is one,
    /// else the whole TTL.
    pub fn remaining_or_ttl_ms(&self) -> i64 {
        if self.remaining_ms > 0 {
            self.remaining_ms
        } else {
            self.ttl_seconds.saturating_mul(1000)
        }
    }
}

pub(crate) fn get(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>, id: i64) -> Option<LeaseRecord> {
    snap.get_cf(schema::cf(db, CF_LEASES), schema::lease_key(id))
        .unwrap_or_else(|e| panic!("reading lease {id:x} failed: {e}"))
        .map(|bytes| decode(&bytes, "lease record"))
}

/// Every lease, in ID order.
pub(crate) fn list(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>) -> Vec<(i64, LeaseRecord)> {
    snap.iterator_cf(schema::cf(db, CF_LEASES), IteratorMode::Start)
        .map(|item| {
            let (k, v) = item.unwrap_or_else(|e| panic!("scanning leases failed: {e}"));
            (schema::decode_lease_key(&k), decode(&v, "lease record"))
        })
        .collect()
}

/// The keys attached to lease `id`, in key order.
pub(crate) fn attached_keys(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>, id: i64) -> Vec<Vec<u8>> {
    let prefix = schema::lease_key(id);
    snap.iterator_cf(schema::cf(db, CF_LEASE_KEYS), IteratorMode::From(&prefix, Direction::Forward))
        .map(|item| item.unwrap_or_else(|e| panic!("scanning keys of lease {id:x} failed: {e}")).0)
        .take_while(|k| k.starts_with(&prefix))
        .map(|k| k[prefix.len()..].to_vec())
        .collect()
}
