//! `cairn-jepsen`: run a chaos test against a Cairn cluster, or re-check a saved run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_jepsen::cluster::ServerKind;
use cairn_jepsen::nemesis::NemesisKind;
use cairn_jepsen::run::{self, RunConfig};
use cairn_jepsen::workload::{ReadMode, WorkloadKind};
use clap::{Parser, Subcommand};

/// Jepsen-style chaos runs for Cairn.
///
/// `run` starts N `cairn` members, each in its own network namespace (needs
/// root, `ip`, `nft`, `tc`), drives a workload while a nemesis injects faults
/// on a schedule drawn from the seed, kills and restarts every member to check
/// durability, checks the history, and writes everything to a run directory:
/// server logs, history.jsonl, nemesis-schedule.json, nemesis.jsonl,
/// results.json and report.html. The last line printed is the run directory.
/// The exit code is 0 only when every checker is valid (1: a checker found an
/// anomaly, 2: the run could not be made).
#[derive(Parser, Debug)]
#[command(name = "cairn-jepsen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workload under faults and check it.
    Run(RunArgs),
    /// Re-run the checkers on a saved run directory (rewrites results.json and report.html).
    Check {
        /// The run directory.
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The workload.
    #[arg(long, value_enum, default_value = "register")]
    workload: WorkloadKind,
    /// Fault families, comma-separated (crash, pause, partition, isolate,
    /// membership, leader-transfer, slow-net); `none` for no faults.
    #[arg(long, default_value = "partition,crash", value_parser = parse_nemesis)]
    nemesis: NemesisList,
    /// Members (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Operations per second over all clients (about).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Seed: the same seed gives the same fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Register reads: linearizable, or serializable (local, may be stale: the negative control).
    #[arg(long, value_enum, default_value = "linearizable")]
    reads: ReadMode,
    /// Request timeout in ms; an operation without an answer by then is indeterminate.
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
    /// Where run directories are created.
    #[arg(long, default_value = "jepsen-runs")]
    runs_dir: PathBuf,
    /// The server binary (default: `cairn` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server kind (etcd takes the same flags; for validating the harness).
    #[arg(long, value_enum, default_value = "cairn")]
    server: ServerKind,
    /// Extra flag for every member (repeatable), e.g. `--server-arg=--lease-reads=true`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Clone, Debug)]
struct NemesisList(Vec<NemesisKind>);

fn parse_nemesis(s: &str) -> Result<NemesisList, String> {
    use clap::ValueEnum;
    if s == "none" || s.is_empty() {
        return Ok(NemesisList(Vec::new()));
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        out.push(NemesisKind::from_str(part.trim(), true).map_err(|_| {
            format!("unknown nemesis {part:?}: expected crash, pause, partition, isolate, membership, leader-transfer, slow-net or none")
        })?);
    }
    Ok(NemesisList(out))
}

fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("cairn"))
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<bool> {
    let server_bin = match (args.server_bin, args.server) {
        (Some(p), _) => p,
        (None, ServerKind::Etcd) => PathBuf::from("/usr/bin/etcd"),
        (None, ServerKind::Cairn) => {
            default_server_bin().context("cannot locate the cairn binary; pass --server-bin")?
        }
    };
    let cfg = RunConfig {
        workload: args.workload,
        nemesis: args.nemesis.0,
        nodes: args.nodes,
        time_limit_s: args.time_limit,
        rate: args.rate,
        concurrency: args.concurrency,
        seed: args.seed,
        reads: args.reads,
        op_timeout_ms: args.op_timeout_ms,
        server_bin,
        server_kind: args.server,
        server_args: args.server_args,
    };
    let dir = run::new_run_dir(&args.runs_dir, &cfg)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    eprintln!("run directory: {}", dir.display());
    let results = run::run(&cfg, &dir).await?;
    summarize(&results);
    println!("{}", dir.display());
    Ok(results.valid)
}

fn summarize(results: &run::Results) {
    for (name, c) in &results.checkers {
        let types = c.anomaly_types().join(", ");
        eprintln!(
            "{name:>20}: {}{}",
            if c.valid { "valid" } else { "INVALID" },
            if types.is_empty() { String::new() } else { format!(" ({types})") }
        );
    }
    eprintln!(
        "{:>20}: {} ok, {} failed, {} indeterminate",
        "operations", results.ops.ok, results.ops.failed, results.ops.indeterminate
    );
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "cairn_jepsen=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { dir } => run::check_dir(&dir).map_err(anyhow::Error::from).map(|r| {
            summarize(&r);
            println!("{}", dir.display());
            r.valid
        }),
        Command::Run(args) => {
            cairn_jepsen::net::install_panic_hook();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cairn-jepsen: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(async {
                tokio::select! {
                    r = run_cmd(args) => r,
                    _ = tokio::signal::ctrl_c() => {
                        eprintln!("cairn-jepsen: interrupted; killing members and removing the network");
                        cairn_jepsen::net::teardown_active();
                        std::process::exit(130);
                    }
                }
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}
