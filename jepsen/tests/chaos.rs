//! The short chaos matrix CI runs: every workload under every nemesis for
//! about 20 seconds on 3 members, each run checked (and failed on any anomaly),
//! plus the negative control: serializable register reads while members are
//! isolated must be flagged as not linearizable.
//!
//! Needs root (network namespaces), `ip`, `nft` and `tc`, and the `cairn`
//! binary next to the test executable's directory (`cargo test --workspace
//! --all-targets` builds it; otherwise this builds it). A failing run's
//! directory is kept and printed. Long runs: see jepsen/README.md.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cairn_jepsen::cluster::ServerKind;
use cairn_jepsen::nemesis::NemesisKind;
use cairn_jepsen::run::{self, RunConfig};
use cairn_jepsen::workload::{ReadMode, WorkloadKind};

/// Seconds of workload per matrix cell.
const TIME_LIMIT_S: u64 = 20;
/// Operations per second per run (two runs share two cores).
const RATE: f64 = 80.0;

/// The `cairn` binary: `target/<profile>/cairn`, built if missing.
fn cairn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/chaos-<hash> -> target/<profile>/cairn
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
        let bin = profile_dir.join("cairn");
        if !bin.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let target_dir = profile_dir.parent().expect("target dir");
            let status = Command::new(cargo)
                .args(["build", "-p", "cairn-server", "--bin", "cairn", "--target-dir"])
                .arg(target_dir)
                .status()
                .expect("run cargo build");
            assert!(
                status.success() && bin.is_file(),
                "could not build {}: run `cargo build -p cairn-server --bin cairn`",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

fn config(workload: WorkloadKind, nemesis: &[NemesisKind], reads: ReadMode, seed: u64) -> RunConfig {
    RunConfig {
        workload,
        nemesis: nemesis.to_vec(),
        nodes: 3,
        time_limit_s: TIME_LIMIT_S,
        rate: RATE,
        concurrency: 6,
        seed,
        reads,
        op_timeout_ms: 2000,
        server_bin: cairn_bin(),
        server_kind: ServerKind::Cairn,
        server_args: Vec::new(),
    }
}

/// Runs `cfg` in a temporary directory; returns the verdict and the directory
/// (kept if `keep` says so for this verdict).
fn run_case(cfg: &RunConfig, keep_if: impl Fn(bool) -> bool) -> (run::Results, PathBuf) {
    let tmp = tempfile::Builder::new().prefix("cairn-jepsen-").tempdir().expect("tempdir");
    let dir = run::new_run_dir(tmp.path(), cfg).expect("run dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let results = match rt.block_on(run::run(cfg, &dir)) {
        Ok(r) => r,
        Err(e) => {
            let kept = tmp.keep();
            panic!("run failed: {e} (run directory kept: {})", kept.display());
        }
    };
    let path = if keep_if(results.valid) { tmp.keep().join(dir.file_name().expect("name")) } else { dir };
    (results, path)
}

fn assert_valid(workload: WorkloadKind, nemesis: NemesisKind, seed: u64) {
    let cfg = config(workload, &[nemesis], ReadMode::Linearizable, seed);
    let (results, dir) = run_case(&cfg, |valid| !valid);
    let summary: Vec<String> = results
        .checkers
        .iter()
        .filter(|(_, c)| !c.valid)
        .map(|(name, c)| format!("{name}: {:?}", c.anomaly_types()))
        .collect();
    assert!(
        results.valid,
        "{workload:?} under {nemesis:?} (seed {seed}) is not valid: {}; run directory kept: {}",
        summary.join("; "),
        dir.display()
    );
    assert!(results.ops.ok > 0, "no operation succeeded");
}

macro_rules! matrix {
    ($($name:ident: $workload:ident, $nemesis:ident, $seed:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_valid(WorkloadKind::$workload, NemesisKind::$nemesis, $seed);
        }
    )*};
}

matrix! {
    register_crash: Register, Crash, 11;
    register_pause: Register, Pause, 12;
    register_partition: Register, Partition, 13;
    register_slow_net: Register, SlowNet, 14;
    append_crash: Append, Crash, 21;
    append_pause: Append, Pause, 22;
    append_partition: Append, Partition, 23;
    append_slow_net: Append, SlowNet, 24;
    watch_crash: Watch, Crash, 31;
    watch_pause: Watch, Pause, 32;
    watch_partition: Watch, Partition, 33;
    watch_slow_net: Watch, SlowNet, 34;
    lock_crash: Lock, Crash, 41;
    lock_pause: Lock, Pause, 42;
    lock_partition: Lock, Partition, 43;
    lock_slow_net: Lock, SlowNet, 44;
    register_membership: Register, Membership, 15;
    append_membership: Append, Membership, 25;
    watch_membership: Watch, Membership, 35;
    lock_membership: Lock, Membership, 45;
    register_leader_transfer: Register, LeaderTransfer, 55;
    watch_leader_transfer: Watch, LeaderTransfer, 65;
}

/// The negative control, through the binary as a user runs it: serializable
/// (local) reads while a member or the leader is isolated must be flagged, the
/// exit code must say so, the last line must be the run directory, and
/// `cairn-jepsen check` on that directory must reach the same verdict.
#[test]
fn negative_control_serializable_reads_are_not_linearizable() {
    let tmp = tempfile::Builder::new().prefix("cairn-jepsen-neg-").tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_cairn-jepsen");
    let out = Command::new(bin)
        .args(["run", "--workload", "register", "--nemesis", "isolate", "--reads", "serializable", "--nodes", "3"])
        .args(["--time-limit", &TIME_LIMIT_S.to_string(), "--rate", &RATE.to_string(), "--seed", "5"])
        .arg("--runs-dir")
        .arg(tmp.path())
        .arg("--server-bin")
        .arg(cairn_bin())
        .output()
        .expect("run cairn-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(dir.join("results.json").is_file(), "last line is not the run directory: {stdout}\n{stderr}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).expect("results.json")).expect("json");
    let kept = tmp.keep();
    assert_eq!(
        results["checkers"]["linearizable"]["valid"],
        false,
        "stale serializable reads were not flagged (run directory kept: {})\n{stderr}",
        kept.display()
    );
    assert_eq!(out.status.code(), Some(1), "exit code must be 1 when a checker is invalid\n{stderr}");
    for f in ["history.jsonl", "nemesis-schedule.json", "nemesis.jsonl", "report.html", "n1/server.log"] {
        assert!(dir.join(f).is_file(), "{f} missing from the run directory");
    }
    let report = std::fs::read_to_string(dir.join("report.html")).expect("report");
    assert!(report.contains("<svg") && report.contains("nonlinearizable"), "report lacks plots or anomalies");

    let check = Command::new(bin).arg("check").arg(&dir).output().expect("run cairn-jepsen check");
    assert_eq!(check.status.code(), Some(1), "check must reach the same verdict");
    assert_eq!(String::from_utf8_lossy(&check.stdout).lines().last(), Some(dir.to_str().expect("utf-8")));
    // Passed: the directory is not needed any more.
    let _ = std::fs::remove_dir_all(kept);
}

/// The membership and leader-transfer nemeses against etcd, whose Cluster API
/// is the reference: this validates the harness's code path for them (and the
/// checkers on a second implementation).
#[test]
fn membership_nemesis_against_etcd() {
    let etcd = PathBuf::from(std::env::var_os("CAIRN_TEST_ETCD_BIN").unwrap_or_else(|| "/usr/bin/etcd".into()));
    assert!(etcd.is_file(), "{} missing: install etcd-server (scripts/setup.sh)", etcd.display());
    let nemeses = [NemesisKind::Membership, NemesisKind::LeaderTransfer];
    let mut cfg = config(WorkloadKind::Register, &nemeses, ReadMode::Linearizable, 51);
    cfg.server_bin = etcd;
    cfg.server_kind = ServerKind::Etcd;
    let (results, dir) = run_case(&cfg, |valid| !valid);
    assert!(
        results.valid,
        "etcd under the membership nemesis: {:?}; run directory kept: {}",
        results.checkers,
        dir.display()
    );
    let injected = results.faults.iter().filter(|f| f["phase"] == "start" && f["error"].is_null()).count();
    assert!(injected >= 2, "too few membership faults injected: {:?}", results.faults);
}
