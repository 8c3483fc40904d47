//! Batching of client commands into Raft entries, as etcd's raft batches the
//! proposals of one `Ready`.
//!
//! openraft 0.9 appends one entry per `client_write`, and its core handles one
//! request after the other, so a leader that proposed every command as an entry of
//! its own would write, replicate and fsync every command on its own. Instead, at
//! most a few batches ([`PROPOSALS_IN_FLIGHT_MAX`](crate::limits::PROPOSALS_IN_FLIGHT_MAX))
//! are proposed and not yet applied at any time; commands that arrive meanwhile queue, and the next free slot proposes all of
//! them (within [`PROPOSAL_BATCH_COMMANDS_MAX`] and [`PROPOSAL_BATCH_BYTES_MAX`]) as
//! one entry. Under light load a command goes out at once in a batch of its own, so
//! batching adds no latency; under heavy load the batches grow with it.
//!
//! A command whose caller has given up (its request timed out) before its batch was
//! formed is dropped unproposed.
//!
//! Followers batch the writes they forward to the leader the same way, with their own
//! limit ([`FORWARDS_IN_FLIGHT_MAX`](crate::limits::FORWARDS_IN_FLIGHT_MAX)): one
//! peer call carries every command that queued meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::RaftNodeError;
use crate::limits::{PROPOSAL_BATCH_BYTES_MAX, PROPOSAL_BATCH_COMMANDS_MAX};
use crate::mvcc::Command;

/// Proposes one batch of commands and answers one result per command, in order.
pub(crate) trait Submit<O>: Fn(Vec<Command>) -> Self::Fut + Send + Sync + 'static {
    type Fut: Future<Output = Result<Vec<O>, RaftNodeError>> + Send;
}

impl<O, F, Fut> Submit<O> for F
where
    F: Fn(Vec<Command>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, RaftNodeError>> + Send,
{
    type Fut = Fut;
}

struct Queued<O> {
    command: Command,
    bytes: u64,
    /// Goes in a batch of its own.
    alone: bool,
    waiter: oneshot::Sender<Result<O, RaftNodeError>>,
}

/// Commands waiting for a free proposal slot; `O` is what applying one produces.
pub(crate) struct ProposalBatcher<O> {
    state: Mutex<State<O>>,
    /// Most batches submitted and not yet answered.
    in_flight_max: usize,
}

struct State<O> {
    queued: VecDeque<Queued<O>>,
    /// Batches proposed and not yet answered.
    in_flight: usize,
}

impl<O: Send + 'static> ProposalBatcher<O> {
    /// A batcher with at most `in_flight_max` batches submitted at once.
    pub fn new(in_flight_max: usize) -> Self {
        assert!(in_flight_max > 0, "at least one batch must be allowed in flight");
        ProposalBatcher { state: Mutex::new(State { queued: VecDeque::new(), in_flight: 0 }), in_flight_max }
    }

    /// Proposes `command` with others that are waiting (or, if `alone`, in a batch of
    /// its own), through `submit`, and returns its own result.
    pub async fn propose(
        self: &Arc<Self>,
        command: Command,
        alone: bool,
        submit: impl Submit<O>,
    ) -> Result<O, RaftNodeError> {
        let bytes = bincode::serialized_size(&command).expect("sizing an in-memory command cannot fail");
        let (waiter, answer) = oneshot::channel();
        let first_batch = {
            let mut state = self.state.lock().expect("proposal batch lock");
            state.queued.push_back(Queued { command, bytes, alone, waiter });
            if state.in_flight < self.in_flight_max {
                state.in_flight += 1;
                Some(take_batch(&mut state.queued))
            } else {
                None
            }
        };
        if let Some(batch) = first_batch {
            // A task of its own, so that a caller giving up cannot abandon the batch
            // (and the slot) halfway.
            let batcher = self.clone();
            tokio::spawn(async move {
                let mut batch = batch;
                loop {
                    run(batch, &submit).await;
                    match batcher.next_batch() {
                        Some(next) => batch = next,
                        None => break,
                    }
                }
            });
        }
        answer.await.map_err(|_| RaftNodeError::Stopped)?
    }

    /// The commands for the freed slot's next batch, or `None` (and the slot is
    /// released) if nothing is waiting.
    fn next_batch(&self) -> Option<Vec<Queued<O>>> {
        let mut state = self.state.lock().expect("proposal batch lock");
        let batch = take_batch(&mut state.queued);
        if batch.is_empty() {
            state.in_flight -= 1;
            return None;
        }
        Some(batch)
    }
}

/// Takes the oldest queued commands that fit in one batch, skipping those whose
/// caller has given up. Always takes at least one command if any is waiting; a
/// command that must go alone ends the batch before it, or is the whole batch.
fn take_batch<O>(queued: &mut VecDeque<Queued<O>>) -> Vec<Queued<O>> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < PROPOSAL_BATCH_COMMANDS_MAX {
        let Some(next) = queued.front() else { break };
        if next.waiter.is_closed() {
            queued.pop_front();
            continue;
        }
        if !batch.is_empty() && (next.alone || bytes + next.bytes > PROPOSAL_BATCH_BYTES_MAX) {
            break;
        }
        bytes += next.bytes;
        let alone = next.alone;
        batch.extend(queued.pop_front());
        if alone {
            break;
        }
    }
    batch
}

/// Proposes `batch` and answers each of its callers.
async fn run<O>(batch: Vec<Queued<O>>, submit: &impl Submit<O>) {
    let (commands, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.command, q.waiter)).unzip();
    match submit(commands).await {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), waiters.len(), "one outcome per command");
            let mut outcomes = outcomes.into_iter();
            for waiter in waiters {
                // The caller may have given up meanwhile; that is fine.
                let _ = waiter.send(outcomes.next().ok_or(RaftNodeError::OutcomeUnknown));
            }
        }
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::limits::PROPOSALS_IN_FLIGHT_MAX;
    use crate::mvcc::PutRequest;

    fn put(i: usize, value_len: usize) -> Command {
        Command::Put(PutRequest {
            key: format!("k{i}").into_bytes(),
            value: vec![b'v'; value_len],
            ..Default::default()
        })
    }

    fn key_of(command: &Command) -> String {
        match command {
            Command::Put(p) => String::from_utf8(p.key.clone()).expect("utf-8 key"),
            other => panic!("unexpected command {other:?}"),
        }
    }

    /// A submitter that records each batch's keys and answers each command with its
    /// key, once `gate` lets the batch through.
    fn recording(batches: Arc<Mutex<Vec<Vec<String>>>>, gate: Arc<Semaphore>) -> impl Submit<String> + Clone {
        move |commands: Vec<Command>| {
            let batches = batches.clone();
            let gate = gate.clone();
            async move {
                let keys: Vec<String> = commands.iter().map(key_of).collect();
                batches.lock().unwrap().push(keys.clone());
                gate.acquire().await.expect("gate open").forget();
                Ok(keys)
            }
        }
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    type Batches = Arc<Mutex<Vec<Vec<String>>>>;
    type Call = tokio::task::JoinHandle<Result<String, RaftNodeError>>;

    /// A batcher whose every slot is taken by a command (`k0`, `k1`, ...) blocked at
    /// `gate`; returns it, what its submitter recorded, the gate, the submitter and
    /// the blocked calls.
    async fn busy_batcher(
    ) -> (Arc<ProposalBatcher<String>>, Batches, Arc<Semaphore>, impl Submit<String> + Clone, Vec<Call>) {
        let batcher = Arc::new(ProposalBatcher::<String>::new(PROPOSALS_IN_FLIGHT_MAX));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let submit = recording(batches.clone(), gate.clone());
        let mut calls = Vec::new();
        for i in 0..PROPOSALS_IN_FLIGHT_MAX {
            let (b, s) = (batcher.clone(), submit.clone());
            calls.push(tokio::spawn(async move { b.propose(put(i, 8), false, s).await }));
            wait_until("the slot is taken", || batches.lock().unwrap().len() == i + 1).await;
        }
        (batcher, batches, gate, submit, calls)
    }

    #[tokio::test]
    async fn commands_arriving_while_slots_are_busy_share_one_entry() {
        let (batcher, batches, gate, submit, mut calls) = busy_batcher().await;
        // These wait for a slot.
        for i in PROPOSALS_IN_FLIGHT_MAX..PROPOSALS_IN_FLIGHT_MAX + 50 {
            let (b, s) = (batcher.clone(), submit.clone());
            calls.push(tokio::spawn(async move { b.propose(put(i, 8), false, s).await }));
        }
        wait_until("every command is queued", || batcher.state.lock().unwrap().queued.len() == 50).await;
        gate.add_permits(1_000);
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(format!("k{i}")), "each caller gets its own command's outcome");
        }
        let batches = batches.lock().unwrap();
        assert_eq!(
            batches.len(),
            PROPOSALS_IN_FLIGHT_MAX + 1,
            "the 50 waiting commands went as one entry: {batches:?}"
        );
        let last: Vec<String> =
            (PROPOSALS_IN_FLIGHT_MAX..PROPOSALS_IN_FLIGHT_MAX + 50).map(|i| format!("k{i}")).collect();
        assert_eq!(batches.last().unwrap(), &last, "in arrival order");
        assert_eq!(batcher.state.lock().unwrap().in_flight, 0, "every slot is released");
    }

    #[tokio::test]
    async fn a_batch_stays_within_its_limits_and_lone_commands_go_alone() {
        let mut queued = VecDeque::new();
        let mut answers = Vec::new();
        fn push_alone(
            queued: &mut VecDeque<Queued<()>>,
            answers: &mut Vec<oneshot::Receiver<Result<(), RaftNodeError>>>,
            command: Command,
            alone: bool,
        ) {
            let (waiter, answer) = oneshot::channel();
            let bytes = bincode::serialized_size(&command).unwrap();
            queued.push_back(Queued { command, bytes, alone, waiter });
            answers.push(answer);
        }
        fn push(
            queued: &mut VecDeque<Queued<()>>,
            answers: &mut Vec<oneshot::Receiver<Result<(), RaftNodeError>>>,
            command: Command,
        ) {
            push_alone(queued, answers, command, false)
        }
        for i in 0..PROPOSAL_BATCH_COMMANDS_MAX + 10 {
            push(&mut queued, &mut answers, put(i, 1));
        }
        assert_eq!(take_batch(&mut queued).len(), PROPOSAL_BATCH_COMMANDS_MAX);
        assert_eq!(take_batch(&mut queued).len(), 10);

        // Values of a third of the byte limit: two fit, the third waits.
        let third = (PROPOSAL_BATCH_BYTES_MAX / 3) as usize;
        for i in 0..3 {
            push(&mut queued, &mut answers, put(i, third));
        }
        assert_eq!(take_batch(&mut queued).len(), 2);
        assert_eq!(take_batch(&mut queued).len(), 1);

        // A command larger than the limit still goes, alone.
        push(&mut queued, &mut answers, put(0, PROPOSAL_BATCH_BYTES_MAX as usize + 1));
        push(&mut queued, &mut answers, put(1, 1));
        assert_eq!(take_batch(&mut queued).len(), 1);
        assert_eq!(take_batch(&mut queued).len(), 1);
        assert!(take_batch(&mut queued).is_empty());

        // A command that must go alone splits the queue around it.
        push(&mut queued, &mut answers, put(0, 1));
        push_alone(&mut queued, &mut answers, put(1, 1), true);
        push(&mut queued, &mut answers, put(2, 1));
        assert_eq!(take_batch(&mut queued).len(), 1);
        assert_eq!(take_batch(&mut queued).len(), 1);
        assert_eq!(take_batch(&mut queued).len(), 1);
    }

    #[tokio::test]
    async fn commands_whose_callers_gave_up_are_not_proposed() {
        let (batcher, batches, gate, submit, busy) = busy_batcher().await;
        let gave_up = {
            let (b, s) = (batcher.clone(), submit.clone());
            tokio::spawn(async move { b.propose(put(100, 8), false, s).await })
        };
        let kept = {
            let (b, s) = (batcher.clone(), submit.clone());
            tokio::spawn(async move { b.propose(put(101, 8), false, s).await })
        };
        wait_until("both are queued", || batcher.state.lock().unwrap().queued.len() == 2).await;
        gave_up.abort();
        let _ = gave_up.await;
        gate.add_permits(1_000);
        assert_eq!(kept.await.unwrap(), Ok("k101".to_string()));
        for call in busy {
            call.await.unwrap().unwrap();
        }
        assert_eq!(batches.lock().unwrap().last().unwrap(), &vec!["k101".to_string()]);
    }

    #[tokio::test]
    async fn a_failed_proposal_fails_every_command_of_its_batch() {
        let batcher = Arc::new(ProposalBatcher::<String>::new(PROPOSALS_IN_FLIGHT_MAX));
        let submitted = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let submit = {
            let (submitted, gate) = (submitted.clone(), gate.clone());
            move |_commands: Vec<Command>| {
                let (submitted, gate) = (submitted.clone(), gate.clone());
                async move {
                    submitted.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.expect("gate open").forget();
                    Err::<Vec<String>, _>(RaftNodeError::LeaderChanged)
                }
            }
        };
        let mut calls = Vec::new();
        for i in 0..PROPOSALS_IN_FLIGHT_MAX + 5 {
            let (b, s) = (batcher.clone(), submit.clone());
            calls.push(tokio::spawn(async move { b.propose(put(i, 8), false, s).await }));
        }
        wait_until("the slots are taken", || submitted.load(Ordering::SeqCst) == PROPOSALS_IN_FLIGHT_MAX).await;
        gate.add_permits(1_000);
        for call in calls {
            assert_eq!(call.await.unwrap(), Err(RaftNodeError::LeaderChanged));
        }
        assert_eq!(batcher.state.lock().unwrap().in_flight, 0);
    }
}
