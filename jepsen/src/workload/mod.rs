//! Workloads: concurrent clients that drive the members through the etcd API
//! (tonic clients of `cairn-proto`, with explicit per-request timeouts) and
//! record every operation, and the final reads each workload needs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::history::{Op, OpKind, Outcome, WatchRecord};

pub mod append;
pub mod lock;
pub mod register;
pub mod watch;

/// The workloads `--workload` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Read / write / compare-and-set registers, checked for linearizability.
    Register,
    /// Multi-key list-append transactions, checked for strict serializability.
    Append,
    /// Writers and watchers on every member, checked for watch guarantees.
    Watch,
    /// Lock holders with fencing tokens, checked for interleaved guarded writes.
    Lock,
}

/// How register reads are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// The default, linearizable reads.
    Linearizable,
    /// Local reads that may be stale (the negative control).
    Serializable,
}

/// What every client shares.
#[derive(Clone)]
pub struct Ctx {
    /// One channel per member.
    pub channels: Vec<Channel>,
    /// Time zero of the run.
    pub t0: Instant,
    /// When clients stop issuing operations.
    pub deadline: Instant,
    /// Bound of one request; past it the operation is indeterminate.
    pub op_timeout: Duration,
    /// Pause between two operations of one client.
    pub client_interval: Duration,
    /// Number of clients.
    pub concurrency: usize,
    /// Seed for the clients' choices.
    pub seed: u64,
    /// Register read mode.
    pub reads: ReadMode,
    /// Where operations go.
    pub recorder: Recorder,
}

impl Ctx {
    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Whether clients should stop.
    pub fn done(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Collects operations and watch records from all clients.
#[derive(Clone, Default)]
pub struct Recorder {
    next_id: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<Op>>>,
    watch: Arc<Mutex<Vec<WatchRecord>>>,
}

impl Recorder {
    /// A fresh operation ID.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a completed (or given up) operation.
    pub fn op(&self, op: Op) {
        self.ops.lock().expect("ops lock").push(op);
    }

    /// Records a watch stream record.
    pub fn watch(&self, r: WatchRecord) {
        self.watch.lock().expect("watch lock").push(r);
    }

    /// Everything recorded so far, operations sorted by ID.
    pub fn take(&self) -> (Vec<Op>, Vec<WatchRecord>) {
        let mut ops = std::mem::take(&mut *self.ops.lock().expect("ops lock"));
        ops.sort_by_key(|o| o.id);
        let watch = std::mem::take(&mut *self.watch.lock().expect("watch lock"));
        (ops, watch)
    }
}

/// The result of one request: ok, or an error that is definite or not.
pub enum Attempt<T> {
    /// Answered.
    Ok(T),
    /// Failed; `definite` when it certainly had no effect.
    Err {
        /// Whether the request certainly had no effect.
        definite: bool,
        /// What went wrong.
        message: String,
    },
}

/// Runs one request with the operation timeout. A timeout is indeterminate; a
/// gRPC error is definite only for codes that say the request was refused
/// before it could take effect.
pub async fn attempt<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Attempt<T> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Attempt::Err { definite: false, message: format!("no answer within {timeout:?}") },
        Ok(Ok(r)) => Attempt::Ok(r.into_inner()),
        Ok(Err(s)) => {
            use tonic::Code::*;
            // A refused connection means the request was never sent.
            let never_sent = s.code() == Unavailable && s.message().contains("tcp connect error");
            let definite = never_sent
                || matches!(
                    s.code(),
                    InvalidArgument
                        | NotFound
                        | AlreadyExists
                        | PermissionDenied
                        | FailedPrecondition
                        | OutOfRange
                        | Unauthenticated
                );
            Attempt::Err { definite, message: format!("{:?}: {}", s.code(), s.message()) }
        }
    }
}

/// Records an operation built from its parts.
pub struct OpBuilder {
    id: u64,
    client: u32,
    node: usize,
    start_ns: u64,
}

impl OpBuilder {
    /// Starts an operation now.
    pub fn start(ctx: &Ctx, client: u32, node: usize) -> OpBuilder {
        OpBuilder { id: ctx.recorder.next_id(), client, node, start_ns: ctx.now_ns() }
    }

    /// Completes it and records it.
    pub fn finish(self, ctx: &Ctx, outcome: Outcome, op: OpKind, revision: Option<i64>, error: Option<String>) {
        ctx.recorder.op(Op {
            id: self.id,
            client: self.client,
            node: self.node,
            start_ns: self.start_ns,
            end_ns: ctx.now_ns(),
            outcome,
            op,
            revision,
            error,
            is_final: false,
        });
    }

    /// Completes it as the final read and records it.
    pub fn finish_final(self, ctx: &Ctx, outcome: Outcome, op: OpKind, revision: Option<i64>, error: Option<String>) {
        ctx.recorder.op(Op {
            id: self.id,
            client: self.client,
            node: self.node,
            start_ns: self.start_ns,
            end_ns: ctx.now_ns(),
            outcome,
            op,
            revision,
            error,
            is_final: true,
        });
    }
}

/// Outcome for a failed write-like request.
pub fn write_outcome(definite: bool) -> Outcome {
    if definite {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

/// Runs `client` for every client index concurrently until the deadline.
pub async fn run_clients<F, Fut>(ctx: &Ctx, client: F)
where
    F: Fn(Ctx, u32) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut handles = Vec::new();
    for c in 0..ctx.concurrency {
        handles.push(tokio::spawn(client(ctx.clone(), c as u32)));
    }
    for h in handles {
        if let Err(e) = h.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Sleeps the client's interval (with jitter so clients do not move in lockstep).
pub async fn pace(ctx: &Ctx, rng: &mut impl rand::Rng) {
    let base = ctx.client_interval.as_micros() as u64;
    let jitter = if base > 1 { rng.random_range(0..base / 2 + 1) } else { 0 };
    tokio::time::sleep(Duration::from_micros(base * 3 / 4 + jitter)).await;
}

/// Retries `f` until it answers or `overall` passes (for idempotent end-of-run reads).
pub async fn retry<T, F, Fut>(overall: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + overall;
    let mut attempt_no = 0;
    loop {
        match f(attempt_no).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(format!("after {attempt_no} attempts: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        attempt_no += 1;
    }
}
