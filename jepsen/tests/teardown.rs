//! The harness always cleans up: leftovers of a dead run are removed before a
//! slot is reused, a dropped network leaves nothing behind, and Ctrl-C during
//! a run kills the members and removes the network. Needs root.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_jepsen::net::{sh, Net};

fn netns_names() -> Vec<String> {
    sh("ip", &["netns", "list"])
        .expect("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn links() -> String {
    sh("ip", &["-o", "link", "show"]).expect("ip link show")
}

fn slot_resources(slot: u8) -> Vec<String> {
    let prefix = format!("cj{slot}-");
    let mut out: Vec<String> = netns_names().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    for line in links().lines() {
        if let Some(name) = line.split(':').nth(1) {
            let name = name.trim().split('@').next().unwrap_or("");
            if name.starts_with(&prefix) {
                out.push(name.to_string());
            }
        }
    }
    out
}

#[test]
fn leftovers_of_a_dead_run_are_removed_and_drop_cleans_up() {
    // Find the slot the next run will take, and free it again.
    let slot = Net::create(2).expect("create network").slot();
    assert!(slot_resources(slot).is_empty(), "drop left {:?}", slot_resources(slot));

    // A dead run's leftovers in that slot: a namespace with a process in it, and a bridge.
    let ns = format!("cj{slot}-n0");
    sh("ip", &["netns", "add", &ns]).expect("add netns");
    sh("ip", &["link", "add", &format!("cj{slot}-br"), "type", "bridge"]).expect("add bridge");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleeper");

    let net = Net::create(2).expect("create over leftovers");
    assert_eq!(net.slot(), slot, "another run took the slot meanwhile");
    // The sleeper was killed by the cleanup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeper.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the leftover process is still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new network is usable: partitions and slow links apply and heal.
    net.partition(&[vec![1], vec![0]]).expect("partition");
    net.heal().expect("heal");
    net.slow(0).expect("slow");
    net.unslow(0).expect("unslow");
    net.unslow(1).expect("unslow a link that is not slowed");
    drop(net);
    assert!(slot_resources(slot).is_empty(), "drop left {:?}", slot_resources(slot));
}

#[test]
fn ctrl_c_kills_the_members_and_removes_the_network() {
    let exe = std::env::current_exe().expect("current_exe");
    let cairn = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").join("cairn");
    if !cairn.is_file() {
        panic!("{} missing: run `cargo build -p cairn-server --bin cairn`", cairn.display());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-jepsen"))
        .args(["run", "--workload", "register", "--nemesis", "pause", "--time-limit", "60", "--rate", "20"])
        .arg("--runs-dir")
        .arg(tmp.path())
        .arg("--server-bin")
        .arg(&cairn)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn-jepsen");
    // Wait for the workload to start.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (run_log, slot) = loop {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(200));
        let found = std::fs::read_dir(tmp.path()).ok().and_then(|mut d| d.next()).and_then(|e| e.ok());
        let Some(entry) = found else { continue };
        let log: PathBuf = entry.path().join("run.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("workload starts") {
            let slot: u8 = text
                .split("network slot ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .expect("slot in run.log");
            break (log, slot);
        }
    };
    assert!(!slot_resources(slot).is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "exit code after Ctrl-C ({})", run_log.display());
    assert!(slot_resources(slot).is_empty(), "Ctrl-C left {:?}", slot_resources(slot));
    let ps = Command::new("ps").args(["-eo", "args"]).output().expect("ps");
    let dir = tmp.path().to_string_lossy().to_string();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).lines().any(|l| l.contains(&dir) && l.contains("cairn")),
        "a member of the interrupted run is still running"
    );
}
