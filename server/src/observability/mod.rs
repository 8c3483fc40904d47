//! What an operator sees of a member: the Prometheus metrics every layer feeds, and
//! slow-request traces. A leaf module: it knows nothing of Raft, MVCC or gRPC, so
//! that any layer can record into it with one line.

mod metrics;
mod trace;

pub use metrics::{metrics, Metrics, ALARM_TYPES, PEER_LABEL};
pub use trace::{configure, entry_applied, step, traced, ApplyTimer, TraceSettings};

use std::future::Future;
use std::time::Instant;

/// Formats a member ID as metrics and logs show it.
pub fn member_label(id: u64) -> String {
    format!("{id:x}")
}

/// Runs a state-machine batch write, timing it as a backend commit.
pub fn backend_commit<T>(write: impl FnOnce() -> T) -> T {
    metrics().disk.backend_commit_seconds.observe_closure_duration(write)
}

/// Runs an fsync of the Raft log, timing it.
pub fn wal_fsync<T>(sync: impl FnOnce() -> T) -> T {
    metrics().disk.wal_fsync_seconds.observe_closure_duration(sync)
}

/// Records the Raft commit index.
pub fn committed(index: Option<u64>) {
    metrics().raft.proposals_committed_total.set(index.unwrap_or(0) as i64);
}

/// Records whether an alarm of `alarm_type` (etcd's names: `NOSPACE`, `CORRUPT`) is
/// active on the cluster; the alarm store calls this whenever an alarm is raised
/// or disarmed.
pub fn set_alarm(alarm_type: &str, active: bool) {
    metrics().raft.alarms.with_label_values(&[alarm_type]).set(active as i64);
}

/// Counts a client write from start to finish: pending while it runs, failed if it
/// ends in an error or is abandoned (timed out).
pub async fn proposal<T, E, F: Future<Output = Result<T, E>>>(write: F) -> Result<T, E> {
    let guard = Pending::start();
    let result = write.await;
    if result.is_ok() {
        guard.succeeded();
    }
    result
}

struct Pending {
    failed: bool,
}

impl Pending {
    fn start() -> Pending {
        metrics().raft.proposals_pending.inc();
        Pending { failed: true }
    }

    fn succeeded(mut self) {
        self.failed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        metrics().raft.proposals_pending.dec();
        if self.failed {
            metrics().raft.proposals_failed_total.inc();
        }
    }
}

/// Observes one call to a peer: a send failure if it fails or is abandoned (timed
/// out), and requests forwarded to the leader by kind.
pub async fn peer_call<T, E, F>(target: u64, rpc: impl std::fmt::Debug, call: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let rpc = format!("{rpc:?}");
    if matches!(rpc.as_str(), "Forward" | "Lease" | "ReadIndex") {
        metrics().network.forwarded_total.with_label_values(&[&rpc]).inc();
    }
    let failure = FailureOnDrop { to: Some(member_label(target)) };
    let result = call.await;
    if result.is_ok() {
        failure.defuse();
    }
    result
}

/// Counts a follower's ReadIndex request answered on the leader, confirmed by the
/// request itself or by a quorum round.
pub fn read_index_served(by_request: bool) {
    let by = if by_request { "request" } else { "round" };
    metrics().network.read_index_served_total.with_label_values(&[by]).inc();
}

/// Observes the round trip of a Raft call to `target` if it is a heartbeat (carries
/// no entries) and succeeds.
pub async fn heartbeat<T, E, F>(target: u64, is_heartbeat: bool, call: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let result = call.await;
    if is_heartbeat && result.is_ok() {
        let rtt = metrics().network.peer_round_trip_time_seconds.with_label_values(&[&member_label(target)]);
        rtt.observe(started.elapsed().as_secs_f64());
    }
    result
}

struct FailureOnDrop {
    to: Option<String>,
}

impl FailureOnDrop {
    fn defuse(mut self) {
        self.to = None;
    }
}

impl Drop for FailureOnDrop {
    fn drop(&mut self) {
        if let Some(to) = &self.to {
            metrics().network.peer_sent_failures_total.with_label_values(&[to]).inc();
        }
    }
}
