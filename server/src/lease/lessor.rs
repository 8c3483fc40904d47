//! The lessor: on the leader, keeps each lease's expiry time, renews leases, commits
//! expiries as `LeaseRevoke` and remaining TTLs as `LeaseCheckpoint` through Raft.
//! On a follower it holds nothing and forwards keep-alives and TTL queries to the
//! leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{watch, RwLock};
use tokio::time::{Instant, MissedTickBehavior};

use super::expiry::ExpiryTable;
use crate::limits::{
    lease_ttl_seconds_min, LEASE_CHECKPOINT_BATCH_MAX, LEASE_EXPIRY_TICK_MS, LEASE_REVOKES_PER_TICK_MAX,
};
use crate::mvcc::{Command, KvStore, LeaseCheckpoint};
use crate::raft::{LeaseCall, LeaseLeader, RaftNode, RaftNodeError};

/// Settings of the lessor.
#[derive(Clone, Copy, Debug)]
pub struct LeaseSettings {
    /// How often the leader checkpoints remaining TTLs through Raft.
    pub checkpoint_interval: Duration,
    /// Raft's (minimum) election timeout: the grace a new leader adds to every lease,
    /// and the basis of the minimum TTL.
    pub election_timeout: Duration,
    /// How long one revoke or checkpoint proposal may wait for Raft.
    pub request_timeout: Duration,
}

/// The expiry table and the leadership term it belongs to.
#[derive(Default)]
struct Leading {
    term: Option<u64>,
    generation: u64,
    table: ExpiryTable,
}

pub struct Lessor {
    node: Arc<RaftNode>,
    store: Arc<KvStore>,
    settings: LeaseSettings,
    leading: Mutex<Leading>,
    /// Renewals hold this shared, checkpoint rounds exclusively: a remaining TTL
    /// computed before a renewal must not be committed after the renewal's own
    /// checkpoint, or a new leader would count from the older, shorter one.
    checkpoint_order: RwLock<()>,
}

impl Lessor {
    pub fn new(node: Arc<RaftNode>, store: Arc<KvStore>, settings: LeaseSettings) -> Arc<Self> {
        Arc::new(Lessor { node, store, settings, leading: Mutex::default(), checkpoint_order: RwLock::new(()) })
    }

    /// The shortest TTL granted; shorter requests are raised to it.
    pub fn ttl_seconds_min(&self) -> i64 {
        lease_ttl_seconds_min(self.settings.election_timeout.as_millis() as u64)
    }

    /// Renews lease `id` on the leader, wherever this is called; answers the granted
    /// TTL in seconds, or 0 if the lease does not exist or has expired.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, RaftNodeError> {
        crate::observability::metrics().lease.renewed_total.inc();
        self.node.lease_on_leader(LeaseCall::KeepAlive { id }, self).await
    }

    /// Lease `id`'s remaining TTL as the leader sees it, in milliseconds; -1 if the
    /// lease does not exist or has expired.
    pub async fn remaining_ms(&self, id: i64) -> Result<i64, RaftNodeError> {
        self.node.lease_on_leader(LeaseCall::RemainingMs { id }, self).await
    }

    /// Runs `f` on the expiry table of leadership `term`: loads it when the term is
    /// new (every lease gets one election timeout of grace), else re-syncs it with
    /// the store when leases were granted or revoked since.
    fn with_table<R>(&self, term: u64, f: impl FnOnce(&mut ExpiryTable, Instant) -> R) -> R {
        let mut leading = self.leading.lock().expect("lessor lock");
        let generation = self.store.lease_generation();
        let grace = if leading.term != Some(term) {
            *leading = Leading { term: Some(term), generation, table: ExpiryTable::default() };
            Some(self.settings.election_timeout)
        } else if leading.generation != generation {
            leading.generation = generation;
            Some(Duration::ZERO)
        } else {
            None
        };
        let now = Instant::now();
        if let Some(grace) = grace {
            let stored = self.store.read_view().leases();
            leading.table.sync(now, &stored, grace);
            if grace > Duration::ZERO {
                tracing::info!(term, leases = leading.table.len(), "leading: lease expiry times loaded");
            }
        }
        f(&mut leading.table, now)
    }

    /// Drops the table when this member does not lead: followers hold no timers.
    fn forget(&self) {
        let mut leading = self.leading.lock().expect("lessor lock");
        if leading.term.is_some() {
            *leading = Leading::default();
        }
    }

    async fn serve_local(&self, call: LeaseCall) -> Result<i64, RaftNodeError> {
        let term = self.node.wait_leading().await?;
        match call {
            LeaseCall::KeepAlive { id } => self.renew(term, id).await,
            LeaseCall::RemainingMs { id } => {
                // A deposed leader must not answer from its stale table.
                self.node.leader_read_index().await?;
                let remaining = self.with_table(term, |t, now| t.remaining(id, now));
                Ok(remaining.map_or(-1, |d| d.as_millis() as i64))
            }
        }
    }

    async fn renew(&self, term: u64, id: i64) -> Result<i64, RaftNodeError> {
        let _order = self.checkpoint_order.read().await;
        let Some(record) = self.store.read_view().lease(id) else { return Ok(0) };
        if self.with_table(term, |t, now| t.remaining(id, now)).is_none() {
            return Ok(0);
        }
        if record.remaining_ms != 0 {
            // As etcd: a new leader would otherwise count from the older checkpoint
            // and expire the lease before the TTL this renewal promises.
            let reset = LeaseCheckpoint { id, grant: record.grant, remaining_ms: 0 };
            self.node.propose_local(Command::LeaseCheckpoint { checkpoints: vec![reset] }).await?;
        } else {
            // Confirms with a quorum that no newer leader (which would count the TTL
            // from its own election) exists.
            self.node.leader_read_index().await?;
        }
        Ok(self.with_table(term, |t, now| t.renew(id, now)).unwrap_or(0))
    }

    /// The leader's background work until `stop`: revoke expired leases, checkpoint
    /// remaining TTLs. On a follower each tick only drops any old table.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(LEASE_EXPIRY_TICK_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status = self.node.status();
        let mut role = None;
        let mut next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
        let mut cursor = i64::MIN;
        loop {
            let ticked = tokio::select! {
                _ = tick.tick() => true,
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(term) = self.node.leading_term() else {
                role = None;
                self.forget();
                continue;
            };
            if role != Some(term) {
                // Load as soon as this member leads, so that only leases granted by
                // earlier leaders get the grace period.
                role = Some(term);
                self.with_table(term, |_, _| ());
            }
            if !ticked {
                continue;
            }
            self.revoke_expired(term).await;
            if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
                self.checkpoint(term, &mut cursor).await;
            }
        }
    }

    async fn revoke_expired(&self, term: u64) {
        let expired = self.with_table(term, |t, now| t.expired(now, LEASE_REVOKES_PER_TICK_MAX));
        for id in expired {
            match self.propose(Command::LeaseRevoke { id }).await {
                Ok(revision) => {
                    crate::observability::metrics().lease.expired_total.inc();
                    tracing::debug!(lease = format_args!("{id:x}"), revision, "lease expired")
                }
                Err(e) => {
                    tracing::info!(lease = format_args!("{id:x}"), error = %e, "revoking an expired lease failed");
                    return;
                }
            }
        }
    }

    async fn checkpoint(&self, term: u64, cursor: &mut i64) {
        let _order = self.checkpoint_order.write().await;
        let fresh_within = self.settings.checkpoint_interval;
        let batch =
            self.with_table(term, |t, now| t.checkpoints(now, *cursor, LEASE_CHECKPOINT_BATCH_MAX, fresh_within));
        let Some(last) = batch.last() else { return };
        *cursor = last.id;
        let leases = batch.len();
        if let Err(e) = self.propose(Command::LeaseCheckpoint { checkpoints: batch }).await {
            tracing::info!(leases, error = %e, "checkpointing lease TTLs failed");
        }
    }

    /// Proposes on this member (a leader's own decision is never forwarded), bounded
    /// so that a leader without a quorum does not stall the loop; answers the revision.
    async fn propose(&self, cmd: Command) -> Result<i64, RaftNodeError> {
        match tokio::time::timeout(self.settings.request_timeout, self.node.propose_local(cmd)).await {
            Ok(outcome) => outcome.map(|o| o.revision),
            Err(_) => Err(RaftNodeError::Timeout),
        }
    }
}

impl LeaseLeader for Lessor {
    fn serve(&self, call: LeaseCall) -> BoxFuture<'_, Result<i64, RaftNodeError>> {
        Box::pin(self.serve_local(call))
    }
}
