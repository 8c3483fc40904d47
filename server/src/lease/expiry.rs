//! The leader's expiry times of its leases: pure bookkeeping over `Instant`s, with
//! no I/O, so that the rules below are tested directly.
//!
//! - A lease the table learns of counts from `now` with its checkpointed remaining
//!   TTL (or its whole TTL if none), plus a grace period when a new leader loads
//!   its leases: a leader change never expires a lease early, and never starts its
//!   TTL over from the granted value when a checkpoint says less remains.
//! - A renewal sets the expiry to `now` plus the granted TTL.
//! - An expired lease stays in the table, answering "not found", until its revoke
//!   is applied and the table is synced with the store again.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use tokio::time::Instant;

use crate::mvcc::{LeaseCheckpoint, LeaseRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    ttl_seconds: i64,
    grant: u64,
    expiry: Instant,
}

/// Expiry time of every lease the leader knows, by ID.
#[derive(Debug, Default)]
pub struct ExpiryTable {
    leases: BTreeMap<i64, Entry>,
}

impl ExpiryTable {
    /// Brings the table in line with the stored leases: each lease it lacks (or
    /// knows as an earlier grant of the same ID) expires `grace` after its remaining
    /// (or whole) TTL from `now`; leases no longer stored are dropped; the others
    /// keep their expiry.
    pub fn sync(&mut self, now: Instant, stored: &[(i64, LeaseRecord)], grace: Duration) {
        let mut fresh = BTreeMap::new();
        for &(id, record) in stored {
            let known = self.leases.get(&id).copied().filter(|e| e.grant == record.grant);
            let entry = known.unwrap_or_else(|| Entry {
                ttl_seconds: record.ttl_seconds,
                grant: record.grant,
                expiry: now + millis(record.remaining_or_ttl_ms()) + grace,
            });
            fresh.insert(id, entry);
        }
        self.leases = fresh;
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Renews lease `id` for its whole TTL from `now`; answers the TTL in seconds, or
    /// `None` if the lease is unknown or already expired (a revoke is on its way).
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let entry = self.leases.get_mut(&id).filter(|e| e.expiry > now)?;
        entry.expiry = now + millis(entry.ttl_seconds.saturating_mul(1000));
        Some(entry.ttl_seconds)
    }

    /// Time left before lease `id` expires; `None` if unknown or already expired.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.leases.get(&id).filter(|e| e.expiry > now).map(|e| e.expiry - now)
    }

    /// Up to `max` expired leases, soonest expired first.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut due: Vec<(Instant, i64)> =
            self.leases.iter().filter(|(_, e)| e.expiry <= now).map(|(&id, e)| (e.expiry, id)).collect();
        due.sort_unstable();
        due.into_iter().take(max).map(|(_, id)| id).collect()
    }

    /// Remaining TTLs of up to `max` live leases, in ID order starting after `after`
    /// and wrapping around, for one checkpoint command. Never 0, which would mean
    /// "the whole TTL".
    ///
    /// A lease with more than its TTL minus `fresh_within` left is skipped: it was
    /// renewed (or granted) less than `fresh_within` ago, so its stored checkpoint
    /// is 0 (a renewal of a checkpointed lease commits 0) and overstates what remains
    /// by less than `fresh_within`. Leases kept alive well within their TTL then cost
    /// no checkpoint, and their keep-alives no Raft write.
    pub fn checkpoints(&self, now: Instant, after: i64, max: usize, fresh_within: Duration) -> Vec<LeaseCheckpoint> {
        let tail = self.leases.range((Bound::Excluded(after), Bound::Unbounded));
        let head = self.leases.range(..=after);
        tail.chain(head)
            .filter(|(_, e)| e.expiry > now)
            .filter(|(_, e)| e.expiry - now + fresh_within <= millis(e.ttl_seconds.saturating_mul(1000)))
            .take(max)
            .map(|(&id, e)| LeaseCheckpoint {
                id,
                grant: e.grant,
                remaining_ms: ((e.expiry - now).as_millis() as i64).max(1),
            })
            .collect()
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn record(ttl_seconds: i64, remaining_ms: i64) -> LeaseRecord {
        LeaseRecord { ttl_seconds, remaining_ms, grant: 1 }
    }

    #[test]
    fn a_new_leader_counts_from_the_checkpoint_plus_grace_never_from_the_whole_ttl() {
        let now = Instant::now();
        let mut t = ExpiryTable::default();
        // Lease 1 was checkpointed with 4 s left of 20; lease 2 never was.
        t.sync(now, &[(1, record(20, 4_000)), (2, record(20, 0))], SECOND);
        assert_eq!(t.remaining(1, now), Some(5 * SECOND));
        assert_eq!(t.remaining(2, now), Some(21 * SECOND));
        assert!(t.expired(now + 5 * SECOND - Duration::from_millis(1), 10).is_empty(), "never early");
        assert_eq!(t.expired(now + 5 * SECOND, 10), vec![1]);
        assert_eq!(t.expired(now + 30 * SECOND, 10), vec![1, 2]);
    }

    #[test]
    fn sync_keeps_known_expiries_and_drops_revoked_leases() {
        let now = Instant::now();
        let mut t = ExpiryTable::default();
        t.sync(now, &[(1, record(10, 0))], Duration::ZERO);
        let later = now + 3 * SECOND;
        // A checkpoint applied since does not move a known lease's expiry.
        t.sync(later, &[(1, record(10, 9_000)), (2, record(5, 0))], Duration::ZERO);
        assert_eq!(t.remaining(1, later), Some(7 * SECOND));
        assert_eq!(t.remaining(2, later), Some(5 * SECOND));
        t.sync(later, &[(2, record(5, 0))], Duration::ZERO);
        assert_eq!(t.remaining(1, later), None);
        assert_eq!(t.len(), 1);
        // Lease 2 revoked and granted again (same ID, next grant) between two syncs:
        // the new grant counts from now, not from the old one's expiry.
        let regranted = LeaseRecord { grant: 2, ..record(30, 0) };
        t.sync(later + 4 * SECOND, &[(2, regranted)], Duration::ZERO);
        assert_eq!(t.remaining(2, later + 6 * SECOND), Some(28 * SECOND));
    }

    #[test]
    fn renewal_restarts_the_ttl_but_not_for_an_expired_lease() {
        let now = Instant::now();
        let mut t = ExpiryTable::default();
        t.sync(now, &[(1, record(10, 2_000)), (2, record(3, 0))], Duration::ZERO);
        assert_eq!(t.renew(1, now + SECOND), Some(10));
        assert_eq!(t.remaining(1, now + SECOND), Some(10 * SECOND));
        assert_eq!(t.renew(2, now + 3 * SECOND), None, "expired at 3 s: revoke pending");
        assert_eq!(t.remaining(2, now + 3 * SECOND), None);
        assert_eq!(t.renew(9, now), None);
    }

    #[test]
    fn checkpoints_go_round_in_batches_skip_expired_leases_and_never_say_zero() {
        let now = Instant::now();
        let mut t = ExpiryTable::default();
        let stored: Vec<_> = (1..=5).map(|id| (id, record(10, 0))).collect();
        t.sync(now, &stored, Duration::ZERO);
        t.sync(now, &[stored.clone(), vec![(6, record(1, 0))]].concat(), Duration::ZERO);
        let at = now + 2 * SECOND;
        let ids = |cps: &[LeaseCheckpoint]| cps.iter().map(|c| c.id).collect::<Vec<_>>();
        let first = t.checkpoints(at, i64::MIN, 2, SECOND);
        assert_eq!(ids(&first), vec![1, 2]);
        assert_eq!(first[0].remaining_ms, 8_000);
        assert_eq!(ids(&t.checkpoints(at, 2, 2, SECOND)), vec![3, 4]);
        // Lease 6 has expired: skipped; the round wraps to the start.
        assert_eq!(ids(&t.checkpoints(at, 4, 3, SECOND)), vec![5, 1, 2]);
        let last = t.checkpoints(now + 10 * SECOND - Duration::from_micros(10), i64::MIN, 1, SECOND);
        assert_eq!(last[0].remaining_ms, 1, "a sub-millisecond remainder is still not 0");
        // Granted 2 s ago: not yet worth a checkpoint 3 s apart; renewed 1 s ago: neither.
        assert!(t.checkpoints(at, i64::MIN, 10, 3 * SECOND).is_empty());
        t.renew(3, now + 4 * SECOND);
        assert_eq!(ids(&t.checkpoints(now + 5 * SECOND, i64::MIN, 10, 3 * SECOND)), vec![1, 2, 4, 5]);
    }
}
