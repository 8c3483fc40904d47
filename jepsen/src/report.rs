//! The HTML report of a run: one self-contained file with the verdict per
//! checker, the anomalies with the operations involved, the faults, and two
//! inline SVG plots (latency and throughput over time, fault intervals shaded).

use plotters::prelude::*;

use crate::history::{Op, Outcome};
use crate::nemesis::{NemesisEvent, Scheduled};
use crate::run::Results;

/// Fonts tried for the plots' labels (Debian `fonts-dejavu-core`, installed by
/// scripts/setup.sh); without one the plots have no axis labels.
pub const FONT_PATHS: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

const PLOT_WIDTH: u32 = 1000;
const PLOT_HEIGHT: u32 = 320;
/// Acknowledged operations drawn in the latency plot at most (every k-th one
/// beyond that; failed and indeterminate ones are always drawn).
const LATENCY_POINTS_MAX: usize = 20_000;
/// Anomalies shown in the report per checker (all are in results.json).
const ANOMALIES_SHOWN_MAX: usize = 20;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Fault intervals in seconds, from the executed events (falling back to the
/// schedule for a fault whose end was not recorded).
fn intervals(events: &[NemesisEvent], schedule: &[Scheduled]) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    for s in events.iter().filter(|e| e.phase == "start") {
        let end = events
            .iter()
            .find(|e| e.phase == "end" && e.index == s.index)
            .map(|e| e.t_ns as f64 / 1e9)
            .or_else(|| schedule.get(s.index).map(|x| x.end_ms as f64 / 1e3))
            .unwrap_or(s.t_ns as f64 / 1e9);
        out.push((s.t_ns as f64 / 1e9, end, s.fault.clone()));
    }
    out
}

fn outcome_color(o: Outcome) -> RGBColor {
    match o {
        Outcome::Ok => RGBColor(46, 125, 50),
        Outcome::Fail => RGBColor(198, 40, 40),
        Outcome::Info => RGBColor(239, 160, 0),
    }
}

fn latency_svg(ops: &[Op], shaded: &[(f64, f64, String)], t_max: f64) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let lat_max = ops.iter().map(|o| (o.end_ns - o.start_ns) as f64 / 1e6).fold(1.0, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, (0.1f64..lat_max).log_scale())
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("time (s)").y_desc("latency (ms)").draw().map_err(|e| e.to_string())?;
        for (a, b, _) in shaded {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*a, 0.1), (*b, lat_max)],
                    RGBColor(255, 205, 210).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        let ok_count = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
        let stride = ok_count.div_ceil(LATENCY_POINTS_MAX).max(1);
        for outcome in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
            let color = outcome_color(outcome);
            let every = if outcome == Outcome::Ok { stride } else { 1 };
            chart
                .draw_series(ops.iter().filter(|o| o.outcome == outcome).step_by(every).map(|o| {
                    let lat = ((o.end_ns - o.start_ns) as f64 / 1e6).max(0.1);
                    Circle::new((o.start_ns as f64 / 1e9, lat), 2, color.filled())
                }))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn throughput_svg(ops: &[Op], shaded: &[(f64, f64, String)], t_max: f64) -> Result<String, String> {
    let buckets = t_max.ceil() as usize + 1;
    let mut counts = vec![[0u32; 3]; buckets];
    for o in ops {
        let b = ((o.end_ns as f64 / 1e9) as usize).min(buckets - 1);
        let k = match o.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
        };
        counts[b][k] += 1;
    }
    let y_max = counts.iter().flat_map(|c| c.iter()).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("time (s)").y_desc("operations / s").draw().map_err(|e| e.to_string())?;
        for (a, b, _) in shaded {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*a, 0.0), (*b, y_max)],
                    RGBColor(255, 205, 210).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        for (k, outcome) in [Outcome::Ok, Outcome::Fail, Outcome::Info].into_iter().enumerate() {
            let color = outcome_color(outcome);
            chart
                .draw_series(LineSeries::new(
                    counts.iter().enumerate().map(|(i, c)| (i as f64 + 0.5, c[k] as f64)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Registers a font for the plots once; false if none was found.
fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered fonts live for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Renders the report.
pub fn render(results: &Results, ops: &[Op], events: &[NemesisEvent], schedule: &[Scheduled]) -> String {
    let shaded = intervals(events, schedule);
    let have_font = ensure_font();
    let t_max = ops.iter().map(|o| o.end_ns as f64 / 1e9).chain(shaded.iter().map(|s| s.1)).fold(1.0, f64::max);
    let plot = |r: Result<String, String>| r.unwrap_or_else(|e| format!("<p>plot failed: {}</p>", escape(&e)));
    let mut html = String::new();
    let verdict = if results.valid { "<span class=ok>VALID</span>" } else { "<span class=bad>INVALID</span>" };
    html.push_str(&format!(
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>cairn-jepsen {:?} seed {}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px}} .ok{{color:#2e7d32;font-weight:bold}} \
         .bad{{color:#c62828;font-weight:bold}} td,th{{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}} \
         pre{{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}} .legend span{{margin-right:1.5em}}\
         </style></head><body>",
        results.workload, results.seed
    ));
    html.push_str(&format!(
        "<h1>cairn-jepsen: {verdict}</h1><p>workload <b>{:?}</b>, nemesis <b>{:?}</b>, {} members, seed {}. \
         Operations: {} ok, {} failed, {} indeterminate.</p>",
        results.workload,
        results.nemesis,
        results.nodes,
        results.seed,
        results.ops.ok,
        results.ops.failed,
        results.ops.indeterminate
    ));
    html.push_str(
        "<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th><th>anomalies</th><th>checked</th></tr>",
    );
    for (name, c) in &results.checkers {
        let v = if c.valid { "<span class=ok>valid</span>" } else { "<span class=bad>invalid</span>" };
        html.push_str(&format!(
            "<tr><td>{name}</td><td>{v}</td><td>{}</td><td><code>{}</code></td></tr>",
            c.anomaly_count,
            escape(&c.stats.to_string())
        ));
    }
    html.push_str("</table>");
    for (name, c) in results.checkers.iter().filter(|(_, c)| !c.valid) {
        html.push_str(&format!("<h3>Anomalies: {name} ({} found)</h3>", c.anomaly_count));
        for a in c.anomalies.iter().take(ANOMALIES_SHOWN_MAX) {
            let s = serde_json::to_string_pretty(a).unwrap_or_default();
            html.push_str(&format!("<pre>{}</pre>", escape(&s)));
        }
    }
    html.push_str(
        "<h2>Latency</h2><p class=legend><span style=color:#2e7d32>● ok</span><span style=color:#c62828>● failed</span>\
         <span style=color:#efa000>● indeterminate</span><span style=background:#ffcdd2>&nbsp;fault&nbsp;</span></p>",
    );
    if !have_font {
        html.push_str("<p>(no font found for axis labels: install fonts-dejavu-core)</p>");
    }
    html.push_str(&plot(latency_svg(ops, &shaded, t_max)));
    html.push_str("<h2>Throughput</h2>");
    html.push_str(&plot(throughput_svg(ops, &shaded, t_max)));
    html.push_str("<h2>Faults</h2><table><tr><th>#</th><th>phase</th><th>t (s)</th><th>fault</th><th>detail</th><th>error</th></tr>");
    for e in events {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.index,
            e.phase,
            e.t_ns as f64 / 1e9,
            escape(&e.fault),
            escape(&e.detail),
            escape(e.error.as_deref().unwrap_or(""))
        ));
    }
    html.push_str("</table></body></html>\n");
    html
}
