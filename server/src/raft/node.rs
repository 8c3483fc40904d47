//! A running Raft member as the API sees it: writes that reach the leader wherever
//! they arrive, and linearizable reads on any member through ReadIndex.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use rocksdb::DB;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

use super::log_store::StandingView;
use super::network::{PeerCallError, PeerRpc};
use super::proposal_batch::ProposalBatcher;
use super::read_index::{self, ReadBatcher};
use super::status::{self, RaftStatus, StatusFeed};
use super::{LeaseCall, LeaseLeader, LogStore, LogSynced, Member, NodeId, PeerNetwork, Proposal, Raft, StateMachine};
use crate::limits::{
    APPEND_ENTRIES_MAX, FORWARDS_IN_FLIGHT_MAX, FORWARD_ATTEMPTS_MAX, LEASE_READ_ELECTION_FRACTION_PERCENT,
    PEER_FORWARD_TIMEOUT_MS, PROPOSALS_IN_FLIGHT_MAX, PROPOSAL_EXTRA_SLOT_AFTER_MS, SNAPSHOT_CHUNK_BYTES_MAX,
    SNAPSHOT_INSTALL_TIMEOUT_MS,
};
use crate::mvcc::{ApplyOutcome, Command, KvStore};

/// Raft settings of a member.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_entries: u64,
    pub snapshot_catchup_entries: u64,
    pub request_timeout: Duration,
    /// Serve linearizable reads on the leader without a quorum round while its lease
    /// holds. Assumes members' clocks advance at rates within 30% of each other.
    pub lease_reads: bool,
    /// Refuse membership changes that could cost quorum (etcd's
    /// `--strict-reconfig-check`).
    pub strict_reconfig_check: bool,
}

/// Why a request could not go through Raft. Serializable: followers receive it from
/// the leader when they forward.
#[derive(thiserror::Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaftNodeError {
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    /// The write was sent to the leader but no answer came back: it may or may not
    /// have been applied.
    #[error("request timed out, possibly due to connection lost")]
    OutcomeUnknown,
    /// Not the leader when asked: nothing was proposed.
    #[error("not leader")]
    NotLeader { leader: Option<NodeId> },
    /// Leadership changed while the request was being proposed: it may or may not
    /// have been applied.
    #[error("leader changed")]
    LeaderChanged,
    #[error("server stopped")]
    Stopped,
}

/// A running member.
pub struct RaftNode {
    pub raft: Raft,
    pub id: NodeId,
    pub cluster_id: u64,
    pub(super) net: PeerNetwork,
    pub(super) settings: RaftSettings,
    local_reads: Arc<ReadBatcher>,
    leader_reads: Arc<ReadBatcher>,
    /// What the log store saved last: this member's vote and commit index, for
    /// ReadIndex.
    standing: StandingView,
    /// Role, leader and applied index, published only when they change.
    feed: StatusFeed,
    /// Client commands waiting to be proposed together, with the index of the entry
    /// that carried each.
    proposal_batch: Arc<ProposalBatcher<(u64, ApplyOutcome)>>,
    /// Writes waiting to be forwarded to the leader together.
    forwards: Arc<ProposalBatcher<Forwarded>>,
    pub(super) store: Arc<KvStore>,
    /// One membership change at a time on this leader.
    pub(super) admin_lock: tokio::sync::Mutex<()>,
    /// Proposals hold it shared; a leadership transfer holds it exclusively so that
    /// the target can catch up and win its election.
    pub(super) proposals: tokio::sync::RwLock<()>,
    /// Snapshot chunks being handled now, and when the last one arrived: while a
    /// leader streams a snapshot here this member holds its elections.
    snapshot_receipt: std::sync::Mutex<(usize, Option<Instant>)>,
    /// Removed member IDs, as of the membership log id they were read at.
    removed_cache: std::sync::Mutex<(Option<super::LogId>, BTreeSet<NodeId>)>,
}

impl RaftNode {
    /// Starts Raft on an opened database.
    pub async fn start(
        id: NodeId,
        cluster_id: u64,
        db: Arc<DB>,
        store: Arc<KvStore>,
        snapshot_dir: PathBuf,
        settings: RaftSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let config = openraft::Config {
            cluster_name: format!("cairn-{cluster_id:x}"),
            heartbeat_interval: settings.heartbeat_interval_ms,
            election_timeout_min: settings.election_timeout_ms,
            election_timeout_max: settings.election_timeout_ms * 3 / 2,
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_entries),
            max_in_snapshot_log_to_keep: settings.snapshot_catchup_entries,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX as u64,
            install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT_MS,
            ..Default::default()
        }
        .validate()?;
        let log = LogStore::open(db, id)?;
        let log_synced = log.synced();
        let standing = log.standing();
        let net = PeerNetwork::new(cluster_id, id, log_synced.clone());
        let sm = StateMachine::new(store.clone(), snapshot_dir)?.gated_by(log_synced.clone());
        let raft = Raft::new(id, Arc::new(config), net.clone(), log, sm).await?;
        let trigger = raft.clone();
        tokio::spawn(send_held_commits(net.held_commit(), log_synced, move || {
            let raft = trigger.clone();
            async move { raft.trigger().heartbeat().await.is_ok() }
        }));
        let feed = status::spawn(&raft, id);
        let node = Arc::new(RaftNode {
            raft,
            id,
            cluster_id,
            net,
            settings,
            local_reads: Arc::default(),
            leader_reads: Arc::default(),
            standing,
            feed,
            proposal_batch: Arc::new(ProposalBatcher::new(
                PROPOSALS_IN_FLIGHT_MAX,
                Duration::from_millis(PROPOSAL_EXTRA_SLOT_AFTER_MS),
            )),
            forwards: Arc::new(ProposalBatcher::new(FORWARDS_IN_FLIGHT_MAX, Duration::ZERO)),
            store,
            admin_lock: tokio::sync::Mutex::new(()),
            proposals: tokio::sync::RwLock::new(()),
            removed_cache: std::sync::Mutex::new((None, BTreeSet::new())),
            snapshot_receipt: std::sync::Mutex::new((0, None)),
        });
        tokio::spawn(log_leadership(node.status(), id));
        if node.removed_members().contains(&id) {
            // Removed before it stopped last time: it is no voter any more, so it
            // would never contact anyone to be told.
            tracing::error!(member = format_args!("{id:x}"), "this member was removed from the cluster");
            node.net.mark_removed();
        }
        tokio::spawn(watch_own_removal(node.status(), id, node.net.clone()));
        tokio::spawn(node.clone().promote_pending_voters());
        Ok(node)
    }

    /// Forms a new cluster from `members` (all initial members call this with the
    /// same set; openraft makes that safe). A no-op on an already formed member.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Member>) -> anyhow::Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks a snapshot chunk from the leader as being handled until the guard is
    /// dropped. openraft 0.9 does not count snapshot chunks as contact with the
    /// leader, so a member receiving (or importing) a large snapshot would time out,
    /// campaign, and depose the leader that is feeding it; it holds its elections
    /// instead, until one election timeout after the last chunk was handled.
    pub fn receiving_snapshot(self: &Arc<Self>) -> SnapshotReceipt {
        let mut receipt = self.snapshot_receipt.lock().expect("snapshot receipt");
        let idle = receipt.0 == 0 && receipt.1.is_none();
        receipt.0 += 1;
        receipt.1 = Some(Instant::now());
        if idle {
            self.raft.runtime_config().elect(false);
            let node = self.clone();
            let quiet = Duration::from_millis(self.settings.election_timeout_ms);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(quiet).await;
                    let mut receipt = node.snapshot_receipt.lock().expect("snapshot receipt");
                    if receipt.0 == 0 && receipt.1.is_none_or(|t| t.elapsed() >= quiet) {
                        receipt.1 = None;
                        node.raft.runtime_config().elect(true);
                        return;
                    }
                }
            });
        }
        SnapshotReceipt { node: self.clone() }
    }

    /// Role, leader, term and membership of this member, and openraft's fatal error
    /// once its core stops; published only when one of them changes.
    pub fn status(&self) -> tokio::sync::watch::Receiver<RaftStatus> {
        self.feed.status.clone()
    }

    /// Becomes true once this member learns it was removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.net.removed()
    }

    /// IDs of members removed from the cluster, as this member has applied them.
    pub fn removed_members(&self) -> BTreeSet<NodeId> {
        let view = self.store.read_view();
        view.meta(crate::schema::meta_keys::REMOVED_MEMBERS).map(|b| crate::mvcc::decode_meta(&b)).unwrap_or_default()
    }

    /// Whether `id` was removed from the cluster (cached per applied membership).
    pub fn is_removed(&self, id: NodeId) -> bool {
        let current = *self.raft.metrics().borrow().membership_config.log_id();
        let mut cache = self.removed_cache.lock().expect("removed members cache");
        if cache.0 != current {
            *cache = (current, self.removed_members());
        }
        cache.1.contains(&id)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The current leader, as this member knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The index of the last log entry applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }

    fn leader_node(&self, leader: NodeId) -> Option<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// Proposes `cmd` and returns its apply outcome, forwarding to the leader when
    /// this member is not it.
    pub async fn write(&self, cmd: Command) -> Result<ApplyOutcome, RaftNodeError> {
        match timeout(self.settings.request_timeout, crate::observability::proposal(self.write_via_leader(cmd))).await {
            Ok(result) => result,
            Err(_) => Err(RaftNodeError::Timeout),
        }
    }

    async fn write_via_leader(&self, cmd: Command) -> Result<ApplyOutcome, RaftNodeError> {
        // Each NotLeader from `propose_local`, and each forwarded batch that never
        // reached the leader, means the command was not appended anywhere, so trying
        // again cannot apply it twice.
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            match self.propose_local(cmd.clone()).await {
                Err(RaftNodeError::NotLeader { .. }) => {}
                other => return other,
            }
            crate::observability::step("forwarded");
            let (raft, net, id) = (self.raft.clone(), self.net.clone(), self.id);
            let submit = move |commands| forward_batch(raft.clone(), net.clone(), id, commands);
            match self.forwards.propose(cmd.clone(), !cmd.answer_is_small(), submit).await {
                Ok(Forwarded::Answered { leader, result: Err(RaftNodeError::NotLeader { .. }) })
                | Ok(Forwarded::Undelivered { leader }) => {
                    self.wait_for_leader_other_than(Some(leader)).await?;
                }
                Ok(Forwarded::Answered { result, .. }) => return result,
                // This member leads now: proposed locally on the next round.
                Err(RaftNodeError::NotLeader { leader }) if leader == Some(self.id) => {}
                Err(RaftNodeError::NotLeader { leader: None }) => {
                    self.wait_for_leader_other_than(None).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(RaftNodeError::NoLeader)
    }

    /// Runs a lease request on the leader: `local` here if this member leads, else on
    /// the leader through the peer `Lease` RPC.
    pub async fn lease_on_leader(&self, call: LeaseCall, local: &dyn LeaseLeader) -> Result<i64, RaftNodeError> {
        let routed = self.on_leader(PeerRpc::Lease, &call, || local.serve(call));
        match timeout(self.settings.request_timeout, routed).await {
            Ok(result) => result,
            Err(_) => Err(RaftNodeError::Timeout),
        }
    }

    /// Runs a request only the leader answers: `local()` first, which answers
    /// `NotLeader` on a member that does not lead; then `rpc` on the leader it names,
    /// following leader changes a bounded number of times.
    pub(super) async fn on_leader<Req, Resp, F, Fut>(
        &self,
        rpc: PeerRpc,
        req: &Req,
        local: F,
    ) -> Result<Resp, RaftNodeError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Resp, RaftNodeError>>,
    {
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let leader = match local().await {
                Err(RaftNodeError::NotLeader { leader }) => leader,
                other => return other,
            };
            let target = match leader {
                Some(l) if l != self.id => l,
                _ => {
                    self.wait_for_leader_other_than(None).await?;
                    continue;
                }
            };
            let Some(node) = self.leader_node(target) else {
                self.wait_for_leader_other_than(Some(target)).await?;
                continue;
            };
            let timeout = Duration::from_millis(PEER_FORWARD_TIMEOUT_MS);
            crate::observability::step("forwarded");
            match self.net.call::<_, Result<Resp, RaftNodeError>>(target, &node, rpc, req, timeout).await {
                Ok(Err(RaftNodeError::NotLeader { .. }))
                | Err(PeerCallError::BadAddress { .. })
                | Err(PeerCallError::Unreachable { .. }) => {
                    self.wait_for_leader_other_than(Some(target)).await?;
                }
                Ok(result) => return result,
                Err(e) => {
                    tracing::warn!(leader = format_args!("{target:x}"), ?rpc, error = %e, "forwarding to the leader failed");
                    return Err(RaftNodeError::OutcomeUnknown);
                }
            }
        }
        Err(RaftNodeError::NoLeader)
    }

    /// The current term if this member leads and has applied an entry of that term
    /// (so every entry committed by earlier leaders too); `None` otherwise.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let caught_up = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
        (m.state == ServerState::Leader && caught_up).then_some(m.current_term)
    }

    /// Waits (bounded) until [`RaftNode::leading_term`] answers; `NotLeader` at once,
    /// or as soon as this member stops leading.
    pub async fn wait_leading(&self) -> Result<u64, RaftNodeError> {
        let mut rx = self.raft.metrics();
        let not_leader =
            |m: &openraft::RaftMetrics<NodeId, Member>| RaftNodeError::NotLeader { leader: m.current_leader };
        let settled = async {
            let m = rx
                .wait_for(|m| {
                    m.state != ServerState::Leader || m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
                })
                .await
                .map_err(|_| RaftNodeError::Stopped)?;
            if m.state == ServerState::Leader {
                Ok(m.current_term)
            } else {
                Err(not_leader(&m))
            }
        };
        match timeout(self.settings.request_timeout, settled).await {
            Ok(result) => result,
            Err(_) => Err(RaftNodeError::Timeout),
        }
    }

    /// Proposes `cmd` on this member, which must be the leader.
    pub async fn propose_local(&self, cmd: Command) -> Result<ApplyOutcome, RaftNodeError> {
        // Waits while leadership is being handed over; then this member most likely
        // no longer leads, and the check below sends the request on.
        let _not_transferring = self.proposals.read().await;
        {
            // Not the leader now: nothing is submitted, so the caller may safely try
            // the leader instead.
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader {
                return Err(RaftNodeError::NotLeader { leader: m.current_leader });
            }
        }
        crate::observability::step("proposed");
        let raft = self.raft.clone();
        let submit = move |commands| submit_proposal(raft.clone(), commands);
        let (index, outcome) = self.proposal_batch.propose(cmd, false, submit).await?;
        Ok(crate::observability::entry_applied(index, outcome))
    }

    async fn wait_for_leader_other_than(&self, old: Option<NodeId>) -> Result<NodeId, RaftNodeError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            rx.wait_for(|m| m.current_leader.is_some() && m.current_leader != old).await.map(|m| m.current_leader)
        };
        let leader = match timeout(self.settings.request_timeout, wait).await {
            Ok(Ok(leader)) => Ok(leader.expect("checked")),
            Ok(Err(_)) => Err(RaftNodeError::Stopped),
            Err(_) => Err(RaftNodeError::NoLeader),
        };
        leader
    }

    /// Waits until this member's state machine reflects every write acknowledged
    /// before the call: after it returns, a local read is linearizable.
    pub async fn linearizable_barrier(self: &Arc<Self>) -> Result<(), RaftNodeError> {
        let deadline = Instant::now() + self.settings.request_timeout;
        let index = match self.lease_read_index() {
            Some(index) => index,
            None => timeout(self.settings.request_timeout, self.read_index())
                .await
                .map_err(|_| RaftNodeError::Timeout)??,
        };
        crate::observability::step("read_index");
        let mut rx = self.feed.applied.clone();
        let applied = async { rx.wait_for(|applied| *applied >= index).await.map(|_| ()) };
        let result = match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RaftNodeError::Stopped),
            Err(_) => Err(RaftNodeError::Timeout),
        };
        result
    }

    /// A read index from a ReadIndex round that started after this call.
    ///
    /// On the leader, local reads join the rounds that also serve the followers'
    /// ReadIndex calls that need one (see [`RaftNode::serve_read_index`]): one
    /// quorum round trip (a heartbeat to every follower) then serves both, where
    /// two streams of rounds would each send their own. On a
    /// follower, on a leader that has just lost its leadership, and on one whose
    /// round missed its quorum, the member's own rounds ask the leader (and retry
    /// until the request times out).
    async fn read_index(self: &Arc<Self>) -> Result<u64, RaftNodeError> {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            match self.leader_read_index().await {
                Err(RaftNodeError::NotLeader { .. } | RaftNodeError::Timeout) => {}
                answer => return answer,
            }
        }
        let node = self.clone();
        self.local_reads
            .read_index(move || {
                let node = node.clone();
                async move { node.fetch_read_index().await }
            })
            .await
    }

    /// With lease reads on, the leader's read index while its lease holds.
    fn lease_read_index(&self) -> Option<u64> {
        if !self.settings.lease_reads {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let lease_ms = self.settings.election_timeout_ms * LEASE_READ_ELECTION_FRACTION_PERCENT / 100;
        let fresh = m.millis_since_quorum_ack.is_some_and(|ms| ms < lease_ms);
        // The last log index is at least the commit index, so waiting for it to be
        // applied is enough (and the leader's first entry of its term is included).
        (m.state == ServerState::Leader && fresh).then(|| m.last_log_index.unwrap_or(0))
    }

    /// One ReadIndex round: on the leader, confirm leadership with a quorum; on a
    /// follower, ask the leader. Retries across leader changes for one request timeout.
    ///
    /// A round takes nothing from the reader that started it: the batcher's runner
    /// serves later readers with later rounds, so each round has its own deadline.
    async fn fetch_read_index(&self) -> Result<u64, RaftNodeError> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            match self.raft.get_read_log_id().await {
                Ok((read, _)) => return Ok(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    if let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        // Read now, after every read of this round arrived: the leader
                        // may count it as this member's confirmation of its leadership.
                        let vote = self.standing.get().vote;
                        let answer = self
                            .net
                            .call::<_, Result<u64, RaftNodeError>>(leader, &node, PeerRpc::ReadIndex, &vote, left)
                            .await;
                        match answer {
                            Ok(Ok(index)) => return Ok(index),
                            Ok(Err(RaftNodeError::Stopped)) | Ok(Err(RaftNodeError::NotLeader { .. })) | Err(_) => {}
                            Ok(Err(e)) => return Err(e),
                        }
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {}
                Err(RaftError::Fatal(_)) => return Err(RaftNodeError::Stopped),
            }
            if Instant::now() >= deadline {
                return Err(if self.leader().is_none() { RaftNodeError::NoLeader } else { RaftNodeError::Timeout });
            }
            tokio::time::sleep(Duration::from_millis(self.settings.heartbeat_interval_ms)).await;
        }
    }

    /// Answers member `requester`'s ReadIndex request, which carries the vote it had
    /// saved when it sent it (`None` from a member that sends none).
    ///
    /// If that vote is for this leader's term, and this leader and the requester
    /// together hold a majority of the membership (of both halves of a joint one),
    /// the request itself confirms the leadership, and the answer needs no round:
    /// see [`read_index`](super::read_index) for why that is safe. In a
    /// three-member cluster this is every voting follower's request, except just
    /// after an election. Otherwise it joins a round.
    pub async fn serve_read_index(
        &self,
        requester: NodeId,
        vote: Option<openraft::Vote<NodeId>>,
    ) -> Result<u64, RaftNodeError> {
        if let Some(index) = vote.and_then(|vote| self.confirmed_read_index(requester, vote)) {
            crate::observability::read_index_served(true);
            return Ok(index);
        }
        let answer = self.leader_read_index().await;
        if answer.is_ok() {
            crate::observability::read_index_served(false);
        }
        answer
    }

    /// This leader's read index, if `requester`'s vote `vote` and this member
    /// together confirm that it leads.
    fn confirmed_read_index(&self, requester: NodeId, vote: openraft::Vote<NodeId>) -> Option<u64> {
        let standing = self.standing.get();
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let configs = m.membership_config.membership().get_joint_config();
        read_index::confirmed_by_request(&standing, self.id, requester, &vote, configs)
    }

    /// A ReadIndex round for a follower, the lessor, or a local read on the leader:
    /// only the leader answers, after confirming with a quorum that it still leads.
    pub async fn leader_read_index(&self) -> Result<u64, RaftNodeError> {
        let raft = self.raft.clone();
        let round = self.leader_reads.read_index(move || {
            let raft = raft.clone();
            async move {
                match raft.get_read_log_id().await {
                    Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(RaftNodeError::NotLeader { leader: f.leader_id })
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(RaftNodeError::Timeout),
                    Err(RaftError::Fatal(_)) => Err(RaftNodeError::Stopped),
                }
            }
        });
        timeout(self.settings.request_timeout, round).await.map_err(|_| RaftNodeError::Timeout)?
    }
}

/// A snapshot chunk being handled (see [`RaftNode::receiving_snapshot`]).
pub struct SnapshotReceipt {
    node: Arc<RaftNode>,
}

impl Drop for SnapshotReceipt {
    fn drop(&mut self) {
        let mut receipt = self.node.snapshot_receipt.lock().expect("snapshot receipt");
        receipt.0 -= 1;
        receipt.1 = Some(Instant::now());
    }
}

/// Calls `heartbeat` (which sends the followers the commit index) whenever this
/// member's log has made durable a commit index that messages to followers held
/// back (see [`PeerNetwork::held_commit`]); returns when either side is gone.
async fn send_held_commits<F: Future<Output = bool>>(
    mut held: tokio::sync::watch::Receiver<u64>,
    mut synced: LogSynced,
    heartbeat: impl Fn() -> F,
) {
    while held.changed().await.is_ok() {
        let index = *held.borrow_and_update();
        if !synced.durable(index).await || !heartbeat().await {
            return;
        }
    }
}

/// Stops the member (through the network's removed flag) once it has applied a
/// membership that no longer includes it, having been included before.
async fn watch_own_removal(mut rx: tokio::sync::watch::Receiver<RaftStatus>, id: NodeId, net: PeerNetwork) {
    let mut was_member = false;
    loop {
        let included = rx.borrow_and_update().member;
        if included {
            was_member = true;
        } else if was_member {
            tracing::error!(member = format_args!("{id:x}"), "this member was removed from the cluster");
            net.mark_removed();
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What became of one forwarded command.
#[derive(Debug)]
enum Forwarded {
    /// `leader` answered this.
    Answered { leader: NodeId, result: Result<ApplyOutcome, RaftNodeError> },
    /// The batch certainly did not reach `leader`: nothing was proposed.
    Undelivered { leader: NodeId },
}

/// Forwards `commands` to the current leader in one peer call.
async fn forward_batch(
    raft: Raft,
    net: PeerNetwork,
    me: NodeId,
    commands: Vec<Command>,
) -> Result<Vec<Forwarded>, RaftNodeError> {
    let (leader, node) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(leader) if leader != me => (leader, m.membership_config.membership().get_node(&leader).cloned()),
            other => return Err(RaftNodeError::NotLeader { leader: other }),
        }
    };
    let count = commands.len();
    let undelivered = || Ok((0..count).map(|_| Forwarded::Undelivered { leader }).collect());
    let Some(node) = node else { return undelivered() };
    let timeout = Duration::from_millis(PEER_FORWARD_TIMEOUT_MS);
    match net
        .call::<_, Vec<Result<ApplyOutcome, RaftNodeError>>>(leader, &node, PeerRpc::Forward, &commands, timeout)
        .await
    {
        Ok(results) if results.len() == count => {
            Ok(results.into_iter().map(|result| Forwarded::Answered { leader, result }).collect())
        }
        Ok(results) => {
            tracing::warn!(
                leader = format_args!("{leader:x}"),
                sent = count,
                answered = results.len(),
                "the leader answered a forwarded batch short"
            );
            Err(RaftNodeError::OutcomeUnknown)
        }
        Err(PeerCallError::BadAddress { .. }) | Err(PeerCallError::Unreachable { .. }) => undelivered(),
        Err(e) => {
            tracing::warn!(leader = format_args!("{leader:x}"), error = %e, "forwarding to the leader failed");
            Err(RaftNodeError::OutcomeUnknown)
        }
    }
}

/// Proposes `commands` as one entry if this member leads; answers the index of the
/// entry and each command's outcome.
async fn submit_proposal(raft: Raft, commands: Vec<Command>) -> Result<Vec<(u64, ApplyOutcome)>, RaftNodeError> {
    {
        // Leadership may have moved while the commands waited for a slot; nothing is
        // submitted then, so the callers may safely try the leader instead.
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return Err(RaftNodeError::NotLeader { leader: m.current_leader });
        }
    }
    match raft.client_write(Proposal(commands)).await {
        Ok(resp) => Ok(resp.data.into_iter().map(|outcome| (resp.log_id.index, outcome)).collect()),
        // openraft answers ForwardToLeader both to a request that arrived just after
        // this member lost leadership and to one whose entry it had already appended
        // (and perhaps replicated) before a new leader truncated it here; such an
        // entry may still be committed by a later leader. Retrying could apply it
        // twice, so the outcome is reported as unknown, as etcd does.
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(RaftNodeError::LeaderChanged),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            unreachable!("a normal write cannot fail with a membership error: {e}")
        }
        Err(RaftError::Fatal(e)) => {
            tracing::error!(error = %e, "raft stopped");
            Err(RaftNodeError::Stopped)
        }
    }
}

/// Logs elections and leadership changes, one line each.
async fn log_leadership(mut rx: tokio::sync::watch::Receiver<RaftStatus>, id: NodeId) {
    let mut last = (ServerState::Learner, None, 0u64);
    loop {
        let now = {
            let s = rx.borrow_and_update();
            (s.state, s.leader, s.term)
        };
        if now != last {
            let (state, leader, term) = now;
            if state == ServerState::Leader && last.0 != ServerState::Leader {
                tracing::info!(member = format_args!("{id:x}"), term, "elected leader");
            } else if state != ServerState::Leader && last.0 == ServerState::Leader {
                tracing::info!(member = format_args!("{id:x}"), term, "lost leadership");
            } else if leader != last.1 {
                match leader {
                    Some(l) => tracing::info!(leader = format_args!("{l:x}"), term, "leader changed"),
                    None => tracing::info!(term, "no leader"),
                }
            }
            last = now;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::raft::Durable;

    #[tokio::test]
    async fn a_held_commit_is_sent_once_the_log_holds_it_durably() {
        let (held_tx, held) = tokio::sync::watch::channel(0);
        let (durable, synced) = LogSynced::channel(Durable::Upto(4));
        let beats = Arc::new(AtomicUsize::new(0));
        let counted = beats.clone();
        let task = tokio::spawn(send_held_commits(held, synced, move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                true
            }
        }));
        held_tx.send_replace(5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(beats.load(Ordering::SeqCst), 0, "entry 5 is not durable yet");
        durable.send_replace(Durable::Upto(5));
        tokio::time::timeout(Duration::from_secs(10), async {
            while beats.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("a heartbeat once durable");
        drop(held_tx);
        task.await.expect("the task ends with the network");
        assert_eq!(beats.load(Ordering::SeqCst), 1);
    }
}
