//! The same cairnctl commands give the same answers against Cairn and against
//! etcd itself (Debian `etcd-server`), and cairnctl prints what etcdctl prints.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ctl, ctl_in, Kind, TestCluster};
use serde_json::Value;

/// Removes what legitimately differs between two servers: their IDs and terms.
fn normalize(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                m.remove(k);
            }
            for (_, x) in m.iter_mut() {
                *x = normalize(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = normalize(x.take());
            }
        }
        _ => {}
    }
    v
}

/// One step: arguments, optional stdin, and whether to compare as JSON.
struct Step {
    args: Vec<&'static str>,
    stdin: Option<&'static str>,
}

fn step(args: &[&'static str]) -> Step {
    Step { args: args.to_vec(), stdin: None }
}

const TXN_OK: &str = "mod(\"a\") > \"0\"\n\nput a 4\nget a\ndel b --prev-kv\n\nput never x\n\n";
const TXN_FAIL: &str = "value(\"a\") = \"nope\"\n\nput never x\n\nget a --keys-only\nget zz\n\n";
const TXN_BAD: &str = "bogus(\"a\") = \"1\"\n\n\n\n";

fn script() -> Vec<Step> {
    vec![
        step(&["put", "a", "1"]),
        step(&["put", "b", "2", "-w", "json"]),
        step(&["put", "a", "3", "--prev-kv"]),
        step(&["put", "c", "5", "--prev-kv", "-w", "json"]),
        step(&["get", "a"]),
        step(&["get", "a", "-w", "json"]),
        step(&["get", "", "--from-key"]),
        step(&["get", "a", "c", "-w", "json"]),
        step(&["get", "", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND"]),
        step(&["get", "", "--prefix", "--sort-by", "VERSION", "-w", "json"]),
        step(&["get", "", "--prefix", "--limit", "1", "-w", "json"]),
        step(&["get", "", "--prefix", "--keys-only"]),
        step(&["get", "", "--prefix", "--count-only", "-w", "json"]),
        step(&["get", "a", "--rev", "2", "--print-value-only"]),
        step(&["get", "a", "--rev", "99"]),
        step(&["get", "", "--prefix", "--hex"]),
        step(&["get", "a", "-w", "table"]),
        Step { args: vec!["txn"], stdin: Some(TXN_OK) },
        Step { args: vec!["txn", "-w", "json"], stdin: Some(TXN_FAIL) },
        Step { args: vec!["txn"], stdin: Some(TXN_BAD) },
        step(&["del", "nothing"]),
        step(&["del", "", "--from-key", "--prev-kv", "-w", "json"]),
        step(&["put", "d", "6"]),
        step(&["compaction", "3"]),
        step(&["get", "a", "--rev", "2"]),
        step(&["lease", "revoke", "1234"]),
        step(&["lease", "timetolive", "1234"]),
        step(&["lease", "keep-alive", "--once", "1234"]),
    ]
}

/// Runs the script and returns, per step, (exit code, comparable stdout, stderr).
fn run_script(ep: &str) -> Vec<(i32, String, String)> {
    script()
        .iter()
        .map(|s| {
            let out = match s.stdin {
                Some(input) => ctl_in(ep, &s.args, input),
                None => ctl(ep, &s.args),
            };
            let stdout = if s.args.contains(&"json") && out.code == 0 {
                normalize(serde_json::from_str(&out.stdout).expect("JSON")).to_string()
            } else {
                out.stdout.clone()
            };
            (out.code, stdout, out.stderr.clone())
        })
        .collect()
}

#[test]
fn the_same_commands_give_the_same_answers_on_cairn_and_etcd() {
    let cairn = TestCluster::start(Kind::Cairn, 1);
    let etcd = TestCluster::start(Kind::Etcd, 1);
    let on_cairn = run_script(&cairn.endpoints());
    let on_etcd = run_script(&etcd.endpoints());
    for ((s, c), e) in script().iter().zip(&on_cairn).zip(&on_etcd) {
        let what = format!("cairnctl {}", s.args.join(" "));
        assert_eq!(c.0, e.0, "{what}: exit code differs\ncairn: {c:?}\netcd:  {e:?}");
        assert_eq!(c.1, e.1, "{what}: output differs\ncairn: {}\netcd:  {}", c.1, e.1);
        if c.0 != 0 {
            // Errors are mapped by the client, so the messages match too.
            assert_eq!(c.2, e.2, "{what}: error differs");
        }
    }

    // Leases: same answers up to the lease ID.
    for cluster in [&cairn, &etcd] {
        let ep = cluster.endpoints();
        let grant = ctl(&ep, &["lease", "grant", "100"]).ok().to_string();
        let id = grant.split_whitespace().nth(1).unwrap().to_string();
        assert_eq!(grant, format!("lease {id} granted with TTL(100s)\n"), "{:?}", cluster.kind);
        ctl(&ep, &["put", "l", "v", "--lease", &id]).ok();
        let ttl = ctl(&ep, &["lease", "timetolive", &id, "--keys", "-w", "json"]).json();
        assert_eq!((ttl["granted-ttl"].as_i64(), ttl["keys"].clone()), (Some(100), serde_json::json!(["bA=="])));
        assert_eq!(ctl(&ep, &["lease", "list"]).ok(), format!("found 1 leases\n{id}\n"), "{:?}", cluster.kind);
        assert_eq!(
            ctl(&ep, &["lease", "keep-alive", "--once", &id]).ok(),
            format!("lease {id} keepalived with TTL(100)\n")
        );
        assert_eq!(ctl(&ep, &["lease", "revoke", &id]).ok(), format!("lease {id} revoked\n"));
        assert_eq!(ctl(&ep, &["get", "l"]).ok(), "");
    }

    // Watch: replaying the same history gives the same events.
    let replay = |ep: &str| watch_lines(ep, &["watch", "", "--prefix", "--rev", "3", "--prev-kv"], 8);
    assert_eq!(replay(&cairn.endpoints()), replay(&etcd.endpoints()));
}

/// Runs `cairnctl watch ...` until it printed `n` lines, then stops it.
fn watch_lines(ep: &str, args: &[&str], n: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("--endpoints")
        .arg(ep)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "watch printed only {lines:?}");
    lines
}

/// Runs etcdctl (Debian `etcd-client`) with the same arguments.
fn etcdctl(ep: &str, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let bin = std::env::var_os("CAIRN_TEST_ETCDCTL_BIN").unwrap_or_else(|| "/usr/bin/etcdctl".into());
    let mut child = Command::new(bin)
        .arg("--endpoints")
        .arg(ep)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn cairnctl_prints_what_etcdctl_prints() {
    let etcd = TestCluster::start(Kind::Etcd, 1);
    let ep = etcd.endpoints();
    for (k, v) in [("a", "1"), ("b", "two words"), ("c", "3"), ("a", "4")] {
        ctl(&ep, &["put", k, v]).ok();
    }
    let lease = ctl(&ep, &["lease", "grant", "300"]).ok().split_whitespace().nth(1).unwrap().to_string();
    ctl(&ep, &["put", "l", "x", "--lease", &lease]).ok();
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["get", "a"], None),
        (vec!["get", "", "--prefix"], None),
        (vec!["get", "", "--prefix", "--keys-only"], None),
        (vec!["get", "", "--prefix", "--print-value-only"], None),
        (vec!["get", "", "--from-key", "--limit", "2", "--sort-by", "VALUE", "--order", "DESCEND"], None),
        (vec!["get", "a", "--rev", "2"], None),
        (vec!["get", "b", "--hex"], None),
        // Writes that print the same when repeated.
        (vec!["put", "a", "4", "--prev-kv"], None),
        (vec!["del", "nothing"], None),
        (vec!["txn"], Some("mod(\"a\") > \"0\"\n\nget a\nput z 1\ndel y\n\n\n")),
        (vec!["txn"], Some("mod(\"a\") = \"0\"\n\n\nget b\n\n")),
        (vec!["member", "list"], None),
        (vec!["endpoint", "hashkv"], None),
        (vec!["alarm", "list"], None),
        (vec!["lease", "list"], None),
        (vec!["lease", "timetolive", &lease, "--keys"], None),
    ];
    for (args, stdin) in cases {
        let (code, expected) = etcdctl(&ep, &args, stdin);
        let got = match stdin {
            Some(input) => ctl_in(&ep, &args, input),
            None => ctl(&ep, &args),
        };
        let (got_stdout, expected) = if args[0] == "lease" {
            // The remaining TTL may tick between the two runs.
            let strip = |s: &str| match s.split_once("remaining(") {
                Some((head, tail)) => format!("{head}{}", tail.split_once(')').map(|(_, t)| t).unwrap_or("")),
                None => s.to_string(),
            };
            (strip(&got.stdout), strip(&expected))
        } else {
            (got.stdout.clone(), expected)
        };
        assert_eq!((got.code, &got_stdout), (code, &expected), "cairnctl {} differs from etcdctl", args.join(" "));
    }
}
