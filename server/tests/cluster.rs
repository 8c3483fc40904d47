//! Replication, failover and durability of a real multi-process cluster.
//!
//! Run against Cairn: `cargo test -p cairn-server --test cluster`;
//! against etcd: `CAIRN_TEST_SERVER=etcd cargo test -p cairn-server --test cluster`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{retry, Cluster};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};

const READ_RETRY: Duration = Duration::from_secs(30);
const PER_TRY: Duration = Duration::from_secs(5);

/// Linearizable get of `key` through `client`, retried while the cluster heals.
async fn read_value(client: &Client, key: &str) -> Option<Vec<u8>> {
    let resp = retry(&format!("get {key}"), READ_RETRY, PER_TRY, || {
        let mut c = client.clone();
        let key = key.to_string();
        async move { c.get(key, None).await }
    })
    .await;
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

/// Header revision of a linearizable get through `client`.
async fn current_revision(client: &Client) -> i64 {
    let resp = retry("get (revision)", READ_RETRY, PER_TRY, || {
        let mut c = client.clone();
        async move { c.get("cairn-test-any-key", None).await }
    })
    .await;
    resp.header().expect("range response has a header").revision()
}

/// (a) A write through any member is readable, linearizably, through every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_each_member_is_read_from_every_member() {
    let cluster = Cluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..cluster.size() {
        clients.push(cluster.client(i).await);
    }
    for (i, c) in clients.iter().enumerate() {
        let key = format!("each/{i}");
        // Retried on errors only (a transient election under load); the value
        // is the same each time.
        retry(&format!("put {key} via member {i}"), READ_RETRY, PER_TRY, || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.put(key, format!("from-{i}"), None).await }
        })
        .await;
    }
    // A write acknowledged by one member must be visible to a linearizable read
    // sent afterwards to any member. Reads are retried on errors only: any
    // answer must already show the write.
    for (j, c) in clients.iter().enumerate() {
        for i in 0..cluster.size() {
            let key = format!("each/{i}");
            assert_eq!(
                read_value(c, &key).await,
                Some(format!("from-{i}").into_bytes()),
                "linearizable read of {key} (written via member {i}) through member {j}"
            );
        }
        // And the whole prefix, in one range.
        let resp = retry("get each/ prefix", READ_RETRY, PER_TRY, || {
            let mut c = c.clone();
            async move { c.get("each/", Some(GetOptions::new().with_prefix())).await }
        })
        .await;
        assert_eq!(resp.count(), cluster.size() as i64, "count of each/ through member {j}");
    }
}

/// Acknowledged writes: key -> (value, header revision of the put response).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

/// Writes `total` keys through `clients` in turn; returns the acknowledged ones.
/// Errors and timeouts count as unacknowledged (the write may or may not be
/// applied, and the test does not care).
async fn write_loop(clients: Vec<Client>, prefix: &'static str, total: usize, acked: Acked) {
    for n in 0..total {
        let mut c = clients[n % clients.len()].clone();
        let key = format!("{prefix}/{n:04}");
        let value = format!("value-{n}");
        let res = tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), value.clone(), None)).await;
        if let Ok(Ok(resp)) = res {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            acked.lock().unwrap().insert(key, (value, rev));
        } else {
            // Do not spin on a cluster that is electing a leader.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_for_acks(acked: &Acked, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < n {
        assert!(std::time::Instant::now() < deadline, "fewer than {n} writes acknowledged within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (b) SIGKILL the leader while a client writes through the other members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_during_writes_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(3).await;
    let old_leader = cluster.wait_for_leader().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    let mut clients = Vec::new();
    for &i in &survivors {
        clients.push(cluster.client(i).await);
    }

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = tokio::spawn(write_loop(clients.clone(), "failover", 200, acked.clone()));
    wait_for_acks(&acked, 20).await;
    cluster.kill(old_leader);
    let acked_before_kill = acked.lock().unwrap().len();

    tokio::time::timeout(Duration::from_secs(300), writer)
        .await
        .expect("writer finished")
        .expect("writer task did not panic");

    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader, "the killed member cannot be the leader");
    assert!(survivors.contains(&new_leader));

    // The cluster takes writes again (retried: the first attempts may still
    // race the election).
    retry("put after failover", READ_RETRY, PER_TRY, || {
        let mut c = clients[0].clone();
        async move { c.put("failover/after", "ok", None).await }
    })
    .await;

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= acked_before_kill);
    for c in &clients {
        for (key, (value, _)) in &acked {
            assert_eq!(
                read_value(c, key).await.as_deref(),
                Some(value.as_bytes()),
                "acknowledged write {key}={value} after the leader was killed"
            );
        }
    }
    eprintln!("{} of 200 writes acknowledged ({} before the kill)", acked.len(), acked_before_kill);
}

/// (c) SIGKILL every member while writes are in flight, restart them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_kill_and_restart_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = tokio::spawn(write_loop(clients.clone(), "crash", 200, acked.clone()));
    wait_for_acks(&acked, 30).await;

    for i in 0..3 {
        cluster.kill(i);
    }
    tokio::time::timeout(Duration::from_secs(300), writer)
        .await
        .expect("writer finished")
        .expect("writer task did not panic");
    let acked = acked.lock().unwrap().clone();
    // The highest revision any acknowledged write got.
    let rev_before = acked.values().map(|(_, rev)| *rev).max().unwrap();
    assert!(rev_before > 0, "put responses carry a header revision");

    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_ready().await;

    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    for (i, c) in clients.iter().enumerate() {
        for (key, (value, _)) in &acked {
            assert_eq!(
                read_value(c, key).await.as_deref(),
                Some(value.as_bytes()),
                "acknowledged write {key}={value} after restarting every member (read via member {i})"
            );
        }
        let rev_after = current_revision(c).await;
        assert!(rev_after >= rev_before, "revision went back after restart: {rev_after} < {rev_before} (member {i})");
    }
    let rev_now = current_revision(&clients[0]).await;
    let c = clients[1].clone();
    let put = retry("put after restart", READ_RETRY, PER_TRY, || {
        let mut c = c.clone();
        async move { c.put("crash/after-restart", "x", None).await }
    })
    .await;
    let put_rev = put.header().expect("put header").revision();
    assert!(
        put_rev > rev_now && put_rev > rev_before,
        "a new write must get a higher revision: {put_rev} vs {rev_now} / {rev_before}"
    );
    eprintln!("{} writes acknowledged before the crash", acked.len());
}

/// (d) A 5-member cluster keeps working with two members (one of them the
/// leader) killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_two_failures() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    let other = (0..5).find(|&i| i != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(other);
    let survivors = cluster.running();
    assert_eq!(survivors.len(), 3);
    let new_leader = cluster.wait_for_leader().await;
    assert!(survivors.contains(&new_leader));

    let mut clients = Vec::new();
    for &i in &survivors {
        clients.push(cluster.client(i).await);
    }
    for (n, c) in clients.iter().enumerate() {
        let key = format!("five/{n}");
        // The first write may still race the election, so it is retried; the
        // value is the same each time.
        retry(&format!("put {key}"), READ_RETRY, PER_TRY, || {
            let mut c = c.clone();
            let key = key.clone();
            async move { c.put(key, "v", None).await }
        })
        .await;
    }
    for (j, c) in clients.iter_mut().enumerate() {
        let resp = retry("get five/ prefix", READ_RETRY, PER_TRY, || {
            let mut c = c.clone();
            async move { c.get("five/", Some(GetOptions::new().with_prefix())).await }
        })
        .await;
        let keys: Vec<&[u8]> = resp.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(keys, vec![&b"five/0"[..], b"five/1", b"five/2"], "linearizable range through survivor {j}");
    }
}

/// The `cairn` binary allocates with jemalloc and returns freed memory on a timer:
/// jemalloc's background purge thread runs in the process (set by the binary's
/// `malloc_conf`; without it an idle member keeps the memory of its last burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_returns_freed_memory_from_a_background_thread() {
    if common::is_etcd() {
        return;
    }
    let cluster = Cluster::start(1).await;
    let pid = cluster.pid(0).expect("the member runs");
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the member's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "jemalloc_bg_thd"), "no jemalloc background thread among {names:?}");
}

/// Large writes after an idle spell do not time out behind the flushes of the
/// storage engine's memtables: after 12 s without writes, 192 MiB of 1 MiB puts
/// (twelve 16 MiB memtables' worth in each of `kv` and `kv_history`) all succeed.
/// With RocksDB's auto-tuned rate limiter, which Cairn once used, flushes slowed to
/// about 3 MiB/s after ten idle seconds, writes stopped behind them for 20 s, and the
/// puts timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_after_an_idle_spell_all_succeed() {
    const IDLE: Duration = Duration::from_secs(12);
    const WRITERS: usize = 4;
    const PUTS_EACH: usize = 48;
    const VALUE_BYTES: usize = 1 << 20;
    let cluster = Cluster::start(1).await;
    let client = cluster.client(0).await;
    tokio::time::sleep(IDLE).await;
    let count = common::put_large_values(&client, "large", WRITERS, PUTS_EACH, VALUE_BYTES).await;
    assert_eq!(count, WRITERS * PUTS_EACH);
}

/// A member killed (SIGKILL) after a mix of writes comes back with all of them:
/// every key's value and revisions, the old versions of keys written since, and the
/// events a watch from the first write delivers. Snapshots are taken often, so log
/// entries are purged while the writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_comes_back_with_every_write_version_and_event() {
    const KEYS: usize = 40;
    const PUTS: usize = 120;
    const DELETES: usize = 10;
    let extra: &[&str] = if common::is_etcd() {
        &["--snapshot-count", "50"]
    } else {
        &["--snapshot-count", "50", "--snapshot-catchup-entries", "10"]
    };
    let mut cluster = Cluster::start_with(1, extra).await;
    let mut c = cluster.client(0).await;
    // Every write in order: (revision, key, value or None for a delete).
    let mut writes: Vec<(i64, String, Option<String>)> = Vec::new();
    for n in 0..PUTS {
        let (key, value) = (format!("replay/{:02}", n % KEYS), format!("v{n}"));
        let resp = c.put(key.clone(), value.clone(), None).await.expect("put");
        writes.push((resp.header().expect("header").revision(), key, Some(value)));
    }
    for k in 0..DELETES {
        let key = format!("replay/{k:02}");
        let resp = c.delete(key.clone(), None).await.expect("delete");
        writes.push((resp.header().expect("header").revision(), key, None));
    }
    let last = writes.last().expect("writes").0;

    cluster.kill(0);
    cluster.restart(0);
    cluster.wait_ready().await;
    let c = cluster.client(0).await;

    // The latest version of every key, with its revisions.
    let mut latest: BTreeMap<&str, (i64, Option<&str>)> = BTreeMap::new();
    for (rev, key, value) in &writes {
        latest.insert(key, (*rev, value.as_deref()));
    }
    let resp = retry("range after the restart", READ_RETRY, PER_TRY, || {
        let mut c = c.clone();
        async move { c.get("replay/", Some(GetOptions::new().with_prefix())).await }
    })
    .await;
    assert_eq!(resp.header().expect("header").revision(), last, "the revision after the restart");
    let found: Vec<(String, i64, String)> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision(), kv.value_str().unwrap().to_string()))
        .collect();
    let wanted: Vec<(String, i64, String)> =
        latest.iter().filter_map(|(key, (rev, value))| Some((key.to_string(), *rev, (*value)?.to_string()))).collect();
    assert_eq!(found, wanted, "live keys after the restart");

    // Each write's version, read at its revision.
    for (rev, key, value) in &writes {
        let mut c = c.clone();
        let resp = c.get(key.as_str(), Some(GetOptions::new().with_revision(*rev))).await.expect("get at a revision");
        let at = resp.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
        assert_eq!(at.as_deref(), value.as_deref(), "{key} at revision {rev}");
    }

    // Every write's event, in order, from a watch that starts at the first.
    let mut c = c.clone();
    let options = WatchOptions::new().with_prefix().with_start_revision(writes[0].0);
    let (_watcher, mut stream) = c.watch("replay/", Some(options)).await.expect("watch");
    let mut events = Vec::new();
    while events.len() < writes.len() {
        let resp = common::within("watch events after the restart", stream.message())
            .await
            .expect("watch stream")
            .expect("watch stream open");
        for e in resp.events() {
            let kv = e.kv().expect("event kv");
            let value = (e.event_type() == EventType::Put).then(|| kv.value_str().unwrap().to_string());
            events.push((kv.mod_revision(), kv.key_str().unwrap().to_string(), value));
        }
    }
    assert_eq!(events, writes, "the events after the restart: (revision, key, value)");
}
