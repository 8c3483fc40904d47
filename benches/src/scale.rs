//! `scale`: many keys in each server, then range, watch catch-up from an old
//! revision, memory, on-disk size and restart time.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request, RangeRequest, WatchCreateRequest, WatchRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster::{Cluster, ServerKind};
use crate::compare::Machine;
use crate::load::{self, endpoint_url, Consistency, LoadSpec, Workload, KEY_PREFIX};
use crate::procstat::rss_kib;
use crate::report::{results_table, RunResult};
use crate::{write_json, ServerArgs};

/// Time given to background work (compaction, flushes) after loading, before
/// memory and disk are measured.
const SETTLE_TIME: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Keys to load.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Servers to measure (comma-separated), one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "etcd,cairn")]
    targets: Vec<ServerKind>,
    /// Bound for the watch catch-up measurement (it reports how far it got).
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    catch_up_timeout: Duration,
    /// Directory for scale.json (created if missing).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Load shape; --duration is how long each range measurement runs.
    #[command(flatten)]
    load: LoadSpec,
    #[command(flatten)]
    servers: ServerArgs,
}

/// What a scale run measured for one server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub target: ServerKind,
    pub keys: u64,
    pub value_size: usize,
    pub load: RunResult,
    pub range_serializable: RunResult,
    pub range_linearizable: RunResult,
    /// Time for one watcher from the revision before the load to receive every event
    /// (or until --catch-up-timeout, when `watch_catch_up_events` < `keys`).
    pub watch_catch_up_seconds: f64,
    pub watch_catch_up_events: u64,
    /// Bytes in every member's data directory, summed, after the load.
    pub disk_bytes: u64,
    /// RSS of every member, summed, after the load.
    pub rss_kib_after_load: u64,
    /// From starting every member (after kill -9 of all) to serving linearizable
    /// reads on every member.
    pub restart_seconds: f64,
    pub rss_kib_after_restart: u64,
}

async fn revision(endpoint: &str) -> Result<i64> {
    let ch = Channel::from_shared(endpoint_url(endpoint))?.connect().await?;
    let r = KvClient::new(ch).range(RangeRequest { key: b"cairn-bench-rev".to_vec(), ..Default::default() }).await?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

/// Time for one watch on KEY_PREFIX starting at `from` to receive `expected` events,
/// and how many arrived (fewer when `timeout` passed first).
async fn watch_catch_up(endpoint: &str, from: i64, expected: u64, timeout: Duration) -> Result<(Duration, u64)> {
    let ch = Channel::from_shared(endpoint_url(endpoint))?.connect().await?;
    let (tx, rx) = mpsc::channel(1);
    let started = Instant::now();
    let mut end = KEY_PREFIX.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let create = WatchCreateRequest {
        key: KEY_PREFIX.as_bytes().to_vec(),
        range_end: end,
        start_revision: from,
        ..Default::default()
    };
    tx.send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) }).await?;
    let deadline = started + timeout;
    // Sent before the call returns: etcd completes it only with its first response,
    // which a server busy with a long catch-up may not send within the allowance.
    let mut client = WatchClient::new(ch);
    let call = client.watch(ReceiverStream::new(rx));
    let Ok(stream) = tokio::time::timeout_at(deadline.into(), call).await else {
        eprintln!("watch catch-up: no response within {timeout:?}");
        return Ok((started.elapsed(), 0));
    };
    let mut stream = stream?.into_inner();
    let mut events = 0u64;
    while events < expected {
        let msg = tokio::time::timeout_at(deadline.into(), stream.message()).await;
        let r = match msg {
            Err(_) => {
                eprintln!("watch catch-up: only {events} of {expected} events within {timeout:?}");
                break;
            }
            Ok(r) => r?.context("watch stream ended")?,
        };
        if r.canceled {
            bail!("watch canceled: {}", r.cancel_reason);
        }
        events += r.events.len() as u64;
    }
    Ok((started.elapsed(), events))
}

fn rss_total(cluster: &Cluster) -> u64 {
    cluster.procs().iter().filter_map(|p| rss_kib(p.pid)).sum()
}

async fn scale_one(kind: ServerKind, args: &ScaleArgs, progress: bool) -> Result<ScaleResult> {
    let mut cluster = Cluster::start(args.servers.spec(kind)).await?;
    let eps = cluster.endpoints();
    let name = kind.to_string();
    let before = revision(&eps[0]).await?;
    let load_spec = LoadSpec {
        total: Some(args.keys),
        key_space: args.keys,
        sequential_keys: true,
        no_preload: true,
        ..args.load.clone()
    };
    eprintln!("{kind}: loading {} keys ...", args.keys);
    let load =
        load::run(&eps, &name, Workload::Put, &load_spec, &cluster.procs(), progress, std::future::ready(())).await?;
    tokio::time::sleep(SETTLE_TIME).await;
    let disk_bytes = cluster.data_bytes();
    let rss_kib_after_load = rss_total(&cluster);
    let mut range_spec = LoadSpec { key_space: args.keys, no_preload: true, total: None, ..args.load.clone() };
    range_spec.consistency = Consistency::Serializable;
    eprintln!("{kind}: range ...");
    let range_serializable =
        load::run(&eps, &name, Workload::Range, &range_spec, &cluster.procs(), progress, std::future::ready(()))
            .await?;
    range_spec.consistency = Consistency::Linearizable;
    let range_linearizable =
        load::run(&eps, &name, Workload::Range, &range_spec, &cluster.procs(), progress, std::future::ready(()))
            .await?;
    eprintln!("{kind}: watch catch-up ...");
    let (catch_up, events) = watch_catch_up(&eps[0], before + 1, load.ops_ok, args.catch_up_timeout).await?;
    eprintln!("{kind}: restart ...");
    cluster.kill_all();
    let restart = cluster.restart_all().await?;
    let rss_kib_after_restart = rss_total(&cluster);
    Ok(ScaleResult {
        target: kind,
        keys: args.keys,
        value_size: args.load.value_size,
        load,
        range_serializable,
        range_linearizable,
        watch_catch_up_seconds: catch_up.as_secs_f64(),
        watch_catch_up_events: events,
        disk_bytes,
        rss_kib_after_load,
        restart_seconds: restart.as_secs_f64(),
        rss_kib_after_restart,
    })
}

fn scale_table(results: &[ScaleResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>11} {:>10} {:>10} {:>12} {:>10} {:>11} {:>11}",
        "target", "keys", "load ops/s", "disk MiB", "RSS MiB", "catch-up s", "restart s", "range-s/s", "range-l/s"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>11.0} {:>10.0} {:>10.0} {:>12} {:>10.2} {:>11.0} {:>11.0}",
            r.target.to_string(),
            r.keys,
            r.load.throughput_ops_per_second,
            r.disk_bytes as f64 / (1 << 20) as f64,
            r.rss_kib_after_load as f64 / 1024.0,
            if r.watch_catch_up_events < r.load.ops_ok {
                format!(">{:.0} ({}%)", r.watch_catch_up_seconds, r.watch_catch_up_events * 100 / r.load.ops_ok.max(1))
            } else {
                format!("{:.2}", r.watch_catch_up_seconds)
            },
            r.restart_seconds,
            r.range_serializable.throughput_ops_per_second,
            r.range_linearizable.throughput_ops_per_second,
        );
    }
    out
}

/// The record written to scale.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleReport {
    pub machine: Machine,
    pub results: Vec<ScaleResult>,
    /// Targets whose run failed, with the error.
    pub failures: Vec<String>,
}

pub async fn scale(args: ScaleArgs, progress: bool) -> Result<()> {
    args.load.validate()?;
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let machine = Machine::describe(&args.servers);
    let mut results = Vec::new();
    let mut failures = Vec::new();
    // A failed target does not lose the others' results.
    for &kind in &args.targets {
        match scale_one(kind, &args, progress).await {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("scale run against {kind} failed: {e:#}");
                failures.push(format!("{kind}: {e:#}"));
            }
        }
    }
    let runs: Vec<RunResult> = results
        .iter()
        .flat_map(|r| [r.load.clone(), r.range_serializable.clone(), r.range_linearizable.clone()])
        .collect();
    print!("{}\n{}", results_table(&runs), scale_table(&results));
    let json = args.out.join("scale.json");
    write_json(&json, &ScaleReport { machine, results, failures: failures.clone() })?;
    eprintln!("wrote {}", json.display());
    if !failures.is_empty() {
        bail!("scale runs failed: {}", failures.join("; "));
    }
    Ok(())
}
