//! Requests and responses of the key space, as stored in the Raft log (serde + bincode).
//!
//! Byte strings are marked `serde_bytes` so that bincode copies them whole rather
//! than element by element: a 1.5 MiB value must encode in well under a heartbeat.

use serde::{Deserialize, Serialize};

use super::{MvccError, Revision};

/// A key with its MVCC metadata, as etcd's `mvccpb.KeyValue`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// Keys `[key, range_end)`; an empty `range_end` means `key` alone and `"\0"` means
/// every key from `key` on, as in etcd.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at; the operand is the value of the matching variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub target: CompareTarget,
    pub result: CompareResult,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<OpResult>,
}

/// One operation's response inside a Txn, with the revision etcd reports in its
/// header: the revision of the transaction's view right after the operation (the
/// write revision once anything changed, else the revision the Txn began at).
/// Nested Txns report 0, as etcd's do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    pub revision: Revision,
    pub response: ResponseOp,
}

/// A mutating request, as proposed to Raft. Each applies atomically at one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Forget history below `revision`.
    Compact {
        revision: Revision,
    },
    /// Create lease `id` (nonzero, chosen before proposing so that every member
    /// applies the same one) with a TTL already raised to the minimum.
    LeaseGrant {
        id: i64,
        ttl_seconds: i64,
    },
    /// Delete every key attached to lease `id` at one revision, and the lease.
    LeaseRevoke {
        id: i64,
    },
    /// Record the leader's remaining TTLs so that a new leader does not start them
    /// over. Leases that no longer exist are skipped.
    LeaseCheckpoint {
        checkpoints: Vec<LeaseCheckpoint>,
    },
    /// Raise or clear an alarm of a member.
    Alarm {
        activate: bool,
        member: u64,
        alarm: AlarmKind,
    },
}

/// The alarms a member can raise (etcd's `AlarmType`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// The database exceeded its quota: only reads, deletes and compaction are served.
    NoSpace,
    /// Members' data differ at the same revision: no writes are served.
    Corrupt,
}

impl Command {
    /// Whether applying it may grow the database (refused while NOSPACE is raised).
    pub fn needs_space(&self) -> bool {
        fn ops_need_space(ops: &[RequestOp]) -> bool {
            ops.iter().any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(t) => ops_need_space(&t.success) || ops_need_space(&t.failure),
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
            })
        }
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(t) => ops_need_space(&t.success) || ops_need_space(&t.failure),
            _ => false,
        }
    }

    /// Whether its answer is small (carries no previous values or ranges, which can
    /// be far larger than the request).
    pub fn answer_is_small(&self) -> bool {
        match self {
            Command::Put(p) => !p.prev_kv,
            Command::DeleteRange(d) => !d.prev_kv,
            Command::Txn(_) => false,
            _ => true,
        }
    }

    /// Whether it is a client's change of the key space (refused while CORRUPT is
    /// raised); lease expiry, checkpoints and alarms still apply.
    pub fn is_client_write(&self) -> bool {
        matches!(
            self,
            Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::Compact { .. }
                | Command::LeaseGrant { .. }
        )
    }
}

/// A lease's remaining TTL as the leader saw it. `remaining_ms == 0` means "the
/// whole granted TTL" (written when a keep-alive renews the lease). It applies only
/// to the grant it was taken of (`LeaseRecord::grant`), not to a lease revoked and
/// granted again under the same ID since.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    pub id: i64,
    pub grant: u64,
    pub remaining_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant,
    LeaseRevoke,
    LeaseCheckpoint,
    Alarm,
    /// No result to give: the command was applied before a restart, and its
    /// result went to whoever was waiting then.
    None,
}

/// What applying one command produced: the store revision after it and the
/// command's result. Errors here are deterministic (every member computes the same
/// one) and mean nothing was changed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub revision: Revision,
    pub result: Result<CommandResponse, MvccError>,
}

impl Command {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::DeleteRange(_) => "delete_range",
            Command::Txn(_) => "txn",
            Command::Compact { .. } => "compact",
            Command::LeaseGrant { .. } => "lease_grant",
            Command::LeaseRevoke { .. } => "lease_revoke",
            Command::LeaseCheckpoint { .. } => "lease_checkpoint",
            Command::Alarm { .. } => "alarm",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as etcd's `mvccpb.Event`: for a delete, `kv` holds the key
/// and the deleting revision only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The version this change replaced. The change feed leaves it out of a put that
    /// did not need to read it ([`Event::prev_elided`]); events read from history
    /// always carry it while it is stored.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// Whether the previous version was left out rather than absent: a put of a key
    /// that already existed (version above 1), without it. It is stored in history
    /// as the key's version at the revision before this one (etcd's watch also reads
    /// it from there), unless compacted.
    pub fn prev_elided(&self) -> bool {
        self.kind == EventKind::Put && self.kv.version > 1 && self.prev_kv.is_none()
    }
}

/// Every change made at one revision, in the order it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// What the change feed of a store announces, in revision order.
#[derive(Clone, Debug)]
pub enum Change {
    /// The changes of one new revision.
    Committed(std::sync::Arc<RevisionEvents>),
    /// The store was replaced (a snapshot was installed) and now stands at this
    /// revision; the revisions in between were not announced one by one.
    Jumped { revision: Revision },
}
