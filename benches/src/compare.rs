//! `compare`: the same workloads against a local etcd cluster and a local Cairn
//! cluster, and the Cairn/etcd ratios.
//!
//! Both clusters run side by side for the whole comparison, idle but for the one
//! being measured, and every case runs against one and then at once against the
//! other. This machine's speed drifts by 15–25% within minutes (other tenants);
//! measuring all of etcd and then all of Cairn put that drift into the ratios.
//! Repeating the cases in rounds, with the order flipped each round, and reporting
//! the median ratio takes out most of what remains. Before each measurement both
//! clusters must be idle, so that neither's background work lands in the other's.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::{server_version, Cluster, ServerKind};
use crate::load::{self, Consistency, LoadSpec, Workload};
use crate::procstat::{self, ServerProc};
use crate::report::{results_table, RunResult};
use crate::{chart, write_json, ServerArgs};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Workloads to run against each server (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "put,range,watch-latency")]
    workloads: Vec<Workload>,
    /// Directory for compare.json and compare.svg (created if missing).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Measure `range` and `mixed` both linearizable and serializable (else only --consistency).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    both_consistencies: bool,
    /// Skip the open-loop put at half etcd's closed-loop put throughput.
    #[arg(long)]
    no_half_peak: bool,
    /// How many times to run every case against both servers. Odd rounds measure
    /// etcd first, even rounds Cairn; the ratios reported are medians over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_ROUNDS as i64))]
    rounds: u32,
    /// Least pause before each measurement. After it, `compare` also waits until
    /// the servers of both clusters are idle (together under 10% of one core over a
    /// second), so that the last measurement's flushes and compactions do not run
    /// into the next one, for at most --idle-wait-max.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Longest wait for the servers to go idle before a measurement; after it the
    /// measurement starts anyway (and says so).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_wait_max: Duration,
    #[command(flatten)]
    load: LoadSpec,
    #[command(flatten)]
    servers: ServerArgs,
}

/// Where and when a comparison ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// 1, 5 and 15 minute load averages when the run started.
    pub load_average: String,
    pub etcd_version: String,
    pub cairn_binary: String,
    /// `cairn --version` of the binary measured: it names the commit it was built
    /// from, wherever the binary was copied to.
    #[serde(default)]
    pub cairn_version: String,
    /// The commit checked out where the bench ran (which need not be the one the
    /// measured binary was built from: see `cairn_version`).
    pub commit: String,
}

impl Machine {
    pub fn describe(servers: &ServerArgs) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_string());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or("unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            etcd_version: server_version(&servers.etcd_bin),
            cairn_binary: servers.spec(ServerKind::Cairn).binary.display().to_string(),
            cairn_version: server_version(&servers.spec(ServerKind::Cairn).binary),
            commit,
        }
    }
}

/// Most rounds `compare` accepts (a typo of `--rounds 30` would run for hours).
pub const MAX_ROUNDS: u32 = 20;

/// CPU that the servers of both clusters may use together, in cores, and still
/// count as idle before a measurement.
const QUIET_CORES: f64 = 0.10;

/// Over how long the servers' CPU use is averaged to decide whether they are idle.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// Waits `least`, then until `procs` together use under [`QUIET_CORES`] over a
/// [`QUIET_WINDOW`], for at most `wait_max`. Background work of either
/// server (RocksDB's flushes and compactions after Cairn's writes, Go's garbage
/// collection after etcd's) would otherwise take CPU and disk from the next
/// measurement, whichever server it is of.
async fn settle(procs: &[ServerProc], least: Duration, wait_max: Duration) {
    tokio::time::sleep(least).await;
    let cpu = || procs.iter().filter_map(|p| procstat::cpu_seconds(p.pid)).sum::<f64>();
    let started = std::time::Instant::now();
    loop {
        let before = cpu();
        tokio::time::sleep(QUIET_WINDOW).await;
        let cores = (cpu() - before) / QUIET_WINDOW.as_secs_f64();
        if cores < QUIET_CORES {
            return;
        }
        if started.elapsed() >= wait_max {
            eprintln!("the servers still use {cores:.2} cores after {wait_max:?}; measuring anyway");
            return;
        }
    }
}

/// Cairn's numbers divided by etcd's for one workload: for a comparison of several
/// rounds, the median of each ratio over the rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    pub case: String,
    /// Above 1: Cairn serves more.
    pub throughput: f64,
    /// Below 1: Cairn answers faster.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Below 1: Cairn uses less.
    pub rss_peak: f64,
    pub cpu_per_op: Option<f64>,
    /// The throughput ratio of each round, in round order: their spread is the
    /// noise the median stands against.
    #[serde(default)]
    pub throughput_by_round: Vec<f64>,
    /// The p99 ratio of each round, in round order.
    #[serde(default)]
    pub p99_by_round: Vec<f64>,
}

fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// The median of `values` (the mean of the middle two for an even count), leaving
/// out NaNs (a ratio over a zero); NaN if nothing is left.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Ratios for every workload that ran against both, one per case: in each round,
/// Cairn's result against etcd's of the same round, then the median over rounds.
/// Results without a round count as one round.
pub fn ratios(results: &[RunResult]) -> Vec<Ratio> {
    let find = |t: ServerKind, case: &str, round: Option<u32>| {
        results.iter().find(|r| r.target == t.to_string() && r.case == case && r.round == round)
    };
    let mut per_round: Vec<(String, Vec<Ratio>)> = Vec::new();
    for c in results.iter().filter(|r| r.target == ServerKind::Cairn.to_string()) {
        let Some(e) = find(ServerKind::Etcd, &c.case, c.round) else {
            continue;
        };
        let ratio = Ratio {
            case: c.case.clone(),
            throughput: div(c.throughput_ops_per_second, e.throughput_ops_per_second),
            p50: div(c.latency_us.p50 as f64, e.latency_us.p50 as f64),
            p99: div(c.latency_us.p99 as f64, e.latency_us.p99 as f64),
            p999: div(c.latency_us.p999 as f64, e.latency_us.p999 as f64),
            rss_peak: div(c.rss_peak_kib_total as f64, e.rss_peak_kib_total as f64),
            cpu_per_op: c.cpu_us_per_op.zip(e.cpu_us_per_op).map(|(c, e)| div(c, e)),
            throughput_by_round: Vec::new(),
            p99_by_round: Vec::new(),
        };
        match per_round.iter_mut().find(|(case, _)| *case == c.case) {
            Some((_, rounds)) => rounds.push(ratio),
            None => per_round.push((c.case.clone(), vec![ratio])),
        }
    }
    per_round
        .into_iter()
        .map(|(case, rounds)| {
            let of = |f: fn(&Ratio) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
            let cpu: Vec<f64> = rounds.iter().filter_map(|r| r.cpu_per_op).collect();
            Ratio {
                case,
                throughput: of(|r| r.throughput),
                p50: of(|r| r.p50),
                p99: of(|r| r.p99),
                p999: of(|r| r.p999),
                rss_peak: of(|r| r.rss_peak),
                cpu_per_op: (cpu.len() == rounds.len()).then(|| median(&cpu)),
                throughput_by_round: rounds.iter().map(|r| r.throughput).collect(),
                p99_by_round: rounds.iter().map(|r| r.p99).collect(),
            }
        })
        .collect()
}

/// `lo–hi` of `values` as ratios, for the table (empty for fewer than two).
fn spread(values: &[f64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

/// The ratio table printed after a comparison.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let rounds = ratios.iter().map(|r| r.throughput_by_round.len()).max().unwrap_or(0);
    if rounds > 1 {
        let _ = writeln!(out, "Cairn/etcd: medians of {rounds} rounds; the spread of ops/s and p99 over the rounds");
    }
    let _ = writeln!(
        out,
        "Cairn/etcd    {:<26} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>11} {:>11}",
        "case", "ops/s", "p50", "p99", "p99.9", "RSS", "CPU/op", "ops/s range", "p99 range"
    );
    for r in ratios {
        let _ = writeln!(
            out,
            "              {:<26} {:>9.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>8.2}x {:>10} {:>11} {:>11}",
            r.case,
            r.throughput,
            r.p50,
            r.p99,
            r.p999,
            r.rss_peak,
            r.cpu_per_op.map_or("-".into(), |c| format!("{c:.2}x")),
            spread(&r.throughput_by_round),
            spread(&r.p99_by_round),
        );
    }
    out
}

/// The whole record of a comparison, as written to compare.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub machine: Machine,
    pub results: Vec<RunResult>,
    pub ratios: Vec<Ratio>,
}

/// One measurement of a comparison.
enum Case {
    Plain(Workload, LoadSpec),
    /// Open-loop puts at half the rate etcd peaked at in the closed-loop put case.
    HalfEtcdPeakPut,
}

impl Case {
    fn workload(&self) -> Workload {
        match self {
            Case::Plain(w, _) => *w,
            Case::HalfEtcdPeakPut => Workload::Put,
        }
    }

    fn name(&self) -> String {
        match self {
            Case::Plain(w, _) => w.to_string(),
            Case::HalfEtcdPeakPut => "put@half-etcd-peak".into(),
        }
    }
}

/// The workloads expanded: `range` is measured linearizable and serializable, and a
/// closed-loop `put` is followed by puts at half etcd's peak (unless --rate is given).
fn cases(args: &CompareArgs) -> Vec<Case> {
    let mut cases = Vec::new();
    for &w in &args.workloads {
        match w {
            Workload::Range | Workload::Mixed if args.both_consistencies => {
                for c in [Consistency::Linearizable, Consistency::Serializable] {
                    cases.push(Case::Plain(w, LoadSpec { consistency: c, ..args.load.clone() }));
                }
            }
            Workload::Put if args.load.rate.is_none() && !args.no_half_peak => {
                cases.push(Case::Plain(w, args.load.clone()));
                cases.push(Case::HalfEtcdPeakPut);
            }
            _ => cases.push(Case::Plain(w, args.load.clone())),
        }
    }
    cases
}

/// Every round of every case against both clusters, appending to `results` as
/// each measurement ends (so that a failure keeps what was measured before it).
async fn measure(
    args: &CompareArgs,
    clusters: &[(ServerKind, Cluster)],
    results: &mut Vec<RunResult>,
    progress: bool,
) -> Result<()> {
    let every_server: Vec<ServerProc> = clusters.iter().flat_map(|(_, c)| c.procs()).collect();
    for round in 1..=args.rounds {
        for case in cases(args) {
            let spec = match &case {
                Case::Plain(_, spec) => spec.clone(),
                // Both servers run the closed-loop put before this case in every
                // round, so etcd's peak of this round is known.
                Case::HalfEtcdPeakPut => {
                    let peak = results
                        .iter()
                        .find(|r| {
                            r.target == ServerKind::Etcd.to_string()
                                && r.case == Workload::Put.to_string()
                                && r.round == Some(round)
                        })
                        .map(|r| r.throughput_ops_per_second)
                        .context("the half-peak put needs etcd's closed-loop put result")?;
                    LoadSpec { rate: Some((peak / 2.0).max(1.0)), total: None, ..args.load.clone() }
                }
            };
            let w = case.workload();
            let order: Vec<&(ServerKind, Cluster)> =
                if round % 2 == 1 { clusters.iter().collect() } else { clusters.iter().rev().collect() };
            for (kind, cluster) in order {
                eprintln!("round {round}/{}: {kind}: {} ...", args.rounds, case.name());
                let quiet = settle(&every_server, args.settle, args.idle_wait_max);
                let mut r =
                    load::run(&cluster.endpoints(), &kind.to_string(), w, &spec, &cluster.procs(), progress, quiet)
                        .await
                        .with_context(|| format!("{} against {kind} in round {round}", case.name()))?;
                if let Case::HalfEtcdPeakPut = case {
                    r.case = case.name();
                }
                r.round = Some(round);
                results.push(r);
            }
        }
    }
    Ok(())
}

pub async fn compare(args: CompareArgs, progress: bool) -> Result<()> {
    args.load.validate()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let machine = Machine::describe(&args.servers);
    eprintln!(
        "machine: {} cores, load {}, {}, {}",
        machine.cores, machine.load_average, machine.etcd_version, machine.cairn_version
    );
    // Both clusters stay up for the whole comparison: etcd's first, so that a
    // failure to start either is found before any measurement.
    let mut clusters = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::Cairn] {
        eprintln!("starting a {}-member {kind} cluster", args.servers.members);
        clusters.push((kind, Cluster::start(args.servers.spec(kind)).await?));
    }
    let mut results: Vec<RunResult> = Vec::new();
    let measured = measure(&args, &clusters, &mut results, progress).await;
    drop(clusters);
    let ratios = ratios(&results);
    print!("{}\n{}", results_table(&results), ratio_table(&ratios));
    let json = args.out.join("compare.json");
    let svg = args.out.join("compare.svg");
    let comparison = Comparison { machine, results, ratios };
    write_json(&json, &comparison)?;
    if let Err(e) = measured {
        eprintln!("wrote what was measured before the failure to {}", json.display());
        return Err(e);
    }
    chart::draw(&svg, &comparison.results)?;
    eprintln!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use clap::Parser;

    use super::{median, ratios};
    use crate::load::{LoadSpec, Workload};
    use crate::report::{Latency, RunResult};

    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        load: LoadSpec,
    }

    /// A closed-loop put result of `ops` requests in one second with p99 `p99_us`.
    fn put(target: &str, round: u32, ops: u64, p99_us: u64, cpu_us: Option<f64>) -> RunResult {
        let spec = Defaults::parse_from(["test"]).load;
        let latency = Latency { p50: p99_us / 2, p99: p99_us, p999: p99_us, ..Latency::default() };
        let mut r = RunResult::new(
            target,
            &[],
            Workload::Put,
            &spec,
            Duration::from_secs(1),
            ops,
            0,
            BTreeMap::new(),
            latency,
            None,
            Vec::new(),
        );
        r.round = Some(round);
        r.cpu_us_per_op = cpu_us;
        r
    }

    #[test]
    fn ratios_pair_each_round_and_take_the_median_over_rounds() {
        let results = vec![
            put("etcd", 1, 1000, 10_000, Some(200.0)),
            put("cairn", 1, 1200, 8_000, Some(150.0)),
            // Cairn first in round 2, and an outlier round.
            put("cairn", 2, 3000, 5_000, Some(100.0)),
            put("etcd", 2, 1000, 10_000, Some(200.0)),
            put("etcd", 3, 2000, 10_000, None),
            put("cairn", 3, 2200, 12_000, Some(150.0)),
        ];
        let r = ratios(&results);
        assert_eq!(r.len(), 1);
        let put = &r[0];
        assert_eq!(put.case, "put");
        assert_eq!(put.throughput_by_round, [1.2, 3.0, 1.1], "Cairn over etcd of the same round, in round order");
        assert_eq!(put.p99_by_round, [0.8, 0.5, 1.2]);
        assert_eq!(put.throughput, 1.2, "the median, not the mean (1.77)");
        assert_eq!(put.p99, 0.8);
        assert_eq!(put.cpu_per_op, None, "no CPU ratio when a round lacks one");
    }

    #[test]
    fn a_result_without_its_counterpart_in_the_round_has_no_ratio() {
        let results = vec![put("etcd", 1, 1000, 10_000, None), put("cairn", 2, 1200, 8_000, None)];
        assert!(ratios(&results).is_empty());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 1.0, 3.0]), 2.0, "NaNs are left out");
    }
}
