//! Slow-request traces, as etcd's "apply request took too long": each client request
//! collects the instants of its steps (received, forwarded, proposed, committed,
//! applied, responded; `read_index` for linearizable reads) and, if it took longer than the threshold, logs them on one
//! line. Applying an entry for longer than its own threshold logs a line too.
//!
//! A request's steps are kept in a task-local, so the code on its path records a step
//! with [`step`] without passing anything along; outside a traced request that is a
//! no-op. "committed" is when the state machine received the entry (openraft hands it
//! over as soon as it is committed), "applied" when it finished applying it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::metrics::metrics;
use crate::limits::{APPLY_TIMINGS_KEPT, WARNING_APPLY_DURATION_MS_DEFAULT, WARNING_UNARY_REQUEST_DURATION_MS_DEFAULT};

/// When traces are logged.
#[derive(Clone, Copy, Debug)]
pub struct TraceSettings {
    /// Applying one entry for longer logs it.
    pub apply_warn: Duration,
    /// A unary request taking longer logs its steps.
    pub request_warn: Duration,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            apply_warn: Duration::from_millis(WARNING_APPLY_DURATION_MS_DEFAULT),
            request_warn: Duration::from_millis(WARNING_UNARY_REQUEST_DURATION_MS_DEFAULT),
        }
    }
}

static SETTINGS: OnceLock<TraceSettings> = OnceLock::new();

/// Sets the thresholds; the first call wins (one member per process).
pub fn configure(settings: TraceSettings) {
    let _ = SETTINGS.set(settings);
}

fn settings() -> TraceSettings {
    SETTINGS.get().copied().unwrap_or_default()
}

type Steps = Vec<(&'static str, Instant)>;

tokio::task_local! {
    static TRACE: RefCell<Steps>;
}

/// Runs `request` as a traced request named `what`; logs its steps if it is slow.
pub async fn traced<F: Future>(what: &str, request: F) -> F::Output {
    let start = Instant::now();
    let (output, mut steps) = TRACE
        .scope(RefCell::new(Vec::new()), async {
            let output = request.await;
            (output, TRACE.with(|t| std::mem::take(&mut *t.borrow_mut())))
        })
        .await;
    let took = start.elapsed();
    let expected = settings().request_warn;
    if took > expected {
        steps.push(("responded", Instant::now()));
        metrics().raft.slow_request_total.inc();
        tracing::warn!(
            request = what,
            took_ms = took.as_millis() as u64,
            expected_ms = expected.as_millis() as u64,
            steps = %describe(start, &mut steps),
            "request took too long"
        );
    }
    output
}

/// Records that the current request reached `name` now (no-op outside a request).
pub fn step(name: &'static str) {
    let _ = TRACE.try_with(|t| t.borrow_mut().push((name, Instant::now())));
}

/// Records the "committed" and "applied" steps of the entry at `index`, which the
/// current request proposed; passes its `outcome` through.
pub fn entry_applied<T>(index: u64, outcome: T) -> T {
    let timing = {
        let timings = applied_timings().lock().expect("apply timings lock");
        timings.iter().rev().find(|t| t.0 == index).copied()
    };
    if let Some((_, committed, applied)) = timing {
        let _ = TRACE.try_with(|t| t.borrow_mut().extend([("committed", committed), ("applied", applied)]));
    }
    outcome
}

fn applied_timings() -> &'static Mutex<VecDeque<(u64, Instant, Instant)>> {
    static TIMINGS: OnceLock<Mutex<VecDeque<(u64, Instant, Instant)>>> = OnceLock::new();
    TIMINGS.get_or_init(|| Mutex::new(VecDeque::with_capacity(APPLY_TIMINGS_KEPT)))
}

/// Times the apply of one entry (from creation to drop): feeds the apply histogram,
/// keeps the timing for request traces, and logs the entry if it was slow.
pub struct ApplyTimer {
    index: u64,
    term: u64,
    start: Instant,
}

impl ApplyTimer {
    /// Starts timing the apply of the entry at `index`, of leader term `term`.
    pub fn start(index: u64, term: u64) -> ApplyTimer {
        ApplyTimer { index, term, start: Instant::now() }
    }
}

impl Drop for ApplyTimer {
    fn drop(&mut self) {
        let end = Instant::now();
        let took = end - self.start;
        metrics().raft.apply_duration_seconds.observe(took.as_secs_f64());
        {
            let mut timings = applied_timings().lock().expect("apply timings lock");
            if timings.len() == APPLY_TIMINGS_KEPT {
                timings.pop_front();
            }
            timings.push_back((self.index, self.start, end));
        }
        let expected = settings().apply_warn;
        if took > expected {
            metrics().raft.slow_apply_total.inc();
            tracing::warn!(
                index = self.index,
                term = self.term,
                took_ms = took.as_millis() as u64,
                expected_ms = expected.as_millis() as u64,
                "apply request took too long"
            );
        }
    }
}

/// Formats steps as `received=0ms forwarded=+1ms ... responded=+5ms`, each step's
/// time since the previous one.
fn describe(start: Instant, steps: &mut [(&'static str, Instant)]) -> String {
    steps.sort_by_key(|s| s.1);
    let mut out = String::from("received=0ms");
    let mut last = start;
    for (name, at) in steps.iter() {
        let delta = at.saturating_duration_since(last);
        let _ = write!(out, " {name}=+{:.1}ms", delta.as_secs_f64() * 1000.0);
        last = (*at).max(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_recorded_inside_a_request_are_listed_in_time_order() {
        let start = Instant::now();
        let mut steps = vec![
            ("applied", start + Duration::from_millis(30)),
            ("proposed", start + Duration::from_millis(10)),
            ("responded", start + Duration::from_millis(31)),
        ];
        assert_eq!(describe(start, &mut steps), "received=0ms proposed=+10.0ms applied=+20.0ms responded=+1.0ms");
        // Outside a traced request, steps are ignored; inside, they are kept.
        step("proposed");
        let inside = TRACE.scope(RefCell::new(Vec::new()), async {
            step("proposed");
            TRACE.with(|t| t.borrow().len())
        });
        assert_eq!(inside.await, 1);
    }

    #[tokio::test]
    async fn slow_requests_and_applies_are_counted_and_applied_entries_join_the_trace() {
        configure(TraceSettings { apply_warn: Duration::from_millis(1), request_warn: Duration::from_millis(1) });
        let m = metrics();
        let (applies, requests) = (m.raft.slow_apply_total.get(), m.raft.slow_request_total.get());
        let index = u64::MAX - 7;
        let names = traced("/test/Slow", async {
            step("proposed");
            {
                let _apply = ApplyTimer::start(index, 3);
                std::thread::sleep(Duration::from_millis(5));
            }
            entry_applied(index, ());
            TRACE.with(|t| t.borrow().iter().map(|s| s.0).collect::<Vec<_>>())
        })
        .await;
        assert_eq!(names, ["proposed", "committed", "applied"]);
        assert!(m.raft.slow_apply_total.get() > applies, "the 5 ms apply counts as slow");
        assert!(m.raft.slow_request_total.get() > requests, "the request counts as slow");
    }
}
