//! Membership changes (etcd's Cluster API) and leadership transfer, run on the
//! leader through openraft's joint consensus.
//!
//! A new voter never costs quorum: it joins as a learner marked `pending_voter`, and
//! the leader promotes it as soon as it has caught up (openraft's joint consensus
//! would otherwise need the new member running to commit its own addition, and a
//! member that never starts would leave the group one failure from unavailability).
//! IDs of removed members are remembered by the state machine and never reused;
//! their messages are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::{sleep, timeout, Instant};

use super::network::PeerRpc;
use super::{Member, NodeId, RaftNode, RaftNodeError};
use crate::limits::{
    LEADER_TRANSFER_CATCHUP_MS_MAX, LEARNERS_MAX, LEARNER_READY_PERCENT, MEMBER_PROBE_TIMEOUT_MS,
    PENDING_VOTER_CHECK_INTERVAL_MS, PUBLISH_ATTEMPT_ELECTION_TIMEOUTS,
};

/// One member as the Cluster API shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub member: Member,
    pub is_learner: bool,
}

/// What a member answers to the peer `Members` call: enough for a new member to
/// find its own ID, and for the leader to see that a member is up.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterView {
    pub cluster_id: u64,
    pub members: Vec<MemberInfo>,
    pub removed: BTreeSet<NodeId>,
}

/// A membership or leadership request, served by the leader.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum AdminRequest {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    Update {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// A member tells the cluster its name and client URLs (etcd's "publish").
    Publish {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
    MoveLeader {
        target: NodeId,
    },
    /// Sent by a leader handing over leadership to the voters that are not the
    /// target: do not start elections for this long.
    HoldElections {
        millis: u64,
    },
    /// Sent by a leader handing over leadership to the target, once the other
    /// voters' leader leases have run out: start an election now.
    Campaign,
    /// The member's HashKV at a revision (served on any member, for the leader's
    /// corruption check).
    HashKv {
        revision: crate::mvcc::Revision,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum AdminResponse {
    Added { member: MemberInfo, members: Vec<MemberInfo> },
    Members(Vec<MemberInfo>),
    Hash(super::KvHash),
    Done,
}

/// Why a membership request was refused; nothing was changed.
#[derive(thiserror::Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminError {
    #[error("member not found")]
    MemberNotFound,
    #[error("peer URLs already exist")]
    PeerUrlsExist,
    #[error("given member URLs are invalid: {0}")]
    BadUrls(String),
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("too many learner members in cluster")]
    TooManyLearners,
    #[error("unhealthy cluster: {0}")]
    Unhealthy(String),
    #[error("bad leader transferee")]
    BadTransferee,
    #[error("leader transfer took too long")]
    TransferTimeout,
    #[error(transparent)]
    Raft(#[from] RaftNodeError),
}

pub type AdminResult = Result<AdminResponse, AdminError>;

/// A new member's ID: from its peer URLs, the cluster and the time, so that a member
/// added again at the same URLs gets another ID.
fn new_member_id(peer_urls: &[String], cluster_id: u64, attempt: u32) -> NodeId {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    h.update(b"cairn-added-member");
    h.update(urls.join(",").as_bytes());
    h.update(cluster_id.to_be_bytes());
    h.update(nanos.to_be_bytes());
    h.update(attempt.to_be_bytes());
    let id = u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha256 is 32 bytes"));
    id.max(1)
}

/// Checks peer URLs given to MemberAdd or MemberUpdate.
fn check_urls(urls: &[String]) -> Result<(), AdminError> {
    if urls.is_empty() {
        return Err(AdminError::BadUrls("no peer URL given".into()));
    }
    for url in urls {
        crate::config::parse_urls("peer-urls", url).map_err(|e| AdminError::BadUrls(e.to_string()))?;
    }
    Ok(())
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

impl RaftNode {
    /// The members as this member's applied membership has them.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| MemberInfo { id: *id, member: member.clone(), is_learner: !voters.contains(id) })
            .collect()
    }

    /// What this member answers to the peer `Members` call.
    pub fn cluster_view(&self) -> ClusterView {
        ClusterView { cluster_id: self.cluster_id, members: self.members(), removed: self.removed_members() }
    }

    /// Runs a membership or leadership request on the leader, wherever it arrives.
    pub async fn admin(&self, req: AdminRequest) -> AdminResult {
        let deadline = self.settings.request_timeout + Duration::from_millis(LEADER_TRANSFER_CATCHUP_MS_MAX);
        let routed = self.on_leader(PeerRpc::Admin, &req, || self.admin_local(req.clone()));
        match timeout(deadline, routed).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(AdminError::Raft(e)),
            Err(_) => Err(AdminError::Raft(RaftNodeError::Timeout)),
        }
    }

    /// Serves an [`AdminRequest`] on this member; `NotLeader` (nothing changed) if it
    /// does not lead. `HoldElections` is served on any member.
    pub async fn admin_local(&self, req: AdminRequest) -> Result<AdminResult, RaftNodeError> {
        match req {
            AdminRequest::HoldElections { millis } => {
                self.hold_elections(Duration::from_millis(millis));
                return Ok(Ok(AdminResponse::Done));
            }
            AdminRequest::Campaign => {
                self.raft.trigger().elect().await.map_err(|_| RaftNodeError::Stopped)?;
                return Ok(Ok(AdminResponse::Done));
            }
            AdminRequest::HashKv { revision } => {
                let barrier = self.local_applied_at_least(revision);
                if !barrier {
                    return Ok(Err(AdminError::Unhealthy(format!("revision {revision} not applied here yet"))));
                }
                // Reads the whole key space: off the async workers.
                let store = self.store.clone();
                let hash = tokio::task::spawn_blocking(move || super::corruption::hash_kv_of(&store, revision))
                    .await
                    .map_err(|_| RaftNodeError::Stopped)?
                    .map_err(|_| RaftNodeError::Timeout);
                return Ok(hash.map(AdminResponse::Hash).map_err(AdminError::Raft));
            }
            _ => {}
        }
        self.wait_leading().await?;
        let _one_at_a_time = self.admin_lock.lock().await;
        let result = match req {
            AdminRequest::Add { peer_urls, is_learner } => self.add_member(peer_urls, is_learner).await,
            AdminRequest::Promote { id } => self.promote_member(id).await,
            AdminRequest::Remove { id } => self.remove_member(id).await,
            AdminRequest::Update { id, peer_urls } => self.update_member(id, peer_urls).await,
            AdminRequest::Publish { id, name, client_urls } => self.publish_member(id, name, client_urls).await,
            AdminRequest::MoveLeader { target } => self.move_leader(target).await,
            AdminRequest::HoldElections { .. } | AdminRequest::Campaign | AdminRequest::HashKv { .. } => {
                unreachable!("served above")
            }
        };
        match result {
            Err(AdminError::Raft(e @ RaftNodeError::NotLeader { .. })) => Err(e),
            other => Ok(other),
        }
    }

    /// Commits a membership change; maps openraft's errors.
    async fn change(&self, changes: ChangeMembers<NodeId, Member>, retain: bool) -> Result<(), AdminError> {
        match self.raft.change_membership(changes, retain).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(AdminError::Raft(RaftNodeError::NotLeader { leader: f.leader_id }))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(AdminError::Unhealthy(format!("membership change refused: {e}")))
            }
            Err(RaftError::Fatal(e)) => {
                tracing::error!(error = %e, "raft stopped");
                Err(AdminError::Raft(RaftNodeError::Stopped))
            }
        }
    }

    /// Whether member `id` answers a peer call now.
    async fn is_started(&self, id: NodeId, member: &Member) -> bool {
        if id == self.id {
            return true;
        }
        let probe = Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS);
        self.net.call::<_, ClusterView>(id, member, PeerRpc::Members, &(), probe).await.is_ok()
    }

    /// Voters (among `voters`) that answer now.
    async fn started_voters(&self, voters: &BTreeSet<NodeId>) -> usize {
        let nodes: BTreeMap<NodeId, Member> = self.members().into_iter().map(|m| (m.id, m.member)).collect();
        let mut started = 0;
        for id in voters {
            if let Some(member) = nodes.get(id) {
                if self.is_started(*id, member).await {
                    started += 1;
                }
            }
        }
        started
    }

    fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    async fn add_member(&self, peer_urls: Vec<String>, is_learner: bool) -> AdminResult {
        check_urls(&peer_urls)?;
        let members = self.members();
        if members.iter().any(|m| m.member.peer_urls.iter().any(|u| peer_urls.contains(u))) {
            return Err(AdminError::PeerUrlsExist);
        }
        let learners = members.iter().filter(|m| m.is_learner).count();
        if learners >= LEARNERS_MAX {
            return Err(AdminError::TooManyLearners);
        }
        if !is_learner && self.settings.strict_reconfig_check {
            // A new voter must not leave the group closer to losing quorum than it is:
            // every current voter must be up (it joins as a learner first in any case).
            let voters = self.voter_ids();
            let started = self.started_voters(&voters).await;
            if started < voters.len() {
                return Err(AdminError::Unhealthy(format!(
                    "only {started} of {} voters answer; adding a voter now could cost quorum (start them, or set --strict-reconfig-check=false)",
                    voters.len()
                )));
            }
        }
        let removed = self.removed_members();
        let mut id = 0;
        for attempt in 0..u32::MAX {
            id = new_member_id(&peer_urls, self.cluster_id, attempt);
            if !removed.contains(&id) && !members.iter().any(|m| m.id == id) {
                break;
            }
        }
        let member = Member { name: String::new(), peer_urls, client_urls: Vec::new(), pending_voter: !is_learner };
        self.change(ChangeMembers::AddNodes(BTreeMap::from([(id, member.clone())])), true).await?;
        tracing::info!(member = format_args!("{id:x}"), %member, learner = is_learner, "added member");
        Ok(AdminResponse::Added { member: MemberInfo { id, member, is_learner: true }, members: self.members() })
    }

    /// Whether learner `id` is close enough to the leader's log to vote (etcd's rule:
    /// its matched index is at least 90% of the leader's).
    fn learner_ready(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.as_ref()).map_or(0, |l| l.index);
        matched > 0 && matched * 100 >= last * LEARNER_READY_PERCENT
    }

    async fn promote_member(&self, id: NodeId) -> AdminResult {
        let members = self.members();
        let info = members.iter().find(|m| m.id == id).ok_or(AdminError::MemberNotFound)?;
        if !info.is_learner {
            return Err(AdminError::NotLearner);
        }
        if !self.learner_ready(id) {
            return Err(AdminError::LearnerNotReady);
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await?;
        tracing::info!(member = format_args!("{id:x}"), "promoted learner to voter");
        Ok(AdminResponse::Members(self.members()))
    }

    async fn remove_member(&self, id: NodeId) -> AdminResult {
        let members = self.members();
        let info = members.iter().find(|m| m.id == id).ok_or(AdminError::MemberNotFound)?;
        if info.is_learner {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await?;
        } else {
            let mut remaining = self.voter_ids();
            remaining.remove(&id);
            if remaining.is_empty() {
                return Err(AdminError::Unhealthy("cannot remove the last voter".into()));
            }
            if self.settings.strict_reconfig_check {
                let started = self.started_voters(&remaining).await;
                if started < quorum(remaining.len()) {
                    return Err(AdminError::Unhealthy(format!(
                        "only {started} of the {} remaining voters answer; removing this member would lose quorum",
                        remaining.len()
                    )));
                }
            }
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await?;
        }
        tracing::info!(member = format_args!("{id:x}"), "removed member");
        Ok(AdminResponse::Members(self.members()))
    }

    async fn update_member(&self, id: NodeId, peer_urls: Vec<String>) -> AdminResult {
        check_urls(&peer_urls)?;
        let members = self.members();
        let info = members.iter().find(|m| m.id == id).ok_or(AdminError::MemberNotFound)?;
        if members.iter().any(|m| m.id != id && m.member.peer_urls.iter().any(|u| peer_urls.contains(u))) {
            return Err(AdminError::PeerUrlsExist);
        }
        let member = Member { peer_urls, ..info.member.clone() };
        self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])), true).await?;
        tracing::info!(member = format_args!("{id:x}"), %member, "updated member's peer URLs");
        Ok(AdminResponse::Members(self.members()))
    }

    async fn publish_member(&self, id: NodeId, name: String, client_urls: Vec<String>) -> AdminResult {
        let members = self.members();
        let info = members.iter().find(|m| m.id == id).ok_or(AdminError::MemberNotFound)?;
        if info.member.name == name && info.member.client_urls == client_urls {
            return Ok(AdminResponse::Done);
        }
        let member = Member { name, client_urls, ..info.member.clone() };
        self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])), true).await?;
        Ok(AdminResponse::Done)
    }

    /// Hands leadership to voter `target`: waits until it has the whole log, stops
    /// heartbeats and new proposals, asks the other voters to hold their elections,
    /// and waits for the target to win the election its timer then starts.
    async fn move_leader(&self, target: NodeId) -> AdminResult {
        if target == self.id {
            return Ok(AdminResponse::Done);
        }
        let members = self.members();
        let info = members.iter().find(|m| m.id == target).ok_or(AdminError::BadTransferee)?;
        if info.is_learner {
            return Err(AdminError::BadTransferee);
        }
        let catch_up = Instant::now() + Duration::from_millis(LEADER_TRANSFER_CATCHUP_MS_MAX);
        let _paused = self.proposals.write().await;
        loop {
            let caught_up = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let matched = m.replication.as_ref().and_then(|r| r.get(&target)).and_then(|l| *l);
                matched.map(|l| l.index) >= m.last_log_index
            };
            if caught_up {
                break;
            }
            if Instant::now() >= catch_up {
                return Err(AdminError::TransferTimeout);
            }
            sleep(Duration::from_millis(self.settings.heartbeat_interval_ms)).await;
        }
        let election = Duration::from_millis(self.settings.election_timeout_ms);
        let hold = election * 6;
        for m in members.iter().filter(|m| !m.is_learner && m.id != target && m.id != self.id) {
            let req = AdminRequest::HoldElections { millis: hold.as_millis() as u64 };
            let probe = Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS);
            let _ = self
                .net
                .call::<_, Result<AdminResult, RaftNodeError>>(m.id, &m.member, PeerRpc::Admin, &req, probe)
                .await;
        }
        self.raft.runtime_config().heartbeat(false);
        // Voters refuse to vote while the leader lease they granted runs (openraft's
        // is the maximum election timeout, 1.5 election timeouts); then the target
        // campaigns, at once rather than on its own (later) timer.
        let lease = election * 3 / 2 + Duration::from_millis(self.settings.heartbeat_interval_ms);
        let member = info.member.clone();
        let net = self.net.clone();
        let campaign = async move {
            for _ in 0..3 {
                sleep(lease).await;
                let probe = Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS);
                let req = AdminRequest::Campaign;
                let _ = net
                    .call::<_, Result<AdminResult, RaftNodeError>>(target, &member, PeerRpc::Admin, &req, probe)
                    .await;
            }
            std::future::pending::<()>().await;
        };
        let mut rx = self.raft.metrics();
        let settled = rx.wait_for(|m| {
            m.current_leader == Some(target) || (m.current_leader.is_some() && m.current_leader != Some(self.id))
        });
        let moved = timeout(election * 5, async {
            tokio::select! {
                moved = settled => moved.map(|m| m.current_leader),
                _ = campaign => unreachable!("campaigning never ends by itself"),
            }
        })
        .await;
        self.raft.runtime_config().heartbeat(true);
        match moved {
            Ok(Ok(leader)) if leader == Some(target) => {
                tracing::info!(target = format_args!("{target:x}"), "moved leadership");
                Ok(AdminResponse::Done)
            }
            _ => Err(AdminError::TransferTimeout),
        }
    }

    fn local_applied_at_least(&self, revision: crate::mvcc::Revision) -> bool {
        self.store.status().revision >= revision
    }

    /// Stops this member from starting elections for `hold` (a leader is handing
    /// leadership to another member).
    fn hold_elections(&self, hold: Duration) {
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            sleep(hold).await;
            raft.runtime_config().elect(true);
        });
    }

    /// On the leader: promotes learners that were added as voters once they have
    /// caught up. Runs until Raft stops.
    pub async fn promote_pending_voters(self: Arc<Self>) {
        loop {
            sleep(Duration::from_millis(PENDING_VOTER_CHECK_INTERVAL_MS)).await;
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if self.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            let pending: Vec<NodeId> = self
                .members()
                .into_iter()
                .filter(|m| m.is_learner && m.member.pending_voter && self.learner_ready(m.id))
                .map(|m| m.id)
                .collect();
            for id in pending {
                let _one_at_a_time = self.admin_lock.lock().await;
                match self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await {
                    Ok(()) => tracing::info!(member = format_args!("{id:x}"), "new voter caught up; promoted"),
                    Err(e) => {
                        tracing::warn!(member = format_args!("{id:x}"), error = %e, "promoting a new voter failed; will retry")
                    }
                }
            }
        }
    }

    /// Tells the cluster this member's name and client URLs, retrying until the
    /// leader has recorded them.
    pub async fn publish(self: Arc<Self>, name: String, client_urls: Vec<String>) {
        loop {
            let known = self.members().into_iter().find(|m| m.id == self.id);
            if known.as_ref().is_some_and(|m| m.member.name == name && m.member.client_urls == client_urls) {
                return;
            }
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if known.is_some() {
                let req = AdminRequest::Publish { id: self.id, name: name.clone(), client_urls: client_urls.clone() };
                // Publishing is idempotent: an attempt that hangs (a leader change
                // mid-way) is abandoned for a fresh one rather than waited out.
                let attempt =
                    Duration::from_millis(PUBLISH_ATTEMPT_ELECTION_TIMEOUTS * self.settings.election_timeout_ms);
                match timeout(attempt, self.admin(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "publishing member attributes failed; will retry"),
                    Err(_) => tracing::debug!(?attempt, "publishing member attributes timed out; will retry"),
                }
            }
            sleep(Duration::from_millis(self.settings.election_timeout_ms)).await;
        }
    }
}
