//! The MVCC key space: revisions, per-key history, ranges, transactions, compaction,
//! and the leases that keys are attached to.
//!
//! This module knows RocksDB and its own request types; it knows nothing of gRPC or
//! Raft. The Raft state machine (`crate::raft`) feeds it committed commands in log
//! order; the API layer (`crate::api`) converts wire messages into its requests.

mod compaction;
mod error;
mod hash;
mod history;
mod kvstore;
mod lease_table;
mod live_keys;
mod range;
mod request;
mod txn_check;
mod write_txn;

pub use compaction::Compactor;
pub use error::MvccError;
pub use kvstore::{decode_meta, encode_meta, KvStore, ReadView, StoreStatus};
pub use lease_table::LeaseRecord;
pub(crate) use range::RangeEnd;
pub use request::*;
pub use txn_check::{validate_command, validate_range};

/// A store revision. Like etcd's, it starts at 1 for an empty store and grows by one
/// for every request that changes something.
pub type Revision = i64;
