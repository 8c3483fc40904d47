//! Errors of the key space. Messages follow etcd's, prefixed as etcd prefixes them,
//! so that the API layer can pass them to etcd clients unchanged.

use serde::{Deserialize, Serialize};

use super::Revision;

/// An error of a key-space request. Every variant means nothing was changed.
#[derive(thiserror::Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: Revision },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { current_revision: Revision },
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("requested lease not found")]
    LeaseNotFound { lease: i64 },
    #[error("lease already exists")]
    LeaseExists { lease: i64 },
    #[error("too large lease TTL")]
    LeaseTtlTooLarge { ttl_seconds: i64 },
    #[error("too many operations in txn request")]
    TooManyOps { max: usize },
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("txn nesting deeper than {max} levels")]
    TxnTooDeep { max: usize },
    #[error("invalid range: range_end {range_end:?} must be empty (one key), \"\\0\" (every key from key) or greater than key {key:?}")]
    InvalidRange { key: String, range_end: String },
    #[error("request is too large")]
    RequestTooLarge { bytes: usize, max: usize },
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("corrupt cluster")]
    Corrupt,
}
