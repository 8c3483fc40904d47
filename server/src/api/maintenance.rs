//! The etcd v3 Maintenance service: Status, Alarm, Defragment, Hash, HashKV,
//! Snapshot (a consistent backup, streamed) and MoveLeader.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::error::{admin_status, mvcc_status, raft_status};
use super::Api;
use crate::limits::BACKUP_STREAM_CHUNK_BYTES;
use crate::mvcc::{AlarmKind, Command};
use crate::raft::AdminRequest;

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

fn alarm_kind(alarm: i32) -> Option<AlarmKind> {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::Nospace) => Some(AlarmKind::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Some(AlarmKind::Corrupt),
        _ => None,
    }
}

fn alarm_type(kind: AlarmKind) -> pb::AlarmType {
    match kind {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
        AlarmKind::Corrupt => pb::AlarmType::Corrupt,
    }
}

/// etcd's text for a raised alarm in `Status.errors`.
fn alarm_error(member: u64, kind: AlarmKind) -> String {
    let name = match kind {
        AlarmKind::NoSpace => "NOSPACE",
        AlarmKind::Corrupt => "CORRUPT",
    };
    format!("memberID:{member} alarm:{name} ")
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
        errors.extend(self.api.store.alarms().into_iter().map(|(member, kind)| alarm_error(member, kind)));
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

    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let req = request.into_inner();
        let action = AlarmAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument(format!("cairn: unknown alarm action {}", req.action)))?;
        let listed = |alarms: Vec<(u64, AlarmKind)>| {
            alarms
                .into_iter()
                .map(|(member, kind)| pb::AlarmMember { member_id: member, alarm: alarm_type(kind) as i32 })
                .collect()
        };
        let alarms = match action {
            AlarmAction::Get => {
                self.api.node.linearizable_barrier().await.map_err(raft_status)?;
                listed(self.api.store.alarms().into_iter().collect())
            }
            AlarmAction::Activate | AlarmAction::Deactivate => {
                let kind = alarm_kind(req.alarm)
                    .ok_or_else(|| Status::invalid_argument("cairn: the alarm must be NOSPACE or CORRUPT"))?;
                let activate = action == AlarmAction::Activate;
                if activate && self.api.node.members().iter().all(|m| m.id != req.member_id) {
                    return Err(admin_status(crate::raft::AdminError::MemberNotFound));
                }
                let existed = self.api.store.alarms().contains(&(req.member_id, kind));
                let cmd = Command::Alarm { activate, member: req.member_id, alarm: kind };
                let outcome = self.api.node.write(cmd).await.map_err(raft_status)?;
                outcome.result.map_err(mvcc_status)?;
                if activate || existed {
                    listed(vec![(req.member_id, kind)])
                } else {
                    Vec::new()
                }
            }
        };
        Ok(Response::new(pb::AlarmResponse { header: self.api.header(self.api.store.status().revision), alarms }))
    }

    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Result<Response<pb::DefragmentResponse>, Status> {
        // RocksDB compacts in the background; this only asks it to rewrite every
        // table now, so that space freed by compaction returns at once. Reads and
        // writes go on meanwhile.
        let store = self.api.store.clone();
        tokio::task::spawn_blocking(move || store.compact_storage())
            .await
            .map_err(|e| Status::internal(format!("cairn: defragment task failed: {e}")))?
            .map_err(|e| Status::internal(format!("cairn: defragment: {e}")))?;
        Ok(Response::new(pb::DefragmentResponse { header: self.api.header(self.api.store.status().revision) }))
    }

    async fn hash(&self, _: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let store = self.api.store.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || {
            let view = store.read_view();
            (view.hash_all(), view.revision)
        })
        .await
        .map_err(|e| Status::internal(format!("cairn: hash task failed: {e}")))?;
        Ok(Response::new(pb::HashResponse { header: self.api.header(revision), hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let store = self.api.store.clone();
        let (hash, hash_revision, compact_revision, current) = tokio::task::spawn_blocking(move || {
            let view = store.read_view();
            view.hash_kv(revision).map(|(hash, rev)| (hash, rev, view.compact_revision, view.revision))
        })
        .await
        .map_err(|e| Status::internal(format!("cairn: hash task failed: {e}")))?
        .map_err(mvcc_status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.api.header(current),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let api = self.api.clone();
        let (file, size, revision) = tokio::task::spawn_blocking(move || api.write_backup())
            .await
            .map_err(|e| Status::internal(format!("cairn: snapshot task failed: {e}")))?
            .map_err(|e| Status::internal(format!("cairn: writing the snapshot: {e}")))?;
        let header = self.api.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SnapshotResponse, Status>>(2);
        tokio::task::spawn_blocking(move || {
            let mut reader = match file.reopen() {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!("cairn: reading the snapshot: {e}"))));
                    return;
                }
            };
            let mut sent = 0u64;
            loop {
                let mut blob = vec![0u8; BACKUP_STREAM_CHUNK_BYTES];
                let n = match read_full(&mut reader, &mut blob) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("cairn: reading the snapshot: {e}"))));
                        return;
                    }
                };
                if n == 0 {
                    return;
                }
                blob.truncate(n);
                sent += n as u64;
                let msg = pb::SnapshotResponse {
                    header: header.clone(),
                    remaining_bytes: size - sent,
                    blob,
                    version: ETCD_API_VERSION.to_string(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return; // the client went away; the temporary file goes with `file`
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.api.node.admin(AdminRequest::MoveLeader { target }).await.map_err(admin_status)?;
        Ok(Response::new(pb::MoveLeaderResponse { header: self.api.header(self.api.store.status().revision) }))
    }

    async fn downgrade(&self, _: Request<pb::DowngradeRequest>) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("cairn: Maintenance.Downgrade is not supported: Cairn has one storage version"))
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
