//! Watch streams checked against the writes: every watcher, across its
//! reconnections, must see every revision from the first write to the final
//! revision exactly once, in order, each revision's events in one response,
//! exactly the changes that were written at that revision (every acknowledged
//! write, and nothing that was never written), the same as every other watcher.
//!
//! This relies on the watch workload's shape: every revision of the run is a
//! write of the watched prefix, so the revisions form the range
//! `FIRST_REVISION..=final`.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::CheckResult;
use crate::history::{Op, OpKind, Outcome, WatchEvent, WatchRecord};

/// The first revision a write can have: a new cluster is at revision 1.
pub const FIRST_REVISION: i64 = 2;

type Change = (bool, String, String);

/// Checks `records` (every watcher's stream) against the writes in `ops`.
pub fn check(ops: &[Op], records: &[WatchRecord]) -> CheckResult {
    let mut anomalies = Vec::new();
    let final_rev = records.iter().rev().find_map(|r| match r {
        WatchRecord::Final { revision } => Some(*revision),
        _ => None,
    });
    let Some(final_rev) = final_rev else {
        return CheckResult::from_anomalies(
            vec![json!({"type": "no-final-revision", "note": "the run did not record the final revision"})],
            json!({}),
        );
    };

    // Writes by value (values are unique): the op and its puts.
    let mut by_value: HashMap<&str, &Op> = HashMap::new();
    let mut acked: BTreeMap<i64, &Op> = BTreeMap::new();
    for o in ops {
        let OpKind::MultiPut { puts } = &o.op else { continue };
        for (_, v) in puts {
            by_value.insert(v.as_str(), o);
        }
        if o.outcome == Outcome::Ok {
            if let Some(rev) = o.revision {
                if acked.insert(rev, o).is_some() {
                    anomalies.push(json!({"type": "duplicate-revision-ack", "revision": rev, "op": o.id}));
                }
            }
        }
    }

    // Per watcher: revision -> (response index, changes).
    let mut watchers: BTreeMap<u32, BTreeMap<i64, (usize, Vec<Change>)>> = BTreeMap::new();
    let mut last_seen: BTreeMap<u32, i64> = BTreeMap::new();
    for (ri, rec) in records.iter().enumerate() {
        match rec {
            WatchRecord::Connect { watcher, .. } => {
                watchers.entry(*watcher).or_default();
            }
            WatchRecord::Events { watcher, node, events, t_ns } => {
                let seen = watchers.entry(*watcher).or_default();
                let last = last_seen.entry(*watcher).or_insert(0);
                for e in events {
                    if e.revision < *last {
                        anomalies.push(json!({"type": "out-of-order", "watcher": watcher, "node": node, "t_ns": t_ns,
                            "revision": e.revision, "after_revision": *last}));
                    }
                    let entry = seen.entry(e.revision).or_insert_with(|| (ri, Vec::new()));
                    let change = change_of(e);
                    if entry.1.contains(&change) {
                        anomalies.push(json!({"type": "duplicate", "watcher": watcher, "node": node, "t_ns": t_ns,
                            "revision": e.revision, "key": e.key}));
                        continue;
                    }
                    if entry.0 != ri {
                        anomalies
                            .push(json!({"type": "split-revision", "watcher": watcher, "node": node, "t_ns": t_ns,
                            "revision": e.revision, "key": e.key}));
                    }
                    entry.1.push(change);
                    *last = (*last).max(e.revision);
                }
            }
            WatchRecord::Broken { .. } | WatchRecord::Final { .. } => {}
        }
    }

    for (w, seen) in &watchers {
        // Gaps (and revisions that cannot exist).
        let mut missing = Vec::new();
        for rev in FIRST_REVISION..=final_rev {
            if !seen.contains_key(&rev) {
                missing.push(rev);
            }
        }
        if !missing.is_empty() {
            let shown: Vec<i64> = missing.iter().take(20).copied().collect();
            anomalies
                .push(json!({"type": "gap", "watcher": w, "missing_revisions": missing.len(), "first_missing": shown,
                "final_revision": final_rev}));
        }
        for rev in seen.keys().filter(|r| **r > final_rev || **r < FIRST_REVISION) {
            anomalies.push(
                json!({"type": "revision-never-written", "watcher": w, "revision": rev, "final_revision": final_rev}),
            );
        }
        // Each revision's changes must be one write's puts.
        for (rev, (_, changes)) in seen {
            let mut sorted = changes.clone();
            sorted.sort();
            let expected = match acked.get(rev) {
                Some(o) => Some(*o),
                None => changes.first().and_then(|(_, _, v)| by_value.get(v.as_str()).copied()),
            };
            match expected {
                None => {
                    anomalies.push(json!({"type": "never-written", "watcher": w, "revision": rev, "events": changes}))
                }
                Some(o) => {
                    if o.outcome == Outcome::Fail {
                        anomalies.push(json!({"type": "failed-write-seen", "watcher": w, "revision": rev, "op": o.id}));
                    }
                    if let Some(r) = o.revision.filter(|_| o.outcome == Outcome::Ok) {
                        if r != *rev {
                            anomalies.push(json!({"type": "wrong-revision", "watcher": w, "revision": rev, "op": o.id,
                                "acked_revision": r}));
                        }
                    }
                    let mut want = puts_of(o);
                    want.sort();
                    if want != sorted {
                        anomalies.push(
                            json!({"type": if sorted.len() < want.len() { "partial-revision" } else { "wrong-events" },
                            "watcher": w, "revision": rev, "op": o.id, "expected": want, "seen": sorted}),
                        );
                    }
                }
            }
        }
        // Every acknowledged write seen (reported once per watcher, not per gap).
        let unseen: Vec<i64> = acked.keys().filter(|r| !seen.contains_key(r)).copied().collect();
        if !unseen.is_empty() && missing.is_empty() {
            anomalies.push(json!({"type": "acked-write-unseen", "watcher": w, "revisions": unseen}));
        }
    }

    // The same values at each revision on every watcher: a value written at two
    // revisions, or seen at different revisions by two watchers.
    let mut value_rev: HashMap<&str, (i64, u32)> = HashMap::new();
    let mut rev_changes: HashMap<i64, (u32, Vec<Change>)> = HashMap::new();
    for (w, seen) in &watchers {
        for (rev, (_, changes)) in seen {
            let mut sorted = changes.clone();
            sorted.sort();
            match rev_changes.get(rev) {
                None => {
                    rev_changes.insert(*rev, (*w, sorted));
                }
                Some((w0, c0)) if *c0 != sorted => {
                    anomalies
                        .push(json!({"type": "watchers-disagree", "revision": rev, "watcher": w, "events": sorted,
                        "other_watcher": w0, "other_events": c0}));
                }
                Some(_) => {}
            }
            for (_, _, v) in changes.iter().filter(|c| !c.0) {
                if let Some((r0, w0)) = value_rev.insert(v.as_str(), (*rev, *w)) {
                    if r0 != *rev {
                        anomalies
                            .push(json!({"type": "inconsistent-revision", "value": v, "watcher": w, "revision": rev,
                            "other_watcher": w0, "other_revision": r0}));
                    }
                }
            }
        }
    }
    let probes = stale_starts(ops, &mut anomalies);
    let stats = json!({"watchers": watchers.len(), "final_revision": final_rev, "acked_writes": acked.len(),
        "start_and_progress_probes": probes});
    CheckResult::from_anomalies(anomalies, stats)
}

/// A watch created without a start revision, and a progress request, must
/// answer a revision at or after every write acknowledged before they were
/// sent (Cairn's linearizable watch start and progress). Returns how many
/// answers were checked.
fn stale_starts(ops: &[Op], anomalies: &mut Vec<serde_json::Value>) -> usize {
    // Acknowledged writes by completion time, with the highest revision so far.
    let mut acks: Vec<(u64, i64, u64)> = ops
        .iter()
        .filter(|o| matches!(o.op, OpKind::MultiPut { .. }) && o.outcome == Outcome::Ok)
        .filter_map(|o| o.revision.map(|r| (o.end_ns, r, o.id)))
        .collect();
    acks.sort();
    let mut prefix_max: Vec<(i64, u64)> = Vec::with_capacity(acks.len());
    for (_, r, id) in &acks {
        let best = prefix_max.last().copied().filter(|(m, _)| m >= r).unwrap_or((*r, *id));
        prefix_max.push(best);
    }
    let mut checked = 0;
    for o in ops {
        let kind = match o.op {
            OpKind::WatchCreate => "stale-watch-start",
            OpKind::WatchProgress => "stale-progress",
            _ => continue,
        };
        let (Outcome::Ok, Some(answer)) = (o.outcome, o.revision) else { continue };
        checked += 1;
        let before = acks.partition_point(|(end, _, _)| *end < o.start_ns);
        if before == 0 {
            continue;
        }
        let (max_rev, writer) = prefix_max[before - 1];
        if answer < max_rev {
            anomalies
                .push(json!({"type": kind, "op": o.id, "node": format!("n{}", o.node + 1), "start_ns": o.start_ns,
                "answered_revision": answer, "acknowledged_revision": max_rev, "write": writer}));
        }
    }
    checked
}

fn change_of(e: &WatchEvent) -> Change {
    (e.delete, e.key.clone(), e.value.clone())
}

fn puts_of(o: &Op) -> Vec<Change> {
    match &o.op {
        OpKind::MultiPut { puts } => puts.iter().map(|(k, v)| (false, k.clone(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: u64, outcome: Outcome, rev: Option<i64>, puts: &[(&str, &str)]) -> Op {
        Op {
            id,
            client: 0,
            node: 0,
            start_ns: id * 10,
            end_ns: id * 10 + 5,
            outcome,
            op: OpKind::MultiPut { puts: puts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() },
            revision: rev,
            error: None,
            is_final: false,
        }
    }
    fn ev(rev: i64, k: &str, v: &str) -> WatchEvent {
        WatchEvent { revision: rev, delete: false, key: k.into(), value: v.into() }
    }
    fn resp(w: u32, events: Vec<WatchEvent>) -> WatchRecord {
        WatchRecord::Events { watcher: w, node: 0, t_ns: 0, events }
    }
    fn ops() -> Vec<Op> {
        vec![
            put(1, Outcome::Ok, Some(2), &[("a", "1"), ("b", "2")]),
            put(2, Outcome::Info, None, &[("a", "3")]),
            put(3, Outcome::Ok, Some(4), &[("c", "4")]),
            put(4, Outcome::Info, None, &[("c", "5")]),
        ]
    }

    #[test]
    fn complete_streams_are_valid() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(1, vec![ev(2, "a", "1"), ev(2, "b", "2"), ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            resp(1, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        let res = check(&ops(), &recs);
        assert!(res.valid, "{res:?}");
    }

    #[test]
    fn gap_is_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert_eq!(check(&ops(), &recs).anomaly_types(), vec!["gap"]);
    }

    #[test]
    fn duplicate_and_out_of_order_are_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert_eq!(check(&ops(), &recs).anomaly_types(), vec!["duplicate"]);
        let recs = vec![
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert!(check(&ops(), &recs).anomaly_types().contains(&"out-of-order".to_string()));
    }

    #[test]
    fn split_revision_and_partial_revision_are_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1")]),
            resp(0, vec![ev(2, "b", "2"), ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert!(check(&ops(), &recs).anomaly_types().contains(&"split-revision".to_string()));
        let recs = vec![
            resp(0, vec![ev(2, "a", "1")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert_eq!(check(&ops(), &recs).anomaly_types(), vec!["partial-revision"]);
    }

    #[test]
    fn event_never_written_is_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "zzz")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        assert_eq!(check(&ops(), &recs).anomaly_types(), vec!["never-written"]);
    }

    #[test]
    fn acked_write_with_wrong_content_is_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "5")]),
            WatchRecord::Final { revision: 4 },
        ];
        let types = check(&ops(), &recs).anomaly_types();
        assert!(types.contains(&"wrong-events".to_string()), "{types:?}");
    }

    #[test]
    fn watchers_disagreeing_is_flagged() {
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            resp(1, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(1, vec![ev(3, "c", "5")]),
            resp(1, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        // Watcher 1 sees another indeterminate write at revision 3: two
        // different writes cannot both be revision 3.
        let res = check(&ops(), &recs);
        assert_eq!(res.anomaly_types(), vec!["watchers-disagree"]);
    }

    #[test]
    fn stale_watch_start_and_progress_are_flagged() {
        let probe = |id, start, kind: OpKind, rev| Op {
            id,
            client: 9,
            node: 1,
            start_ns: start,
            end_ns: start + 1,
            outcome: Outcome::Ok,
            op: kind,
            revision: Some(rev),
            error: None,
            is_final: false,
        };
        let recs = vec![
            resp(0, vec![ev(2, "a", "1"), ev(2, "b", "2")]),
            resp(0, vec![ev(3, "a", "3")]),
            resp(0, vec![ev(4, "c", "4")]),
            WatchRecord::Final { revision: 4 },
        ];
        // Write 3 (revision 4) was acknowledged at 35; write 1 (revision 2) at 15.
        let mut h = ops();
        h.push(probe(10, 20, OpKind::WatchCreate, 2));
        h.push(probe(11, 40, OpKind::WatchProgress, 4));
        assert!(check(&h, &recs).valid);
        h.push(probe(12, 40, OpKind::WatchCreate, 3));
        h.push(probe(13, 40, OpKind::WatchProgress, 2));
        assert_eq!(check(&h, &recs).anomaly_types(), vec!["stale-progress", "stale-watch-start"]);
    }
}
