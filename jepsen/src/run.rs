//! One run from start to verdict: network and members up, workload and nemesis
//! together, heal, final reads, the kill-all durability phase, teardown, then
//! the checkers on the saved history ([`check_dir`], which `cairn-jepsen check`
//! also runs on a saved run directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::RangeRequest;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::checker::{self, CheckResult};
use crate::cluster::{Cluster, ServerKind};
use crate::error::{Error, Result};
use crate::history::{self, DurabilityProbe, Op, OpCounts, WatchRecord};
use crate::nemesis::{self, NemesisEvent, NemesisKind, Scheduled};
use crate::net::Net;
use crate::workload::{self, Ctx, ReadMode, Recorder, WorkloadKind};

/// How long the cluster gets to become healthy (start, after healing, after the restart).
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent durability probes.
const PROBES_IN_FLIGHT: usize = 16;
/// Attempts per durability probe.
const PROBE_ATTEMPTS: usize = 10;

/// Files of a run directory.
pub mod files {
    /// The run's configuration.
    pub const CONFIG: &str = "run.json";
    /// The nemesis schedule drawn from the seed.
    pub const SCHEDULE: &str = "nemesis-schedule.json";
    /// What the nemesis did (JSON lines).
    pub const NEMESIS: &str = "nemesis.jsonl";
    /// Every client operation (JSON lines).
    pub const HISTORY: &str = "history.jsonl";
    /// Watch stream records (JSON lines).
    pub const WATCHES: &str = "watches.jsonl";
    /// Durability probes (JSON lines).
    pub const DURABILITY: &str = "durability.jsonl";
    /// Phases and problems of the run itself.
    pub const RUN_LOG: &str = "run.log";
    /// The verdict.
    pub const RESULTS: &str = "results.json";
    /// The HTML report.
    pub const REPORT: &str = "report.html";
}

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// The workload.
    pub workload: WorkloadKind,
    /// Fault families (empty: no faults).
    pub nemesis: Vec<NemesisKind>,
    /// Members (3 or 5).
    pub nodes: usize,
    /// Seconds of workload.
    pub time_limit_s: u64,
    /// Operations per second over all clients (about).
    pub rate: f64,
    /// Clients.
    pub concurrency: usize,
    /// Seed of the schedule and the clients' choices.
    pub seed: u64,
    /// Register read mode.
    pub reads: ReadMode,
    /// Request timeout (ms); past it an operation is indeterminate.
    pub op_timeout_ms: u64,
    /// The server binary.
    pub server_bin: PathBuf,
    /// Which server it is.
    pub server_kind: ServerKind,
    /// Extra server flags.
    pub server_args: Vec<String>,
}

/// Facts about the run that the checkers need, saved in `run.json` next to the config.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The configuration.
    pub config: RunConfig,
    /// Whether the durability phase ran (the cluster came back after kill-all).
    pub durability_ran: bool,
    /// Problems of the run itself (not of the checked system's history).
    pub problems: Vec<String>,
}

/// The verdict written to `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// All checkers valid.
    pub valid: bool,
    /// The workload.
    pub workload: WorkloadKind,
    /// Fault families.
    pub nemesis: Vec<NemesisKind>,
    /// Seed.
    pub seed: u64,
    /// Members.
    pub nodes: usize,
    /// Per checker.
    pub checkers: std::collections::BTreeMap<String, CheckResult>,
    /// Operation counts.
    pub ops: OpCounts,
    /// Faults injected, as executed.
    pub faults: Vec<serde_json::Value>,
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::json(path, e))?;
    std::fs::write(path, s + "\n").map_err(|e| Error::io(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| Error::json(path, e))
}

/// A new, unique run directory under `runs_dir`.
pub fn new_run_dir(runs_dir: &Path, cfg: &RunConfig) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let nem = if cfg.nemesis.is_empty() {
        "none".to_string()
    } else {
        cfg.nemesis.iter().map(|k| format!("{k:?}").to_lowercase()).collect::<Vec<_>>().join("+")
    };
    let dir = runs_dir.join(format!("{stamp}-{:?}-{nem}-s{}", cfg.workload, cfg.seed).to_lowercase());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

struct RunLog(PathBuf);

impl RunLog {
    fn line(&self, msg: &str) {
        use std::io::Write;
        tracing::info!("{msg}");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.0) {
            let _ = writeln!(f, "{} {msg}", chrono_like_now());
        }
    }
}

fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Runs `cfg` in `dir` and returns the verdict (also written to `dir`).
pub async fn run(cfg: &RunConfig, dir: &Path) -> Result<Results> {
    if cfg.nodes < 1 || cfg.nodes > 9 {
        return Err(Error::Usage(format!("--nodes {}: between 1 and 9 members", cfg.nodes)));
    }
    if !cfg.server_bin.is_file() {
        return Err(Error::Setup(format!(
            "server binary {} not found: build it with `cargo build -p cairn-server --bin cairn` or pass --server-bin",
            cfg.server_bin.display()
        )));
    }
    let log = RunLog(dir.join(files::RUN_LOG));
    let mut record = RunRecord { config: cfg.clone(), durability_ran: false, problems: Vec::new() };
    write_json(&dir.join(files::CONFIG), &record)?;
    let schedule = nemesis::schedule(cfg.seed, &cfg.nemesis, cfg.nodes, cfg.time_limit_s * 1000);
    write_json(&dir.join(files::SCHEDULE), &schedule)?;

    let net = Net::create(cfg.nodes)?;
    log.line(&format!("network slot {} (10.213.{}.0/24)", net.slot(), net.slot()));
    let cluster = Cluster::start(net, dir, &cfg.server_bin, cfg.server_kind, cfg.server_args.clone())?;
    let cluster = Arc::new(Mutex::new(cluster));
    cluster.lock().await.wait_healthy(HEALTHY_TIMEOUT).await?;
    log.line("cluster healthy; workload starts");

    let outcome = drive(cfg, dir, &log, cluster.clone(), schedule, &mut record).await;
    // Kill the members and remove the network whatever happened.
    match Arc::try_unwrap(cluster) {
        Ok(c) => drop(c.into_inner()),
        Err(_) => record.problems.push("cluster still referenced at teardown".into()),
    }
    if let Err(e) = outcome {
        record.problems.push(e.to_string());
    }
    write_json(&dir.join(files::CONFIG), &record)?;
    log.line("members stopped, network removed; checking");
    check_dir(dir)
}

async fn drive(
    cfg: &RunConfig,
    dir: &Path,
    log: &RunLog,
    cluster: Arc<Mutex<Cluster>>,
    schedule: Vec<Scheduled>,
    record: &mut RunRecord,
) -> Result<()> {
    let channels = {
        let c = cluster.lock().await;
        (0..c.size()).map(|i| c.channel(i)).collect::<Vec<_>>()
    };
    let t0 = Instant::now();
    let concurrency = cfg.concurrency.max(1);
    let ctx = Ctx {
        channels,
        t0,
        deadline: t0 + Duration::from_secs(cfg.time_limit_s),
        op_timeout: Duration::from_millis(cfg.op_timeout_ms),
        client_interval: Duration::from_secs_f64(concurrency as f64 / cfg.rate.max(0.1)),
        concurrency,
        seed: cfg.seed,
        reads: cfg.reads,
        recorder: Recorder::default(),
    };
    let nemesis_task = tokio::spawn(nemesis::run(cluster.clone(), schedule, t0));
    let watchers = (cfg.workload == WorkloadKind::Watch).then(|| workload::watch::start_watchers(&ctx));
    let mut append_keys = Vec::new();
    match cfg.workload {
        WorkloadKind::Register => workload::register::run(&ctx).await,
        WorkloadKind::Append => append_keys = workload::append::run(&ctx).await,
        WorkloadKind::Watch => workload::watch::run(&ctx).await,
        WorkloadKind::Lock => workload::lock::run(&ctx).await,
    }
    log.line("workload done; waiting for the nemesis to finish");
    let events: Vec<NemesisEvent> = nemesis_task.await.unwrap_or_else(|e| {
        record.problems.push(format!("nemesis task failed: {e}"));
        Vec::new()
    });
    history::write_jsonl(&dir.join(files::NEMESIS), &events)?;
    {
        let mut c = cluster.lock().await;
        for e in nemesis::heal_all(&mut c).await {
            record.problems.push(format!("heal: {e}"));
        }
        if let Err(e) = c.wait_healthy(HEALTHY_TIMEOUT).await {
            record.problems.push(format!("after healing: {e}"));
        }
    }
    log.line("healed; final reads");
    let fin = match cfg.workload {
        WorkloadKind::Register => Ok(()),
        WorkloadKind::Append => workload::append::final_reads(&ctx, &append_keys).await,
        WorkloadKind::Watch => match watchers {
            Some(w) => workload::watch::finish(&ctx, w).await,
            None => Ok(()),
        },
        WorkloadKind::Lock => workload::lock::finish(&ctx).await,
    };
    if let Err(e) = fin {
        record.problems.push(format!("final reads: {e}"));
    }
    let (ops, watches) = ctx.recorder.take();
    history::write_jsonl(&dir.join(files::HISTORY), &ops)?;
    history::write_jsonl(&dir.join(files::WATCHES), &watches)?;

    log.line("durability: killing every member at once, then restarting");
    let probes = {
        let mut c = cluster.lock().await;
        c.kill_all();
        c.restart_all()?;
        match c.wait_healthy(HEALTHY_TIMEOUT).await {
            Ok(()) => {
                record.durability_ran = true;
                Some(probe_all(&ctx, &ops).await)
            }
            Err(e) => {
                record.problems.push(format!("after the kill-all restart: {e}"));
                None
            }
        }
    };
    history::write_jsonl(&dir.join(files::DURABILITY), probes.as_deref().unwrap_or(&[]))?;
    Ok(())
}

/// Reads every acknowledged write at its revision.
async fn probe_all(ctx: &Ctx, ops: &[Op]) -> Vec<DurabilityProbe> {
    let targets: Vec<(u64, String, String, i64)> = ops
        .iter()
        .filter_map(|o| o.revision.map(|r| (o, r)))
        .flat_map(|(o, r)| o.acked_puts().into_iter().map(move |(k, v)| (o.id, k, v, r)))
        .collect();
    futures::stream::iter(targets.into_iter().enumerate())
        .map(|(i, (op, key, value, revision))| async move {
            let mut last_err = String::new();
            for attempt_no in 0..PROBE_ATTEMPTS {
                let node = (i + attempt_no) % ctx.channels.len();
                let mut kv = KvClient::new(ctx.channels[node].clone());
                let req = RangeRequest { key: key.clone().into_bytes(), revision, ..Default::default() };
                match tokio::time::timeout(ctx.op_timeout, kv.range(req)).await {
                    Ok(Ok(r)) => {
                        let found = r
                            .into_inner()
                            .kvs
                            .first()
                            .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision));
                        return DurabilityProbe { op, key, value, revision, found, error: None };
                    }
                    Ok(Err(s)) => last_err = format!("{:?}: {}", s.code(), s.message()),
                    Err(_) => last_err = "timeout".into(),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            DurabilityProbe { op, key, value, revision, found: None, error: Some(last_err) }
        })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .collect()
        .await
}

/// Runs every checker of the run's workload on the history saved in `dir`,
/// writes `results.json` and `report.html`, and returns the verdict.
pub fn check_dir(dir: &Path) -> Result<Results> {
    let record: RunRecord = read_json(&dir.join(files::CONFIG))?;
    let cfg = &record.config;
    let ops: Vec<Op> = history::read_jsonl(&dir.join(files::HISTORY))?;
    let watches: Vec<WatchRecord> = history::read_jsonl(&dir.join(files::WATCHES))?;
    let probes: Vec<DurabilityProbe> = history::read_jsonl(&dir.join(files::DURABILITY))?;
    let events: Vec<NemesisEvent> = history::read_jsonl(&dir.join(files::NEMESIS))?;
    let schedule: Vec<Scheduled> = read_json(&dir.join(files::SCHEDULE))?;

    let mut checkers = std::collections::BTreeMap::new();
    let main = match cfg.workload {
        WorkloadKind::Register => ("linearizable", checker::linearizable::check(&ops)),
        WorkloadKind::Append => ("strict-serializable", checker::append::check(&ops)),
        WorkloadKind::Watch => ("watch", checker::watch::check(&ops, &watches)),
        WorkloadKind::Lock => ("lock", checker::lock::check(&ops)),
    };
    checkers.insert(main.0.to_string(), main.1);
    checkers.insert("durability".to_string(), checker::durability::check(&probes, record.durability_ran));
    checkers.insert("run".to_string(), run_checker(&record, &schedule, &events, &ops));
    let faults = events
        .iter()
        .map(|e| {
            serde_json::json!({"index": e.index, "phase": e.phase, "t_s": e.t_ns as f64 / 1e9, "fault": e.fault,
            "detail": e.detail, "error": e.error})
        })
        .collect();
    let results = Results {
        valid: checkers.values().all(|c| c.valid),
        workload: cfg.workload,
        nemesis: cfg.nemesis.clone(),
        seed: cfg.seed,
        nodes: cfg.nodes,
        checkers,
        ops: OpCounts::of(&ops),
        faults,
    };
    write_json(&dir.join(files::RESULTS), &results)?;
    let html = crate::report::render(&results, &ops, &events, &schedule);
    let path = dir.join(files::REPORT);
    std::fs::write(&path, html).map_err(|e| Error::io(&path, e))?;
    Ok(results)
}

/// The run itself as a checker: every scheduled fault injected and healed, no
/// problem driving the cluster, and some operations acknowledged (a run where
/// nothing succeeded proves nothing).
fn run_checker(record: &RunRecord, schedule: &[Scheduled], events: &[NemesisEvent], ops: &[Op]) -> CheckResult {
    let mut anomalies: Vec<serde_json::Value> =
        record.problems.iter().map(|p| serde_json::json!({"type": "run-problem", "problem": p})).collect();
    for e in events.iter().filter(|e| e.error.is_some()) {
        anomalies.push(serde_json::json!({"type": "fault-not-injected", "index": e.index, "phase": e.phase,
            "fault": e.fault, "error": e.error}));
    }
    let started = events.iter().filter(|e| e.phase == "start").count();
    if started < schedule.len() {
        anomalies
            .push(serde_json::json!({"type": "schedule-incomplete", "scheduled": schedule.len(), "started": started}));
    }
    let counts = OpCounts::of(ops);
    if counts.ok == 0 {
        anomalies.push(serde_json::json!({"type": "no-successful-operations"}));
    }
    CheckResult::from_anomalies(
        anomalies,
        serde_json::json!({"faults_scheduled": schedule.len(), "faults_started": started}),
    )
}
