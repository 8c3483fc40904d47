//! The etcd v3 Maintenance service. `Status` is served; the rest arrive with the
//! membership and maintenance work and answer UNIMPLEMENTED until then.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::Api;

/// The etcd API version Cairn's behaviour matches; clients use it to pick features.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    api: Arc<Api>,
}

impl MaintenanceService {
    pub fn new(api: Arc<Api>) -> Self {
        MaintenanceService { api }
    }
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("cairn: Maintenance.{method} is not implemented yet"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.api.node.raft.metrics().borrow().clone();
        let (size, in_use) = self.api.store.disk_usage();
        let mut errors = Vec::new();
        if metrics.current_leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: self.api.header(self.api.store.status().revision),
            version: ETCD_API_VERSION.to_string(),
            db_size: size as i64,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: metrics.state == ServerState::Learner,
        }))
    }

    async fn alarm(&self, _: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        Err(not_yet("Alarm"))
    }
    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(not_yet("Defragment"))
    }
    async fn hash(&self, _: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        Err(not_yet("Hash"))
    }
    async fn hash_kv(&self, _: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }
    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }
    async fn move_leader(&self, _: Request<pb::MoveLeaderRequest>) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(not_yet("MoveLeader"))
    }
    async fn downgrade(&self, _: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}
