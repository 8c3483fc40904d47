//! Leases: the leader decides when each lease expires and commits that decision
//! through Raft; a leader change neither starts a lease's TTL over nor ends it early.
//!
//! What Raft committed (leases, their attached keys, checkpointed remaining TTLs)
//! lives in the state machine (`crate::mvcc`). What only the leader knows (when each
//! lease expires) lives in the [`Lessor`]:
//!
//! - the leader revokes expired leases by proposing `LeaseRevoke`, which deletes
//!   every attached key at one revision;
//! - every `--lease-checkpoint-interval` it commits each lease's remaining TTL;
//!   a renewal of a checkpointed lease commits a checkpoint of 0 (whole TTL);
//! - a new leader counts every lease from its checkpoint (or its whole TTL) plus one
//!   election timeout before it expires anything;
//! - followers hold no timers: they forward keep-alives and TTL queries.

mod expiry;
mod lessor;

pub use expiry::ExpiryTable;
pub use lessor::{LeaseSettings, Lessor};
