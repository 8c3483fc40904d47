//! The peer gRPC service: Raft RPCs from other members, writes and lease requests
//! forwarded by followers, and ReadIndex requests. Messages from another cluster are
//! refused.

use std::sync::Arc;

use cairn_proto::peer::peer_server::Peer;
use cairn_proto::peer::{PeerMessage, PipeCall};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::network::{PeerRpc, REMOVED_MARK};
use super::{AdminRequest, LeaseCall, LeaseLeader, NodeId, RaftNode, TypeConfig};
use crate::mvcc::Command;

#[derive(Clone)]
pub struct PeerService {
    node: Arc<RaftNode>,
    leases: Arc<dyn LeaseLeader>,
    /// Turns true when the member stops: the pipes it serves end then.
    stop: watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(node: Arc<RaftNode>, leases: Arc<dyn LeaseLeader>, stop: watch::Receiver<bool>) -> Self {
        PeerService { node, leases, stop }
    }

    fn open<T: DeserializeOwned>(&self, msg: PeerMessage) -> Result<(NodeId, T), Status> {
        if self.node.is_removed(msg.from) {
            tracing::warn!(from = format_args!("{:x}", msg.from), "refused a peer message from a removed member");
            return Err(Status::permission_denied(format!(
                "cairn: member {:x} {REMOVED_MARK} and must not rejoin it; start a new member with an empty data directory after MemberAdd",
                msg.from
            )));
        }
        if msg.cluster_id != self.node.cluster_id {
            tracing::warn!(
                from = format_args!("{:x}", msg.from),
                their_cluster = format_args!("{:x}", msg.cluster_id),
                "refused a peer message from another cluster"
            );
            return Err(Status::failed_precondition(format!(
                "cairn: member {:x} belongs to cluster {:x}, not to the sender's cluster {:x}",
                self.node.id, self.node.cluster_id, msg.cluster_id
            )));
        }
        let payload = bincode::deserialize(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("cairn: undecodable peer message: {e}")))?;
        Ok((msg.from, payload))
    }

    fn reply<T: Serialize>(&self, value: &T) -> PeerMessage {
        let payload = bincode::serialize(value).expect("bincode encoding of an in-memory value cannot fail");
        PeerMessage { cluster_id: self.node.cluster_id, from: self.node.id, payload }
    }

    /// Handles one call of kind `rpc`, whether it came as a call of its own or
    /// over a pipe.
    async fn handle(&self, rpc: PeerRpc, msg: PeerMessage) -> Result<PeerMessage, Status> {
        match rpc {
            PeerRpc::AppendEntries => {
                let (_, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.open(msg)?;
                Ok(self.reply(&self.node.raft.append_entries(rpc).await))
            }
            PeerRpc::Vote => {
                let (_, rpc): (_, VoteRequest<NodeId>) = self.open(msg)?;
                Ok(self.reply(&self.node.raft.vote(rpc).await))
            }
            PeerRpc::InstallSnapshot => {
                let (_, rpc): (_, InstallSnapshotRequest<TypeConfig>) = self.open(msg)?;
                // openraft writes the chunk to the snapshot file and then advances the
                // offset it tracks. Were this handler cancelled in between (the sender's
                // connection drops), the file position and that offset would disagree,
                // and the resent chunk would be written in the wrong place. A task of
                // its own finishes the chunk whatever happens to the connection.
                let node = self.node.clone();
                let chunk = tokio::spawn(async move {
                    let _receiving = node.receiving_snapshot();
                    node.raft.install_snapshot(rpc).await
                });
                let handled =
                    chunk.await.map_err(|e| Status::internal(format!("handling a snapshot chunk failed: {e}")))?;
                Ok(self.reply(&handled))
            }
            PeerRpc::Forward => {
                // A follower's batch of forwarded commands: proposed together (in
                // order, so they most likely share one entry), answered together.
                let (_, commands): (_, Vec<Command>) = self.open(msg)?;
                let results = futures::future::join_all(commands.into_iter().map(|c| self.node.propose_local(c))).await;
                Ok(self.reply(&results))
            }
            PeerRpc::ReadIndex => {
                // A member of an earlier version sends no vote: an empty payload.
                let (from, vote) = if msg.payload.is_empty() {
                    let (from, ()) = self.open(msg)?;
                    (from, None)
                } else {
                    self.open(msg)?
                };
                Ok(self.reply(&self.node.serve_read_index(from, vote).await))
            }
            PeerRpc::Lease => {
                let (_, call): (_, LeaseCall) = self.open(msg)?;
                Ok(self.reply(&self.leases.serve(call).await))
            }
            PeerRpc::Admin => {
                let (_, admin): (_, AdminRequest) = self.open(msg)?;
                Ok(self.reply(&self.node.admin_local(admin).await))
            }
            PeerRpc::Members => {
                // A member joining with an empty data directory does not know the
                // cluster ID yet; it may ask for the members (nothing else).
                if msg.cluster_id != 0 {
                    self.open::<()>(msg)?;
                }
                Ok(self.reply(&self.node.cluster_view()))
            }
        }
    }

    async fn unary(&self, rpc: PeerRpc, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.handle(rpc, req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::AppendEntries, req).await
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::Vote, req).await
    }

    async fn install_snapshot(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::InstallSnapshot, req).await
    }

    async fn forward(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::Forward, req).await
    }

    async fn read_index(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::ReadIndex, req).await
    }

    async fn lease(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::Lease, req).await
    }

    async fn admin(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::Admin, req).await
    }

    async fn members(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.unary(PeerRpc::Members, req).await
    }

    type PipeStream = super::pipe::Replies;

    async fn pipe(&self, req: Request<Streaming<PipeCall>>) -> Result<Response<Self::PipeStream>, Status> {
        let service = self.clone();
        let handler: super::pipe::Handler = Arc::new(move |rpc: PeerRpc, msg: PeerMessage| {
            let service = service.clone();
            Box::pin(async move {
                // Traced as the unary calls of these kinds are (see the peer layer).
                match rpc {
                    PeerRpc::Forward => {
                        crate::observability::traced("/cairn.peer.v1.Peer/Forward", service.handle(rpc, msg)).await
                    }
                    PeerRpc::Lease => {
                        crate::observability::traced("/cairn.peer.v1.Peer/Lease", service.handle(rpc, msg)).await
                    }
                    _ => service.handle(rpc, msg).await,
                }
            })
        });
        Ok(Response::new(super::pipe::serve(req.into_inner(), handler, self.stop.clone())))
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::NodeId;

    /// Members of different versions during a rolling upgrade: an earlier member
    /// sends ReadIndex requests with no vote, and decodes a request as `()`.
    #[test]
    fn read_index_requests_decode_across_versions() {
        let earlier = bincode::serialize(&()).unwrap();
        assert!(earlier.is_empty(), "an earlier member's request is recognised by its empty payload");
        let later = bincode::serialize(&Some(Vote::<NodeId>::new_committed(3, 1))).unwrap();
        bincode::deserialize::<()>(&later).expect("an earlier leader ignores the vote");
        let none = bincode::serialize(&None::<Vote<NodeId>>).unwrap();
        assert!(!none.is_empty(), "a later member without a vote is not taken for an earlier one");
    }
}
