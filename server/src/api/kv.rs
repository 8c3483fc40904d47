//! The etcd v3 KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_server::Kv;
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{mvcc_status, raft_status};
use super::Api;
use crate::mvcc::{validate_command, validate_range, ApplyOutcome, Command, CommandResponse, MvccError};

pub struct KvService {
    api: Arc<Api>,
}

impl KvService {
    pub fn new(api: Arc<Api>) -> Self {
        KvService { api }
    }

    /// Checks size and structure, proposes through Raft, and returns the outcome of a
    /// command that applied without error.
    async fn propose(&self, cmd: Command, wire_bytes: usize) -> Result<(CommandResponse, i64), Status> {
        let max = self.api.limits.request_bytes_max;
        if wire_bytes > max {
            return Err(mvcc_status(MvccError::RequestTooLarge { bytes: wire_bytes, max }));
        }
        validate_command(&cmd, self.api.limits.txn_ops_max).map_err(mvcc_status)?;
        self.api.check_quota(&cmd).await?;
        let kind = cmd.kind();
        let ApplyOutcome { revision, result } = self.api.node.write(cmd).await.map_err(raft_status)?;
        let response = result.map_err(mvcc_status)?;
        tracing::trace!(kind, revision, "applied");
        Ok((response, revision))
    }
}

fn unexpected(what: &str, got: &CommandResponse) -> Status {
    Status::internal(format!("cairn: a {what} request produced {got:?}; this is a bug"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let req = convert::range_request(request.into_inner())?;
        validate_range(&req).map_err(mvcc_status)?;
        if !req.serializable {
            self.api.node.linearizable_barrier().await.map_err(raft_status)?;
        }
        let view = self.api.store.read_view();
        let resp = view.range(&req).map_err(mvcc_status)?;
        Ok(Response::new(convert::range_response(resp, self.api.header(view.revision))))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let bytes = request.get_ref().encoded_len();
        let cmd = Command::Put(convert::put_request(request.into_inner()));
        match self.propose(cmd, bytes).await? {
            (CommandResponse::Put(r), rev) => Ok(Response::new(convert::put_response(r, self.api.header(rev)))),
            (other, _) => Err(unexpected("put", &other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let bytes = request.get_ref().encoded_len();
        let cmd = Command::DeleteRange(convert::delete_request(request.into_inner()));
        match self.propose(cmd, bytes).await? {
            (CommandResponse::DeleteRange(r), rev) => {
                Ok(Response::new(convert::delete_response(r, self.api.header(rev))))
            }
            (other, _) => Err(unexpected("delete_range", &other)),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let bytes = request.get_ref().encoded_len();
        let cmd = Command::Txn(convert::txn_request(request.into_inner())?);
        match self.propose(cmd, bytes).await? {
            (CommandResponse::Txn(r), rev) => Ok(Response::new(convert::txn_response(r, self.api.header(rev)))),
            (other, _) => Err(unexpected("txn", &other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let bytes = request.get_ref().encoded_len();
        let req = request.into_inner();
        let revision = req.revision;
        match self.propose(Command::Compact { revision }, bytes).await? {
            (CommandResponse::Compact, rev) => {
                if req.physical {
                    // etcd waits for the local store; this member may apply the
                    // compaction after the leader answered, so wait for both.
                    let wait = self.api.store.compactor().wait_finished(revision);
                    tokio::time::timeout(self.api.limits.request_timeout, wait)
                        .await
                        .map_err(|_| raft_status(crate::raft::RaftNodeError::Timeout))?;
                }
                Ok(Response::new(pb::CompactionResponse { header: self.api.header(rev) }))
            }
            (other, _) => Err(unexpected("compact", &other)),
        }
    }
}
