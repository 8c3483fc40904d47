//! The operator files in `ops/`: the alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`), every alert has a runbook entry, and every
//! metric the rules and the Grafana dashboard use is one a member exports.
//!
//! ```text
//! cargo test -p cairn-server --test ops
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use cairn_server::observability::metrics;

fn ops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("ops")
}

fn read(name: &str) -> String {
    let path = ops_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Metric names in a PromQL text: identifiers of Cairn's families (and the
/// standard process metrics), histogram suffixes removed.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for token in text.split(|c: char| !is_ident(c)) {
        if ["cairn_", "grpc_server_", "process_"].iter().any(|p| token.starts_with(p)) {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| token.strip_suffix(s)).unwrap_or(token);
            names.insert(base.to_string());
        }
    }
    names
}

fn assert_exported(names: &BTreeSet<String>, file: &str) {
    let exported: BTreeSet<&str> = metrics().names().iter().copied().collect();
    let process = ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds"];
    for name in names {
        let known = exported.contains(name.as_str()) || process.contains(&name.as_str());
        assert!(known, "{file} uses {name}, which Cairn does not export");
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = std::env::var("CAIRN_TEST_PROMTOOL_BIN").unwrap_or_else(|_| "promtool".into());
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(ops_dir()).output().unwrap_or_else(|e| {
            panic!("running {promtool}: {e}; install it with scripts/setup.sh (Debian package `prometheus`)")
        });
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_alert_has_a_runbook_entry_and_uses_exported_metrics() {
    let rules = read("alerts.yml");
    let runbook = read("RUNBOOK.md");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 7, "expected the alerts the issue lists, found {alerts:?}");
    for alert in &alerts {
        assert!(runbook.contains(&format!("\n## {alert}\n")), "RUNBOOK.md has no entry `## {alert}`");
        let anchor = format!("ops/RUNBOOK.md#{}", alert.to_lowercase());
        assert!(rules.contains(&anchor), "{alert} does not link its runbook entry ({anchor})");
    }
    let names = metric_names_in(&rules);
    assert!(names.contains("cairn_server_has_leader"), "{names:?}");
    assert_exported(&names, "alerts.yml");
}

#[test]
fn dashboard_is_grafana_json_over_exported_metrics() {
    let text = read("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = String::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", panel["title"]));
        for target in targets {
            exprs.push_str(target["expr"].as_str().expect("every target has a PromQL expression"));
            exprs.push('\n');
        }
    }
    let names = metric_names_in(&exprs);
    for wanted in ["cairn_disk_wal_fsync_duration_seconds", "cairn_server_is_leader", "grpc_server_handled_total"] {
        assert!(names.contains(wanted), "the dashboard shows no {wanted}");
    }
    assert_exported(&names, "grafana-dashboard.json");
}
