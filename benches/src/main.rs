//! `cairn-bench`: a load generator for the etcd v3 gRPC API, so the same binary
//! drives Cairn and etcd, and side-by-side runs of both.

mod chart;
mod cluster;
mod compare;
mod load;
mod procstat;
mod report;
mod scale;
mod stalls;
mod unary;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, ClusterSpec, ServerKind};
use crate::load::{LoadSpec, Workload};
use crate::procstat::ServerProc;

/// Load generator and side-by-side benchmarks for Cairn and etcd.
///
/// Every workload speaks the etcd v3 gRPC API, so the same runs measure Cairn and
/// etcd. Results are printed as a table and written as JSON.
#[derive(Parser, Debug)]
#[command(name = "cairn-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// No progress bar.
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run workloads against running endpoints, or against a fresh local cluster (--cluster).
    Run(RunArgs),
    /// Start a 3-member etcd cluster and a 3-member Cairn cluster, run every case
    /// against both back to back, in rounds, and print the median Cairn/etcd ratios
    /// (JSON and SVG in --out).
    Compare(compare::CompareArgs),
    /// Load many keys into each server, then measure range, watch catch-up from an
    /// old revision, restart time, memory and on-disk size.
    Scale(scale::ScaleArgs),
}

/// Which servers to start (for `run --cluster`, `compare` and `scale`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The etcd binary (Debian package etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// The cairn binary [default: `cairn` next to this executable, else on PATH].
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Directory that holds the members' data directories (the disk under test)
    /// [default: the system's temporary directory].
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Keep every member's data directory and log (`server.log`) afterwards.
    #[arg(long)]
    pub keep_data: bool,
}

impl ServerArgs {
    pub fn spec(&self, kind: ServerKind) -> ClusterSpec {
        let binary = match kind {
            ServerKind::Etcd => self.etcd_bin.clone(),
            ServerKind::Cairn => self.cairn_bin.clone().unwrap_or_else(cluster::default_cairn_binary),
        };
        ClusterSpec {
            kind,
            binary,
            members: self.members,
            data_root: self.data_root.clone(),
            keep_data: self.keep_data,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Workloads to run, one after the other (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "put")]
    workloads: Vec<Workload>,
    /// Endpoints of a running cluster (host:port or URL, comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "cluster")]
    endpoints: Vec<String>,
    /// Start a fresh local cluster of this server for the run (stopped afterwards).
    #[arg(long, value_enum)]
    cluster: Option<ServerKind>,
    /// Server processes whose peak RSS and CPU time to record (name=pid or pid, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<String>,
    /// Name of the target in the output [default: the --cluster kind, else "target"].
    #[arg(long)]
    label: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    load: LoadSpec,
    #[command(flatten)]
    servers: ServerArgs,
}

fn parse_pid(s: &str) -> Result<ServerProc> {
    let (name, pid) = s.split_once('=').unwrap_or((s, s));
    let pid = pid.parse().with_context(|| format!("--pid {s}: expected name=pid or pid"))?;
    Ok(ServerProc { name: name.to_string(), pid, metrics: None })
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

async fn run(args: RunArgs, progress: bool) -> Result<()> {
    args.load.validate()?;
    let cluster = match args.cluster {
        Some(kind) => Some(Cluster::start(args.servers.spec(kind)).await?),
        None => None,
    };
    let (endpoints, procs) = match &cluster {
        Some(c) => (c.endpoints(), c.procs()),
        None => {
            if args.endpoints.is_empty() {
                bail!("give --endpoints of a running cluster or --cluster etcd|cairn");
            }
            (args.endpoints.clone(), args.pid.iter().map(|p| parse_pid(p)).collect::<Result<_>>()?)
        }
    };
    let label = args.label.clone().unwrap_or_else(|| args.cluster.map_or("target".into(), |k| k.to_string()));
    let mut results = Vec::new();
    for &w in &args.workloads {
        eprintln!("{label}: {w} ...");
        results.push(load::run(&endpoints, &label, w, &args.load, &procs, progress, std::future::ready(())).await?);
    }
    print!("{}", report::results_table(&results));
    if let Some(path) = &args.json {
        write_json(path, &results)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let progress = !cli.no_progress;
    let work = async {
        match cli.command {
            Cmd::Run(args) => run(args, progress).await,
            Cmd::Compare(args) => compare::compare(args, progress).await,
            Cmd::Scale(args) => scale::scale(args, progress).await,
        }
    };
    // On Ctrl-C the work is dropped, which stops the clusters and removes their data.
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}
