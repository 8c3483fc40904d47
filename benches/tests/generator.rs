//! The load generator against a real 3-member Cairn cluster: every request of a
//! short run succeeds and the JSON it writes is well formed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound for the whole generator run (cluster start, three short workloads, stop).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The `cairn` binary of this build (`target/<profile>/cairn`), built if missing.
fn cairn_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("cairn");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "cairn-server", "--bin", "cairn"])
            .status()
            .expect("run cargo build -p cairn-server --bin cairn");
        assert!(
            status.success() && bin.exists(),
            "the cairn binary is missing at {}: run `cargo build -p cairn-server --bin cairn`",
            bin.display()
        );
    }
    bin
}

#[test]
fn a_short_run_against_cairn_succeeds_and_writes_valid_json() {
    let out = tempfile::tempdir().expect("temp dir");
    let json = out.path().join("results.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--no-progress", "run", "--cluster", "cairn", "--cairn-bin"])
        .arg(cairn_binary())
        .args(["--workloads", "put,range,watch-latency,lease-keepalive"])
        .args(["--duration", "2s", "--clients", "8", "--conns", "3", "--key-space", "200"])
        .args(["--watchers", "20", "--watch-streams", "4", "--watch-put-rate", "50"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cairn-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cairn-bench") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("cairn-bench did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "cairn-bench failed: {status}");

    let text = std::fs::read_to_string(&json).expect("the JSON results file exists");
    let results: Value = serde_json::from_str(&text).expect("the results are well-formed JSON");
    let results = results.as_array().expect("an array of results");
    let workloads: Vec<&str> = results.iter().map(|r| r["workload"].as_str().expect("workload name")).collect();
    assert_eq!(workloads, ["put", "range", "watch-latency", "lease-keepalive"]);
    for r in results {
        let w = r["workload"].as_str().unwrap();
        assert_eq!(r["target"], "cairn", "{w}");
        assert!(r["ops_ok"].as_u64().expect("ops_ok") > 0, "{w}: some requests succeeded");
        assert_eq!(r["ops_failed"], 0, "{w}: every request succeeded, errors: {}", r["errors"]);
        assert!(r["throughput_ops_per_second"].as_f64().expect("throughput") > 0.0, "{w}");
        let p50 = r["latency_us"]["p50"].as_u64().expect("p50");
        let p99 = r["latency_us"]["p99"].as_u64().expect("p99");
        assert!(0 < p50 && p50 <= p99, "{w}: percentiles are ordered");
        let servers = r["servers"].as_array().expect("server usage");
        assert_eq!(servers.len(), 3, "{w}: usage of every member");
        assert!(servers.iter().all(|s| s["rss_peak_kib"].as_u64().unwrap_or(0) > 0), "{w}: peak RSS of every member");
    }
    let watch = &results[2]["watch"];
    assert!(watch["events_expected"].as_u64().unwrap() > 0);
    assert_eq!(watch["events_received"], watch["events_expected"], "every watcher got every event");
}

#[test]
fn refused_requests_are_counted_under_their_grpc_status() {
    let out = tempfile::tempdir().expect("temp dir");
    let json = out.path().join("results.json");
    // Values over the server's request size limit (1.5 MiB by default).
    let status = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--no-progress", "run", "--cluster", "cairn", "--cairn-bin"])
        .arg(cairn_binary())
        .args(["--workloads", "put", "--total", "6", "--clients", "2", "--conns", "1", "--value-size", "2000000"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .expect("run cairn-bench");
    assert!(status.success(), "cairn-bench failed: {status}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("results")).expect("JSON");
    let put = &results[0];
    assert_eq!(put["ops_ok"], 0, "{put}");
    assert_eq!(put["ops_failed"], 6, "{put}");
    let errors = put["errors"].as_object().expect("errors by message");
    assert_eq!(errors.len(), 1, "one kind of error: {errors:?}");
    let (message, count) = errors.iter().next().unwrap();
    assert_eq!(count, 6);
    assert!(message.starts_with("InvalidArgument: ") && message.contains("too large"), "{message}");
}
