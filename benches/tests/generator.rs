//! The load generator against a real 3-member Cairn cluster: every request of a
//! short run succeeds and the JSON it writes is well formed. And a short `compare`
//! against real etcd and Cairn clusters: rounds interleave the two servers and the
//! ratios are medians over the rounds.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound for a whole generator run (cluster start, a few short workloads, stop).
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

/// Waits for a `cairn-bench` run, killing it after [`RUN_TIMEOUT`].
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for cairn-bench") {
            return status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("cairn-bench did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_short_run_against_cairn_succeeds_and_writes_valid_json() {
    let out = tempfile::tempdir().expect("temp dir");
    let json = out.path().join("results.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--no-progress", "run", "--cluster", "cairn", "--cairn-bin"])
        .arg(cairn_binary())
        .args(["--workloads", "put,range,txn-put,mixed,watch-latency,lease-keepalive"])
        .args(["--duration", "2s", "--clients", "8", "--conns", "3", "--key-space", "200"])
        .args(["--watchers", "20", "--watch-streams", "4", "--watch-put-rate", "50"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cairn-bench");
    let status = wait_bounded(&mut child);
    assert!(status.success(), "cairn-bench failed: {status}");

    let text = std::fs::read_to_string(&json).expect("the JSON results file exists");
    let results: Value = serde_json::from_str(&text).expect("the results are well-formed JSON");
    let results = results.as_array().expect("an array of results");
    let workloads: Vec<&str> = results.iter().map(|r| r["workload"].as_str().expect("workload name")).collect();
    assert_eq!(workloads, ["put", "range", "txn-put", "mixed", "watch-latency", "lease-keepalive"]);
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
        for s in servers {
            let stalls = &s["write_stalls"];
            assert!(
                stalls["count"].is_u64() && stalls["seconds"].as_f64().is_some_and(|x| x >= 0.0),
                "{w}: write stalls of every member, read from its /metrics: {s}"
            );
        }
    }
    let watch = &results[4]["watch"];
    assert!(watch["events_expected"].as_u64().unwrap() > 0);
    assert_eq!(watch["events_received"], watch["events_expected"], "every watcher got every event");
}

/// The one result of `cairn-bench run` of one workload against a fresh 3-member Cairn
/// cluster, with `args` after the cluster's and `env` set for the bench.
fn run_one(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = tempfile::tempdir().expect("temp dir");
    let json = out.path().join("results.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .envs(env.iter().copied())
        .args(["--no-progress", "run", "--cluster", "cairn", "--cairn-bin"])
        .arg(cairn_binary())
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .expect("start cairn-bench");
    let status = wait_bounded(&mut child);
    assert!(status.success(), "cairn-bench failed: {status}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("results")).expect("JSON");
    let [result] = results.as_array().expect("an array of results").as_slice() else { panic!("one result: {results}") };
    result.clone()
}

#[test]
fn an_open_loop_run_sends_no_more_than_its_rate_and_is_labelled_open() {
    let put =
        &run_one(&["--workloads", "put", "--rate", "100", "--duration", "2s", "--clients", "4", "--conns", "2"], &[]);
    assert_eq!((put["case"].as_str(), put["loop_mode"].as_str()), (Some("put@100/s"), Some("open")), "{put}");
    assert_eq!(put["ops_failed"], 0, "{put}");
    // Request i is due at i/100 s: at most 200 fall within 2 s, however fast the
    // server answers.
    let ok = put["ops_ok"].as_u64().expect("ops_ok");
    assert!(0 < ok && ok <= 200, "{ok} requests in 2 s at 100/s");
}

#[test]
fn the_members_take_only_the_benchs_flags_not_its_environment() {
    // A limit every 256-byte put would exceed, were it passed on to the members.
    let put = &run_one(
        &["--workloads", "put", "--total", "20", "--clients", "2", "--conns", "1", "--value-size", "256"],
        &[("CAIRN_MAX_REQUEST_BYTES", "64")],
    );
    assert_eq!((put["ops_ok"].as_u64(), put["ops_failed"].as_u64()), (Some(20), Some(0)), "{put}");
}

#[test]
fn refused_requests_are_counted_under_their_grpc_status() {
    // Values over the server's request size limit (1.5 MiB by default).
    let put = &run_one(
        &["--workloads", "put", "--total", "6", "--clients", "2", "--conns", "1", "--value-size", "2000000"],
        &[],
    );
    assert_eq!(put["ops_ok"], 0, "{put}");
    assert_eq!(put["ops_failed"], 6, "{put}");
    let errors = put["errors"].as_object().expect("errors by message");
    assert_eq!(errors.len(), 1, "one kind of error: {errors:?}");
    let (message, count) = errors.iter().next().unwrap();
    assert_eq!(count, 6);
    assert!(message.starts_with("InvalidArgument: ") && message.contains("too large"), "{message}");
}

#[test]
fn compare_interleaves_the_servers_in_rounds_and_reports_median_ratios() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--no-progress", "compare", "--cairn-bin"])
        .arg(cairn_binary())
        .args(["--workloads", "put", "--rounds", "2", "--settle", "0s", "--idle-wait-max", "10s"])
        .args(["--duration", "2s", "--clients", "4", "--conns", "2", "--key-space", "100"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cairn-bench");
    let status = wait_bounded(&mut child);
    assert!(status.success(), "cairn-bench compare failed: {status}");

    let text = std::fs::read_to_string(out.path().join("compare.json")).expect("compare.json exists");
    let comparison: Value = serde_json::from_str(&text).expect("compare.json is well-formed JSON");
    assert!(out.path().join("compare.svg").exists(), "the chart is written");
    let cairn_version = comparison["machine"]["cairn_version"].as_str().expect("cairn_version");
    assert!(cairn_version.starts_with("cairn ") && cairn_version.contains("(commit "), "{cairn_version}");
    let results = comparison["results"].as_array().expect("results");
    let order: Vec<(u64, &str, &str)> = results
        .iter()
        .map(|r| (r["round"].as_u64().expect("round"), r["case"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    let half = "put@half-etcd-peak";
    assert_eq!(
        order,
        [
            (1, "put", "etcd"),
            (1, "put", "cairn"),
            (1, half, "etcd"),
            (1, half, "cairn"),
            (2, "put", "cairn"),
            (2, "put", "etcd"),
            (2, half, "cairn"),
            (2, half, "etcd"),
        ],
        "each case runs against both servers back to back, etcd first in odd rounds"
    );
    for r in results {
        assert!(r["ops_ok"].as_u64().unwrap() > 0, "{}", r["case"]);
        assert_eq!(r["ops_failed"], 0, "{} against {}: {}", r["case"], r["target"], r["errors"]);
        // Only Cairn members count write stalls.
        let with_stalls = r["servers"].as_array().unwrap().iter().filter(|s| s["write_stalls"].is_object()).count();
        assert_eq!(with_stalls, if r["target"] == "cairn" { 3 } else { 0 }, "{} against {}", r["case"], r["target"]);
    }
    let find = |round: u64, case: &str, target: &str| {
        results
            .iter()
            .find(|r| r["round"] == round && r["case"] == case && r["target"] == target)
            .expect("every round has every case against both")
    };
    let throughput = |r: &Value| r["throughput_ops_per_second"].as_f64().unwrap();
    for round in [1, 2] {
        let etcd_peak = throughput(find(round, "put", "etcd"));
        let rate = find(round, half, "cairn")["spec"]["rate"].as_f64().expect("the half-peak case is open loop");
        assert!((rate - etcd_peak / 2.0).abs() < 1e-6, "round {round}: half of that round's etcd peak");
    }

    let ratios = comparison["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2, "one ratio per case: {ratios:?}");
    for ratio in ratios {
        let case = ratio["case"].as_str().unwrap();
        let by_round: Vec<f64> =
            ratio["throughput_by_round"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let expected: Vec<f64> =
            [1, 2].iter().map(|&n| throughput(find(n, case, "cairn")) / throughput(find(n, case, "etcd"))).collect();
        assert_eq!(by_round.len(), 2, "{case}");
        for (got, want) in by_round.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-9, "{case}: each round's Cairn result over that round's etcd result");
        }
        let median = (expected[0] + expected[1]) / 2.0;
        assert!((ratio["throughput"].as_f64().unwrap() - median).abs() < 1e-9, "{case}: the median of the rounds");
        assert_eq!(ratio["p99_by_round"].as_array().unwrap().len(), 2, "{case}");
    }
}
