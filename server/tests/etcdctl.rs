//! Compatibility with the real `etcdctl` (v3 API, Debian package `etcd-client`):
//! a 3-member cluster driven by the etcdctl binary, output checked as an
//! operator would see it. Every test sends some commands to a member that is
//! not the leader.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{etcdctl_binary, Cluster};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `etcdctl --endpoints=<endpoint> args...` with `stdin` as its input.
async fn etcdctl_in(endpoint: &str, args: &[&str], stdin: &[u8]) -> Out {
    let mut cmd = tokio::process::Command::new(etcdctl_binary());
    // etcdctl reads its flags from ETCDCTL_* too: only ours count.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("etcdctl {}", args.join(" "));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = tokio::spawn(async move {
        // etcdctl may exit before reading all of it; that is not our error.
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let _ = writer.await;
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn etcdctl(endpoint: &str, args: &[&str]) -> Out {
    etcdctl_in(endpoint, args, b"").await
}

/// Runs etcdctl and returns its stdout, panicking if it failed.
async fn run(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args).await;
    assert!(out.ok, "etcdctl {} failed\nstdout: {}\nstderr: {}", args.join(" "), out.stdout, out.stderr);
    out.stdout
}

/// Runs etcdctl expecting failure; returns its stderr.
async fn run_fail(endpoint: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = etcdctl_in(endpoint, args, stdin).await;
    assert!(!out.ok, "etcdctl {} should have failed\nstdout: {}", args.join(" "), out.stdout);
    out.stderr
}

async fn run_json(endpoint: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("-w");
    all.push("json");
    let stdout = run(endpoint, &all).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("etcdctl {}: invalid JSON ({e}): {stdout}", all.join(" ")))
}

fn b64decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("invalid base64 byte {c:?}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn json_str(v: &Value) -> String {
    String::from_utf8(b64decode(v.as_str().expect("base64 string"))).expect("utf-8")
}

fn json_i64(v: &Value, field: &str) -> i64 {
    // Zero values are omitted by etcdctl's JSON output.
    v.get(field).map(|x| x.as_i64().expect("integer")).unwrap_or(0)
}

/// (key, value) pairs of a range response in JSON.
fn kvs(v: &Value) -> Vec<(String, String)> {
    v.get("kvs")
        .and_then(|k| k.as_array())
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let value = kv.get("value").map(json_str).unwrap_or_default();
                    (json_str(&kv["key"]), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keys(v: &Value) -> Vec<String> {
    kvs(v).into_iter().map(|(k, _)| k).collect()
}

fn header_rev(v: &Value) -> i64 {
    json_i64(&v["header"], "revision")
}

/// Endpoints of the leader and of one follower.
/// Waits (bounded) until `members` members are listed, each with client URLs.
async fn wait_published(endpoint: &str, members: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = run_json(endpoint, &["member", "list"]).await;
        let listed = list["members"].as_array().cloned().unwrap_or_default();
        let published = listed.iter().filter(|m| m["clientURLs"].as_array().is_some_and(|u| !u.is_empty())).count();
        if listed.len() == members && published == members {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "members did not all publish their client URLs: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leader_and_follower(cluster: &Cluster) -> (String, String) {
    let leader = cluster.wait_for_leader().await;
    let follower = (0..cluster.size()).find(|&i| i != leader).unwrap();
    (cluster.endpoint(leader), cluster.endpoint(follower))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_json_and_revisions() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;

    assert_eq!(run(&follower, &["put", "greeting", "hello"]).await, "OK\n");
    assert_eq!(run(&leader, &["get", "greeting"]).await, "greeting\nhello\n");
    assert_eq!(run(&follower, &["get", "greeting"]).await, "greeting\nhello\n");
    assert_eq!(run(&follower, &["get", "missing"]).await, "");
    assert_eq!(run(&follower, &["get", "greeting", "--print-value-only"]).await, "hello\n");

    let j = run_json(&follower, &["get", "greeting"]).await;
    assert_eq!(kvs(&j), vec![("greeting".into(), "hello".into())]);
    assert_eq!(json_i64(&j, "count"), 1);
    assert!(j["header"]["cluster_id"].as_u64().unwrap() != 0);
    assert!(j["header"]["member_id"].as_u64().unwrap() != 0);
    assert!(j["header"]["raft_term"].as_u64().unwrap() >= 1);
    let kv = &j["kvs"][0];
    let created = json_i64(kv, "create_revision");
    assert_eq!(json_i64(kv, "mod_revision"), created);
    assert_eq!(json_i64(kv, "version"), 1);
    assert_eq!(header_rev(&j), created, "nothing written since the put");

    // Overwrite: version 2, new mod revision, same create revision.
    let put = run_json(&leader, &["put", "greeting", "hi again"]).await;
    let rev2 = header_rev(&put);
    assert_eq!(rev2, created + 1);
    let j = run_json(&follower, &["get", "greeting"]).await;
    let kv = &j["kvs"][0];
    assert_eq!(json_str(&kv["value"]), "hi again");
    assert_eq!(json_i64(kv, "create_revision"), created);
    assert_eq!(json_i64(kv, "mod_revision"), rev2);
    assert_eq!(json_i64(kv, "version"), 2);

    // --rev reads the past, through a follower.
    let old = run_json(&follower, &["get", "greeting", &format!("--rev={created}")]).await;
    assert_eq!(kvs(&old), vec![("greeting".into(), "hello".into())]);
    assert_eq!(header_rev(&old), rev2, "header revision is the current one");
    let before = run_json(&follower, &["get", "greeting", &format!("--rev={}", created - 1)]).await;
    assert_eq!(kvs(&before), vec![]);

    // Serializable read on a follower (eventually sees the write).
    let mut seen = String::new();
    for _ in 0..50 {
        seen = run(&follower, &["get", "greeting", "--consistency=s"]).await;
        if seen == "greeting\nhi again\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "greeting\nhi again\n");

    // A future revision is an error.
    let err = run_fail(&follower, &["get", "greeting", &format!("--rev={}", rev2 + 100)], b"").await;
    assert!(err.contains("etcdserver: mvcc: required revision is a future revision"), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prefix_from_key_range_and_limit() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("p/d", "4"), ("q", "5"), ("o", "0")] {
        run(&leader, &["put", k, v]).await;
    }

    assert_eq!(run(&follower, &["get", "p/", "--prefix"]).await, "p/a\n1\np/b\n2\np/c\n3\np/d\n4\n");
    let j = run_json(&follower, &["get", "p/", "--prefix"]).await;
    assert_eq!(keys(&j), vec!["p/a", "p/b", "p/c", "p/d"]);
    assert_eq!(json_i64(&j, "count"), 4);
    assert_eq!(j.get("more"), None, "more is false (omitted)");

    let j = run_json(&follower, &["get", "p/c", "--from-key"]).await;
    assert_eq!(keys(&j), vec!["p/c", "p/d", "q"]);

    // Explicit range [p/b, p/d).
    let j = run_json(&leader, &["get", "p/b", "p/d"]).await;
    assert_eq!(keys(&j), vec!["p/b", "p/c"]);

    // --limit: count is the whole range, more is set.
    let j = run_json(&follower, &["get", "p/", "--prefix", "--limit=2"]).await;
    assert_eq!(keys(&j), vec!["p/a", "p/b"]);
    assert_eq!(json_i64(&j, "count"), 4);
    assert_eq!(j["more"], Value::Bool(true));
    let j = run_json(&follower, &["get", "p/", "--prefix", "--limit=4"]).await;
    assert_eq!(keys(&j).len(), 4);
    assert_eq!(j.get("more"), None);
    let j = run_json(&follower, &["get", "", "--from-key", "--limit=1"]).await;
    assert_eq!(keys(&j), vec!["o"]);
    assert_eq!(json_i64(&j, "count"), 6);
    assert_eq!(j["more"], Value::Bool(true));

    // --keys-only prints each key followed by an empty value line.
    assert_eq!(run(&follower, &["get", "p/", "--prefix", "--keys-only"]).await, "p/a\n\np/b\n\np/c\n\np/d\n\n");
    let j = run_json(&follower, &["get", "p/", "--prefix", "--keys-only"]).await;
    assert!(j["kvs"].as_array().unwrap().iter().all(|kv| kv.get("value").is_none()));

    // Serializable prefix read on a follower.
    let j = run_json(&follower, &["get", "p/", "--prefix", "--consistency=s", "--limit=3"]).await;
    assert_eq!(keys(&j), vec!["p/a", "p/b", "p/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sorted_by_every_target() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    // Chosen so that every sort target gives a different, tie-free order:
    // create: c a d b; mod: a d b c; version: a(1) d(2) b(3) c(4);
    // value: d("b") b("k") c("p") a("z"); key: a b c d.
    for (k, v) in common::SORT_FIXTURE {
        run(&follower, &["put", k, v]).await;
    }
    let cases: [(&str, [&str; 4]); 5] = [
        ("KEY", ["s/a", "s/b", "s/c", "s/d"]),
        ("CREATE", ["s/c", "s/a", "s/d", "s/b"]),
        ("MODIFY", ["s/a", "s/d", "s/b", "s/c"]),
        ("VERSION", ["s/a", "s/d", "s/b", "s/c"]),
        ("VALUE", ["s/d", "s/b", "s/c", "s/a"]),
    ];
    for (target, ascending) in cases {
        let mut descending = ascending;
        descending.reverse();
        for (order, expected) in [("ASCEND", ascending), ("DESCEND", descending)] {
            let args = ["get", "s/", "--prefix", &format!("--sort-by={target}"), &format!("--order={order}")];
            let ep = if order == "ASCEND" { &leader } else { &follower };
            let j = run_json(ep, &args).await;
            assert_eq!(keys(&j), expected, "--sort-by={target} --order={order}");
            assert_eq!(json_i64(&j, "count"), 4);
        }
        // Sorting happens before the limit.
        let args = ["get", "s/", "--prefix", &format!("--sort-by={target}"), "--order=DESCEND", "--limit=2"];
        let j = run_json(&follower, &args).await;
        assert_eq!(keys(&j), vec![ascending[3], ascending[2]], "{args:?}");
        assert_eq!(j["more"], Value::Bool(true));
        assert_eq!(json_i64(&j, "count"), 4);
    }
    // Simple output of a sorted read.
    assert_eq!(
        run(&follower, &["get", "s/", "--prefix", "--sort-by=VALUE", "--order=DESCEND"]).await,
        "s/a\nz\ns/c\np\ns/b\nk\ns/d\nb\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prev_kv() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    for (k, v) in [("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "4")] {
        run(&leader, &["put", k, v]).await;
    }
    assert_eq!(run(&follower, &["del", "d/a", "--prev-kv"]).await, "1\nd/a\n1\n");
    assert_eq!(run(&follower, &["del", "d/a"]).await, "0\n");
    assert_eq!(run(&follower, &["del", "nothing-here", "--prev-kv"]).await, "0\n");
    let before = header_rev(&run_json(&follower, &["get", "e"]).await);
    let j = run_json(&leader, &["del", "d/", "--prefix", "--prev-kv"]).await;
    assert_eq!(json_i64(&j, "deleted"), 2);
    let prev: Vec<(String, String)> =
        j["prev_kvs"].as_array().unwrap().iter().map(|kv| (json_str(&kv["key"]), json_str(&kv["value"]))).collect();
    assert_eq!(prev, vec![("d/b".into(), "2".into()), ("d/c".into(), "3".into())]);
    assert_eq!(header_rev(&j), before + 1, "one revision for the whole delete");
    assert_eq!(run(&follower, &["get", "d/", "--prefix"]).await, "");
    assert_eq!(run(&follower, &["get", "e"]).await, "e\n4\n");
    // A delete that deletes nothing does not bump the revision.
    let j = run_json(&follower, &["del", "d/", "--prefix"]).await;
    assert_eq!(json_i64(&j, "deleted"), 0);
    assert_eq!(header_rev(&j), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_from_stdin() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    run(&leader, &["put", "t/flag", "on"]).await;
    run(&leader, &["put", "t/counter", "1"]).await;

    // Compares hold: the success ops run.
    let script = "value(\"t/flag\") = \"on\"\nversion(\"t/counter\") > \"0\"\n\nput t/result yes\nget t/flag\n\nput t/result no\n\n";
    let out = etcdctl_in(&follower, &["txn"], script.as_bytes()).await;
    assert!(out.ok, "txn failed: {}", out.stderr);
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n\nt/flag\non\n");
    assert_eq!(run(&follower, &["get", "t/result"]).await, "t/result\nyes\n");

    // A compare fails: the failure ops run.
    let script = "value(\"t/flag\") = \"off\"\n\nput t/result yes\n\nput t/result no\ndel t/counter\n\n";
    let out = etcdctl_in(&follower, &["txn"], script.as_bytes()).await;
    assert!(out.ok, "txn failed: {}", out.stderr);
    assert_eq!(out.stdout, "FAILURE\n\nOK\n\n1\n");
    assert_eq!(run(&leader, &["get", "t/result"]).await, "t/result\nno\n");
    assert_eq!(run(&leader, &["get", "t/counter"]).await, "");

    // Revision compares, JSON output: one revision for all ops.
    let j = run_json(&leader, &["get", "t/flag"]).await;
    let flag_mod = json_i64(&j["kvs"][0], "mod_revision");
    let now = header_rev(&j);
    let script = format!("mod(\"t/flag\") = \"{flag_mod}\"\ncreate(\"t/none\") = \"0\"\n\nput t/x 1\nput t/y 2\n\n\n");
    let out = etcdctl_in(&follower, &["txn", "-w", "json"], script.as_bytes()).await;
    assert!(out.ok, "txn failed: {}", out.stderr);
    let j: Value = serde_json::from_str(&out.stdout).expect("txn JSON");
    assert_eq!(j["succeeded"], Value::Bool(true));
    assert_eq!(header_rev(&j), now + 1);
    assert_eq!(j["responses"].as_array().unwrap().len(), 2);
    let j = run_json(&follower, &["get", "t/x"]).await;
    assert_eq!(json_i64(&j["kvs"][0], "mod_revision"), now + 1);
    let j = run_json(&follower, &["get", "t/y"]).await;
    assert_eq!(json_i64(&j["kvs"][0], "mod_revision"), now + 1);

    // An invalid txn (same key put twice) is rejected and changes nothing.
    let script = "\nput t/dup 1\nput t/dup 2\n\n\n";
    let err = run_fail(&follower, &["txn"], script.as_bytes()).await;
    assert!(err.contains("etcdserver: duplicate key given in txn request"), "stderr: {err}");
    assert_eq!(run(&leader, &["get", "t/dup"]).await, "");
    assert_eq!(header_rev(&run_json(&leader, &["get", "t/dup"]).await), now + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_makes_old_revisions_unreadable() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    let first = header_rev(&run_json(&leader, &["put", "c/k", "v1"]).await);
    let second = header_rev(&run_json(&leader, &["put", "c/k", "v2"]).await);
    let third = header_rev(&run_json(&leader, &["put", "c/k", "v3"]).await);
    assert_eq!((second, third), (first + 1, first + 2));

    assert_eq!(run(&follower, &["compaction", &second.to_string()]).await, format!("compacted revision {second}\n"));
    let err = run_fail(&follower, &["get", "c/k", &format!("--rev={first}")], b"").await;
    assert!(err.contains("required revision has been compacted"), "stderr: {err}");
    let err = run_fail(&leader, &["get", "c/k", &format!("--rev={first}")], b"").await;
    assert!(err.contains("required revision has been compacted"), "stderr: {err}");
    // The compaction revision itself and later ones stay readable.
    assert_eq!(run(&follower, &["get", "c/k", &format!("--rev={second}")]).await, "c/k\nv2\n");
    assert_eq!(run(&follower, &["get", "c/k"]).await, "c/k\nv3\n");
    // Compacting again at or below the compacted revision fails.
    let err = run_fail(&leader, &["compaction", &second.to_string()], b"").await;
    assert!(err.contains("required revision has been compacted"), "stderr: {err}");
    let err = run_fail(&leader, &["compaction", &(third + 10).to_string()], b"").await;
    assert!(err.contains("required revision is a future revision"), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_put_from_stdin_is_rejected() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    let before = header_rev(&run_json(&leader, &["get", "big"]).await);

    // 1.6 MiB: above the 1.5 MiB request limit, below the 2 MiB gRPC limit.
    let value = vec![b'x'; 1024 * 1024 * 16 / 10];
    for ep in [&follower, &leader] {
        let err = run_fail(ep, &["put", "big"], &value).await;
        assert!(err.contains("request is too large"), "stderr: {err}");
    }
    let j = run_json(&follower, &["get", "big"]).await;
    assert_eq!(kvs(&j), vec![], "the oversized value must not be stored");
    assert_eq!(header_rev(&j), before, "nothing was applied");

    // A value read from stdin that fits is stored as is.
    let value = vec![b'y'; 1024 * 1024];
    let out = etcdctl_in(&follower, &["put", "big"], &value).await;
    assert!(out.ok, "put of 1 MiB from stdin failed: {}", out.stderr);
    let j = run_json(&leader, &["get", "big"]).await;
    assert_eq!(b64decode(j["kvs"][0]["value"].as_str().unwrap()), value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_grant_keep_alive_time_to_live_list_and_revoke() {
    let cluster = Cluster::start(3).await;
    let (leader, follower) = leader_and_follower(&cluster).await;
    let granted = run(&follower, &["lease", "grant", "60"]).await;
    let id = granted.split_whitespace().nth(1).expect("lease <id> granted ...").to_string();
    assert_eq!(granted.trim(), format!("lease {id} granted with TTL(60s)"));
    let lease_flag = format!("--lease={id}");
    assert_eq!(run(&leader, &["put", &lease_flag, "lk/a", "1"]).await.trim(), "OK");
    assert_eq!(run(&follower, &["put", &lease_flag, "lk/b", "2"]).await.trim(), "OK");

    let kept = run(&follower, &["lease", "keep-alive", "--once", &id]).await;
    assert_eq!(kept.trim(), format!("lease {id} keepalived with TTL(60)"));
    let ttl = run(&follower, &["lease", "timetolive", "--keys", &id]).await;
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "{ttl}");
    assert!(ttl.trim_end().ends_with("s), attached keys([lk/a lk/b])"), "{ttl}");
    let remaining: i64 = ttl[prefix.len()..].split('s').next().unwrap().parse().expect("remaining seconds");
    assert!(remaining > 0 && remaining <= 60, "{ttl}");
    assert_eq!(run(&leader, &["lease", "list"]).await, format!("found 1 leases\n{id}\n"));

    assert_eq!(run(&leader, &["lease", "revoke", &id]).await.trim(), format!("lease {id} revoked"));
    assert_eq!(run(&follower, &["get", "lk/", "--prefix"]).await, "");
    assert_eq!(run(&follower, &["lease", "timetolive", &id]).await.trim(), format!("lease {id} already expired"));
    let err = run_fail(&follower, &["put", &lease_flag, "lk/c", "3"], b"").await;
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
    let err = run_fail(&leader, &["lease", "revoke", &id], b"").await;
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
}

/// The Cluster and Maintenance commands an operator uses, as etcdctl prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_endpoint_alarm_defrag_snapshot_and_move_leader_commands() {
    let mut cluster = Cluster::start(3).await;
    // Full URLs, as operators write them: etcdctl 3.4 then sends the URL itself as
    // the HTTP/2 `:authority` of its per-endpoint calls (`--cluster` among them).
    let all = cluster.endpoints().join(",");
    let (_, follower) = leader_and_follower(&cluster).await;

    let table = run(&follower, &["member", "list", "-w", "table"]).await;
    for name in ["n1", "n2", "n3"] {
        assert!(table.contains(name), "member list names {name}:\n{table}");
    }
    assert!(table.contains("started"), "{table}");

    // Add a learner, start it, promote it once it has caught up, remove it.
    let i = cluster.prepare_member();
    let peer = cluster.peer_url(i);
    let added = run(&follower, &["member", "add", "n4", "--learner", &format!("--peer-urls={peer}")]).await;
    assert!(added.contains("added to cluster"), "{added}");
    let id_hex = added.split_whitespace().nth(1).expect("Member <id> added").to_string();
    let refused = run_fail(&follower, &["member", "promote", &id_hex], b"").await;
    assert!(refused.contains("can only promote a learner member which is in sync with leader"), "{refused}");
    cluster.start_joining(i);
    let mut promoted = false;
    for _ in 0..60 {
        if etcdctl(&follower, &["member", "promote", &id_hex]).await.ok {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(promoted, "the learner was promoted once caught up");
    let list = run_json(&follower, &["member", "list"]).await;
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 4);
    assert!(members.iter().all(|m| m.get("isLearner").is_none()), "{list}");
    let removed = run(&follower, &["member", "remove", &id_hex]).await;
    assert!(removed.contains("removed from cluster"), "{removed}");
    let unknown = run_fail(&follower, &["member", "remove", "abcdef"], b"").await;
    assert!(unknown.contains("member not found"), "{unknown}");

    // Endpoint status, health and hashes of every member, found through one. A
    // member is listed with its client URLs once it has published them.
    wait_published(&follower, 3).await;
    let status = run(&follower, &["endpoint", "status", "--cluster", "-w", "table"]).await;
    assert!(status.contains("RAFT TERM") && status.contains("true"), "{status}");
    assert_eq!(status.matches("http://").count(), 3, "one row per member:\n{status}");
    let health = etcdctl(&follower, &["endpoint", "health", "--cluster"]).await;
    // etcdctl 3.4 reports health on stderr.
    let report = format!("{}{}", health.stdout, health.stderr);
    assert!(health.ok && report.matches("is healthy").count() == 3, "{report}");
    run(&all, &["put", "hk", "v"]).await;
    let hashes = run_json(&follower, &["endpoint", "hashkv", "--cluster"]).await;
    let hashes: Vec<i64> = hashes.as_array().expect("array").iter().map(|h| json_i64(&h["HashKV"], "hash")).collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members' hashes agree: {hashes:?}");

    // Alarms, defragmentation, a backup.
    assert_eq!(run(&follower, &["alarm", "list"]).await.trim(), "");
    run(&follower, &["alarm", "disarm"]).await;
    let defrag = run(&follower, &["defrag", "--cluster"]).await;
    assert_eq!(defrag.matches("Finished defragmenting").count(), 3, "{defrag}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    let saved = run(&follower, &["snapshot", "save", path.to_str().unwrap()]).await;
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    assert!(std::fs::metadata(&path).unwrap().len() > 0);

    // Leadership to a named follower.
    let status = run_json(&follower, &["endpoint", "status"]).await;
    let leader_id = status[0]["Status"]["leader"].as_u64().expect("leader id");
    let target = run_json(&all, &["endpoint", "status"]).await;
    let target_id = target
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["header"]["member_id"].as_u64().unwrap())
        .find(|id| *id != leader_id)
        .unwrap();
    let moved = run(&all, &["move-leader", &format!("{target_id:x}")]).await;
    assert!(moved.contains("Leadership transferred"), "{moved}");
    let status = run_json(&follower, &["endpoint", "status"]).await;
    assert_eq!(status[0]["Status"]["leader"].as_u64(), Some(target_id));
}
