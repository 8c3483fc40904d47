//! The etcd v3 gRPC API on top of Raft and the MVCC store: request conversion and
//! validation, error mapping, and the services.

mod convert;
mod error;
mod http;
mod kv;
mod lease;
mod maintenance;
mod unimplemented;
mod watch;

use std::sync::Arc;

use cairn_proto::etcdserverpb::ResponseHeader;

pub use error::{mvcc_status, raft_status};
pub use http::{serve_metrics, ObserveLayer, Observer};
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use unimplemented::UnimplementedLayer;
pub use watch::WatchService;

use crate::mvcc::{KvStore, Revision};
use crate::raft::RaftNode;

/// Limits the API enforces on requests.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    pub request_timeout: std::time::Duration,
}

/// What every service needs: the Raft node, the store and the limits.
pub struct Api {
    pub node: Arc<RaftNode>,
    pub store: Arc<KvStore>,
    pub limits: ApiLimits,
}

impl Api {
    pub fn new(node: Arc<RaftNode>, store: Arc<KvStore>, limits: ApiLimits) -> Arc<Self> {
        Arc::new(Api { node, store, limits })
    }

    /// The header every response carries.
    fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.id,
            revision,
            raft_term: self.node.term(),
        })
    }
}
