//! The etcd v3 Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::lease_server::Lease;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::{mvcc_status, raft_status};
use super::Api;
use crate::lease::Lessor;
use crate::limits::{LEASE_ID_ATTEMPTS_MAX, LEASE_KEEPALIVE_RESPONSES_PENDING_MAX, LEASE_TTL_SECONDS_MAX};
use crate::mvcc::{Command, CommandResponse, MvccError, Revision};

pub struct LeaseService {
    api: Arc<Api>,
    lessor: Arc<Lessor>,
}

impl LeaseService {
    pub fn new(api: Arc<Api>, lessor: Arc<Lessor>) -> Self {
        LeaseService { api, lessor }
    }

    /// Proposes a lease command; returns the store revision after it.
    async fn propose(&self, cmd: Command) -> Result<Revision, Status> {
        let outcome = self.api.node.write(cmd).await.map_err(raft_status)?;
        match outcome.result.map_err(mvcc_status)? {
            CommandResponse::LeaseGrant | CommandResponse::LeaseRevoke => Ok(outcome.revision),
            other => Err(Status::internal(format!("cairn: a lease request produced {other:?}; this is a bug"))),
        }
    }
}

/// A random positive lease ID. Chosen here, before proposing, so that every member
/// applies the same one.
fn random_lease_id() -> i64 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let id = (RandomState::new().hash_one(seed) >> 1) as i64;
    id.max(1)
}

type KeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        if req.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(mvcc_status(MvccError::LeaseTtlTooLarge { ttl_seconds: req.ttl }));
        }
        let ttl = req.ttl.max(self.lessor.ttl_seconds_min());
        let mut last = MvccError::LeaseExists { lease: req.id };
        for _ in 0..LEASE_ID_ATTEMPTS_MAX {
            let id = if req.id != 0 { req.id } else { random_lease_id() };
            let outcome =
                self.api.node.write(Command::LeaseGrant { id, ttl_seconds: ttl }).await.map_err(raft_status)?;
            match outcome.result {
                Ok(_) => {
                    crate::observability::metrics().lease.granted_total.inc();
                    let header = self.api.header(outcome.revision);
                    return Ok(Response::new(pb::LeaseGrantResponse { header, id, ttl, error: String::new() }));
                }
                // A server-chosen ID that happens to exist: choose again.
                Err(e @ MvccError::LeaseExists { .. }) if req.id == 0 => last = e,
                Err(e) => return Err(mvcc_status(e)),
            }
        }
        Err(mvcc_status(last))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let revision = self.propose(Command::LeaseRevoke { id }).await?;
        crate::observability::metrics().lease.revoked_total.inc();
        Ok(Response::new(pb::LeaseRevokeResponse { header: self.api.header(revision) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each request in order; TTL 0 for a lease that does not exist or has
    /// expired, as etcd does. A Raft failure ends the stream with its status.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(LEASE_KEEPALIVE_RESPONSES_PENDING_MAX);
        let (api, lessor) = (self.api.clone(), self.lessor.clone());
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let reply = match lessor.keep_alive(req.id).await {
                    Ok(ttl) => {
                        let header = api.header(api.store.status().revision);
                        Ok(pb::LeaseKeepAliveResponse { header, id: req.id, ttl })
                    }
                    Err(e) => Err(raft_status(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let remaining_ms = self.lessor.remaining_ms(req.id).await.map_err(raft_status)?;
        self.api.node.linearizable_barrier().await.map_err(raft_status)?;
        let view = self.api.store.read_view();
        let record = if remaining_ms >= 0 { view.lease(req.id) } else { None };
        let mut resp = pb::LeaseTimeToLiveResponse {
            header: self.api.header(view.revision),
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        };
        if let Some(record) = record {
            // Whole seconds, rounded down, as etcd reports them.
            resp.ttl = remaining_ms / 1000;
            resp.granted_ttl = record.ttl_seconds;
            if req.keys {
                resp.keys = view.lease_keys(req.id);
            }
        }
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.api.node.linearizable_barrier().await.map_err(raft_status)?;
        let view = self.api.store.read_view();
        let leases = view.leases().into_iter().map(|(id, _)| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse { header: self.api.header(view.revision), leases }))
    }
}
