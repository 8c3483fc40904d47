//! Raft replication with openraft: the type declaration, the RocksDB log store, the
//! state machine adapter over [`crate::mvcc`], the peer network and service, and the
//! node that turns client requests into proposals and linearizable reads.

mod corruption;
mod lease_forward;
mod log_store;
mod membership;
mod network;
mod node;
mod peer_service;
mod pipe;
mod proposal_batch;
mod read_index;
pub mod snapshot_file;
mod state_machine;
mod status;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use corruption::KvHash;
pub use lease_forward::{LeaseCall, LeaseLeader};
pub use log_store::{Durable, LogStore, LogSynced};
pub use membership::{AdminError, AdminRequest, AdminResponse, AdminResult, ClusterView, MemberInfo};
pub use network::PeerNetwork;
pub use node::{RaftNode, RaftNodeError, RaftSettings};
pub use peer_service::PeerService;
pub use state_machine::{export_snapshot, StateMachine};
pub use status::RaftStatus;

use crate::mvcc::{ApplyOutcome, Command};

/// A member's Raft ID (etcd's member ID).
pub type NodeId = u64;

/// What Raft knows about a member: etcd's `Member` without the ID.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Added as a voter but still a learner: the leader promotes it once it has
    /// caught up.
    pub pending_voter: bool,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// The payload of a normal Raft entry: client commands proposed together (see
/// `proposal_batch`). They are applied in order, each at its own revision, exactly as
/// if each had had an entry of its own; batching only saves Raft rounds and fsyncs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Proposal(pub Vec<Command>);

openraft::declare_raft_types!(
    /// Cairn's Raft types: batches of commands in, one apply outcome per command out.
    pub TypeConfig:
        D = Proposal,
        R = Vec<ApplyOutcome>,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;

#[cfg(test)]
mod conformance {
    //! openraft's own storage conformance suite, run on Cairn's log store and state
    //! machine over a real RocksDB in a temporary directory.

    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::{LogStore, StateMachine, StorageError, TypeConfig};
    use crate::mvcc::KvStore;
    use crate::schema;

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temporary directory");
            let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
            let sm = StateMachine::new(KvStore::open(db.clone()), dir.path().join("snap")).expect("snapshot dir");
            Ok((dir, LogStore::open(db, 1).expect("open the log"), sm))
        }
    }

    #[test]
    fn log_store_and_state_machine_pass_openraft_suite() {
        Suite::test_all(RocksBuilder).expect("openraft storage suite");
    }
}
