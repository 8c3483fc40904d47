//! Lock safety with fencing tokens: writes to the guarded resource, taken in
//! the order the store committed them, must carry non-decreasing tokens (once a
//! newer holder wrote, an older holder's write never lands), every token must
//! come from one acquisition, and every acknowledged guarded write must be in
//! the resource's version history at its revision.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::CheckResult;
use crate::history::{Op, OpKind, Outcome};

/// Parses the fencing token out of a guarded value (`t<token>-c<client>-s<seq>`).
pub fn token_of_value(v: &str) -> Option<i64> {
    v.strip_prefix('t')?.split('-').next()?.parse().ok()
}

/// Checks the lock workload's operations.
pub fn check(ops: &[Op]) -> CheckResult {
    let mut anomalies = Vec::new();
    // Tokens granted: each by exactly one acquisition.
    let mut granted: HashMap<i64, u64> = HashMap::new();
    for o in ops {
        if let (OpKind::Acquire { token: Some(t), .. }, Outcome::Ok) = (&o.op, o.outcome) {
            if let Some(other) = granted.insert(*t, o.id) {
                anomalies.push(json!({"type": "token-granted-twice", "token": t, "ops": [other, o.id]}));
            }
        }
    }
    // Acknowledged guarded writes, by commit revision.
    let mut acked: BTreeMap<i64, &Op> = BTreeMap::new();
    for o in ops {
        if let (OpKind::GuardedWrite { token, succeeded: Some(true), .. }, Outcome::Ok) = (&o.op, o.outcome) {
            if !granted.contains_key(token) {
                anomalies.push(json!({"type": "write-with-unknown-token", "op": o.id, "token": token}));
            }
            if let Some(rev) = o.revision {
                acked.insert(rev, o);
            }
        }
    }
    let history = ops.iter().rev().find_map(|o| match (&o.op, o.outcome) {
        (OpKind::ResourceHistory { versions }, Outcome::Ok) => Some(versions),
        _ => None,
    });
    // The committed order: the resource's version history when it was read at the
    // end (it also holds indeterminate writes that landed), else the acknowledged ones.
    let sequence: Vec<(i64, String)> = match history {
        Some(versions) => {
            let by_rev: HashMap<i64, &str> = versions.iter().map(|(r, v)| (*r, v.as_str())).collect();
            for (rev, o) in &acked {
                let OpKind::GuardedWrite { value, .. } = &o.op else { continue };
                if by_rev.get(rev) != Some(&value.as_str()) {
                    anomalies.push(json!({"type": "lost-guarded-write", "op": o.id, "revision": rev, "value": value,
                        "found": by_rev.get(rev)}));
                }
            }
            versions.clone()
        }
        None => acked
            .iter()
            .filter_map(|(r, o)| match &o.op {
                OpKind::GuardedWrite { value, .. } => Some((*r, value.clone())),
                _ => None,
            })
            .collect(),
    };
    let mut max_token: Option<(i64, i64, String)> = None;
    for (rev, value) in &sequence {
        let Some(token) = token_of_value(value) else {
            anomalies.push(json!({"type": "unparseable-resource-value", "revision": rev, "value": value}));
            continue;
        };
        if let Some((t0, r0, v0)) = &max_token {
            if token < *t0 {
                anomalies.push(json!({"type": "interleaved-holders", "revision": rev, "value": value, "token": token,
                    "after_token": t0, "after_revision": r0, "after_value": v0}));
                continue;
            }
        }
        max_token = Some((token, *rev, value.clone()));
    }
    let early = early_expiries(ops, &mut anomalies);
    // Guarded writes the fence refused: evidence that holders did lose the lock.
    let fenced = ops
        .iter()
        .filter(|o| matches!((&o.op, o.outcome), (OpKind::GuardedWrite { succeeded: Some(false), .. }, Outcome::Ok)))
        .count();
    let stats = json!({"acquisitions": granted.len(), "acked_guarded_writes": acked.len(), "fenced_writes": fenced,
        "lock_handovers_checked_for_early_expiry": early,
        "resource_versions": sequence.len(), "resource_history_read": history.is_some()});
    CheckResult::from_anomalies(anomalies, stats)
}

/// A lease never expires before its holder was promised: a grant or a
/// keep-alive sent at `s` and answered with TTL `T > 0` keeps the lease until
/// at least `s + T` (the server renewed it no earlier than `s`). So when the
/// next holder took the lock before that, and the previous holder had neither
/// released the lock nor revoked its lease by then, the lock key (attached to
/// the lease) was deleted early: the lease expired early. Returns how many
/// handovers were checked.
fn early_expiries(ops: &[Op], anomalies: &mut Vec<serde_json::Value>) -> usize {
    let mut acquired: Vec<(i64, &Op, i64)> = ops
        .iter()
        .filter_map(|o| match (&o.op, o.outcome) {
            (OpKind::Acquire { lease, token: Some(t) }, Outcome::Ok) => Some((*t, o, *lease)),
            _ => None,
        })
        .collect();
    acquired.sort_by_key(|a| a.0);
    let mut checked = 0;
    for pair in acquired.windows(2) {
        let ((t1, _, lease), (t2, next, _)) = (pair[0], pair[1]);
        let handover = next.end_ns;
        let let_go = ops.iter().any(|o| {
            o.start_ns < handover
                && match o.op {
                    OpKind::Release { token } => token == t1,
                    OpKind::LeaseRevoke { lease: l } => l == lease,
                    _ => false,
                }
        });
        if let_go {
            continue;
        }
        checked += 1;
        let promise = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok && o.start_ns < handover)
            .filter_map(|o| match o.op {
                OpKind::KeepAlive { lease: l, ttl: Some(ttl) } if l == lease && ttl > 0 => Some((o, ttl)),
                OpKind::LeaseGrant { lease: l, ttl } if l == lease && ttl > 0 => Some((o, ttl)),
                _ => None,
            })
            .map(|(o, ttl)| (o.start_ns + ttl as u64 * 1_000_000_000, o.id))
            .max();
        if let Some((until, promised_by)) = promise {
            if until > handover {
                anomalies.push(json!({"type": "lease-expired-early", "lease": lease, "token": t1, "next_token": t2,
                    "next_holder_op": next.id, "next_acquired_by_ns": handover, "promised_until_ns": until,
                    "promised_by_op": promised_by}));
            }
        }
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, outcome: Outcome, rev: Option<i64>, kind: OpKind) -> Op {
        Op {
            id,
            client: 0,
            node: 0,
            start_ns: id,
            end_ns: id + 1,
            outcome,
            op: kind,
            revision: rev,
            error: None,
            is_final: false,
        }
    }
    fn acq(id: u64, token: i64) -> Op {
        op(id, Outcome::Ok, Some(token), OpKind::Acquire { lease: 1, token: Some(token) })
    }
    fn gw(id: u64, token: i64, rev: i64, seq: u32) -> Op {
        let value = format!("t{token}-c0-s{seq}");
        op(id, Outcome::Ok, Some(rev), OpKind::GuardedWrite { token, value, succeeded: Some(true) })
    }
    fn hist(versions: &[(i64, i64, u32)]) -> Op {
        let versions = versions.iter().map(|(r, t, s)| (*r, format!("t{t}-c0-s{s}"))).collect();
        op(99, Outcome::Ok, None, OpKind::ResourceHistory { versions })
    }

    #[test]
    fn successive_holders_are_valid() {
        let h = vec![
            acq(1, 2),
            gw(2, 2, 3, 0),
            gw(3, 2, 4, 1),
            acq(4, 6),
            gw(5, 6, 7, 0),
            hist(&[(3, 2, 0), (4, 2, 1), (7, 6, 0)]),
        ];
        let res = check(&h);
        assert!(res.valid, "{res:?}");
    }

    #[test]
    fn old_holder_writing_after_new_holder_is_flagged() {
        let h = vec![acq(1, 2), gw(2, 2, 3, 0), acq(4, 6), gw(5, 6, 7, 0), gw(6, 2, 8, 1)];
        assert_eq!(check(&h).anomaly_types(), vec!["interleaved-holders"]);
        // Also when the late write was indeterminate but shows up in the history.
        let h = vec![acq(1, 2), gw(2, 2, 3, 0), acq(4, 6), gw(5, 6, 7, 0), hist(&[(3, 2, 0), (7, 6, 0), (8, 2, 1)])];
        assert_eq!(check(&h).anomaly_types(), vec!["interleaved-holders"]);
    }

    #[test]
    fn lost_guarded_write_and_double_grant_are_flagged() {
        let h = vec![acq(1, 2), gw(2, 2, 3, 0), gw(3, 2, 4, 1), hist(&[(3, 2, 0)])];
        assert_eq!(check(&h).anomaly_types(), vec!["lost-guarded-write"]);
        let h = vec![acq(1, 2), acq(2, 2)];
        assert_eq!(check(&h).anomaly_types(), vec!["token-granted-twice"]);
    }

    #[test]
    fn lease_expiring_before_its_promise_is_flagged() {
        let ka = |id, lease, ttl| op(id, Outcome::Ok, None, OpKind::KeepAlive { lease, ttl: Some(ttl) });
        let mut acq1 = op(1, Outcome::Ok, Some(2), OpKind::Acquire { lease: 7, token: Some(2) });
        acq1.start_ns = 0;
        acq1.end_ns = 10;
        let mut k = ka(2, 7, 2);
        k.start_ns = 1_000_000_000; // promises the lease until 3 s
        k.end_ns = k.start_ns + 10;
        let mut acq2 = op(3, Outcome::Ok, Some(9), OpKind::Acquire { lease: 8, token: Some(9) });
        acq2.start_ns = 2_000_000_000;
        acq2.end_ns = 2_500_000_000; // the lock was free before 2.5 s
        let h = vec![acq1.clone(), k.clone(), acq2.clone()];
        assert_eq!(check(&h).anomaly_types(), vec!["lease-expired-early"]);
        // Taken after the promise ran out: fine.
        let mut late = acq2.clone();
        late.end_ns = 3_200_000_000;
        assert!(check(&[acq1.clone(), k.clone(), late]).valid);
        // Released first: fine.
        let mut rel = op(4, Outcome::Info, None, OpKind::Release { token: 2 });
        rel.start_ns = 1_500_000_000;
        assert!(check(&[acq1, k, acq2, rel]).valid);
    }
}
