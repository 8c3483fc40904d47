//! Batching of client commands into Raft entries, as etcd's raft batches the
//! proposals of one `Ready`.
//!
//! openraft 0.9 appends one entry per `client_write`, and its core handles one
//! request after the other, so a leader that proposed every command as an entry of
//! its own would write, replicate and fsync every command on its own. Instead, at
//! most a few batches ([`PROPOSALS_IN_FLIGHT_MAX`](crate::limits::PROPOSALS_IN_FLIGHT_MAX))
//! are proposed and not yet applied at any time; commands that arrive meanwhile
//! queue, and the next slot proposes all of them (within
//! [`PROPOSAL_BATCH_COMMANDS_MAX`] and [`PROPOSAL_BATCH_BYTES_MAX`]) as one entry.
//! A command that finds nothing in flight goes out at once in a batch of its own, so
//! under light load batching adds no latency; under heavy load the batches grow
//! with it.
//!
//! A second batch joins the one in flight only once that one has been out for a
//! while ([`PROPOSAL_EXTRA_SLOT_AFTER_MS`](crate::limits::PROPOSAL_EXTRA_SLOT_AFTER_MS)),
//! so a command that arrives just after another may wait that long (and up to a
//! millisecond more: tokio's timers tick in milliseconds).
//! A Raft entry costs every member work of its own, whatever it holds, so fewer and
//! larger entries leave more of the machine to the commands; but with one batch
//! in flight and no more, a slow round (an fsync behind a RocksDB flush) would hold
//! up every write that arrives meanwhile.
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
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::RaftNodeError;
use crate::limits::{PROPOSAL_BATCH_BYTES_MAX, PROPOSAL_BATCH_COMMANDS_MAX};
use crate::mvcc::Command;

/// Proposes one batch of commands and answers one result per command, in order.
pub(crate) trait Submit<O>: Fn(Vec<Command>) -> Self::Fut + Clone + Send + Sync + 'static {
    type Fut: Future<Output = Result<Vec<O>, RaftNodeError>> + Send;
}

impl<O, F, Fut> Submit<O> for F
where
    F: Fn(Vec<Command>) -> Fut + Clone + Send + Sync + 'static,
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
    /// How long every batch in flight must have been out before a further one may
    /// join them ([`Duration::ZERO`]: at once, whenever a slot is free).
    extra_slot_after: Duration,
}

struct State<O> {
    queued: VecDeque<Queued<O>>,
    /// When each slot was taken for its batch; `None` for a free slot. Its length is
    /// the most batches submitted and not yet answered.
    slots: Vec<Option<Instant>>,
}

impl<O> State<O> {
    /// A slot a new batch may take at `now`, and takes it: any free slot while
    /// nothing is in flight, and a further one only once every batch in flight has
    /// been out for `extra_slot_after`.
    fn take_slot(&mut self, now: Instant, extra_slot_after: Duration) -> Option<usize> {
        let mut free = None;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot {
                None => free = free.or(Some(i)),
                Some(since) if now.saturating_duration_since(*since) < extra_slot_after => return None,
                Some(_) => {}
            }
        }
        if let Some(i) = free {
            self.slots[i] = Some(now);
        }
        free
    }

    /// Takes a slot (as [`State::take_slot`]) and the batch it proposes next, or
    /// `None` if no slot may be taken or nobody waits any more.
    fn start_batch(&mut self, now: Instant, extra_slot_after: Duration) -> Option<(usize, Vec<Queued<O>>)> {
        let slot = self.take_slot(now, extra_slot_after)?;
        let batch = take_batch(&mut self.queued);
        if batch.is_empty() {
            self.slots[slot] = None;
            return None;
        }
        Some((slot, batch))
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

impl<O: Send + 'static> ProposalBatcher<O> {
    /// A batcher with at most `in_flight_max` batches submitted at once. The first
    /// goes out at once; each further one only once every batch in flight has been
    /// out for `extra_slot_after`, so that under load the batches grow and a slow
    /// round (a slow fsync) does not hold up every write behind it.
    pub fn new(in_flight_max: usize, extra_slot_after: Duration) -> Self {
        assert!(in_flight_max > 0, "at least one batch must be allowed in flight");
        ProposalBatcher {
            state: Mutex::new(State { queued: VecDeque::new(), slots: vec![None; in_flight_max] }),
            // With one slot there is no further one to open.
            extra_slot_after: if in_flight_max > 1 { extra_slot_after } else { Duration::ZERO },
        }
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
        {
            let mut state = self.state.lock().expect("proposal batch lock");
            state.queued.push_back(Queued { command, bytes, alone, waiter });
            if let Some((slot, batch)) = state.start_batch(Instant::now(), self.extra_slot_after) {
                self.spawn_slot(slot, batch, submit);
            }
        }
        answer.await.map_err(|_| RaftNodeError::Stopped)?
    }

    /// Runs `slot`'s batch, then each batch [`Self::next_batch`] gives it (in
    /// whichever slot that takes) until it gives none. A task of its
    /// own, so that a caller giving up cannot abandon the batch (and the slot)
    /// halfway.
    fn spawn_slot(self: &Arc<Self>, slot: usize, batch: Vec<Queued<O>>, submit: impl Submit<O>) {
        let batcher = self.clone();
        tokio::spawn(async move {
            let (mut slot, mut batch) = (slot, batch);
            loop {
                let round = run(batch, &submit);
                if batcher.extra_slot_after.is_zero() {
                    round.await;
                } else {
                    tokio::pin!(round);
                    tokio::select! {
                        biased;
                        () = &mut round => {}
                        () = tokio::time::sleep(batcher.extra_slot_after) => {
                            batcher.open_extra_slot(&submit);
                            round.await;
                        }
                    }
                }
                match batcher.next_batch(slot) {
                    Some((next_slot, next)) => (slot, batch) = (next_slot, next),
                    None => break,
                }
            }
        });
    }

    /// Once a batch has been out for `extra_slot_after`: proposes what is waiting in
    /// a further slot, if one is free and every other batch in flight is as old.
    fn open_extra_slot(self: &Arc<Self>, submit: &impl Submit<O>) {
        let mut state = self.state.lock().expect("proposal batch lock");
        if state.queued.is_empty() {
            return;
        }
        if let Some((slot, batch)) = state.start_batch(Instant::now(), self.extra_slot_after) {
            self.spawn_slot(slot, batch, submit.clone());
        }
    }

    /// Frees `slot` and, if something is waiting and a slot may be taken, takes one
    /// and returns it with its batch. What waits behind a younger batch in flight
    /// is left to that batch's slot.
    fn next_batch(&self, slot: usize) -> Option<(usize, Vec<Queued<O>>)> {
        let mut state = self.state.lock().expect("proposal batch lock");
        state.slots[slot] = None;
        if state.queued.is_empty() {
            return None;
        }
        state.start_batch(Instant::now(), self.extra_slot_after)
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
    fn recording(batches: Arc<Mutex<Vec<Vec<String>>>>, gate: Arc<Semaphore>) -> impl Submit<String> {
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

    /// A batcher of `in_flight_max` slots and the given bound, with a [`recording`]
    /// submitter whose gate is closed; returns the batcher, what the submitter
    /// records, the gate and the submitter.
    fn gated_batcher(
        in_flight_max: usize,
        extra_slot_after: Duration,
    ) -> (Arc<ProposalBatcher<String>>, Batches, Arc<Semaphore>, impl Submit<String>) {
        let batcher = Arc::new(ProposalBatcher::<String>::new(in_flight_max, extra_slot_after));
        let batches: Batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let submit = recording(batches.clone(), gate.clone());
        (batcher, batches, gate, submit)
    }

    /// A batcher whose every slot is taken by a command (`k0`, `k1`, ...) blocked at
    /// `gate`; returns it, what its submitter recorded, the gate, the submitter and
    /// the blocked calls.
    async fn busy_batcher() -> (Arc<ProposalBatcher<String>>, Batches, Arc<Semaphore>, impl Submit<String>, Vec<Call>) {
        let (batcher, batches, gate, submit) = gated_batcher(PROPOSALS_IN_FLIGHT_MAX, Duration::ZERO);
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
        assert_eq!(batcher.state.lock().unwrap().in_flight(), 0, "every slot is released");
    }

    /// Proposes `put(i)` through `batcher` in a task of its own.
    fn propose_in_task(batcher: &Arc<ProposalBatcher<String>>, submit: &impl Submit<String>, i: usize) -> Call {
        let (b, s) = (batcher.clone(), submit.clone());
        tokio::spawn(async move { b.propose(put(i, 8), false, s).await })
    }

    #[tokio::test]
    async fn a_second_batch_joins_the_first_only_once_it_has_been_out_for_the_bound() {
        const BOUND: Duration = Duration::from_millis(300);
        let (batcher, batches, gate, submit) = gated_batcher(2, BOUND);
        // The first batch's slot is taken after this.
        let before = Instant::now();
        let first = propose_in_task(&batcher, &submit, 0);
        wait_until("the first batch is out", || batches.lock().unwrap().len() == 1).await;
        let mut calls = vec![first];
        for i in 1..4 {
            calls.push(propose_in_task(&batcher, &submit, i));
        }
        wait_until("the others are queued", || batcher.state.lock().unwrap().queued.len() == 3).await;
        assert_eq!(batches.lock().unwrap().len(), 1, "nothing joins a young batch");
        wait_until("a second batch goes out", || batches.lock().unwrap().len() == 2).await;
        assert!(before.elapsed() >= BOUND, "the second slot opened before the first batch was {BOUND:?} old");
        assert_eq!(batches.lock().unwrap()[1], ["k1", "k2", "k3"], "what waited went together");
        assert_eq!(batcher.state.lock().unwrap().in_flight(), 2);
        gate.add_permits(1_000);
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(format!("k{i}")));
        }
        assert_eq!(batcher.state.lock().unwrap().in_flight(), 0, "every slot is released");
    }

    #[tokio::test]
    async fn what_waits_behind_a_young_batch_goes_as_one_when_it_is_answered() {
        let (batcher, batches, gate, submit) = gated_batcher(2, Duration::from_secs(3_600));
        let mut calls = vec![propose_in_task(&batcher, &submit, 0)];
        wait_until("the first batch is out", || batches.lock().unwrap().len() == 1).await;
        for i in 1..=10 {
            calls.push(propose_in_task(&batcher, &submit, i));
        }
        wait_until("the others are queued", || batcher.state.lock().unwrap().queued.len() == 10).await;
        gate.add_permits(1);
        wait_until("the next batch goes out", || batches.lock().unwrap().len() == 2).await;
        let rest: Vec<String> = (1..=10).map(|i| format!("k{i}")).collect();
        assert_eq!(batches.lock().unwrap()[1], rest, "one batch, in arrival order");
        gate.add_permits(1_000);
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(format!("k{i}")));
        }
        assert_eq!(batches.lock().unwrap().len(), 2);
        assert_eq!(batcher.state.lock().unwrap().in_flight(), 0, "every slot is released");
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
        let batcher = Arc::new(ProposalBatcher::<String>::new(PROPOSALS_IN_FLIGHT_MAX, Duration::ZERO));
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
        assert_eq!(batcher.state.lock().unwrap().in_flight(), 0);
    }
}
