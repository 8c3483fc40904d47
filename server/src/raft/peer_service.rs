//! The peer gRPC service: Raft RPCs from other members, writes and lease requests
//! forwarded by followers, and ReadIndex requests. Messages from another cluster are
//! refused.

use std::sync::Arc;

use cairn_proto::peer::peer_server::Peer;
use cairn_proto::peer::PeerMessage;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::REMOVED_MARK;
use super::{AdminRequest, LeaseCall, LeaseLeader, NodeId, RaftNode, TypeConfig};
use crate::mvcc::Command;

pub struct PeerService {
    node: Arc<RaftNode>,
    leases: Arc<dyn LeaseLeader>,
}

impl PeerService {
    pub fn new(node: Arc<RaftNode>, leases: Arc<dyn LeaseLeader>) -> Self {
        PeerService { node, leases }
    }

    fn open<T: DeserializeOwned>(&self, req: Request<PeerMessage>) -> Result<(NodeId, T), Status> {
        let msg = req.into_inner();
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

    fn reply<T: Serialize>(&self, value: &T) -> Response<PeerMessage> {
        let payload = bincode::serialize(value).expect("bincode encoding of an in-memory value cannot fail");
        Response::new(PeerMessage { cluster_id: self.node.cluster_id, from: self.node.id, payload })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.open(req)?;
        Ok(self.reply(&self.node.raft.append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, rpc): (_, VoteRequest<NodeId>) = self.open(req)?;
        Ok(self.reply(&self.node.raft.vote(rpc).await))
    }

    async fn install_snapshot(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, rpc): (_, InstallSnapshotRequest<TypeConfig>) = self.open(req)?;
        // openraft writes the chunk to the snapshot file and then advances the offset
        // it tracks. Were this handler cancelled in between (the sender's connection
        // drops), the file position and that offset would disagree, and the resent
        // chunk would be written in the wrong place. A task of its own finishes the
        // chunk whatever happens to the connection.
        let node = self.node.clone();
        let chunk = tokio::spawn(async move {
            let _receiving = node.receiving_snapshot();
            node.raft.install_snapshot(rpc).await
        });
        let handled = chunk.await.map_err(|e| Status::internal(format!("handling a snapshot chunk failed: {e}")))?;
        Ok(self.reply(&handled))
    }

    async fn forward(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        // A follower's batch of forwarded commands: proposed together (in order, so
        // they most likely share one entry), answered together.
        let (_, commands): (_, Vec<Command>) = self.open(req)?;
        let results = futures::future::join_all(commands.into_iter().map(|c| self.node.propose_local(c))).await;
        Ok(self.reply(&results))
    }

    async fn read_index(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, ()) = self.open(req)?;
        Ok(self.reply(&self.node.leader_read_index().await))
    }

    async fn lease(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, call): (_, LeaseCall) = self.open(req)?;
        Ok(self.reply(&self.leases.serve(call).await))
    }

    async fn admin(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, admin): (_, AdminRequest) = self.open(req)?;
        Ok(self.reply(&self.node.admin_local(admin).await))
    }

    async fn members(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        // A member joining with an empty data directory does not know the cluster
        // ID yet; it may ask for the members (nothing else).
        if msg.cluster_id != 0 {
            self.open::<()>(Request::new(msg))?;
        }
        Ok(self.reply(&self.node.cluster_view()))
    }
}
