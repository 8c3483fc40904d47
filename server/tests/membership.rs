//! Membership changes through the Cluster API, leadership transfer, and members
//! that fall behind: real processes, driven with the `etcd-client` crate.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, ok, retry, within, Cluster};
use etcd_client::{Client, MemberAddOptions};

/// The cluster's members as member `i` lists them: (id, name, is_learner).
async fn members(c: &mut Client) -> Vec<(u64, String, bool)> {
    let resp = ok("member list", c.member_list()).await;
    resp.members().iter().map(|m| (m.id(), m.name().to_string(), m.is_learner())).collect()
}

async fn member_id(c: &mut Client) -> u64 {
    ok("status", c.status()).await.header().expect("header").member_id()
}

/// Adds a member (a voter unless `learner`), starts it, and waits until it is a
/// voter (or, for a learner, until it serves). Returns its index and ID.
async fn grow(cluster: &mut Cluster, via: usize, learner: bool) -> (usize, u64) {
    grow_within(cluster, via, learner, Duration::from_secs(60)).await
}

/// [`grow`], waiting up to `within` for the new member to become a voter.
async fn grow_within(cluster: &mut Cluster, via: usize, learner: bool, within: Duration) -> (usize, u64) {
    let i = cluster.prepare_member();
    let mut c = cluster.client(via).await;
    let opts = if learner { Some(MemberAddOptions::new().with_is_learner()) } else { None };
    let added = ok("member add", c.member_add([cluster.peer_url(i)], opts)).await;
    let id = added.member().expect("added member").id();
    cluster.start_joining(i);
    if !learner {
        retry("new member becomes a voter", within, Duration::from_secs(5), || {
            let mut c = c.clone();
            async move {
                let list = members(&mut c).await;
                match list.iter().find(|m| m.0 == id) {
                    Some((_, name, false)) if !name.is_empty() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    (i, id)
}

/// Writes `k<n>` keys one after another until stopped; returns the acknowledged ones.
fn spawn_writer(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut c = Client::connect(endpoints, None).await.expect("writer connects");
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let key = format!("k{n:06}");
            n += 1;
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), c.put(key.clone(), "v", None)).await {
                acked.push(key);
            }
        }
        acked
    })
}

/// Every member's HashKV at one revision: all equal.
async fn assert_same_hash(cluster: &Cluster, members: &[usize]) {
    let mut first = cluster.client(members[0]).await;
    let rev = ok("get", first.get("k", None)).await.header().unwrap().revision();
    let mut hashes = BTreeMap::new();
    for &i in members {
        let mut c = cluster.client(i).await;
        // A member may not have applied `rev` yet: a linearizable read waits for it.
        ok("barrier read", c.get("k", None)).await;
        let h = ok("hash kv", c.hash_kv(rev)).await;
        hashes.insert(i, h.hash());
    }
    let distinct: std::collections::BTreeSet<_> = hashes.values().collect();
    assert_eq!(distinct.len(), 1, "members' HashKV at revision {rev} differ: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_one_to_three_to_five_and_shrink_to_three_under_writes() {
    let mut cluster = Cluster::start(1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(vec![cluster.endpoint(0)], stop.clone());
    let mut ids = vec![member_id(&mut cluster.client(0).await).await];
    for _ in 0..4 {
        let (_, id) = grow(&mut cluster, 0, false).await;
        ids.push(id);
    }
    let mut c = cluster.client(0).await;
    let list = members(&mut c).await;
    assert_eq!(list.len(), 5, "{list:?}");
    assert!(list.iter().all(|m| !m.2), "all voters: {list:?}");
    // Shrink: remove two members that are not member 0 (the writer's endpoint).
    for i in [3, 4] {
        let id = member_id(&mut cluster.client(i).await).await;
        ok("member remove", c.member_remove(id)).await;
        assert!(cluster.wait_exit(i, Duration::from_secs(30)).await, "removed member {i} stops by itself");
        assert!(cluster.log(i).contains("removed from the cluster"), "member {i} says why it stopped");
    }
    assert_eq!(members(&mut c).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = within("writer stops", writer).await.expect("writer task");
    assert!(acked.len() > 10, "the writer made progress throughout: {}", acked.len());
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        let resp =
            ok("read all", c.get("k", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()))).await;
        let present: std::collections::BTreeSet<String> =
            resp.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !present.contains(*k)).collect();
        assert!(lost.is_empty(), "member {i} lost acknowledged writes: {lost:?}");
    }
    assert_same_hash(&cluster, &[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_promotion_waits_until_it_has_caught_up() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    for n in 0..200 {
        ok("put", c.put(format!("p{n}"), vec![b'x'; 1024], None)).await;
    }
    let i = cluster.prepare_member();
    let added =
        ok("add learner", c.member_add([cluster.peer_url(i)], Some(MemberAddOptions::new().with_is_learner()))).await;
    let id = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());
    // Not started: it has nothing, so it cannot be promoted.
    let refused = c.member_promote(id).await;
    common::assert_grpc_error(
        "promote a lagging learner",
        refused,
        tonic::Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    // A voter cannot be "promoted".
    let voter = member_id(&mut cluster.client(0).await).await;
    common::assert_grpc_error(
        "promote a voter",
        c.member_promote(voter).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    cluster.start_joining(i);
    retry("promote once caught up", Duration::from_secs(60), Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { c.member_promote(id).await.map(|_| ()) }
    })
    .await;
    let list = members(&mut c).await;
    assert!(list.iter().any(|m| m.0 == id && !m.2), "promoted: {list:?}");
    let mut newest = cluster.client(i).await;
    let got = ok("read on the new voter", newest.get("p199", None)).await;
    assert_eq!(got.kvs().len(), 1);
    assert_same_hash(&cluster, &[0, 1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_member_rejoins_with_a_new_id_and_the_old_one_is_refused() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    ok("put", c.put("before", "1", None)).await;
    let old = member_id(&mut cluster.client(2).await).await;
    ok("remove", c.member_remove(old)).await;
    assert!(cluster.wait_exit(2, Duration::from_secs(30)).await, "the removed member stops by itself");
    // Unknown and removed IDs are refused.
    common::assert_grpc_error(
        "remove again",
        c.member_remove(old).await,
        tonic::Code::NotFound,
        "etcdserver: member not found",
    );
    // Restarted with its old data directory, it is refused and stops again.
    cluster.restart(2);
    assert!(cluster.wait_exit(2, Duration::from_secs(30)).await, "a removed member cannot come back");
    // Its replacement: a fresh data directory at new URLs, under a new ID.
    let (i, new) = grow(&mut cluster, 1, false).await;
    assert_ne!(new, old);
    ok("put", c.put("after", "2", None)).await;
    let mut fresh = cluster.client(i).await;
    assert_eq!(ok("get", fresh.get("before", None)).await.kvs().len(), 1);
    assert_eq!(ok("get", fresh.get("after", None)).await.kvs().len(), 1);
    // A duplicate peer URL is refused.
    let dup = c.member_add([cluster.peer_url(i)], None).await;
    common::assert_grpc_error(
        "duplicate peer URL",
        dup,
        tonic::Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_same_hash(&cluster, &[0, 1, i]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_to_the_named_voter() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != target).unwrap();
    let target_id = member_id(&mut cluster.client(target).await).await;
    // Sent to a member that is neither: it is forwarded to the leader.
    let mut c = cluster.client(other).await;
    ok("move leader", c.move_leader(target_id)).await;
    // Asked of the target: the member that forwarded the call may hear of the new
    // leader a moment after the old one answered it.
    let status = ok("status", cluster.client(target).await.status()).await;
    assert_eq!(status.leader(), target_id, "the named voter leads");
    ok("write after the move", c.put("moved", "yes", None)).await;
    common::assert_grpc_error(
        "move to an unknown member",
        c.move_leader(12345).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
}

/// Members that fall behind: a little (they catch up from the log) and far (the
/// leader's log was purged, so they get a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_catch_up_from_the_log_or_from_a_snapshot() {
    let behind: usize =
        std::env::var("CAIRN_TEST_BEHIND_REVISIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut cluster = Cluster::start_with(3, &["--snapshot-count", "2000", "--snapshot-catchup-entries", "500"]).await;
    let leader = cluster.wait_for_leader().await;
    let lagger = (0..3).find(|&i| i != leader).unwrap();
    let writer_member = (0..3).find(|&i| i != lagger).unwrap();

    // A little behind: fewer entries than the catch-up margin.
    cluster.kill(lagger);
    let c = cluster.client(writer_member).await;
    put_many(&c, "a", 200).await;
    cluster.restart(lagger);
    cluster.wait_ready().await;
    assert_same_hash(&cluster, &[0, 1, 2]).await;
    assert!(!cluster.log(lagger).contains("installed snapshot"), "a slightly slow follower catches up from the log");

    // Far behind: many snapshots' worth of revisions.
    cluster.kill(lagger);
    put_many(&c, "b", behind).await;
    cluster.restart(lagger);
    caught_up(&cluster, lagger).await;
    assert_same_hash(&cluster, &[0, 1, 2]).await;
    assert!(cluster.log(lagger).contains("installed snapshot"), "a far-behind follower gets a snapshot");
    let mut lag = cluster.client(lagger).await;
    let count = ok("count", lag.get("b", Some(etcd_client::GetOptions::new().with_prefix().with_count_only()))).await;
    assert_eq!(count.count() as usize, behind);
}

/// Waits (up to two minutes: a snapshot may be on its way) until member `i` serves
/// a linearizable read.
async fn caught_up(cluster: &Cluster, i: usize) {
    let endpoint = cluster.endpoint(i);
    retry("member caught up", Duration::from_secs(120), Duration::from_secs(10), || {
        let endpoint = endpoint.clone();
        async move {
            let mut c = Client::connect([endpoint], None).await?;
            c.get("k", None).await.map(|_| ())
        }
    })
    .await;
}

/// Puts `n` keys `<prefix><i>` with 32 concurrent writers.
async fn put_many(c: &Client, prefix: &str, n: usize) {
    let next = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (mut c, next, prefix) = (c.clone(), next.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut g = next.lock().unwrap();
                    if *g >= n {
                        return;
                    }
                    *g += 1;
                    *g - 1
                };
                c.put(format!("{prefix}{i:07}"), "v", None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Puts `n` incompressible values of 1 MiB under `prefix` (`seed` picks the bytes):
/// enough state that a snapshot's transfer and import take a while.
async fn put_mib_values(c: &Client, prefix: &str, n: usize, seed: u8) {
    let mut w = c.clone();
    for i in 0..n {
        let value = common::incompressible(1024 * 1024, u64::from(seed) << 32 | i as u64);
        ok("put 1 MiB", w.put(format!("{prefix}-{i}"), value, None)).await;
    }
}

/// Waits (bounded) until a file whose name starts with `stage` appears in member
/// `i`'s snapshot directory: `incoming-` during a transfer, `installing` during
/// an import.
async fn wait_for_snapshot_stage(cluster: &Cluster, i: usize, stage: &str) {
    let snap_dir = cluster.data_dir(i).join("snap");
    let seen = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let hit = std::fs::read_dir(&snap_dir)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(stage)))
                .unwrap_or(false);
            if hit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "no {stage} file in {} within 120 s", snap_dir.display());
}

/// How many keys under `prefix` member `i` holds, read locally.
async fn local_count(cluster: &Cluster, i: usize, prefix: &str) -> i64 {
    let mut c = connect(&cluster.endpoint(i)).await;
    let options = etcd_client::GetOptions::new().with_prefix().with_count_only().with_serializable();
    ok("serializable count", c.get(prefix, Some(options))).await.count()
}

const SNAPSHOT_OFTEN: [&str; 4] = ["--snapshot-count", "16", "--snapshot-catchup-entries", "4"];

/// A snapshot install interrupted by killing the receiver, during the transfer and
/// during the import, leaves a member that restarts and ends with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_snapshot_install_recovers() {
    let mut cluster = Cluster::start_with(3, &SNAPSHOT_OFTEN).await;
    let leader = cluster.wait_for_leader().await;
    let lagger = (0..3).find(|&i| i != leader).unwrap();
    let c = cluster.client(leader).await;
    for (round, stage) in [(0u8, "incoming-"), (1, "installing")] {
        cluster.kill(lagger);
        // 48 MiB of state, so that transfer and import take a while.
        put_mib_values(&c, &format!("big{round}"), 48, b'x' + round).await;
        cluster.restart(lagger);
        wait_for_snapshot_stage(&cluster, lagger, stage).await;
        cluster.kill(lagger);
        cluster.restart(lagger);
        caught_up(&cluster, lagger).await;
        assert_same_hash(&cluster, &[0, 1, 2]).await;
    }
    let mut lag = connect(&cluster.endpoint(lagger)).await;
    let got = ok("read", lag.get("big1-47", Some(etcd_client::GetOptions::new().with_serializable()))).await;
    assert_eq!(got.kvs()[0].value().len(), 1024 * 1024);
}

/// Killing the leader while it sends a snapshot leaves the receiver with its old
/// state; the next leader sends the snapshot again and every member ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_install_survives_the_sender_being_killed() {
    let mut cluster = Cluster::start_with(3, &SNAPSHOT_OFTEN).await;
    let leader = cluster.wait_for_leader().await;
    let lagger = (0..3).find(|&i| i != leader).unwrap();
    let c = cluster.client(leader).await;
    cluster.kill(lagger);
    put_mib_values(&c, "big", 48, b'x').await;
    cluster.restart(lagger);
    wait_for_snapshot_stage(&cluster, lagger, "incoming-").await;
    cluster.kill(leader);
    // The remaining two elect a leader; the receiver catches up from it.
    caught_up(&cluster, lagger).await;
    assert_eq!(local_count(&cluster, lagger, "big").await, 48);
    cluster.restart(leader);
    cluster.wait_ready().await;
    assert_same_hash(&cluster, &[0, 1, 2]).await;
}

/// Cutting the network into a member while it receives a snapshot leaves it
/// serving its old state or the new one, never a part; once the network heals the
/// transfer is retried and every member ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_install_survives_a_network_cut() {
    let cluster = Cluster::start_cuttable(3, &SNAPSHOT_OFTEN).await;
    let leader = cluster.wait_for_leader().await;
    let lagger = (0..3).find(|&i| i != leader).unwrap();
    let c = cluster.client(leader).await;
    cluster.cut(lagger);
    put_mib_values(&c, "big", 48, b'x').await;
    assert_eq!(local_count(&cluster, lagger, "big").await, 0);
    cluster.heal(lagger);
    wait_for_snapshot_stage(&cluster, lagger, "incoming-").await;
    cluster.cut(lagger);
    let mut counts = Vec::new();
    for _ in 0..10 {
        let count = local_count(&cluster, lagger, "big").await;
        assert!(count == 0 || count == 48, "a cut member holds the old state or the new one, not {count} of 48 keys");
        counts.push(count);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("keys the cut member held, every 300 ms: {counts:?}");
    cluster.heal(lagger);
    caught_up(&cluster, lagger).await;
    assert_eq!(local_count(&cluster, lagger, "big").await, 48);
    assert_same_hash(&cluster, &[0, 1, 2]).await;
}

/// A new member is built from a large snapshot (streamed in chunks from a file,
/// imported in batches) while both members' memory grows far less than the state.
/// `CAIRN_TEST_SNAPSHOT_MIB` sets the state size (default 128; the README reports a
/// 1024 MiB run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_is_rebuilt_from_a_large_snapshot_in_bounded_memory() {
    let mib: usize = std::env::var("CAIRN_TEST_SNAPSHOT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    // Two snapshots during the load: each exports the whole state.
    let snapshot_count = (mib / 2).max(50).to_string();
    let mut cluster =
        Cluster::start_with(1, &["--snapshot-count", &snapshot_count, "--snapshot-catchup-entries", "10"]).await;
    let c = cluster.client(0).await;
    let next = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (mut c, next) = (c.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut g = next.lock().unwrap();
                    if *g >= mib {
                        return;
                    }
                    *g += 1;
                    *g - 1
                };
                let value = common::incompressible(1024 * 1024, i as u64);
                c.put(format!("blob{i:05}"), value, None).await.expect("put 1 MiB");
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
    let leader_before = cluster.rss_kib(0).expect("leader rss");
    // A GiB crosses the loopback and into RocksDB slowly on a loaded machine.
    let (i, _) = grow_within(&mut cluster, 0, false, Duration::from_secs(60 + mib as u64)).await;
    let leader_peak = cluster.peak_rss_kib(0).expect("leader peak rss");
    let joiner_peak = cluster.peak_rss_kib(i).expect("new member peak rss");
    let state_kib = (mib * 1024) as u64;
    eprintln!(
        "snapshot rebuild of {mib} MiB: leader RSS {leader_before} KiB before, peak {leader_peak} KiB; new member peak RSS {joiner_peak} KiB"
    );
    assert!(cluster.log(i).contains("installed snapshot"), "the new member was built from a snapshot");
    let mut fresh = cluster.client(i).await;
    let count =
        ok("count", fresh.get("blob", Some(etcd_client::GetOptions::new().with_prefix().with_count_only()))).await;
    assert_eq!(count.count() as usize, mib);
    if mib >= 1024 {
        assert!(joiner_peak < state_kib / 2, "the new member's memory stays far below the state size");
    }
}
