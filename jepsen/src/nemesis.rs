//! Faults: a schedule drawn from a seeded random generator before the run (the
//! same seed gives the same schedule), and the task that injects and heals the
//! faults at their times, recording what it actually did.
//!
//! What can be injected here: SIGKILL and restart, SIGSTOP/SIGCONT, partitions
//! (nftables drop rules in the members' namespaces), membership changes (the
//! etcd Cluster API), leader transfer (MoveLeader), and slow links (a `tbf`
//! bandwidth limit on a member's veth). What cannot: `netem` (delay, loss,
//! reordering) is not in these kernels, and there is no working per-process
//! disk throttle (no cgroup v2 io controller; cgroup v1 blkio throttling
//! accepts limits but does not slow fsync on the virtio disk), so there is no
//! slow-disk fault.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cluster::Cluster;

/// Quiet time before the first fault and between faults, in ms (range).
pub const QUIET_MS: (u64, u64) = (1_500, 3_000);
/// How long a fault lasts, in ms (range).
pub const FAULT_MS: (u64, u64) = (3_000, 6_000);
/// Time at the end of the run kept free of faults, in ms.
pub const TAIL_QUIET_MS: u64 = 2_000;
/// How long a fault aimed at the leader waits for there to be one (after a
/// crash of every member, an election is still under way).
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// The leader, waiting up to [`LEADER_WAIT`] for one.
async fn find_leader(c: &mut Cluster) -> Option<usize> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(l) = c.leader().await {
            return Some(l);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The families of faults `--nemesis` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// SIGKILL one member, a minority, a majority or all, then restart them.
    Crash,
    /// SIGSTOP one member, a minority, a majority or the leader, then SIGCONT.
    Pause,
    /// Partitions: isolate one member or the leader, majority/minority halves,
    /// a bridge (one member sees both sides), a ring (5 members).
    Partition,
    /// Only partitions that isolate one member or the leader.
    Isolate,
    /// Remove and re-add a member, replace a member with a fresh data directory.
    Membership,
    /// Transfer leadership to another member (MoveLeader).
    LeaderTransfer,
    /// Limit members' outgoing bandwidth (`tbf`).
    SlowNet,
}

/// One fault, with its targets resolved where the schedule can resolve them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL `nodes`, restart them when the fault ends.
    Crash {
        /// "one", "minority", "majority" or "all".
        scope: String,
        /// Member indexes.
        nodes: Vec<usize>,
    },
    /// SIGSTOP `nodes` (the leader at that moment when `leader`), SIGCONT at the end.
    Pause {
        /// "one", "minority", "majority" or "leader".
        scope: String,
        /// Member indexes (empty for the leader).
        nodes: Vec<usize>,
    },
    /// For each member, the members it cannot reach; the leader's isolation is
    /// resolved when it starts (`cut` empty).
    Partition {
        /// "isolate-one", "isolate-leader", "halves", "bridge" or "ring".
        kind: String,
        /// Per member, the members it cannot reach.
        cut: Vec<Vec<usize>>,
    },
    /// MemberRemove at the start (the member is killed and wiped), MemberAdd and
    /// a fresh start at the end.
    RemoveReadd {
        /// Member index.
        node: usize,
    },
    /// Kill, wipe, MemberRemove, MemberAdd and start fresh, all at the start.
    Replace {
        /// Member index.
        node: usize,
    },
    /// MoveLeader to `to` (to the next member if `to` leads already).
    LeaderTransfer {
        /// Member index.
        to: usize,
    },
    /// Bandwidth limit on `nodes`' links.
    SlowNet {
        /// Member indexes.
        nodes: Vec<usize>,
    },
}

impl Fault {
    /// A short label for plots and tables.
    pub fn label(&self) -> String {
        match self {
            Fault::Crash { scope, nodes } => format!("crash {scope} {}", names(nodes)),
            Fault::Pause { scope, nodes } => format!("pause {scope} {}", names(nodes)),
            Fault::Partition { kind, .. } => format!("partition {kind}"),
            Fault::RemoveReadd { node } => format!("remove+re-add n{}", node + 1),
            Fault::Replace { node } => format!("replace n{}", node + 1),
            Fault::LeaderTransfer { to } => format!("leader transfer to n{}", to + 1),
            Fault::SlowNet { nodes } => format!("slow net {}", names(nodes)),
        }
    }
}

fn names(nodes: &[usize]) -> String {
    nodes.iter().map(|i| format!("n{}", i + 1)).collect::<Vec<_>>().join(",")
}

/// A fault at its place in the schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    /// When it starts, ms after the workload starts.
    pub start_ms: u64,
    /// When it is healed, ms after the workload starts.
    pub end_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// What the nemesis did, as it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Index in the schedule.
    pub index: usize,
    /// "start" or "end".
    pub phase: String,
    /// Nanoseconds since the start of the run.
    pub t_ns: u64,
    /// The fault's label.
    pub fault: String,
    /// What was resolved at run time (e.g. which member led).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Set if the action failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Draws the schedule for a run of `time_limit_ms` with `nodes` members.
pub fn schedule(seed: u64, kinds: &[NemesisKind], nodes: usize, time_limit_ms: u64) -> Vec<Scheduled> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    let mut t = rng.random_range(QUIET_MS.0..=QUIET_MS.1);
    loop {
        let dur = rng.random_range(FAULT_MS.0..=FAULT_MS.1);
        if t + dur + TAIL_QUIET_MS > time_limit_ms {
            break;
        }
        let kind = *kinds.choose(&mut rng).expect("non-empty");
        out.push(Scheduled { start_ms: t, end_ms: t + dur, fault: draw(&mut rng, kind, nodes) });
        t += dur + rng.random_range(QUIET_MS.0..=QUIET_MS.1);
    }
    out
}

fn subset(rng: &mut ChaCha8Rng, nodes: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..nodes).collect();
    all.shuffle(rng);
    all.truncate(k);
    all.sort();
    all
}

/// Per member, the members on the other side of `side`.
fn cut_between(nodes: usize, side: &[usize]) -> Vec<Vec<usize>> {
    (0..nodes)
        .map(|i| {
            let in_side = side.contains(&i);
            (0..nodes).filter(|j| side.contains(j) != in_side).collect()
        })
        .collect()
}

fn draw(rng: &mut ChaCha8Rng, kind: NemesisKind, n: usize) -> Fault {
    let minority = (n - 1) / 2;
    let majority = n / 2 + 1;
    match kind {
        NemesisKind::Crash => {
            let (scope, k) = *[("one", 1), ("minority", minority.max(1)), ("majority", majority), ("all", n)]
                .choose(rng)
                .expect("non-empty");
            Fault::Crash { scope: scope.into(), nodes: subset(rng, n, k) }
        }
        NemesisKind::Pause => {
            let (scope, k) = *[("one", 1), ("minority", minority.max(1)), ("majority", majority), ("leader", 0)]
                .choose(rng)
                .expect("non-empty");
            Fault::Pause { scope: scope.into(), nodes: subset(rng, n, k) }
        }
        NemesisKind::Isolate => {
            if rng.random_bool(0.5) {
                Fault::Partition { kind: "isolate-leader".into(), cut: Vec::new() }
            } else {
                Fault::Partition { kind: "isolate-one".into(), cut: cut_between(n, &subset(rng, n, 1)) }
            }
        }
        NemesisKind::Partition => {
            let mut kinds = vec!["isolate-one", "isolate-leader", "halves", "bridge"];
            if n >= 4 {
                kinds.push("ring");
            }
            let kind = *kinds.choose(rng).expect("non-empty");
            let cut = match kind {
                "isolate-one" => cut_between(n, &subset(rng, n, 1)),
                "isolate-leader" => Vec::new(),
                "halves" => cut_between(n, &subset(rng, n, minority.max(1))),
                "bridge" => {
                    // Two sides that cannot see each other, and one member that sees both.
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(rng);
                    let bridge = order[0];
                    let rest = &order[1..];
                    let (a, b) = rest.split_at(rest.len() / 2);
                    (0..n)
                        .map(|i| {
                            if i == bridge {
                                Vec::new()
                            } else if a.contains(&i) {
                                b.to_vec()
                            } else {
                                a.to_vec()
                            }
                        })
                        .map(|mut v| {
                            v.sort();
                            v
                        })
                        .collect()
                }
                _ => {
                    // Ring: each member sees only its two neighbours in a random cycle.
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(rng);
                    let mut cut = vec![Vec::new(); n];
                    for (pos, &i) in order.iter().enumerate() {
                        let left = order[(pos + n - 1) % n];
                        let right = order[(pos + 1) % n];
                        cut[i] = (0..n).filter(|j| *j != i && *j != left && *j != right).collect();
                    }
                    cut
                }
            };
            Fault::Partition { kind: kind.into(), cut }
        }
        NemesisKind::Membership => match rng.random_range(0..2) {
            0 => Fault::RemoveReadd { node: rng.random_range(0..n) },
            _ => Fault::Replace { node: rng.random_range(0..n) },
        },
        NemesisKind::LeaderTransfer => Fault::LeaderTransfer { to: rng.random_range(0..n) },
        NemesisKind::SlowNet => {
            let k = if rng.random_bool(0.5) { 1 } else { n };
            Fault::SlowNet { nodes: subset(rng, n, k) }
        }
    }
}

/// Injects the faults of `schedule` at their times (relative to `t0`) until the
/// schedule is done; every fault is healed before it returns.
pub async fn run(cluster: Arc<Mutex<Cluster>>, schedule: Vec<Scheduled>, t0: Instant) -> Vec<NemesisEvent> {
    let mut events = Vec::new();
    for (index, s) in schedule.iter().enumerate() {
        tokio::time::sleep_until((t0 + Duration::from_millis(s.start_ms)).into()).await;
        let mut c = cluster.lock().await;
        let (detail, resolved) = start(&mut c, &s.fault).await;
        drop(c);
        events.push(event(index, "start", t0, &s.fault, detail.clone(), resolved.as_ref().err()));
        tokio::time::sleep_until((t0 + Duration::from_millis(s.end_ms)).into()).await;
        let mut c = cluster.lock().await;
        let healed = end(&mut c, &s.fault, resolved.ok()).await;
        drop(c);
        events.push(event(index, "end", t0, &s.fault, String::new(), healed.as_ref().err()));
    }
    events
}

fn event(index: usize, phase: &str, t0: Instant, fault: &Fault, detail: String, err: Option<&String>) -> NemesisEvent {
    NemesisEvent {
        index,
        phase: phase.into(),
        t_ns: t0.elapsed().as_nanos() as u64,
        fault: fault.label(),
        detail,
        error: err.cloned(),
    }
}

/// What `start` resolved at run time and `end` needs: the members a fault hit.
type Resolved = Vec<usize>;

async fn start(c: &mut Cluster, fault: &Fault) -> (String, Result<Resolved, String>) {
    match fault {
        Fault::Crash { nodes, .. } => {
            for &i in nodes {
                c.kill(i);
            }
            (String::new(), Ok(nodes.clone()))
        }
        Fault::Pause { nodes, scope } => {
            let targets = if scope == "leader" {
                match find_leader(c).await {
                    Some(l) => vec![l],
                    None => return ("no leader found".into(), Err("no leader to pause".into())),
                }
            } else {
                nodes.clone()
            };
            for &i in &targets {
                if let Err(e) = c.pause(i) {
                    return (String::new(), Err(e.to_string()));
                }
            }
            (format!("paused {}", names(&targets)), Ok(targets))
        }
        Fault::Partition { kind, cut } => {
            let n = c.size();
            let (cut, detail) = if kind == "isolate-leader" {
                match find_leader(c).await {
                    Some(l) => (cut_between(n, &[l]), format!("leader n{}", l + 1)),
                    None => return ("no leader found".into(), Err("no leader to isolate".into())),
                }
            } else {
                (cut.clone(), String::new())
            };
            let detail = format!("{detail} cut {cut:?}").trim().to_string();
            match c.net().partition(&cut) {
                Ok(()) => (detail, Ok(Vec::new())),
                Err(e) => (detail, Err(e.to_string())),
            }
        }
        Fault::RemoveReadd { node } => match c.remove_member(*node).await {
            Ok(()) => (String::new(), Ok(vec![*node])),
            Err(e) => (String::new(), Err(e.to_string())),
        },
        Fault::Replace { node } => {
            let res = async {
                c.remove_member(*node).await?;
                c.add_member(*node).await
            }
            .await;
            (String::new(), res.map(|_| Vec::new()).map_err(|e| e.to_string()))
        }
        Fault::LeaderTransfer { to } => {
            // The drawn target, or the next member if that one leads already.
            let to = match find_leader(c).await {
                Some(l) if l == *to => (to + 1) % c.size(),
                _ => *to,
            };
            match c.move_leader(to).await {
                Ok(()) => (format!("to n{}", to + 1), Ok(Vec::new())),
                Err(e) => (format!("to n{}", to + 1), Err(e.to_string())),
            }
        }
        Fault::SlowNet { nodes } => {
            for &i in nodes {
                if let Err(e) = c.net().slow(i) {
                    return (String::new(), Err(e.to_string()));
                }
            }
            (String::new(), Ok(nodes.clone()))
        }
    }
}

async fn end(c: &mut Cluster, fault: &Fault, resolved: Option<Resolved>) -> Result<(), String> {
    match fault {
        Fault::Crash { .. } => {
            for i in resolved.unwrap_or_default() {
                c.restart(i).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Fault::Pause { .. } => {
            for i in resolved.unwrap_or_default() {
                c.resume(i).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Fault::Partition { .. } => c.net().heal().map_err(|e| e.to_string()),
        Fault::RemoveReadd { node } => {
            if resolved.is_some() {
                c.add_member(*node).await.map_err(|e| e.to_string())
            } else {
                Ok(())
            }
        }
        Fault::Replace { .. } | Fault::LeaderTransfer { .. } => Ok(()),
        Fault::SlowNet { .. } => {
            for i in resolved.unwrap_or_default() {
                c.net().unslow(i).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

/// Heals everything whatever happened: rules, links, paused, killed and removed members.
pub async fn heal_all(c: &mut Cluster) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = c.net().heal() {
        errors.push(e.to_string());
    }
    for i in 0..c.size() {
        if let Err(e) = c.net().unslow(i) {
            errors.push(e.to_string());
        }
        if let Err(e) = c.resume(i) {
            errors.push(e.to_string());
        }
        if c.is_removed(i) {
            if let Err(e) = c.add_member(i).await {
                errors.push(e.to_string());
            }
        } else if let Err(e) = c.restart(i) {
            errors.push(e.to_string());
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let kinds = [NemesisKind::Partition, NemesisKind::Crash, NemesisKind::Membership, NemesisKind::LeaderTransfer];
        let a = schedule(7, &kinds, 5, 120_000);
        assert_eq!(a, schedule(7, &kinds, 5, 120_000));
        assert_ne!(a, schedule(8, &kinds, 5, 120_000));
        assert!(a.len() >= 10, "{}", a.len());
        for w in a.windows(2) {
            assert!(w[0].end_ms < w[1].start_ms);
        }
        assert!(a.last().unwrap().end_ms + TAIL_QUIET_MS <= 120_000);
    }

    #[test]
    fn partitions_are_symmetric() {
        for seed in 0..50 {
            for s in schedule(seed, &[NemesisKind::Partition], 5, 60_000) {
                let Fault::Partition { cut, kind } = s.fault else { unreachable!() };
                if kind == "isolate-leader" {
                    continue;
                }
                for (i, blocked) in cut.iter().enumerate() {
                    assert!(!blocked.contains(&i));
                    for j in blocked {
                        assert!(cut[*j].contains(&i), "{kind}: {cut:?}");
                    }
                }
                if kind == "bridge" {
                    assert_eq!(cut.iter().filter(|c| c.is_empty()).count(), 1, "{cut:?}");
                }
                if kind == "ring" {
                    assert!(cut.iter().all(|c| c.len() == 2), "{cut:?}");
                }
            }
        }
    }
}
