//! Membership and maintenance commands (member, move-leader, endpoint --cluster,
//! hashkv, alarm, defrag, snapshot, cluster health) on a three-member cluster.
//!
//! The same sequence runs against etcd and Cairn.

mod common;

use common::{ctl, Kind, TestCluster};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn member_ids(ep: &str) -> Vec<u64> {
    let j = ctl(ep, &["member", "list", "-w", "json"]).json();
    j["members"].as_array().unwrap().iter().map(|m| m["ID"].as_u64().unwrap()).collect()
}

fn leader_of(ep: &str) -> u64 {
    ctl(ep, &["endpoint", "status", "-w", "json"]).json()[0]["Status"]["leader"].as_u64().unwrap()
}

/// `member_list_has_every_client_url`: whether one member's member list names
/// every member's client URLs (etcd: yes), so that `--cluster` from one endpoint
/// reaches them all; otherwise the cluster-wide commands are given every endpoint.
fn membership_and_maintenance(kind: Kind, member_list_has_every_client_url: bool) {
    let mut c = TestCluster::start(kind, 3);
    let one = c.endpoint(0);
    let all = c.endpoints();
    let from = if member_list_has_every_client_url { one.clone() } else { all.clone() };

    // member list in every format.
    let ids = member_ids(&one);
    assert_eq!(ids.len(), 3);
    let simple = ctl(&one, &["member", "list"]).ok().to_string();
    assert_eq!(simple.lines().count(), 3, "{simple}");
    assert!(simple.contains(", started, m1, http://127.0.0.1:"), "{simple}");
    let table = ctl(&one, &["member", "list", "-w", "table"]).ok().to_string();
    assert!(table.contains("| ID") && table.contains("IS LEARNER"), "{table}");

    // Unknown members are refused with the list of real ones.
    ctl(&one, &["member", "remove", "abcdef"]).fails(1, &["member abcdef is not in the cluster", "member list"]);
    ctl(&one, &["member", "update", "abcdef", "--peer-urls", "http://127.0.0.1:1"]).fails(1, &["not in the cluster"]);
    ctl(&one, &["member", "promote", "abcdef"]).fails(1, &["not in the cluster"]);
    ctl(&one, &["move-leader", "abcdef"]).fails(1, &["not in the cluster"]);
    ctl(&one, &["member", "remove", "xyz"]).fails(3, &["hexadecimal"]);

    // endpoint --cluster reaches every member.
    let status = ctl(&from, &["endpoint", "status", "--cluster", "-w", "json"]).json();
    assert_eq!(status.as_array().unwrap().len(), 3, "{status}");
    let health = ctl(&from, &["endpoint", "health", "--cluster", "-w", "json"]).json();
    assert!(health.as_array().unwrap().iter().all(|h| h["health"] == true), "{health}");

    // cluster health: one screen, OK.
    let report = ctl(&from, &["cluster", "health", "-w", "json"]).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["members"].as_array().unwrap().len(), 3);
    assert!(report["members"].as_array().unwrap().iter().all(|m| m["lag"].as_u64().is_some()), "{report}");
    let screen = ctl(&from, &["cluster", "health"]).ok().to_string();
    assert!(screen.contains(": OK (3 members, leader m"), "{screen}");
    assert!(screen.contains("alarms: none") && screen.contains("slowest member: "), "{screen}");

    // hashkv: every member hashes the same revision the same way.
    ctl(&all, &["put", "h", "1"]).ok();
    let rev = ctl(&all, &["get", "h", "-w", "json"]).json()["header"]["revision"].as_i64().unwrap();
    let hashes = ctl(&from, &["endpoint", "hashkv", "--cluster", "--rev", &rev.to_string(), "-w", "json"]).json();
    let hashes: Vec<&Value> = hashes.as_array().unwrap().iter().map(|h| &h["HashKV"]["hash"]).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");

    // alarms: none to list or disarm.
    assert_eq!(ctl(&one, &["alarm", "list"]).ok(), "");
    assert_eq!(ctl(&one, &["alarm", "list", "-w", "json"]).json()["alarms"], Value::Array(vec![]));
    assert_eq!(ctl(&one, &["alarm", "disarm"]).ok(), "");

    // defrag every member.
    let out = ctl(&from, &["defrag", "--cluster"]).ok().to_string();
    assert_eq!(out.matches("Finished defragmenting").count(), 3, "{out}");

    // snapshot save: one endpoint only; the file is complete and the .part is gone.
    ctl(&all, &["snapshot", "save", "x.db"]).fails(3, &["exactly one endpoint"]);
    let file = c.temp_dir().join("snap.db");
    let out = ctl(&one, &["snapshot", "save", file.to_str().unwrap()]).ok().to_string();
    assert_eq!(out, format!("Snapshot saved at {}\n", file.display()));
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    assert!(!c.temp_dir().join("snap.db.part").exists());

    // member add --learner / update / promote (refused: never started) / remove.
    let peer = format!("http://127.0.0.1:{}", free_port());
    // etcd refuses membership changes ("unhealthy cluster") until every member has
    // been connected for a few seconds; retry that refusal only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let added = loop {
        let out = ctl(&one, &["member", "add", "m4", "--learner", "--peer-urls", &peer]);
        if out.code == 0 || !out.stderr.contains("unhealthy cluster") || std::time::Instant::now() > deadline {
            break out.ok().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(added.contains("added to cluster") && added.contains("as a learner"), "{added}");
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    assert!(added.contains(&format!("m4={peer}")), "{added}");
    let new_id = *member_ids(&one).iter().find(|id| !ids.contains(id)).expect("the new member");
    let hex = format!("{new_id:x}");
    let listed = ctl(&one, &["member", "list"]).ok().to_string();
    assert!(listed.contains(&format!("{hex}, unstarted, , {peer}, , true")), "{listed}");
    let peer2 = format!("http://127.0.0.1:{}", free_port());
    let updated = ctl(&one, &["member", "update", &hex, "--peer-urls", &peer2]).ok().to_string();
    assert!(updated.starts_with(&format!("Member {hex:>16} updated in cluster")), "{updated}");
    let promote = ctl(&one, &["member", "promote", &hex]);
    assert_ne!(promote.code, 0, "promoting a learner that never started must fail: {promote:?}");
    let removed = ctl(&one, &["member", "remove", &hex]).ok().to_string();
    assert!(removed.starts_with(&format!("Member {hex:>16} removed from cluster")), "{removed}");
    assert_eq!(member_ids(&one).len(), 3);

    // move-leader to a follower, asked through any endpoint.
    let leader = leader_of(&one);
    let target = *ids.iter().find(|&&id| id != leader).unwrap();
    let moved = ctl(&all, &["move-leader", &format!("{target:x}")]).ok().to_string();
    assert_eq!(moved, format!("Leadership transferred from {leader:x} to {target:x}\n"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while leader_of(&one) != target {
        assert!(std::time::Instant::now() < deadline, "leadership did not move to {target:x}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ctl(&all, &["move-leader", &format!("{target:x}")]).fails(1, &["already the leader"]);

    // A dead follower: cluster health says NOT OK, names it, exits 5.
    let leader = leader_of(&one);
    let report = ctl(&from, &["cluster", "health", "-w", "json"]).json();
    let victim = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ID"].as_u64() != Some(leader) && m["endpoint"] != one.as_str())
        .map(|m| m["endpoint"].as_str().unwrap().to_string())
        .expect("a follower that is not member 1");
    let idx = (0..3).find(|&i| c.endpoint(i) == victim).unwrap();
    c.kill(idx);
    let out = ctl(&from, &["cluster", "health", "--dial-timeout", "500ms"]);
    out.fails(5, &["cluster is not healthy", "unreachable"]);
    assert!(out.stdout.contains("NOT OK") && out.stdout.contains("unreachable"), "{out:?}");
}

#[test]
fn membership_and_maintenance_on_etcd() {
    membership_and_maintenance(Kind::Etcd, true);
}

#[test]
fn membership_and_maintenance_on_cairn() {
    membership_and_maintenance(Kind::Cairn, false);
}

#[test]
fn cluster_flag_reaches_every_member_from_one_endpoint_on_cairn() {
    let c = TestCluster::start(Kind::Cairn, 3);
    let one = c.endpoint(0);
    let list = ctl(&one, &["member", "list", "-w", "json"]).json();
    for m in list["members"].as_array().unwrap() {
        assert_eq!(m["clientURLs"].as_array().map(Vec::len), Some(1), "{list}");
    }
    let status = ctl(&one, &["endpoint", "status", "--cluster", "-w", "json"]).json();
    assert_eq!(status.as_array().unwrap().len(), 3, "{status}");
}
