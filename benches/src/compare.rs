//! `compare`: the same workloads against a local etcd cluster and a local Cairn
//! cluster, one after the other, and the Cairn/etcd ratios.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::{etcd_version, Cluster, ServerKind};
use crate::load::{self, Consistency, LoadSpec, Workload};
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
            etcd_version: etcd_version(&servers.etcd_bin),
            cairn_binary: servers.spec(ServerKind::Cairn).binary.display().to_string(),
            commit,
        }
    }
}

/// Cairn's numbers divided by etcd's for one workload.
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
}

fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// Ratios for every workload that ran against both.
pub fn ratios(results: &[RunResult]) -> Vec<Ratio> {
    let find = |t: ServerKind, case: &str| results.iter().find(|r| r.target == t.to_string() && r.case == case);
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.target == ServerKind::Cairn.to_string()) {
        let (Some(c), Some(e)) = (find(ServerKind::Cairn, &r.case), find(ServerKind::Etcd, &r.case)) else {
            continue;
        };
        out.push(Ratio {
            case: r.case.clone(),
            throughput: div(c.throughput_ops_per_second, e.throughput_ops_per_second),
            p50: div(c.latency_us.p50 as f64, e.latency_us.p50 as f64),
            p99: div(c.latency_us.p99 as f64, e.latency_us.p99 as f64),
            p999: div(c.latency_us.p999 as f64, e.latency_us.p999 as f64),
            rss_peak: div(c.rss_peak_kib_total as f64, e.rss_peak_kib_total as f64),
            cpu_per_op: c.cpu_us_per_op.zip(e.cpu_us_per_op).map(|(c, e)| div(c, e)),
        });
    }
    out
}

/// The ratio table printed after a comparison.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cairn/etcd    {:<26} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "case", "ops/s", "p50", "p99", "p99.9", "RSS", "CPU/op"
    );
    for r in ratios {
        let _ = writeln!(
            out,
            "              {:<26} {:>9.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>8.2}x {:>10}",
            r.case,
            r.throughput,
            r.p50,
            r.p99,
            r.p999,
            r.rss_peak,
            r.cpu_per_op.map_or("-".into(), |c| format!("{c:.2}x")),
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

pub async fn compare(args: CompareArgs, progress: bool) -> Result<()> {
    args.load.validate()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let machine = Machine::describe(&args.servers);
    eprintln!("machine: {} cores, load {}, {}", machine.cores, machine.load_average, machine.etcd_version);
    let mut results: Vec<RunResult> = Vec::new();
    for kind in [ServerKind::Etcd, ServerKind::Cairn] {
        eprintln!("starting a {}-member {kind} cluster", args.servers.members);
        let cluster = Cluster::start(args.servers.spec(kind)).await?;
        for case in cases(&args) {
            let spec = match &case {
                Case::Plain(_, spec) => spec.clone(),
                // etcd runs first, so its peak is known when Cairn runs.
                Case::HalfEtcdPeakPut => {
                    let peak = results
                        .iter()
                        .find(|r| r.target == ServerKind::Etcd.to_string() && r.case == Workload::Put.to_string())
                        .map(|r| r.throughput_ops_per_second)
                        .context("the half-peak put needs etcd's closed-loop put result")?;
                    LoadSpec { rate: Some((peak / 2.0).max(1.0)), total: None, ..args.load.clone() }
                }
            };
            let w = case.workload();
            eprintln!("{kind}: {} ...", case.name());
            let mut r = load::run(&cluster.endpoints(), &kind.to_string(), w, &spec, &cluster.procs(), progress)
                .await
                .with_context(|| format!("{} against {kind}", case.name()))?;
            if let Case::HalfEtcdPeakPut = case {
                r.case = case.name();
            }
            results.push(r);
        }
        drop(cluster);
    }
    let ratios = ratios(&results);
    print!("{}\n{}", results_table(&results), ratio_table(&ratios));
    let json = args.out.join("compare.json");
    let svg = args.out.join("compare.svg");
    let comparison = Comparison { machine, results, ratios };
    write_json(&json, &comparison)?;
    chart::draw(&svg, &comparison.results)?;
    eprintln!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}
