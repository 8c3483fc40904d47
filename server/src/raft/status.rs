//! The few facts about openraft's state that a member's long-lived watchers need,
//! each published only when it changes.
//!
//! openraft publishes its whole metrics struct after nearly every turn of its core
//! loop: under load, tens of thousands of times a second, whether or not anything a
//! watcher cares about changed. Each subscriber of `Raft::metrics()` is woken for
//! every one of them, and the process's main thread (which waits for a fatal
//! error) was one: two context switches per publication. One task here reads every
//! publication and passes on only real changes: the role, leader and term, whether
//! the member has applied an entry of its term, whether it is in the membership, a
//! fatal error, and the applied index.

use openraft::ServerState;
use tokio::sync::watch;

use super::{Member, NodeId, Raft};

type Metrics = openraft::RaftMetrics<NodeId, Member>;

/// Who leads and whether this member still takes part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub state: ServerState,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// This member has applied an entry of `term` (and so every entry committed in
    /// earlier terms).
    pub caught_up: bool,
    /// This member is in the applied membership (as voter or learner).
    pub member: bool,
    /// openraft's core has stopped: its fatal error, or why it ended.
    pub failed: Option<String>,
}

/// Receivers of what [`spawn`] publishes. Cloning one subscribes anew.
#[derive(Clone)]
pub struct StatusFeed {
    pub status: watch::Receiver<RaftStatus>,
    /// The index of the last applied log entry.
    pub applied: watch::Receiver<u64>,
}

/// Starts the task that follows `raft`'s metrics for the member `id`. It ends when
/// openraft's core does, after publishing `failed`.
pub fn spawn(raft: &Raft, id: NodeId) -> StatusFeed {
    follow(raft.metrics(), id)
}

fn follow(mut metrics: watch::Receiver<Metrics>, id: NodeId) -> StatusFeed {
    let (status_tx, status) = watch::channel(read_status(&metrics.borrow(), id));
    let (applied_tx, applied) = watch::channel(applied_index(&metrics.borrow()));
    tokio::spawn(async move {
        loop {
            if metrics.changed().await.is_err() {
                status_tx.send_modify(|s| {
                    s.failed.get_or_insert_with(|| "raft's core ended".to_string());
                });
                return;
            }
            let (status, applied) = {
                let m = metrics.borrow_and_update();
                (read_status(&m, id), applied_index(&m))
            };
            status_tx.send_if_modified(|s| replace_if_changed(s, status));
            applied_tx.send_if_modified(|a| replace_if_changed(a, applied));
        }
    });
    StatusFeed { status, applied }
}

fn read_status(m: &Metrics, id: NodeId) -> RaftStatus {
    RaftStatus {
        state: m.state,
        leader: m.current_leader,
        term: m.current_term,
        caught_up: m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term),
        member: m.membership_config.membership().get_node(&id).is_some(),
        failed: m.running_state.as_ref().err().map(ToString::to_string),
    }
}

fn applied_index(m: &Metrics) -> u64 {
    m.last_applied.map_or(0, |l| l.index)
}

/// Sets `*old` to `new`; whether that changed it.
fn replace_if_changed<T: PartialEq>(old: &mut T, new: T) -> bool {
    if *old == new {
        return false;
    }
    *old = new;
    true
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[tokio::test]
    async fn passes_on_only_the_changes_its_watchers_care_about() {
        let (tx, rx) = watch::channel(Metrics::new_initial(1));
        let feed = follow(rx, 1);
        let (mut status, mut applied) = (feed.status.clone(), feed.applied.clone());
        status.mark_unchanged();
        applied.mark_unchanged();

        // Metrics a watcher does not look at change: nothing is passed on.
        for ms in 0..50 {
            tx.send_modify(|m| m.millis_since_quorum_ack = Some(ms));
        }
        tx.send_modify(|m| m.last_log_index = Some(3));
        // Then the applied index moves, and only it.
        tx.send_modify(|m| m.last_applied = Some(log_id(1, 3)));
        applied.changed().await.expect("the applied index is published");
        assert_eq!(*applied.borrow_and_update(), 3);
        assert!(!status.has_changed().expect("feed running"), "no status change was published");

        // Leadership and membership are published.
        let members: BTreeMap<NodeId, Member> = [(1, Member::default())].into();
        let membership = Membership::new(vec![BTreeSet::from([1])], members);
        tx.send_modify(|m| {
            m.state = ServerState::Leader;
            m.current_leader = Some(1);
            m.current_term = 2;
            m.membership_config = Arc::new(StoredMembership::new(Some(log_id(1, 1)), membership));
        });
        let now = status.wait_for(|s| s.member).await.expect("feed running").clone();
        assert_eq!((now.state, now.leader, now.term, now.failed), (ServerState::Leader, Some(1), 2, None));
        assert!(!now.caught_up, "nothing of term 2 is applied yet");
        tx.send_modify(|m| m.last_applied = Some(log_id(2, 4)));
        status.wait_for(|s| s.caught_up).await.expect("catching up with the term is published");

        // openraft's core ending is a failure, even without a fatal error.
        drop(tx);
        let failed = status.wait_for(|s| s.failed.is_some()).await.expect("the last status stays readable").clone();
        assert_eq!(failed.failed.as_deref(), Some("raft's core ended"));
        assert_eq!(*applied.borrow(), 4);
    }
}
