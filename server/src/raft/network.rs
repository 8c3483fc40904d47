//! openraft's network over Cairn's peer gRPC service: one long-lived tonic channel
//! per peer, shared by Raft replication and request forwarding.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::{PeerMessage, PipeRpc};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::log_store::{Durable, LogSynced};
use super::pipe::{Pipe, PipeError};
use super::{LogId, Member, NodeId, TypeConfig};
use crate::limits::{APPEND_ENTRIES_BYTES_MAX, PIPE_PAYLOAD_BYTES_MAX, RESPONSE_BYTES_MAX};

/// Which peer RPC to call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
    Lease,
    Admin,
    Members,
}

impl PeerRpc {
    /// The pipe call of this kind, for those that go over the peer's pipe when
    /// small: the frequent ones that take no longer than a Raft round.
    fn on_pipe(self) -> Option<PipeRpc> {
        match self {
            PeerRpc::AppendEntries => Some(PipeRpc::AppendEntries),
            PeerRpc::Vote => Some(PipeRpc::Vote),
            PeerRpc::Forward => Some(PipeRpc::Forward),
            PeerRpc::ReadIndex => Some(PipeRpc::ReadIndex),
            PeerRpc::Lease => Some(PipeRpc::Lease),
            PeerRpc::InstallSnapshot | PeerRpc::Admin | PeerRpc::Members => None,
        }
    }

    /// The RPC a pipe call stands for.
    pub(crate) fn of_pipe(rpc: PipeRpc) -> Option<PeerRpc> {
        match rpc {
            PipeRpc::AppendEntries => Some(PeerRpc::AppendEntries),
            PipeRpc::Vote => Some(PeerRpc::Vote),
            PipeRpc::Forward => Some(PeerRpc::Forward),
            PipeRpc::ReadIndex => Some(PeerRpc::ReadIndex),
            PipeRpc::Lease => Some(PeerRpc::Lease),
            PipeRpc::Unspecified => None,
        }
    }
}

/// Why a peer call failed before the peer could answer.
#[derive(thiserror::Error, Debug)]
pub(crate) enum PeerCallError {
    #[error("member {target:x} has no usable peer URL: {reason}")]
    BadAddress { target: NodeId, reason: String },
    /// The request certainly did not reach the member (no connection).
    #[error("member {target:x} is unreachable: {reason}")]
    Unreachable { target: NodeId, reason: String },
    #[error("member {target:x} did not answer within {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    #[error("member {target:x} refused the call: {status}")]
    Refused { target: NodeId, status: tonic::Status },
    #[error("member {target:x} sent an undecodable reply: {reason}")]
    Decode { target: NodeId, reason: String },
}

/// Connections to the other members.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: u64,
    self_id: NodeId,
    peers: Arc<Mutex<HashMap<NodeId, Peer>>>,
    /// Set once this member learns it was removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// How much of this member's log is durable: the commit index it sends as leader
    /// stays within it (see [`durable_commit`]).
    log_synced: LogSynced,
    /// The highest commit index held back from a follower so far.
    held_commit: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The connection to one peer, for the URL it was made to.
struct Peer {
    url: String,
    channel: Channel,
    /// Opened on the first small call.
    pipe: Option<Arc<Pipe>>,
}

/// Part of the message a member sends to one that was removed from the cluster.
pub(crate) const REMOVED_MARK: &str = "was removed from the cluster";

impl PeerNetwork {
    pub fn new(cluster_id: u64, self_id: NodeId, log_synced: LogSynced) -> Self {
        let (removed, _) = tokio::sync::watch::channel(false);
        let held_commit = Arc::new(tokio::sync::watch::channel(0).0);
        PeerNetwork { cluster_id, self_id, peers: Arc::default(), removed: Arc::new(removed), log_synced, held_commit }
    }

    /// The highest commit index that messages to followers left out because this
    /// member's log did not hold it durably yet (see [`durable_commit`]). Once it
    /// does, a heartbeat tells the followers: if no write follows, they would
    /// otherwise wait for openraft's next periodic heartbeat. (A follower with a
    /// message in flight then is skipped, and waits for that.)
    pub fn held_commit(&self) -> tokio::sync::watch::Receiver<u64> {
        self.held_commit.subscribe()
    }

    /// Becomes true once this member learns that it was removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// The connection to `target` at its first peer URL (a new one if the URL
    /// changed), and with `pipe`, its pipe (a new one if the last has closed).
    fn connection(
        &self,
        target: NodeId,
        node: &Member,
        pipe: bool,
    ) -> Result<(Channel, Option<Arc<Pipe>>), PeerCallError> {
        let url = node.peer_urls.first().ok_or_else(|| PeerCallError::BadAddress {
            target,
            reason: format!("member {} lists no peer URL", node.name),
        })?;
        let mut peers = self.peers.lock().expect("peer connection map");
        let peer = match peers.get_mut(&target) {
            Some(peer) if peer.url == *url => peer,
            _ => {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| PeerCallError::BadAddress { target, reason: format!("{url}: {e}") })?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                let peer = Peer { url: url.clone(), channel: endpoint.connect_lazy(), pipe: None };
                peers.insert(target, peer);
                peers.get_mut(&target).expect("just inserted")
            }
        };
        if !pipe {
            return Ok((peer.channel.clone(), None));
        }
        if peer.pipe.as_ref().is_none_or(|p| p.is_closed()) {
            peer.pipe = Some(Arc::new(Pipe::open(peer.channel.clone())));
        }
        Ok((peer.channel.clone(), peer.pipe.clone()))
    }

    /// Calls `rpc` on `target` with a bincode payload and decodes its bincode reply.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        node: &Member,
        rpc: PeerRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        let payload = bincode::serialize(req).expect("bincode encoding of an in-memory value cannot fail");
        let message = PeerMessage { cluster_id: self.cluster_id, from: self.self_id, payload };
        let on_pipe = rpc.on_pipe().filter(|_| message.payload.len() <= PIPE_PAYLOAD_BYTES_MAX);
        let (channel, pipe) = self.connection(target, node, on_pipe.is_some())?;
        let outcome = match (on_pipe, pipe) {
            (Some(pipe_rpc), Some(pipe)) => {
                let call = crate::observability::peer_call(target, rpc, pipe.call(pipe_rpc, message, timeout));
                match tokio::time::timeout(timeout, call).await {
                    Err(_) => Err(None),
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(PipeError::NeverSent(status))) => {
                        return Err(PeerCallError::Unreachable { target, reason: status.message().to_string() })
                    }
                    Ok(Err(PipeError::Broken(status) | PipeError::Refused(status))) => Err(Some(status)),
                }
            }
            _ => {
                let mut client = PeerClient::new(channel)
                    .max_decoding_message_size(RESPONSE_BYTES_MAX)
                    .max_encoding_message_size(RESPONSE_BYTES_MAX);
                let mut request = tonic::Request::new(message);
                request.set_timeout(timeout);
                let call = async {
                    match rpc {
                        PeerRpc::AppendEntries => client.append_entries(request).await,
                        PeerRpc::Vote => client.vote(request).await,
                        PeerRpc::InstallSnapshot => client.install_snapshot(request).await,
                        PeerRpc::Forward => client.forward(request).await,
                        PeerRpc::ReadIndex => client.read_index(request).await,
                        PeerRpc::Lease => client.lease(request).await,
                        PeerRpc::Admin => client.admin(request).await,
                        PeerRpc::Members => client.members(request).await,
                    }
                };
                let call = crate::observability::peer_call(target, rpc, call);
                match tokio::time::timeout(timeout, call).await {
                    Err(_) => Err(None),
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                    Ok(Err(status)) if never_sent(&status) => {
                        return Err(PeerCallError::Unreachable { target, reason: status.message().to_string() })
                    }
                    Ok(Err(status)) => Err(Some(status)),
                }
            }
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(None) => return Err(PeerCallError::Timeout { target, timeout }),
            Err(Some(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(PeerCallError::Timeout { target, timeout })
            }
            Err(Some(status)) => {
                if status.code() == tonic::Code::PermissionDenied && status.message().contains(REMOVED_MARK) {
                    tracing::error!(by = format_args!("{target:x}"), "{}", status.message());
                    self.removed.send_replace(true);
                }
                return Err(PeerCallError::Refused { target, status });
            }
        };
        bincode::deserialize(&reply.payload).map_err(|e| PeerCallError::Decode { target, reason: e.to_string() })
    }
}

/// When the entries of `rpc` exceed `bytes_max` encoded, how many of them fit
/// (at least one, so that any single entry can be sent).
fn entries_within(rpc: &AppendEntriesRequest<TypeConfig>, bytes_max: u64) -> Option<u64> {
    let mut total = 0u64;
    for (i, entry) in rpc.entries.iter().enumerate() {
        total += bincode::serialized_size(entry).expect("bincode sizing of an in-memory value cannot fail");
        if total > bytes_max && i > 0 {
            return Some(i as u64);
        }
    }
    None
}

/// Whether a failed call certainly never reached the peer: the connection itself
/// was refused. Anything else (reset, timeout) may have delivered the request.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn Error + 'static)> = Some(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerConnection { net: self.clone(), target, node: node.clone() }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    net: PeerNetwork,
    target: NodeId,
    node: Member,
}

impl PeerConnection {
    async fn raft_call<Req, Resp, E>(
        &self,
        rpc: PeerRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let result: Result<Resp, E> =
            self.net.call(self.target, &self.node, rpc, req, option.hard_ttl()).await.map_err(|e| match e {
                PeerCallError::Refused { ref status, .. } if status.code() == tonic::Code::Unavailable => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                PeerCallError::BadAddress { .. } | PeerCallError::Unreachable { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// `rpc` with a commit index no further than this member's log is durable, and the
/// commit index it held back, if it had to.
///
/// As leader, this member counts itself in the quorum before its own fsync of an entry
/// (see [`LogStore`](super::LogStore)). A follower must not hear that the entry is
/// committed before then: it would apply it, and if this member lost its copy in a
/// crash, the entry might be durable on one follower only and be lost in the next
/// election. So the commit index is cut back to the highest durable entry the
/// message names, among those of this leader's own term: an entry of an earlier
/// term is committed only through a later entry of the current term that a
/// majority holds (Raft's commitment rule), and with five members a cut-back index
/// landing on an older entry could name one that no majority holds yet. The message
/// goes at once all the same (heartbeats confirm leadership for reads and must not
/// wait for a disk); the commit index held back goes out once it is durable (see
/// [`PeerNetwork::held_commit`]).
fn durable_commit(
    mut rpc: AppendEntriesRequest<TypeConfig>,
    durable: Durable,
) -> (AppendEntriesRequest<TypeConfig>, Option<u64>) {
    let Some(commit) = rpc.leader_commit else { return (rpc, None) };
    if matches!(durable, Durable::Upto(upto) if upto >= commit.index) {
        return (rpc, None);
    }
    rpc.leader_commit = commit_within(&rpc, durable);
    (rpc, Some(commit.index))
}

/// The highest log ID that `rpc` names (its entries', or the one before them), that
/// is durable and of the sending leader's term, if any.
fn commit_within(rpc: &AppendEntriesRequest<TypeConfig>, durable: Durable) -> Option<LogId> {
    let Durable::Upto(upto) = durable else { return None };
    let named = rpc.entries.iter().rev().map(|e| e.log_id).chain(rpc.prev_log_id);
    named
        .filter(|l| l.leader_id == *rpc.vote.leader_id() && Some(l) <= rpc.leader_commit.as_ref())
        .find(|l| l.index <= upto)
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        if let Some(fits) = entries_within(&rpc, APPEND_ENTRIES_BYTES_MAX) {
            // openraft retries at once with at most this many entries.
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fits)));
        }
        let (rpc, held) = durable_commit(rpc, self.net.log_synced.now());
        if let Some(index) = held {
            self.net.held_commit.send_if_modified(|h| {
                let higher = index > *h;
                if higher {
                    *h = index;
                }
                higher
            });
        }
        let heartbeat = rpc.entries.is_empty();
        crate::observability::heartbeat(self.target, heartbeat, self.raft_call(PeerRpc::AppendEntries, &rpc, &option))
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let _timer = crate::observability::metrics().snapshot.send_seconds.start_timer();
        crate::observability::metrics().snapshot.send_bytes_total.inc_by(rpc.data.len() as u64);
        let (offset, done) = (rpc.offset, rpc.done);
        let result = self.raft_call(PeerRpc::InstallSnapshot, &rpc, &option).await;
        if let Err(e) = &result {
            tracing::info!(
                to = format_args!("{:x}", self.target),
                snapshot = %rpc.meta.snapshot_id,
                offset,
                done,
                error = %e,
                "sending a snapshot chunk failed; openraft retries"
            );
        }
        result
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.raft_call(PeerRpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    use super::*;
    use crate::raft::Entry;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    /// An AppendEntries after entry `prev`, with `count` entries, committing `commit`.
    fn append(prev: u64, count: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(prev)),
            entries: (prev + 1..=prev + count)
                .map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank })
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    #[test]
    fn the_commit_sent_is_the_highest_durable_entry_named() {
        let rpc = append(5, 3, 7);
        assert_eq!(commit_within(&rpc, Durable::Upto(6)), Some(log_id(6)), "an entry of the message");
        assert_eq!(commit_within(&rpc, Durable::Upto(9)), Some(log_id(7)), "never past the leader's commit");
        assert_eq!(commit_within(&rpc, Durable::Upto(5)), Some(log_id(5)), "the entry before the message");
        assert_eq!(commit_within(&rpc, Durable::Upto(4)), None, "none named is durable");
        assert_eq!(commit_within(&rpc, Durable::Failed), None, "nothing after a failed fsync");

        // After entry 5 of term 1, entries 6-8 of term 2 (this leader's), committing 7.
        let mut rpc = append(5, 3, 7);
        rpc.prev_log_id = Some(LogId::new(CommittedLeaderId::new(1, 3), 5));
        assert_eq!(commit_within(&rpc, Durable::Upto(5)), None, "never an entry of an earlier term");
        assert_eq!(commit_within(&rpc, Durable::Upto(6)), Some(log_id(6)));
    }

    #[test]
    fn a_commit_beyond_the_durable_log_is_cut_back_and_reported_held() {
        let (sent, held) = durable_commit(append(5, 3, 8), Durable::Upto(6));
        assert_eq!((sent.leader_commit, held), (Some(log_id(6)), Some(8)));
        assert_eq!(sent.entries.len(), 3, "entries unchanged");
        let (sent, held) = durable_commit(append(8, 0, 8), Durable::Upto(7));
        assert_eq!((sent.leader_commit, held), (None, Some(8)), "a heartbeat names only the entry before");
        let (sent, held) = durable_commit(append(8, 0, 8), Durable::Upto(8));
        assert_eq!((sent.leader_commit, held), (Some(log_id(8)), None), "durable: unchanged");
    }
}
