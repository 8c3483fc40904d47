//! Results of runs: the JSON records and the tables printed for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::{LoadSpec, Workload};
use crate::procstat::ServerUsage;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// What `watch-latency` counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchStats {
    pub watchers: u64,
    pub puts: u64,
    /// Successful puts times watchers.
    pub events_expected: u64,
    pub events_received: u64,
}

/// One workload run against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// What was measured (`etcd`, `cairn`, or the `--label` of `run`).
    pub target: String,
    /// Which round of a `compare` this run belongs to (1-based); absent for `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    pub endpoints: Vec<String>,
    /// The workload with what distinguishes it: `put`, `range-serializable`,
    /// `put@500/s`, or a name given by `compare` (`put@half-etcd-peak`).
    pub case: String,
    pub workload: Workload,
    /// `closed` or `open` (`watch-latency` is always open).
    pub loop_mode: String,
    pub spec: LoadSpec,
    pub elapsed_seconds: f64,
    /// Successful requests (for `watch-latency`: events received).
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_ops_per_second: f64,
    pub latency_us: Latency,
    pub watch: Option<WatchStats>,
    pub servers: Vec<ServerUsage>,
    /// Sum over the servers of their peak RSS during the run.
    pub rss_peak_kib_total: u64,
    /// Server CPU time (all members) per successful request, in microseconds.
    pub cpu_us_per_op: Option<f64>,
}

impl RunResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        endpoints: &[String],
        workload: Workload,
        spec: &LoadSpec,
        elapsed: Duration,
        ops_ok: u64,
        ops_failed: u64,
        errors: BTreeMap<String, u64>,
        latency_us: Latency,
        watch: Option<WatchStats>,
        servers: Vec<ServerUsage>,
    ) -> RunResult {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let cpu: f64 = servers.iter().map(|s| s.cpu_seconds).sum();
        let open = spec.rate.is_some() || workload == Workload::WatchLatency;
        let mut case = workload.to_string();
        if matches!(workload, Workload::Range | Workload::Mixed) {
            let c = format!("{:?}", spec.consistency).to_lowercase();
            case = format!("{case}-{c}");
        }
        if let Some(rate) = spec.rate.filter(|_| workload != Workload::WatchLatency) {
            case = format!("{case}@{rate:.0}/s");
        }
        RunResult {
            target: target.to_string(),
            round: None,
            endpoints: endpoints.to_vec(),
            case,
            workload,
            loop_mode: if open { "open" } else { "closed" }.into(),
            spec: spec.clone(),
            elapsed_seconds: secs,
            ops_ok,
            ops_failed,
            errors,
            throughput_ops_per_second: ops_ok as f64 / secs,
            latency_us,
            watch,
            rss_peak_kib_total: servers.iter().map(|s| s.rss_peak_kib).sum(),
            cpu_us_per_op: (!servers.is_empty() && ops_ok > 0).then(|| cpu * 1e6 / ops_ok as f64),
            servers,
        }
    }
}

impl RunResult {
    /// Seconds the members spent in write stalls during the run, summed over the
    /// members that reported them; `None` when none did (etcd, or Cairn members that
    /// did not answer on `/metrics`). Whether every member reported is in `servers`.
    pub fn write_stall_seconds(&self) -> Option<f64> {
        let reported: Vec<f64> = self.servers.iter().filter_map(|s| Some(s.write_stalls?.seconds)).collect();
        (!reported.is_empty()).then(|| reported.iter().sum())
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A fixed-width table, one row per result.
pub fn results_table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:<26} {:>6} {:>10} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "target",
        "round",
        "case",
        "loop",
        "ok",
        "failed",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "RSS MiB",
        "CPU us/op",
        "stall s"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<8} {:>5} {:<26} {:>6} {:>10} {:>8} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>9} {:>8}",
            r.target,
            r.round.map_or("-".into(), |n| n.to_string()),
            r.case,
            r.loop_mode,
            r.ops_ok,
            r.ops_failed,
            r.throughput_ops_per_second,
            ms(r.latency_us.p50),
            ms(r.latency_us.p99),
            ms(r.latency_us.p999),
            ms(r.latency_us.max),
            r.rss_peak_kib_total as f64 / 1024.0,
            r.cpu_us_per_op.map_or("-".into(), |c| format!("{c:.0}")),
            r.write_stall_seconds().map_or("-".into(), |s| format!("{s:.2}")),
        );
    }
    out
}
