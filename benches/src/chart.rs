//! The SVG chart of a comparison: throughput and p99 latency per workload, one
//! bar per server.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::cluster::ServerKind;
use crate::compare::median;
use crate::report::RunResult;

/// The font text is measured and drawn with (Debian's fonts-dejavu-core, which
/// scripts/setup.sh installs): plotters' pure-Rust text backend reads no system
/// font configuration, so the font is registered by hand.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 450;
const SERVERS: [(ServerKind, RGBColor); 2] =
    [(ServerKind::Etcd, RGBColor(66, 133, 244)), (ServerKind::Cairn, RGBColor(219, 68, 55))];

/// One panel: a value per (workload, server).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    workloads: &[String],
    results: &[RunResult],
    value: impl Fn(&RunResult) -> f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // The median over a comparison's rounds.
    let get = |case: &str, k: ServerKind| {
        let values: Vec<f64> =
            results.iter().filter(|r| r.case == case && r.target == k.to_string()).map(&value).collect();
        if values.is_empty() {
            0.0
        } else {
            median(&values)
        }
    };
    let top = workloads.iter().flat_map(|w| SERVERS.iter().map(|&(k, _)| get(w, k))).fold(0.0, f64::max);
    let n = workloads.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_FAMILY, 20))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..(top * 1.15).max(1.0))
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len() + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < workloads.len() {
                workloads[i as usize].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    for (s, &(kind, color)) in SERVERS.iter().enumerate() {
        let bars = workloads.iter().enumerate().map(|(i, w)| {
            let x0 = i as f64 - 0.4 + 0.4 * s as f64;
            Rectangle::new([(x0, 0.0), (x0 + 0.38, get(w, kind))], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("chart: {e}"))?
            .label(kind.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}

/// Registers [`FONT_PATH`] as [`FONT_FAMILY`], once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH)
                .map_err(|e| format!("reading {FONT_PATH} (install fonts-dejavu-core): {e}"))?;
            // plotters keeps a reference for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_PATH} is not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
        .context("the chart needs a font")
}

/// Writes the chart of `results` to `path`.
pub fn draw(path: &Path, results: &[RunResult]) -> Result<()> {
    register_font()?;
    let mut workloads: Vec<String> = Vec::new();
    for r in results {
        if !workloads.contains(&r.case) {
            workloads.push(r.case.clone());
        }
    }
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    panel(&left, "throughput (ops/s, higher is better)", &workloads, results, |r| r.throughput_ops_per_second)?;
    panel(&right, "p99 latency (ms, lower is better)", &workloads, results, |r| r.latency_us.p99 as f64 / 1000.0)?;
    root.present().map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_the_recorded_comparison() {
        let recorded = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/results/compare.json")).unwrap();
        let recorded: serde_json::Value = serde_json::from_str(&recorded).unwrap();
        let results: Vec<RunResult> = serde_json::from_value(recorded["results"].clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compare.svg");
        draw(&path, &results).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg:.200}");
        assert!(svg.contains("p99 latency (ms, lower is better)"));
        for r in &results {
            assert!(svg.contains(&r.case), "the chart names {}", r.case);
        }
    }
}
