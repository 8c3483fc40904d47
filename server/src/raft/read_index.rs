//! Batching of ReadIndex rounds: every read that arrives while a round is running
//! joins the next round, so one quorum round trip serves many concurrent reads.
//!
//! A read may only use a round that *started* after the read arrived: a round
//! started earlier may have captured a commit index that predates the read.
//!
//! # A follower's request as its confirmation
//!
//! A round confirms that a quorum still followed the leader at some moment after
//! the read arrived. A follower's ReadIndex request carries the vote it had saved
//! when it sent it, after its reads arrived. If that vote is for the leader's term,
//! and the leader, on receiving it, still has its own vote of that term saved, the
//! two of them had not voted in any later election at moments after the reads
//! arrived. Where the two together hold a majority of every configuration of the
//! membership (in a three-member cluster: the leader and any voting follower),
//! every quorum includes one of them, so no later leader can have been elected
//! before then. Every write acknowledged before the reads arrived was therefore
//! committed in the leader's term or earlier, and lies at or below the leader's
//! commit index once that is an entry of its own term; until the leader has
//! committed one (just after its election), a round is used instead.
//!
//! Both votes are the ones saved to disk: openraft runs its commands in order, and
//! saves a vote before it answers a vote request or asks for votes, so a saved
//! vote never lags one a candidate has heard of. A leader that resumed leadership
//! after a restart, without an election, does not count as leading until the next
//! election (see [`Standing::leading`]). The membership is the one openraft
//! published last: its core publishes its metrics at the start of every turn of
//! its loop, and the two steps of a membership change are handled in different
//! turns (the second is proposed once the first is applied), so the published
//! membership is at most one change behind; a change goes through a joint
//! membership whose elections need a majority of the old half too.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use openraft::Vote;

use super::log_store::Standing;
use super::{NodeId, RaftNodeError};

type Waiter = oneshot::Sender<Result<u64, RaftNodeError>>;

#[derive(Default)]
pub(crate) struct ReadBatcher {
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    waiting: Vec<Waiter>,
    running: bool,
}

impl ReadBatcher {
    /// Returns a read index obtained by a round that started after this call.
    pub async fn read_index<F, Fut>(self: &Arc<Self>, fetch: F) -> Result<u64, RaftNodeError>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, RaftNodeError>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().expect("read batch lock");
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let batcher = self.clone();
            tokio::spawn(async move {
                while let Some(round) = batcher.next_round() {
                    let result = fetch().await;
                    for waiter in round {
                        // The reader may have given up (timeout); that is fine.
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| RaftNodeError::Stopped)?
    }

    /// The readers for the next round, or `None` (and the runner stops) if there are none.
    fn next_round(&self) -> Option<Vec<Waiter>> {
        let mut state = self.state.lock().expect("read batch lock");
        if state.waiting.is_empty() {
            state.running = false;
            return None;
        }
        Some(std::mem::take(&mut state.waiting))
    }
}

/// The read index of leader `leader`, whose log store's standing is `standing`, if
/// the ReadIndex request of member `requester`, which carried its saved vote `vote`,
/// confirms the leadership (see the module documentation); `configs` is the
/// membership, as [`openraft::Membership::get_joint_config`] gives it.
pub(crate) fn confirmed_by_request(
    standing: &Standing,
    leader: NodeId,
    requester: NodeId,
    vote: &Vote<NodeId>,
    configs: &[BTreeSet<NodeId>],
) -> Option<u64> {
    let leading = standing.leading(leader)?;
    if *vote.leader_id() != leading || !pair_is_quorum(configs, leader, requester) {
        return None;
    }
    standing.read_index(leader)
}

/// Whether members `a` and `b` (distinct) together hold a majority of every
/// configuration of a membership (one, or two while it is joint).
fn pair_is_quorum(configs: &[BTreeSet<NodeId>], a: NodeId, b: NodeId) -> bool {
    a != b
        && !configs.is_empty()
        && configs.iter().all(|voters| {
            let present = usize::from(voters.contains(&a)) + usize::from(voters.contains(&b));
            2 * present > voters.len()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_confirms_only_with_a_vote_for_the_leaders_term_from_a_voter_that_makes_a_quorum() {
        let three = [BTreeSet::from([1, 2, 3])];
        // Member 1 leads term 4, and has committed up to 7, an entry of its term.
        let leader = Standing {
            vote: Some(Vote::new_committed(4, 1)),
            vote_saved_here: true,
            committed: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(4, 1), 7)),
        };
        let confirm = |standing: &Standing, vote: Vote<NodeId>, requester: NodeId, configs: &[BTreeSet<NodeId>]| {
            confirmed_by_request(standing, 1, requester, &vote, configs)
        };
        assert_eq!(confirm(&leader, Vote::new_committed(4, 1), 2, &three), Some(7));
        assert_eq!(confirm(&leader, Vote::new(4, 1), 3, &three), Some(7), "a vote granted, not yet known won");
        assert_eq!(confirm(&leader, Vote::new(5, 3), 2, &three), None, "the follower voted in a later election");
        assert_eq!(confirm(&leader, Vote::new_committed(3, 1), 2, &three), None, "a vote of an earlier term");
        assert_eq!(confirm(&leader, Vote::new_committed(4, 1), 4, &three), None, "not a voter");
        assert_eq!(confirm(&leader, Vote::new_committed(4, 1), 1, &three), None, "the leader itself");
        let five = [BTreeSet::from([1, 2, 3, 4, 5])];
        assert_eq!(confirm(&leader, Vote::new_committed(4, 1), 2, &five), None, "two of five");
        let moved_on = Standing { vote: Some(Vote::new(5, 3)), ..leader };
        assert_eq!(confirm(&moved_on, Vote::new_committed(4, 1), 2, &three), None, "the leader voted for another");
        let restarted = Standing { vote_saved_here: false, ..leader };
        assert_eq!(confirm(&restarted, Vote::new_committed(4, 1), 2, &three), None, "leading since before a restart");
        let just_elected =
            Standing { committed: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, 2), 6)), ..leader };
        assert_eq!(confirm(&just_elected, Vote::new_committed(4, 1), 2, &three), None, "nothing of its term committed");
    }

    #[test]
    fn a_leader_and_one_follower_are_a_quorum_of_up_to_three_voters() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<_>>();
        assert!(pair_is_quorum(&[set(&[1, 2, 3])], 1, 2));
        assert!(pair_is_quorum(&[set(&[1, 2])], 2, 1));
        assert!(!pair_is_quorum(&[set(&[1, 2, 3, 4])], 1, 2), "two of four are no majority");
        assert!(!pair_is_quorum(&[set(&[1, 2, 3, 4, 5])], 1, 2));
        assert!(!pair_is_quorum(&[set(&[1, 2, 3])], 1, 4), "a learner or stranger does not count");
        assert!(!pair_is_quorum(&[set(&[1, 2, 3])], 1, 1), "nor the leader twice");
        assert!(!pair_is_quorum(&[], 1, 2));
        // Joint: a quorum of both halves.
        assert!(pair_is_quorum(&[set(&[1, 2, 3]), set(&[1, 2, 4])], 1, 2));
        assert!(!pair_is_quorum(&[set(&[1, 2, 3]), set(&[1, 3, 4, 5, 6])], 1, 2), "not of the new half");
        assert!(!pair_is_quorum(&[set(&[1, 3, 4, 5, 6]), set(&[1, 2, 3])], 1, 2), "not of the old half");
    }
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_reads_share_rounds_and_each_gets_a_later_round() {
        let batcher = Arc::new(ReadBatcher::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (b, r) = (batcher.clone(), rounds.clone());
            tasks.push(tokio::spawn(async move {
                let seen_before = r.load(Ordering::SeqCst);
                let got = b
                    .read_index(move || {
                        let r = r.clone();
                        async move {
                            tokio::task::yield_now().await;
                            Ok(r.fetch_add(1, Ordering::SeqCst) + 1)
                        }
                    })
                    .await
                    .unwrap();
                // The round that answered started after this read joined.
                assert!(got > seen_before);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(rounds.load(Ordering::SeqCst) <= 50);
    }
}
