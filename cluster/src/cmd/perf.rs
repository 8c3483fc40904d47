//! `check perf`: a short, rate-limited put load with throughput and latency
//! percentiles, judged against stated thresholds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Client;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::cli::{PerfArgs, PerfLoad};
use crate::cmd::maintenance;
use crate::ctx::Ctx;
use crate::errors::{CliError, CliResult, ExitKind};
use crate::limits;
use crate::output::{Printer, Render, Table};

/// One workload model: concurrent clients and the target put rate.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub clients: usize,
    pub puts_per_second: u64,
}

pub fn model(load: PerfLoad) -> Model {
    match load {
        PerfLoad::S => Model { clients: 50, puts_per_second: 150 },
        PerfLoad::M => Model { clients: 200, puts_per_second: 1000 },
        PerfLoad::L => Model { clients: 500, puts_per_second: 8000 },
        PerfLoad::Xl => Model { clients: 1000, puts_per_second: 15000 },
    }
}

/// Concurrent requests one connection carries (HTTP/2 multiplexes them).
const CLIENTS_PER_CONNECTION: usize = 50;
/// How often the rate limiter hands out permits.
const TICK: Duration = Duration::from_millis(10);

/// What the run measured.
#[derive(Debug)]
pub struct PerfResult {
    pub model: Model,
    pub duration: Duration,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Histogram<u64>,
}

impl PerfResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    fn throughput_min(&self) -> f64 {
        self.model.puts_per_second as f64 * limits::PERF_THROUGHPUT_PERCENT_MIN as f64 / 100.0
    }

    /// Every threshold that was missed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.throughput() < self.throughput_min() {
            f.push(format!(
                "throughput {:.0} puts/s is below {:.0} ({}% of the target {})",
                self.throughput(),
                self.throughput_min(),
                limits::PERF_THROUGHPUT_PERCENT_MIN,
                self.model.puts_per_second
            ));
        }
        let p99 = self.percentile_ms(0.99);
        if self.ok > 0 && p99 > limits::PERF_P99_MS_MAX as f64 {
            f.push(format!("p99 latency {p99:.1} ms is above {} ms", limits::PERF_P99_MS_MAX));
        }
        if self.errors > 0 {
            f.push(format!(
                "{} puts failed (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("unknown")
            ));
        }
        f
    }
}

pub async fn run(ctx: &Ctx, a: &PerfArgs) -> CliResult<()> {
    let model = model(a.load);
    let first = ctx.connect().await?;
    let existing = ctx.bounded(async { Ok(first.get(a.prefix.clone()).prefix().count_only().await?) }).await?;
    if existing.count > 0 {
        return Err(CliError::invalid(format!(
            "the prefix {:?} already holds {} keys; check perf writes and then deletes keys under it",
            a.prefix, existing.count
        ))
        .with_hint("choose an unused prefix with --prefix"));
    }
    let mut connections = vec![first.clone()];
    for _ in 1..model.clients.div_ceil(CLIENTS_PER_CONNECTION) {
        connections.push(ctx.connect().await?);
    }
    let result = load(ctx, &connections, &a.prefix, model, a.duration).await;
    let cleanup = cleanup(ctx, &first, a).await;
    ctx.printer.emit(&PerfOut(&result))?;
    cleanup?;
    let failures = result.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(ExitKind::CheckFailed, format!("check perf FAIL: {}", failures.join("; ")))
            .with_hint("see `cairnctl cluster health` for slow or lagging members; try a smaller --load"))
    }
}

async fn load(ctx: &Ctx, connections: &[Client], prefix: &str, model: Model, duration: Duration) -> PerfResult {
    let permits = Arc::new(Semaphore::new(0));
    let value = vec![b'x'; limits::PERF_VALUE_BYTES];
    let timeout = ctx.global.command_timeout;
    let bar = ProgressBar::new(duration.as_secs().max(1)).with_style(
        ProgressStyle::with_template("check perf [{bar:40}] {pos}/{len}s {msg}").expect("a valid progress template"),
    );
    let start = Instant::now();
    let workers: Vec<_> = (0..model.clients)
        .map(|i| {
            let client = connections[i % connections.len()].clone();
            let permits = permits.clone();
            let value = value.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut n = i as u64;
                while let Ok(p) = permits.acquire().await {
                    p.forget();
                    let key = format!("{prefix}{:08}", n % limits::PERF_KEYS);
                    n += model.clients as u64;
                    let t = Instant::now();
                    match tokio::time::timeout(timeout, client.put(key, value.clone())).await {
                        Ok(Ok(_)) => {
                            ok += 1;
                            let us = t.elapsed().as_micros() as u64;
                            hist.saturating_record(us.max(1));
                        }
                        Ok(Err(e)) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                        Err(_) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("no answer within {timeout:?}"));
                        }
                    }
                }
                (hist, ok, errors, first_error)
            })
        })
        .collect();
    // Rate limiter: hand out permits so that `puts_per_second` are started per second.
    let mut issued = 0u64;
    while start.elapsed() < duration {
        tokio::time::sleep(TICK).await;
        let due = (start.elapsed().as_secs_f64().min(duration.as_secs_f64()) * model.puts_per_second as f64) as u64;
        if due > issued {
            permits.add_permits((due - issued) as usize);
            issued = due;
        }
        bar.set_position(start.elapsed().as_secs());
    }
    permits.close();
    let mut result = PerfResult {
        model,
        duration: Duration::ZERO,
        ok: 0,
        errors: 0,
        first_error: None,
        latency_us: new_histogram(),
    };
    for w in workers {
        if let Ok((hist, ok, errors, first_error)) = w.await {
            result.latency_us.add(&hist).expect("histograms with the same bounds merge");
            result.ok += ok;
            result.errors += errors;
            if result.first_error.is_none() {
                result.first_error = first_error;
            }
        }
    }
    result.duration = start.elapsed();
    bar.finish_and_clear();
    result
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, limits::PERF_LATENCY_MS_TRACKED_MAX * 1000, 3).expect("valid histogram bounds")
}

async fn cleanup(ctx: &Ctx, client: &Client, a: &PerfArgs) -> CliResult<()> {
    let deleted = ctx.bounded(async { Ok(client.delete(a.prefix.clone()).prefix().await?) }).await;
    let deleted = deleted.map_err(|e| e.context(format!("delete the keys under {:?}", a.prefix)))?;
    if a.auto_compact {
        let rev = deleted.header.revision;
        ctx.bounded(async { Ok(client.compact(rev, true).await?) }).await.map_err(|e| e.context("auto-compact"))?;
    }
    if a.auto_defrag {
        maintenance::defrag(ctx, false).await.map_err(|e| e.context("auto-defrag"))?;
    }
    Ok(())
}

struct PerfOut<'a>(&'a PerfResult);

const PERCENTILES: [(&str, f64); 5] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];

impl PerfOut<'_> {
    fn verdict(&self) -> &'static str {
        if self.0.failures().is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    }
}

impl Render for PerfOut<'_> {
    fn simple(&self, _: &Printer) -> String {
        let r = self.0;
        let mut s = format!(
            "{} puts in {:.1?} from {} clients: {:.0} puts/s (target {}, pass at >= {:.0})\n",
            r.ok,
            r.duration,
            r.model.clients,
            r.throughput(),
            r.model.puts_per_second,
            r.throughput_min()
        );
        let lat: Vec<String> = PERCENTILES.iter().map(|(n, q)| format!("{n} {:.2} ms", r.percentile_ms(*q))).collect();
        s += &format!("latency: {} (pass at p99 <= {} ms)\n", lat.join(", "), limits::PERF_P99_MS_MAX);
        s += &format!("errors: {}\n", r.errors);
        for f in r.failures() {
            s += &format!("FAIL: {f}\n");
        }
        s += &format!("{}\n", self.verdict());
        s
    }
    fn json(&self) -> Value {
        let r = self.0;
        let lat: serde_json::Map<String, Value> =
            PERCENTILES.iter().map(|(n, q)| (format!("{n}_ms"), json!(r.percentile_ms(*q)))).collect();
        json!({
            "pass": r.failures().is_empty(),
            "clients": r.model.clients,
            "target_puts_per_second": r.model.puts_per_second,
            "throughput_min": r.throughput_min(),
            "p99_ms_max": limits::PERF_P99_MS_MAX,
            "duration_s": r.duration.as_secs_f64(),
            "puts": r.ok,
            "errors": r.errors,
            "throughput": r.throughput(),
            "latency": lat,
            "failures": r.failures(),
        })
    }
    fn table(&self, _: &Printer) -> Table {
        let r = self.0;
        let mut t = Table::new(&["METRIC", "VALUE", "THRESHOLD"]);
        t.row(vec![
            "throughput (puts/s)".into(),
            format!("{:.0}", r.throughput()),
            format!(">= {:.0}", r.throughput_min()),
        ]);
        for (n, q) in PERCENTILES {
            let threshold = if n == "p99" { format!("<= {}", limits::PERF_P99_MS_MAX) } else { String::new() };
            t.row(vec![format!("latency {n} (ms)"), format!("{:.2}", r.percentile_ms(q)), threshold]);
        }
        t.row(vec!["errors".into(), r.errors.to_string(), "0".into()]);
        t.row(vec!["verdict".into(), self.verdict().into(), String::new()]);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: u64, errors: u64, latency_ms: u64, secs: u64) -> PerfResult {
        let mut h = new_histogram();
        for _ in 0..ok {
            h.record(latency_ms * 1000).unwrap();
        }
        PerfResult {
            model: model(PerfLoad::S),
            duration: Duration::from_secs(secs),
            ok,
            errors,
            first_error: (errors > 0).then(|| "boom".to_string()),
            latency_us: h,
        }
    }

    #[test]
    fn a_run_at_target_rate_with_low_latency_passes() {
        assert!(result(1500, 0, 5, 10).failures().is_empty());
    }

    #[test]
    fn each_threshold_fails_on_its_own() {
        let slow = result(1500, 0, 900, 10).failures();
        assert!(slow.len() == 1 && slow[0].contains("p99"), "{slow:?}");
        let thin = result(1000, 0, 5, 10).failures();
        assert!(thin.len() == 1 && thin[0].contains("throughput"), "{thin:?}");
        let errs = result(1500, 3, 5, 10).failures();
        assert!(errs.len() == 1 && errs[0].contains("3 puts failed (first: boom)"), "{errs:?}");
    }
}
