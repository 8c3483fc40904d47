//! The built `cairnctl` binary against real Cairn clusters: every command, its
//! error paths, and `-w json` output parsed back.

mod common;

use base64::Engine as _;
use common::{ctl, ctl_in, run_ctl, Kind, TestCluster};
use serde_json::Value;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn lease_id_of(grant_output: &str) -> String {
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    grant_output.split_whitespace().nth(1).expect("lease ID").to_string()
}

#[test]
fn keys_get_put_del_compaction_with_every_output_format() {
    let c = TestCluster::start(Kind::Cairn, 1);
    let ep = &c.endpoints();
    assert_eq!(ctl(ep, &["put", "k1", "v1"]).ok(), "OK\n");
    // The value may come from stdin.
    assert_eq!(ctl_in(ep, &["put", "k2"], "from stdin").ok(), "OK\n");
    assert_eq!(ctl(ep, &["put", "k3", "v3"]).ok(), "OK\n");
    assert_eq!(ctl(ep, &["get", "k1"]).ok(), "k1\nv1\n");
    assert_eq!(ctl(ep, &["get", "k2", "--print-value-only"]).ok(), "from stdin\n");
    assert_eq!(ctl(ep, &["get", "k", "--prefix", "--keys-only"]).ok(), "k1\n\nk2\n\nk3\n\n");
    assert_eq!(ctl(ep, &["get", "k", "--prefix", "--count-only"]).ok(), "3\n");
    assert_eq!(ctl(ep, &["get", "k1", "k3"]).ok(), "k1\nv1\nk2\nfrom stdin\n");
    assert_eq!(ctl(ep, &["get", "k2", "--from-key", "--keys-only"]).ok(), "k2\n\nk3\n\n");
    assert_eq!(ctl(ep, &["get", "k", "--prefix", "--limit", "1", "--order", "DESCEND"]).ok(), "k3\nv3\n");
    assert_eq!(
        ctl(ep, &["get", "k", "--prefix", "--sort-by", "VALUE", "--print-value-only"]).ok(),
        "from stdin\nv1\nv3\n"
    );
    assert_eq!(ctl(ep, &["get", "k1", "--consistency", "s"]).ok(), "k1\nv1\n");
    assert_eq!(ctl(ep, &["get", "k1", "--hex"]).ok(), "\\x6b\\x31\n\\x76\\x31\n");

    // JSON parsed back: etcdctl's field names, base64 bytes, every field present.
    let j = ctl(ep, &["get", "k1", "-w", "json"]).json();
    assert_eq!(j["count"], 1);
    assert_eq!(j["more"], false);
    assert_eq!(j["kvs"][0]["key"], b64("k1"));
    assert_eq!(j["kvs"][0]["value"], b64("v1"));
    assert_eq!(j["kvs"][0]["version"], 1);
    let rev = j["header"]["revision"].as_i64().unwrap();
    assert!(rev >= 4, "{j}");
    assert!(j["header"]["member_id"].as_u64().unwrap() != 0);
    // --rev reads the past.
    let put = ctl(ep, &["put", "k1", "v1b", "--prev-kv", "-w", "json"]).json();
    assert_eq!(put["prev_kv"]["value"], b64("v1"));
    assert_eq!(ctl(ep, &["get", "k1", "--rev", &rev.to_string(), "--print-value-only"]).ok(), "v1\n");
    assert_eq!(ctl(ep, &["put", "k1", "v1c", "--prev-kv"]).ok(), "OK\nk1\nv1b\n");

    let table = ctl(ep, &["get", "k", "--prefix", "-w", "table"]).ok().to_string();
    assert!(table.starts_with("+-----+"), "{table}");
    assert!(table.contains("| KEY | VALUE"), "{table}");
    let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "table not aligned:\n{table}");

    // del: count, prev kvs, JSON.
    assert_eq!(ctl(ep, &["del", "k3", "--prev-kv"]).ok(), "1\nk3\nv3\n");
    let del = ctl(ep, &["del", "k", "--prefix", "-w", "json"]).json();
    assert_eq!(del["deleted"], 2);
    assert_eq!(ctl(ep, &["get", "k", "--prefix"]).ok(), "");

    // compaction, then reading a compacted revision fails with a hint.
    let now = ctl(ep, &["get", "x", "-w", "json"]).json()["header"]["revision"].as_i64().unwrap();
    assert_eq!(ctl(ep, &["compaction", &now.to_string()]).ok(), format!("compacted revision {now}\n"));
    let j = ctl(ep, &["compaction", &now.to_string(), "--physical", "-w", "json"]);
    assert_ne!(j.code, 0, "compacting the same revision twice must fail: {j:?}");
    ctl(ep, &["get", "k1", "--rev", "2"]).fails(1, &["compacted", "hint:"]);

    // Binary values go in through stdin and come out byte for byte.
    let binary: &[u8] = b"\xff\x00bin\n\x80";
    let run = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .args(["--endpoints", ep])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}");
        out.stdout
    };
    assert_eq!(run(&["put", "bin"], binary), b"OK\n");
    assert_eq!(run(&["get", "bin", "--print-value-only"], b""), [binary, b"\n"].concat());
    assert_eq!(ctl(ep, &["get", "bin", "--hex", "--print-value-only"]).ok(), "\\xff\\x00\\x62\\x69\\x6e\\x0a\\x80\n");

    // Bad input.
    ctl(ep, &["put", "k", "v", "--lease", "zz"]).fails(3, &["bad lease ID"]);
    ctl(ep, &["get", "k", "--limit", "x"]).fails(2, &["invalid value"]);
}

#[test]
fn txn_grammar_from_stdin_interactive_and_errors() {
    let c = TestCluster::start(Kind::Cairn, 1);
    let ep = &c.endpoints();
    ctl(ep, &["put", "cfg", "1"]).ok();
    let input = "value(\"cfg\") = \"1\"\n\nput cfg 2\nget cfg\n\nput cfg failed\n\n";
    assert_eq!(ctl_in(ep, &["txn"], input).ok(), "SUCCESS\n\nOK\n\ncfg\n2\n");
    // The same compare now fails: the failure branch runs. End of input ends the last section.
    let j = ctl_in(ep, &["txn", "-w", "json"], "value(\"cfg\") = \"1\"\n\nput cfg 3\n\nget cfg\n").json();
    assert_eq!(j["succeeded"], false);
    assert_eq!(j["responses"][0]["response_range"]["kvs"][0]["value"], b64("2"));
    // Interactive mode prompts for each section.
    let out = ctl_in(ep, &["txn", "-i"], "mod(\"cfg\") > \"0\"\n\ndel cfg\n\n\n").ok().to_string();
    assert!(
        out.starts_with("compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"),
        "{out}"
    );
    assert!(out.ends_with("SUCCESS\n\n1\n"), "{out}");
    // Bad grammar: exit 3, the line and what is wrong, a hint, and nothing applied.
    ctl_in(ep, &["txn"], "bogus(\"cfg\") = \"1\"\n\nput cfg 9\n\n\n")
        .fails(3, &["line 1", "unknown target `bogus`", "hint:"]);
    ctl_in(ep, &["txn"], "\nfrobnicate cfg\n").fails(3, &["line 2", "expected get, put or del"]);
    ctl_in(ep, &["txn"], "mod(\"cfg\") > \"x\"\n").fails(3, &["is not a number"]);
    assert_eq!(ctl(ep, &["get", "cfg"]).ok(), "");
}

#[test]
fn watch_prints_events_runs_a_command_and_resumes_from_rev() {
    let c = TestCluster::start(Kind::Cairn, 1);
    let ep = c.endpoints();
    let first = ctl(&ep, &["put", "w/a", "1", "-w", "json"]).json()["header"]["revision"].as_i64().unwrap();
    ctl(&ep, &["put", "w/b", "2"]).ok();
    ctl(&ep, &["del", "w/a"]).ok();
    // Replaying history with --rev and --prev-kv; the command sees each event.
    let log = c.temp_dir().join("events.log");
    let script = format!(
        "echo \"$CAIRNCTL_WATCH_EVENT_TYPE $CAIRNCTL_WATCH_KEY=$CAIRNCTL_WATCH_VALUE@$CAIRNCTL_WATCH_REVISION\" >> {}",
        log.display()
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([
            "--endpoints",
            &ep,
            "watch",
            "w/",
            "--prefix",
            "--prev-kv",
            "--rev",
            &first.to_string(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&log).unwrap_or_default().lines().count() < 3 {
        assert!(std::time::Instant::now() < deadline, "watch command did not run for 3 events");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("watch output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n1\nw/a\n\n"), "{stdout}");
    let events = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines[0], format!("PUT w/a=1@{first}"));
    assert_eq!(lines[1], format!("PUT w/b=2@{}", first + 1));
    assert_eq!(lines[2], format!("DELETE w/a=@{}", first + 2));

    // A compacted start revision cancels the watch with exit 1 and a hint.
    let now = first + 2;
    ctl(&ep, &["compaction", &now.to_string()]).ok();
    ctl(&ep, &["watch", "w/", "--prefix", "--rev", "1"]).fails(1, &["compacted", "later --rev"]);
}

#[test]
fn leases_grant_timetolive_list_keepalive_revoke() {
    let c = TestCluster::start(Kind::Cairn, 1);
    let ep = &c.endpoints();
    let grant = ctl(ep, &["lease", "grant", "60"]).ok().to_string();
    assert!(grant.ends_with("granted with TTL(60s)\n"), "{grant}");
    let id = lease_id_of(&grant);
    ctl(ep, &["put", "lk", "v", "--lease", &id]).ok();
    let ttl = ctl(ep, &["lease", "timetolive", &id, "--keys"]).ok().to_string();
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.ends_with("attached keys([lk])\n"), "{ttl}");
    let j = ctl(ep, &["lease", "timetolive", &id, "--keys", "-w", "json"]).json();
    assert_eq!(j["granted-ttl"], 60);
    assert_eq!(j["keys"][0], b64("lk"));
    assert_eq!(j["id"].as_i64().unwrap(), i64::from_str_radix(&id, 16).unwrap());
    // --ignore-lease keeps the lease; --ignore-value keeps the value.
    let id2 = format!("{:016x}", ctl(ep, &["lease", "grant", "60", "-w", "json"]).json()["ID"].as_i64().unwrap());
    let table = ctl(ep, &["lease", "timetolive", &id2, "-w", "table"]).ok().to_string();
    assert!(table.contains("| LEASE") && table.contains(&format!("| {id2} | 60s")), "{table}");
    ctl(ep, &["put", "lk", "v2", "--ignore-lease"]).ok();
    let kv = ctl(ep, &["get", "lk", "-w", "json"]).json()["kvs"][0].clone();
    assert_eq!(
        (kv["value"].as_str().unwrap(), kv["lease"].as_i64().unwrap()),
        (b64("v2").as_str(), i64::from_str_radix(&id, 16).unwrap())
    );
    ctl(ep, &["put", "lk", "--ignore-value", "--lease", &id2]).ok();
    let kv = ctl(ep, &["get", "lk", "-w", "json"]).json()["kvs"][0].clone();
    assert_eq!(
        (kv["value"].as_str().unwrap(), kv["lease"].as_i64().unwrap()),
        (b64("v2").as_str(), i64::from_str_radix(&id2, 16).unwrap())
    );
    ctl(ep, &["put", "lk", "v", "--lease", &id]).ok();
    ctl(ep, &["lease", "revoke", &id2]).ok();
    let list = ctl(ep, &["lease", "list"]).ok().to_string();
    assert!(list.starts_with("found 1 leases\n") && list.contains(&id), "{list}");
    assert_eq!(ctl(ep, &["lease", "list", "-w", "json"]).json()["leases"][0]["id"], j["id"]);
    assert_eq!(ctl(ep, &["lease", "keep-alive", "--once", &id]).ok(), format!("lease {id} keepalived with TTL(60)\n"));
    assert_eq!(ctl(ep, &["lease", "keep-alive", "--once", &id, "-w", "json"]).json()["TTL"], 60);
    assert_eq!(ctl(ep, &["lease", "revoke", &id]).ok(), format!("lease {id} revoked\n"));
    assert_eq!(ctl(ep, &["get", "lk"]).ok(), "", "revoking the lease deletes its keys");
    assert_eq!(ctl(ep, &["lease", "timetolive", &id]).ok(), format!("lease {id} already expired\n"));
    // Error paths.
    ctl(ep, &["lease", "revoke", &id]).fails(1, &["not found", "lease list"]);
    ctl(ep, &["lease", "keep-alive", "--once", &id]).fails(1, &["expired or revoked"]);
    ctl(ep, &["lease", "grant", "0"]).fails(3, &["positive"]);
    ctl(ep, &["lease", "revoke", "not-hex"]).fails(3, &["hexadecimal"]);
}

#[test]
fn endpoint_status_and_health_on_three_members() {
    let mut c = TestCluster::start(Kind::Cairn, 3);
    let all = c.endpoints();
    let status = ctl(&all, &["endpoint", "status", "-w", "json"]).json();
    let status = status.as_array().unwrap();
    assert_eq!(status.len(), 3);
    let leaders: Vec<&Value> = status.iter().map(|s| &s["Status"]["leader"]).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && l.as_u64() != Some(0)), "{status:?}");
    assert_eq!(status.iter().filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"]).count(), 1);
    let table = ctl(&all, &["endpoint", "status", "-w", "table"]).ok().to_string();
    assert_eq!(table.lines().count(), 3 + 4, "{table}");
    let simple = ctl(&all, &["endpoint", "status"]).ok().to_string();
    assert!(simple.starts_with(&format!("{}, ", c.endpoint(0))), "{simple}");
    let health = ctl(&all, &["endpoint", "health", "-w", "json"]).json();
    assert!(health.as_array().unwrap().iter().all(|h| h["health"] == true), "{health}");
    assert!(ctl(&all, &["endpoint", "health"]).ok().contains("is healthy: successfully committed proposal"));

    // cluster health: the member list, or (while Cairn lacks the Cluster API) --endpoints.
    let report = ctl(&all, &["cluster", "health", "-w", "json"]).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["members"].as_array().unwrap().len(), 3);
    assert!(report["members"].as_array().unwrap().iter().all(|m| m["lag"].as_u64().is_some()), "{report}");
    let screen = ctl(&all, &["cluster", "health"]).ok().to_string();
    assert!(screen.contains(": OK (3 members, leader "), "{screen}");
    assert!(screen.contains("alarms: none") && screen.contains("slowest member: "), "{screen}");

    // A dead member: health and status say which one, with exit codes.
    c.kill(2);
    let out = ctl(&all, &["cluster", "health", "--dial-timeout", "500ms"]);
    out.fails(5, &["cluster is not healthy", "unreachable"]);
    // Named from the member list, or by endpoint when the server has none.
    let named = out.stdout.contains("| m3 ") || out.stdout.contains(&c.endpoint(2));
    assert!(out.stdout.contains("NOT OK") && named, "{out:?}");
    let out = ctl(&all, &["endpoint", "health", "--dial-timeout", "500ms"]);
    out.fails(5, &["1 of 3 endpoints unhealthy"]);
    assert!(out.stdout.contains(&format!("{} is unhealthy", c.endpoint(2))), "{out:?}");
    let out = ctl(&all, &["endpoint", "status", "--dial-timeout", "500ms", "-w", "json"]);
    out.fails(1, &["status failed on 1 of 3", &c.endpoint(2)]);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap().as_array().unwrap().len(), 2);
}

#[test]
fn unreachable_endpoint_fails_fast_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ep = format!("127.0.0.1:{port}");
    for args in [vec!["get", "k"], vec!["put", "k", "v"], vec!["member", "list"], vec!["lease", "list"]] {
        let mut all = vec!["--dial-timeout", "300ms"];
        all.extend(args);
        ctl(&ep, &all).fails(4, &["connect to http://127.0.0.1:", "hint:", "--endpoints"]);
    }
    ctl(&ep, &["endpoint", "health", "--dial-timeout", "300ms"]).fails(4, &["1 of 1"]);
    // Environment variables stand in for flags.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["get", "k"])
        .env("CAIRNCTL_ENDPOINTS", &ep)
        .env("CAIRNCTL_DIAL_TIMEOUT", "300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("http://{ep}")));
    run_ctl(&["--endpoints", "", "get", "k"], None).fails(3, &["--endpoints is empty"]);
}

#[test]
fn check_perf_reports_percentiles_and_a_verdict_and_cleans_up() {
    let c = TestCluster::start(Kind::Cairn, 1);
    let ep = &c.endpoints();
    let out = ctl(ep, &["check", "perf", "--duration", "2s", "--prefix", "/perf/", "-w", "json"]);
    assert!(out.code == 0 || out.code == 5, "{out:?}");
    let j: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(j["pass"], out.code == 0, "{j}");
    assert!(j["puts"].as_u64().unwrap() > 0, "{j}");
    for p in ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"] {
        assert!(j["latency"][p].as_f64().is_some(), "{p} missing: {j}");
    }
    assert!(j["latency"]["p50_ms"].as_f64() <= j["latency"]["p99_ms"].as_f64());
    assert_eq!(j["p99_ms_max"], 500);
    assert_eq!(ctl(ep, &["get", "/perf/", "--prefix", "--count-only"]).ok(), "0\n", "keys are deleted afterwards");
    // It refuses to write under a prefix that holds data.
    ctl(ep, &["put", "/perf/mine", "x"]).ok();
    ctl(ep, &["check", "perf", "--duration", "1s", "--prefix", "/perf/"]).fails(3, &["already holds 1 keys"]);
}

#[test]
fn completion_scripts_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ctl(&["completion", shell], None);
        assert!(out.ok().contains("cairnctl"), "{shell}");
        assert!(out.stdout.contains("move-leader"), "{shell} completion lacks subcommands");
    }
    let help = run_ctl(&["--help"], None).ok().to_string();
    assert!(help.contains("CAIRNCTL_ENDPOINTS") && help.contains("Exit codes"), "{help}");
    assert_eq!(run_ctl(&["version", "-w", "json"], None).json()["cairnctl"], env!("CARGO_PKG_VERSION"));
    let txn = run_ctl(&["txn", "--help"], None).ok().to_string();
    assert!(txn.contains("TARGET(\"KEY\")"), "{txn}");
}

#[test]
fn watch_resumes_on_another_member_without_gap_or_duplicate() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let mut c = TestCluster::start(Kind::Cairn, 3);
    let all = c.endpoints();
    let others = format!("{},{}", c.endpoint(1), c.endpoint(2));
    // The watch starts on member 0 (the first endpoint) and must move on when it dies.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--endpoints", &all, "watch", "w/", "--prefix"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let read_until = |n: usize, lines: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines.len() < n {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("watch printed only {lines:?}"),
            }
        }
    };
    // Let the watch be created before the first write (it starts at "now").
    std::thread::sleep(Duration::from_millis(500));
    for i in 1..=5 {
        ctl(&others, &["put", &format!("w/{i}"), "v"]).ok();
    }
    read_until(15, &mut lines);
    c.kill(0);
    for i in 6..=10 {
        // The leader may have died with member 0: retry until a new one is elected.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = ctl(&others, &["put", &format!("w/{i}"), "v"]);
            if out.code == 0 {
                break;
            }
            // A write whose outcome is unknown may have been applied: look before retrying.
            if out.stderr.contains("outcome unknown")
                && ctl(&others, &["get", &format!("w/{i}"), "--count-only"]).stdout == "1\n"
            {
                break;
            }
            assert!(Instant::now() < deadline, "put w/{i}: {out:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    read_until(30, &mut lines);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let keys: Vec<&str> = lines.chunks(3).map(|e| e[1].as_str()).collect();
    let expected: Vec<String> = (1..=10).map(|i| format!("w/{i}")).collect();
    assert_eq!(keys, expected, "every event exactly once, in order");
    assert!(lines.chunks(3).all(|e| e[0] == "PUT" && e[2] == "v"), "{lines:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from revision"), "no resume reported");
}

#[test]
fn keep_alive_moves_to_another_member_when_its_member_dies() {
    use std::time::Duration;

    let mut c = TestCluster::start(Kind::Cairn, 3);
    let all = c.endpoints();
    let others = format!("{},{}", c.endpoint(1), c.endpoint(2));
    const TTL: u64 = 6;
    let id = lease_id_of(ctl(&all, &["lease", "grant", &TTL.to_string()]).ok());
    ctl(&all, &["put", "alive", "1", "--lease", &id]).ok();
    // keep-alive starts on member 0, the first endpoint.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--endpoints", &all, "lease", "keep-alive", &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keep-alive");
    std::thread::sleep(Duration::from_secs(1));
    c.kill(0);
    // Well past the TTL: the lease (and its key) live only if keep-alive moved on.
    std::thread::sleep(Duration::from_secs(TTL + 3));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(still_running, "keep-alive exited: {stderr}");
    assert!(stderr.contains("reopening"), "the lost stream is not reported: {stderr}");
    assert_eq!(ctl(&others, &["get", "alive", "--print-value-only"]).ok(), "1\n", "{stderr}");
}

#[test]
fn watch_progress_notify_prints_the_revision_reached() {
    use std::io::{BufRead, BufReader};

    let c = TestCluster::start_with(Kind::Cairn, 1, &["--watch-progress-notify-interval", "200"]);
    let ep = c.endpoints();
    let rev = ctl(&ep, &["put", "p", "1", "-w", "json"]).json()["header"]["revision"].as_i64().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--endpoints", &ep, "-w", "json", "watch", "idle", "--progress-notify"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a progress notification within 20s");
    let j: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(j["IsProgressNotify"], true, "{j}");
    assert_eq!(j["Events"], Value::Array(vec![]));
    assert!(j["Header"]["revision"].as_i64().unwrap() >= rev, "{j}");
}
