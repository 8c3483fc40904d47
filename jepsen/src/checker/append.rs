//! Strict serializability of list-append transactions, by the Elle method:
//! infer each key's version order from the lists read, build the dependency
//! graph between transactions (write-write, write-read, read-write) plus
//! real-time order, and look for cycles. Also flags reads no version order can
//! explain (incompatible orders, duplicates), reads of values that were never
//! appended or were appended by failed transactions, intermediate reads, and
//! acknowledged appends missing from the final read.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::json;

use super::CheckResult;
use crate::history::{Mop, Op, OpKind, Outcome};

/// Cycles described in full at most (every cyclic component is still counted).
pub const CYCLES_DESCRIBED_MAX: usize = 20;

/// Kinds of dependency edges, in the order used to name a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Dep {
    Ww,
    Wr,
    Realtime,
    Rw,
}

impl Dep {
    fn name(self) -> &'static str {
        match self {
            Dep::Ww => "ww",
            Dep::Wr => "wr",
            Dep::Realtime => "realtime",
            Dep::Rw => "rw",
        }
    }
}

/// A transaction taking part in the graph.
struct Txn<'a> {
    op: &'a Op,
    mops: &'a [Mop],
}

/// Checks the append transactions of `ops`.
pub fn check(ops: &[Op]) -> CheckResult {
    let mut anomalies = Vec::new();
    let all: Vec<(&Op, &[Mop])> = ops
        .iter()
        .filter_map(|o| match &o.op {
            OpKind::Txn { mops, .. } => Some((o, mops.as_slice())),
            _ => None,
        })
        .collect();

    // Who appended what: (key, value) -> index in `all`.
    let mut appender: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, (o, mops)) in all.iter().enumerate() {
        for m in mops.iter() {
            if let Mop::Append { key, value } = m {
                if appender.insert((key.as_str(), *value), i).is_some() {
                    anomalies.push(json!({"type": "duplicate-append", "key": key, "value": value, "op": o.id}));
                }
            }
        }
    }

    // Reads of ok transactions, per key.
    let mut reads: BTreeMap<&str, Vec<(usize, &Vec<u64>)>> = BTreeMap::new();
    for (i, (o, mops)) in all.iter().enumerate() {
        if o.outcome != Outcome::Ok {
            continue;
        }
        for m in mops.iter() {
            if let Mop::Read { key, value: Some(list) } = m {
                reads.entry(key.as_str()).or_default().push((i, list));
            }
        }
    }

    // Version order per key: the longest read, if every read is a prefix of it.
    let mut order: BTreeMap<&str, &Vec<u64>> = BTreeMap::new();
    for (key, rs) in &reads {
        let longest = rs.iter().max_by_key(|(_, l)| l.len()).map(|(_, l)| *l).expect("non-empty");
        let mut ok = true;
        for (i, list) in rs {
            if !longest.starts_with(list) {
                ok = false;
                anomalies.push(json!({"type": "incompatible-order", "key": key, "op": all[*i].0.id,
                    "read": list, "longest_read": longest}));
            }
            read_anomalies(&all, &appender, key, *i, list, &mut anomalies);
        }
        if ok {
            order.insert(key, longest);
        }
    }

    lost_appends(&all, &mut anomalies);

    // The graph: ok transactions, plus indeterminate ones whose appends were read.
    let included: Vec<bool> = all
        .iter()
        .map(|(o, mops)| match o.outcome {
            Outcome::Ok => true,
            Outcome::Fail => false,
            Outcome::Info => mops.iter().any(|m| match m {
                Mop::Append { key, value } => order.get(key.as_str()).is_some_and(|l| l.contains(value)),
                _ => false,
            }),
        })
        .collect();
    let txns: Vec<Txn> = all.iter().map(|(op, mops)| Txn { op, mops }).collect();
    let mut edges: HashMap<(usize, usize), Dep> = HashMap::new();
    let mut add = |a: usize, b: usize, d: Dep| {
        if a != b && included[a] && included[b] {
            let e = edges.entry((a, b)).or_insert(d);
            *e = (*e).min(d);
        }
    };
    for (key, list) in &order {
        let writer = |v: &u64| appender.get(&(*key, *v)).copied();
        for pair in list.windows(2) {
            if let (Some(a), Some(b)) = (writer(&pair[0]), writer(&pair[1])) {
                add(a, b, Dep::Ww);
            }
        }
        for (r, read) in reads.get(key).into_iter().flatten() {
            if let Some(w) = read.last().and_then(writer) {
                add(w, *r, Dep::Wr);
            }
            if let Some(next) = list.get(read.len()).and_then(writer) {
                add(*r, next, Dep::Rw);
            }
        }
    }
    realtime_edges(&txns, &included, &mut add);

    let n = txns.len();
    let mut adj: Vec<Vec<(usize, Dep)>> = vec![Vec::new(); n];
    for (&(a, b), &d) in &edges {
        adj[a].push((b, d));
    }
    for list in &mut adj {
        list.sort();
    }
    let sccs = tarjan(&adj);
    let mut cycles = 0;
    for comp in sccs.iter().filter(|c| c.len() > 1) {
        cycles += 1;
        if cycles > CYCLES_DESCRIBED_MAX {
            anomalies.push(json!({"type": "cycle", "transactions": comp.len(), "note": "not described (limit)"}));
            continue;
        }
        anomalies.push(describe_cycle(&txns, &adj, comp));
    }
    let stats = json!({"transactions": all.len(), "in_graph": included.iter().filter(|b| **b).count(),
        "edges": edges.len(), "keys": order.len()});
    CheckResult::from_anomalies(anomalies, stats)
}

/// Transactions with their micro-operations.
type Txns<'a> = [(&'a Op, &'a [Mop])];

/// Anomalies of one read, by itself: duplicates, values nobody (or only a
/// failed transaction) appended, and intermediate reads.
fn read_anomalies(
    all: &Txns,
    appender: &HashMap<(&str, u64), usize>,
    key: &str,
    i: usize,
    list: &[u64],
    anomalies: &mut Vec<serde_json::Value>,
) {
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = list.iter().find(|v| !seen.insert(**v)) {
        anomalies.push(json!({"type": "duplicate-elements", "key": key, "op": all[i].0.id, "value": d, "read": list}));
    }
    for v in list.iter() {
        match appender.get(&(key, *v)) {
            None => anomalies.push(json!({"type": "garbage-read", "key": key, "value": v, "op": all[i].0.id})),
            Some(&w) if all[w].0.outcome == Outcome::Fail => anomalies.push(json!({"type": "aborted-read",
                "key": key, "value": v, "op": all[i].0.id, "writer": all[w].0.id})),
            Some(_) => {}
        }
    }
    // Intermediate read: the list ends in an append that is not its writer's
    // last append to this key.
    if let Some(last) = list.last() {
        if let Some(&w) = appender.get(&(key, *last)) {
            if w != i {
                let last_of_writer = all[w].1.iter().rev().find_map(|m| match m {
                    Mop::Append { key: k, value } if k == key => Some(*value),
                    _ => None,
                });
                if last_of_writer != Some(*last) {
                    anomalies.push(json!({"type": "intermediate-read", "key": key, "value": last,
                        "op": all[i].0.id, "writer": all[w].0.id}));
                }
            }
        }
    }
}

/// Acknowledged appends missing from the final read of their key.
fn lost_appends(all: &Txns, anomalies: &mut Vec<serde_json::Value>) {
    for (o, mops) in all {
        if !o.is_final || o.outcome != Outcome::Ok {
            continue;
        }
        for m in mops.iter() {
            let Mop::Read { key, value: Some(list) } = m else { continue };
            for (w, wm) in all {
                if w.outcome != Outcome::Ok || w.end_ns > o.start_ns {
                    continue;
                }
                for a in wm.iter() {
                    if let Mop::Append { key: k, value } = a {
                        if k == key && !list.contains(value) {
                            anomalies.push(json!({"type": "lost-append", "key": key, "value": value, "op": w.id,
                                "final_read": o.id}));
                        }
                    }
                }
            }
        }
    }
}

/// Adds an edge from each ok transaction to the transactions that began after
/// it ended, up to the earliest end among those (later ones are reachable
/// through that one), which keeps the real-time order transitively complete
/// with few edges.
fn realtime_edges(txns: &[Txn], included: &[bool], add: &mut impl FnMut(usize, usize, Dep)) {
    let mut by_start: Vec<usize> = (0..txns.len()).filter(|i| included[*i]).collect();
    by_start.sort_by_key(|i| txns[*i].op.start_ns);
    let starts: Vec<u64> = by_start.iter().map(|i| txns[*i].op.start_ns).collect();
    // suffix_min_end[k]: the earliest end of an ok transaction among by_start[k..].
    let mut suffix_min_end = vec![u64::MAX; by_start.len() + 1];
    for k in (0..by_start.len()).rev() {
        let t = txns[by_start[k]].op;
        let end = if t.outcome == Outcome::Ok { t.end_ns } else { u64::MAX };
        suffix_min_end[k] = suffix_min_end[k + 1].min(end);
    }
    for &a in &by_start {
        let t = txns[a].op;
        if t.outcome != Outcome::Ok {
            continue;
        }
        let first = starts.partition_point(|s| *s <= t.end_ns);
        let horizon = suffix_min_end[first];
        for k in first..by_start.len() {
            if starts[k] > horizon {
                break;
            }
            add(a, by_start[k], Dep::Realtime);
        }
    }
}

/// Strongly connected components (Tarjan's algorithm, iterative).
fn tarjan(adj: &[Vec<(usize, Dep)>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut counter = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if *i < adj[v].len() {
                let w = adj[v][*i].0;
                *i += 1;
                if index[w] == usize::MAX {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    loop {
                        let w = stack.pop().expect("tarjan stack");
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// Finds one cycle inside a strongly connected component (a shortest path back
/// to the first member) and names it as Adya does.
fn describe_cycle(txns: &[Txn], adj: &[Vec<(usize, Dep)>], comp: &[usize]) -> serde_json::Value {
    let in_comp: std::collections::HashSet<usize> = comp.iter().copied().collect();
    let start = *comp.iter().min().expect("non-empty component");
    let mut parent: HashMap<usize, (usize, Dep)> = HashMap::new();
    let mut queue = VecDeque::new();
    queue.push_back(start);
    let mut closing = None;
    'bfs: while let Some(v) = queue.pop_front() {
        for &(w, d) in &adj[v] {
            if !in_comp.contains(&w) {
                continue;
            }
            if w == start {
                closing = Some((v, d));
                break 'bfs;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                e.insert((v, d));
                queue.push_back(w);
            }
        }
    }
    let (last, last_dep) = closing.expect("a strongly connected component has a cycle through each member");
    let mut steps = vec![(last, last_dep, start)];
    let mut v = last;
    while v != start {
        let (p, d) = parent[&v];
        steps.push((p, d, v));
        v = p;
    }
    steps.reverse();
    let rw = steps.iter().filter(|s| s.1 == Dep::Rw).count();
    let rt = steps.iter().any(|s| s.1 == Dep::Realtime);
    let wr = steps.iter().any(|s| s.1 == Dep::Wr);
    let base = match (rw, wr) {
        (0, false) => "G0",
        (0, true) => "G1c",
        (1, _) => "G-single",
        _ => "G2",
    };
    let name = if rt { format!("{base}-realtime") } else { base.to_string() };
    let describe = |i: usize| {
        let t = &txns[i];
        json!({"id": t.op.id, "outcome": t.op.outcome, "start_ns": t.op.start_ns, "end_ns": t.op.end_ns, "mops": t.mops})
    };
    json!({
        "type": name,
        "component_size": comp.len(),
        "cycle": steps.iter().map(|(a, d, b)| json!({"from": txns[*a].op.id, "dep": d.name(), "to": txns[*b].op.id})).collect::<Vec<_>>(),
        "transactions": steps.iter().map(|(a, _, _)| describe(*a)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: u64, s: u64, e: u64, outcome: Outcome, mops: Vec<Mop>) -> Op {
        Op {
            id,
            client: 0,
            node: 0,
            start_ns: s,
            end_ns: e,
            outcome,
            op: OpKind::Txn { mops, stored: Vec::new() },
            revision: None,
            error: None,
            is_final: false,
        }
    }
    fn ap(k: &str, v: u64) -> Mop {
        Mop::Append { key: k.into(), value: v }
    }
    fn rd(k: &str, v: &[u64]) -> Mop {
        Mop::Read { key: k.into(), value: Some(v.to_vec()) }
    }

    #[test]
    fn serial_history_is_valid() {
        let h = vec![
            txn(1, 0, 1, Outcome::Ok, vec![ap("x", 1), ap("y", 1)]),
            txn(2, 2, 3, Outcome::Ok, vec![rd("x", &[1]), ap("x", 2)]),
            txn(3, 4, 5, Outcome::Ok, vec![rd("x", &[1, 2]), rd("y", &[1])]),
        ];
        let res = check(&h);
        assert!(res.valid, "{res:?}");
    }

    #[test]
    fn write_skew_is_g2() {
        // Each reads the other's key empty and appends to its own: rw both ways.
        let h = vec![
            txn(1, 0, 10, Outcome::Ok, vec![rd("x", &[]), ap("y", 1)]),
            txn(2, 0, 10, Outcome::Ok, vec![rd("y", &[]), ap("x", 1)]),
            txn(3, 20, 21, Outcome::Ok, vec![rd("x", &[1]), rd("y", &[1])]),
        ];
        let res = check(&h);
        assert!(!res.valid);
        assert_eq!(res.anomaly_types(), vec!["G2"]);
    }

    #[test]
    fn circular_information_flow_is_g1c() {
        let h = vec![
            txn(1, 0, 10, Outcome::Ok, vec![ap("x", 1), rd("y", &[1])]),
            txn(2, 0, 10, Outcome::Ok, vec![ap("y", 1), rd("x", &[1])]),
        ];
        assert_eq!(check(&h).anomaly_types(), vec!["G1c"]);
    }

    #[test]
    fn stale_read_after_completed_append_is_a_realtime_cycle() {
        // T2 starts after T1 committed but does not see its append.
        let h = vec![
            txn(1, 0, 1, Outcome::Ok, vec![ap("x", 1)]),
            txn(2, 5, 6, Outcome::Ok, vec![rd("x", &[])]),
            txn(3, 10, 11, Outcome::Ok, vec![rd("x", &[1])]),
        ];
        let res = check(&h);
        assert_eq!(res.anomaly_types(), vec!["G-single-realtime"]);
        // Concurrent instead: serializable and linearizable.
        let h = vec![
            txn(1, 0, 6, Outcome::Ok, vec![ap("x", 1)]),
            txn(2, 5, 6, Outcome::Ok, vec![rd("x", &[])]),
            txn(3, 10, 11, Outcome::Ok, vec![rd("x", &[1])]),
        ];
        assert!(check(&h).valid);
    }

    #[test]
    fn incompatible_orders_and_garbage_and_aborted_reads() {
        let h = vec![
            txn(1, 0, 1, Outcome::Ok, vec![ap("x", 1)]),
            txn(2, 0, 1, Outcome::Ok, vec![ap("x", 2)]),
            txn(3, 0, 1, Outcome::Fail, vec![ap("x", 3)]),
            txn(4, 2, 3, Outcome::Ok, vec![rd("x", &[1, 2])]),
            txn(5, 2, 3, Outcome::Ok, vec![rd("x", &[2, 1])]),
            txn(6, 2, 3, Outcome::Ok, vec![rd("y", &[9])]),
            txn(7, 2, 3, Outcome::Ok, vec![rd("z", &[])]),
            txn(8, 0, 1, Outcome::Ok, vec![ap("z", 3)]),
        ];
        let types = check(&h).anomaly_types();
        assert!(types.contains(&"incompatible-order".to_string()), "{types:?}");
        assert!(types.contains(&"garbage-read".to_string()), "{types:?}");
        let h = vec![txn(3, 0, 1, Outcome::Fail, vec![ap("x", 3)]), txn(4, 2, 3, Outcome::Ok, vec![rd("x", &[3])])];
        assert_eq!(check(&h).anomaly_types(), vec!["aborted-read"]);
    }

    #[test]
    fn intermediate_read_is_flagged() {
        let h = vec![
            txn(1, 0, 10, Outcome::Ok, vec![ap("x", 1), ap("x", 2)]),
            txn(2, 0, 10, Outcome::Ok, vec![rd("x", &[1])]),
        ];
        assert!(check(&h).anomaly_types().contains(&"intermediate-read".to_string()));
    }

    #[test]
    fn lost_append_is_flagged() {
        let mut fin = txn(3, 10, 11, Outcome::Ok, vec![rd("x", &[1])]);
        fin.is_final = true;
        let h = vec![txn(1, 0, 1, Outcome::Ok, vec![ap("x", 1)]), txn(2, 2, 3, Outcome::Ok, vec![ap("x", 2)]), fin];
        assert!(check(&h).anomaly_types().contains(&"lost-append".to_string()));
    }

    #[test]
    fn indeterminate_append_seen_is_part_of_the_graph() {
        // The info transaction's append is read, so it committed; its own read
        // result is unknown. Valid.
        let h = vec![
            txn(1, 0, 1, Outcome::Ok, vec![ap("x", 1)]),
            txn(2, 2, 3, Outcome::Info, vec![ap("x", 2)]),
            txn(3, 10, 11, Outcome::Ok, vec![rd("x", &[1, 2])]),
        ];
        assert!(check(&h).valid);
    }

    /// Transactions run one at a time against real lists, each taking effect at
    /// one instant inside its interval, are always strictly serializable.
    #[test]
    fn simulated_serial_histories_pass() {
        use rand::{Rng, SeedableRng};
        for seed in 0..100u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut lists: std::collections::HashMap<String, Vec<u64>> = Default::default();
            let mut h = Vec::new();
            let mut next = 1;
            for id in 0..80u64 {
                let at = id * 100;
                let start = at - rng.random_range(0..=at.min(300));
                let end = at + rng.random_range(0..300);
                let mut keys: Vec<u64> = (0..4).collect();
                keys.retain(|_| rng.random_bool(0.5));
                let mops: Vec<Mop> = keys
                    .iter()
                    .map(|k| {
                        let key = format!("x{k}");
                        if rng.random_bool(0.5) {
                            next += 1;
                            lists.entry(key.clone()).or_default().push(next);
                            Mop::Append { key, value: next }
                        } else {
                            Mop::Read { value: Some(lists.get(&key).cloned().unwrap_or_default()), key }
                        }
                    })
                    .collect();
                let outcome = if rng.random_bool(0.1) { Outcome::Info } else { Outcome::Ok };
                let mops = if outcome == Outcome::Info {
                    mops.into_iter()
                        .map(|m| match m {
                            Mop::Read { key, .. } => Mop::Read { key, value: None },
                            a => a,
                        })
                        .collect()
                } else {
                    mops
                };
                h.push(txn(id, start, end, outcome, mops));
            }
            let mut fin = txn(
                1000,
                100_000,
                100_001,
                Outcome::Ok,
                (0..4)
                    .map(|k| rd(&format!("x{k}"), lists.get(&format!("x{k}")).map(Vec::as_slice).unwrap_or(&[])))
                    .collect(),
            );
            fin.is_final = true;
            h.push(fin);
            let res = check(&h);
            assert!(res.valid, "seed {seed}: {:?}", res.anomalies);
        }
    }
}
