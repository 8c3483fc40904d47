//! Linearizability of registers, checked per key with the Wing–Gong–Lowe search
//! (as refined by Lowe and used by porcupine): linearize operations one at a time
//! in an order consistent with real time, backtracking, and memoising the
//! (linearized set, register value) pairs already explored.
//!
//! Indeterminate operations return at "infinity": they may take effect at any
//! point after their invocation, or never (which is the same as taking effect
//! after everything else, where nothing observes them). Failed operations and
//! indeterminate reads have no effect and are left out.

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::CheckResult;
use crate::history::{Op, OpKind, Outcome};

/// States explored per key before giving up on that key (reported as an anomaly
/// of type `search-budget-exceeded`, never as valid).
pub const SEARCH_STATES_MAX: usize = 2_000_000;

/// A register operation, with its observed result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegOp {
    Read(Option<u64>),
    Write(u64),
    /// `ok`: `Some(true)` succeeded, `Some(false)` compare failed, `None` unknown.
    Cas {
        from: u64,
        to: u64,
        ok: Option<bool>,
    },
}

type State = Option<u64>;

fn step(state: State, op: RegOp) -> Option<State> {
    match op {
        RegOp::Read(v) => (state == v).then_some(state),
        RegOp::Write(v) => Some(Some(v)),
        RegOp::Cas { from, to, ok: Some(true) } => (state == Some(from)).then_some(Some(to)),
        RegOp::Cas { from, ok: Some(false), .. } => (state != Some(from)).then_some(state),
        RegOp::Cas { from, to, ok: None } => Some(if state == Some(from) { Some(to) } else { state }),
    }
}

#[derive(Clone, Debug)]
struct LinOp {
    id: u64,
    node: usize,
    call: u64,
    /// `u64::MAX` for indeterminate operations.
    ret: u64,
    op: RegOp,
}

/// Checks every register key of `ops` for linearizability.
pub fn check(ops: &[Op]) -> CheckResult {
    let mut per_key: BTreeMap<&str, Vec<LinOp>> = BTreeMap::new();
    for o in ops {
        let (key, op) = match (&o.op, o.outcome) {
            (_, Outcome::Fail) => continue,
            (OpKind::Read { .. }, Outcome::Info) => continue,
            (OpKind::Read { key, value }, Outcome::Ok) => (key, RegOp::Read(*value)),
            (OpKind::Write { key, value }, _) => (key, RegOp::Write(*value)),
            (OpKind::Cas { key, from, to, succeeded }, outcome) => {
                let ok = if outcome == Outcome::Ok { *succeeded } else { None };
                (key, RegOp::Cas { from: *from, to: *to, ok })
            }
            _ => continue,
        };
        let ret = if o.outcome == Outcome::Info { u64::MAX } else { o.end_ns };
        per_key.entry(key.as_str()).or_default().push(LinOp { id: o.id, node: o.node, call: o.start_ns, ret, op });
    }
    let mut anomalies = Vec::new();
    let keys = per_key.len();
    let mut checked_ops = 0usize;
    for (key, lops) in &per_key {
        checked_ops += lops.len();
        if let Err(a) = check_key(lops) {
            let mut a = a;
            a["key"] = json!(key);
            anomalies.push(a);
        }
    }
    CheckResult::from_anomalies(anomalies, json!({"keys": keys, "operations": checked_ops}))
}

/// Events of the search: a call or a return of `ops[op]`.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
}

fn describe(op: &LinOp) -> serde_json::Value {
    let f = match op.op {
        RegOp::Read(v) => json!({"f": "read", "value": v}),
        RegOp::Write(v) => json!({"f": "write", "value": v}),
        RegOp::Cas { from, to, ok } => json!({"f": "cas", "from": from, "to": to, "succeeded": ok}),
    };
    json!({"id": op.id, "node": format!("n{}", op.node + 1), "op": f, "start_ns": op.call, "end_ns": if op.ret == u64::MAX { None } else { Some(op.ret) }})
}

/// Stands for every value that no read and no compare-and-set ever observed.
/// Such values are interchangeable: nothing can tell one from another.
const UNOBSERVED: u64 = u64::MAX;

/// Replaces unobserved written values by [`UNOBSERVED`], and says which
/// operations are *anonymous*: indeterminate writes of unobserved values.
/// Anonymous operations are interchangeable, so if any linearization exists,
/// one exists that linearizes them in invocation order (swapping two of them
/// changes only which unobserved value the register holds in between); the
/// search uses that to avoid trying every subset of them.
fn canonicalize(ops: &[LinOp]) -> (Vec<LinOp>, Vec<bool>) {
    let mut observed = HashSet::new();
    for o in ops {
        match o.op {
            RegOp::Read(Some(v)) => {
                observed.insert(v);
            }
            RegOp::Cas { from, .. } => {
                observed.insert(from);
            }
            _ => {}
        }
    }
    let canon = |v: u64| if observed.contains(&v) { v } else { UNOBSERVED };
    let mut anonymous = Vec::with_capacity(ops.len());
    let ops = ops
        .iter()
        .map(|o| {
            let op = match o.op {
                RegOp::Write(v) => RegOp::Write(canon(v)),
                RegOp::Cas { from, to, ok } => RegOp::Cas { from, to: canon(to), ok },
                r => r,
            };
            anonymous.push(o.ret == u64::MAX && op == RegOp::Write(UNOBSERVED));
            LinOp { op, ..o.clone() }
        })
        .collect();
    (ops, anonymous)
}

/// The WGL search over one key's operations; `Err` describes the failure.
fn check_key(ops: &[LinOp]) -> Result<(), serde_json::Value> {
    let original = ops;
    let (ops, anonymous) = canonicalize(ops);
    let ops = &ops[..];
    let n = ops.len();
    let mut events: Vec<(u64, u8, Event)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, 0, Event { op: i, is_call: true }));
        // At equal times a call sorts before a return: treat touching operations
        // as concurrent, which never invents a violation.
        events.push((op.ret, 1, Event { op: i, is_call: false }));
    }
    events.sort_by_key(|(t, kind, _)| (*t, *kind));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();
    let m = events.len();
    // Doubly linked list over events with a head sentinel at index m.
    let head = m;
    let mut next: Vec<usize> = (0..=m).map(|i| if i == m { 0 } else { i + 1 }).collect();
    let mut prev: Vec<usize> = (0..=m).map(|i| if i == 0 { m } else { i - 1 }).collect();
    if m == 0 {
        return Ok(());
    }
    next[m - 1] = usize::MAX;
    next[head] = 0;
    prev[0] = head;
    let mut ret_of = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != usize::MAX {
            prev[nx] = i;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cursor = next[head];
    let mut deepest: (usize, usize, State) = (0, usize::MAX, None);
    // Whether the current pass over the list has met an anonymous call already.
    let mut anonymous_seen = false;
    while cursor != usize::MAX {
        let ev = events[cursor];
        if ev.is_call {
            let op = ev.op;
            if anonymous[op] {
                if anonymous_seen {
                    cursor = next[cursor];
                    continue;
                }
                anonymous_seen = true;
            }
            if let Some(new_state) = step(state, ops[op].op) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    if cache.len() > SEARCH_STATES_MAX {
                        return Err(json!({"type": "search-budget-exceeded", "states": cache.len(), "operations": n}));
                    }
                    stack.push((cursor, state));
                    state = new_state;
                    unlink(&mut next, &mut prev, cursor);
                    unlink(&mut next, &mut prev, ret_of[op]);
                    cursor = next[head];
                    anonymous_seen = false;
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cursor = next[cursor];
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), ev.op, state);
            }
            let Some((call, old_state)) = stack.pop() else {
                return Err(failure(original, &events, deepest));
            };
            let op = events[call].op;
            state = old_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_of[op]);
            relink(&mut next, &mut prev, call);
            cursor = next[call];
            // Resuming after `call`: an anonymous call before it was already met.
            anonymous_seen = anonymous[op] || anonymous_seen_before(&events, &anonymous, &next, head, call);
        }
    }
    Ok(())
}

/// Whether an anonymous call is in the list before `at`.
fn anonymous_seen_before(events: &[Event], anonymous: &[bool], next: &[usize], head: usize, at: usize) -> bool {
    let mut c = next[head];
    while c != at && c != usize::MAX {
        if events[c].is_call && anonymous[events[c].op] {
            return true;
        }
        c = next[c];
    }
    false
}

/// Describes the deepest point the search reached: the operation that could not
/// be linearized there, the register's value at that point, and the operations
/// concurrent with it (the ones that could have been ordered differently).
fn failure(ops: &[LinOp], _events: &[Event], deepest: (usize, usize, State)) -> serde_json::Value {
    let (depth, blocked, state) = deepest;
    let b = &ops[blocked];
    let mut concurrent: Vec<&LinOp> =
        ops.iter().filter(|o| o.call <= b.ret && o.ret >= b.call && o.id != b.id).collect();
    concurrent.sort_by_key(|o| o.call);
    concurrent.truncate(20);
    // For a read: who wrote the value it saw, and the last write acknowledged
    // before it began (what a linearizable read could not have missed).
    let writes = |pred: &dyn Fn(&LinOp) -> bool| ops.iter().filter(|o| pred(o)).map(describe).collect::<Vec<_>>();
    let read_value = match b.op {
        RegOp::Read(v) => v,
        _ => None,
    };
    let writers = writes(&|o: &LinOp| match o.op {
        RegOp::Write(v) => Some(v) == read_value,
        RegOp::Cas { to, ok, .. } => Some(to) == read_value && ok != Some(false),
        RegOp::Read(_) => false,
    });
    let last_before = ops
        .iter()
        .filter(|o| o.ret < b.call && matches!(o.op, RegOp::Write(_) | RegOp::Cas { ok: Some(true), .. }))
        .max_by_key(|o| o.ret)
        .map(describe);
    json!({
        "type": "nonlinearizable",
        "blocked_op": describe(b),
        "writers_of_value_read": writers,
        "last_write_acknowledged_before": last_before,
        "value_before_blocked_op": match state {
            Some(UNOBSERVED) => json!("a value never read"),
            v => json!(v),
        },
        "linearized_before": depth,
        "concurrent_ops": concurrent.into_iter().map(describe).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, start: u64, end: u64, outcome: Outcome, kind: OpKind) -> Op {
        Op {
            id,
            client: 0,
            node: 0,
            start_ns: start,
            end_ns: end,
            outcome,
            op: kind,
            revision: None,
            error: None,
            is_final: false,
        }
    }
    fn w(id: u64, s: u64, e: u64, v: u64) -> Op {
        op(id, s, e, Outcome::Ok, OpKind::Write { key: "k".into(), value: v })
    }
    fn r(id: u64, s: u64, e: u64, v: Option<u64>) -> Op {
        op(id, s, e, Outcome::Ok, OpKind::Read { key: "k".into(), value: v })
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![r(1, 0, 1, None), w(2, 2, 3, 5), r(3, 4, 5, Some(5)), w(4, 6, 7, 6), r(5, 8, 9, Some(6))];
        assert!(check(&h).valid);
    }

    #[test]
    fn stale_read_is_flagged() {
        // The read starts after the write of 6 completed but returns 5.
        let h = vec![w(1, 0, 1, 5), w(2, 2, 3, 6), r(3, 4, 5, Some(5))];
        let res = check(&h);
        assert!(!res.valid);
        assert_eq!(res.anomaly_types(), vec!["nonlinearizable"]);
        assert_eq!(res.anomalies[0]["blocked_op"]["id"], 3);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = vec![w(1, 0, 1, 5), w(2, 2, 10, 6), r(3, 3, 4, Some(5)), r(4, 5, 6, Some(6)), r(5, 11, 12, Some(6))];
        assert!(check(&h).valid);
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Concurrent with the write, but the second read (after the first saw 6) sees 5.
        let h = vec![w(1, 0, 1, 5), w(2, 2, 10, 6), r(3, 3, 4, Some(6)), r(4, 5, 6, Some(5))];
        assert!(!check(&h).valid);
    }

    #[test]
    fn lost_write_is_flagged() {
        let h = vec![w(1, 0, 1, 5), r(2, 2, 3, None)];
        assert!(!check(&h).valid);
    }

    #[test]
    fn indeterminate_write_may_or_may_not_take_effect() {
        let info = op(2, 2, 3, Outcome::Info, OpKind::Write { key: "k".into(), value: 6 });
        // Seen much later, after another read saw the old value: fine.
        let h = vec![w(1, 0, 1, 5), info.clone(), r(3, 4, 5, Some(5)), r(4, 100, 101, Some(6))];
        assert!(check(&h).valid);
        // Never seen: fine too.
        let h = vec![w(1, 0, 1, 5), info.clone(), r(3, 4, 5, Some(5)), r(4, 100, 101, Some(5))];
        assert!(check(&h).valid);
        // But it cannot take effect before it was invoked.
        let h = vec![
            w(1, 0, 1, 5),
            r(3, 1, 2, Some(6)),
            op(2, 3, 4, Outcome::Info, OpKind::Write { key: "k".into(), value: 6 }),
        ];
        assert!(!check(&h).valid);
    }

    #[test]
    fn failed_write_never_takes_effect() {
        let failed = op(2, 2, 3, Outcome::Fail, OpKind::Write { key: "k".into(), value: 6 });
        let h = vec![w(1, 0, 1, 5), failed, r(3, 4, 5, Some(6))];
        assert!(!check(&h).valid);
    }

    #[test]
    fn compare_and_set_semantics() {
        let cas = |id, s, e, from, to, ok| {
            op(id, s, e, Outcome::Ok, OpKind::Cas { key: "k".into(), from, to, succeeded: Some(ok) })
        };
        let h = vec![w(1, 0, 1, 5), cas(2, 2, 3, 5, 7, true), cas(3, 4, 5, 5, 8, false), r(4, 6, 7, Some(7))];
        assert!(check(&h).valid);
        // A CAS that claims success although the value was not `from`.
        let h = vec![w(1, 0, 1, 5), cas(2, 2, 3, 4, 7, true)];
        assert!(!check(&h).valid);
        // A CAS that claims the compare failed although the value was `from`.
        let h = vec![w(1, 0, 1, 5), cas(2, 2, 3, 5, 7, false)];
        assert!(!check(&h).valid);
        // An indeterminate CAS explains a later read of its value.
        let info = op(2, 2, 3, Outcome::Info, OpKind::Cas { key: "k".into(), from: 5, to: 7, succeeded: None });
        assert!(check(&[w(1, 0, 1, 5), info.clone(), r(3, 10, 11, Some(7))]).valid);
        // ... but not if the compare could never have held.
        let info = op(2, 2, 3, Outcome::Info, OpKind::Cas { key: "k".into(), from: 4, to: 7, succeeded: None });
        assert!(!check(&[w(1, 0, 1, 5), info, r(3, 10, 11, Some(7))]).valid);
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![w(1, 0, 1, 5), r(2, 2, 3, Some(5))];
        h.push(op(3, 0, 1, Outcome::Ok, OpKind::Write { key: "j".into(), value: 9 }));
        h.push(op(4, 4, 5, Outcome::Ok, OpKind::Read { key: "j".into(), value: Some(5) }));
        let res = check(&h);
        assert!(!res.valid);
        assert_eq!(res.anomalies.len(), 1);
        assert_eq!(res.anomalies[0]["key"], "j");
    }

    #[test]
    fn many_concurrent_indeterminate_writes_stay_tractable() {
        // 60 timed-out writes whose values nobody reads, then a read of the last
        // acknowledged value: valid (none of them took effect, or all before the
        // acknowledged write) ...
        let mut h = vec![w(0, 0, 1, 1)];
        for i in 1..60u64 {
            h.push(op(i, 10 + i, 20 + i, Outcome::Info, OpKind::Write { key: "k".into(), value: 100 + i }));
        }
        h.push(w(500, 200, 201, 7));
        h.push(r(501, 300, 301, Some(7)));
        assert!(check(&h).valid);
        // ... and a read of a value overwritten before it started is still caught.
        h.push(r(502, 400, 401, Some(1)));
        let res = check(&h);
        assert_eq!(res.anomaly_types(), vec!["nonlinearizable"]);
        assert_eq!(res.anomalies[0]["blocked_op"]["id"], 502);
    }

    #[test]
    fn observed_indeterminate_writes_are_ordered_by_reads() {
        // Reads walk through the values of 12 concurrent indeterminate writes.
        let mut h = vec![w(0, 0, 1, 1)];
        for i in 1..=12u64 {
            h.push(op(i, 10 + i, 20 + i, Outcome::Info, OpKind::Write { key: "k".into(), value: 100 + i }));
        }
        for i in 1..=12u64 {
            h.push(r(1000 + i, 100 + 2 * i, 101 + 2 * i, Some(100 + i)));
        }
        assert!(check(&h).valid);
        // Going back to an earlier value is impossible: each write happens once.
        h.push(r(2000, 500, 501, Some(101)));
        assert!(!check(&h).valid);
    }

    /// Histories produced by a real register (each operation takes effect at
    /// one instant inside its interval) are always linearizable, however the
    /// intervals overlap and whichever writes are left indeterminate.
    #[test]
    fn simulated_linearizable_histories_pass() {
        use rand::{Rng, SeedableRng};
        for seed in 0..200u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut state: Option<u64> = None;
            let mut h = Vec::new();
            let mut next_value = 1;
            for id in 0..60u64 {
                let at = id * 100; // the instant the operation takes effect
                let start = at - rng.random_range(0..=at.min(400));
                let end = at + rng.random_range(0..400);
                let key = "k".to_string();
                let roll = rng.random_range(0..10);
                let (kind, outcome) = if roll < 4 {
                    (OpKind::Read { key, value: state }, Outcome::Ok)
                } else if roll < 7 {
                    next_value += 1;
                    state = Some(next_value);
                    let outcome = if rng.random_bool(0.2) { Outcome::Info } else { Outcome::Ok };
                    (OpKind::Write { key, value: next_value }, outcome)
                } else {
                    let from = if rng.random_bool(0.6) { state.unwrap_or(0) } else { next_value + 1000 };
                    next_value += 1;
                    let ok = state == Some(from);
                    if ok {
                        state = Some(next_value);
                    }
                    let outcome = if rng.random_bool(0.2) { Outcome::Info } else { Outcome::Ok };
                    (OpKind::Cas { key, from, to: next_value, succeeded: Some(ok) }, outcome)
                };
                h.push(op(id, start, end, outcome, kind));
            }
            // An indeterminate write that never happened at all.
            h.push(op(1000, 50, 60, Outcome::Info, OpKind::Write { key: "k".into(), value: 999_999 }));
            let res = check(&h);
            assert!(res.valid, "seed {seed}: {:?}", res.anomalies);
        }
    }
}
