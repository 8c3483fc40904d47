//! Raft paths the other suites do not reach: a member that fell behind the
//! purged log catches up from a snapshot, opt-in lease reads stay linearizable
//! (both Cairn-only: skipped against etcd), concurrent writes share log entries
//! (Cairn-only), large values replicate, and a follower's ReadIndex request
//! confirms the leadership by itself with three members but not with five, nor
//! without a vote for the leader's term, as a member of an earlier version sends
//! (Cairn-only).

mod common;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::PeerMessage;
use cairn_server::raft::RaftNodeError;
use common::{http_get, is_etcd, ok, Cluster};
use etcd_client::GetOptions;
use openraft::Vote;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_from_a_snapshot() {
    if is_etcd() {
        return;
    }
    // Snapshot every 50 entries and keep only 10 behind it, so that a member that
    // misses 300 writes cannot catch up from the log.
    let flags = ["--snapshot-count", "50", "--snapshot-catchup-entries", "10"];
    let mut cluster = Cluster::start_with(3, &flags).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    cluster.kill(lagging);

    let mut c = cluster.client(leader).await;
    let first = ok("put", c.put("snap/000", "v0", None)).await.header().unwrap().revision();
    for i in 1..300 {
        ok("put", c.put(format!("snap/{i:03}"), format!("v{i}"), None)).await;
    }
    let last = ok("delete", c.delete("snap/000", None)).await.header().unwrap().revision();

    cluster.restart(lagging);
    cluster.wait_ready().await;
    let mut l = cluster.client(lagging).await;
    // Linearizable, then serializable (purely local) reads on the member that lagged.
    let all = ok("get", l.get("snap/", Some(GetOptions::new().with_prefix()))).await;
    assert_eq!(all.count(), 299);
    assert_eq!(all.kvs()[298].value(), b"v299");
    let local = ok("get", l.get("snap/", Some(GetOptions::new().with_prefix().with_serializable()))).await;
    assert_eq!(local.count(), 299);
    assert_eq!(local.header().unwrap().revision(), last);
    // History came with the snapshot.
    let old = ok("get", l.get("snap/000", Some(GetOptions::new().with_revision(first).with_serializable()))).await;
    assert_eq!(old.kvs()[0].value(), b"v0");
    assert!(cluster.log(lagging).contains("installed snapshot"), "the lagging member caught up without a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_see_every_acknowledged_write_on_every_member() {
    if is_etcd() {
        return;
    }
    let cluster = Cluster::start_with(3, &["--lease-reads", "true"]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    for round in 0..30 {
        let writer = round % 3;
        let value = format!("v{round}");
        let rev =
            ok("put", clients[writer].put("lease-read/k", value.as_str(), None)).await.header().unwrap().revision();
        for c in clients.iter_mut() {
            let got = ok("get", c.get("lease-read/k", None)).await;
            assert_eq!(got.kvs()[0].value(), value.as_bytes(), "a linearizable read missed an acknowledged write");
            assert!(got.header().unwrap().revision() >= rev);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_values_replicate_to_every_member() {
    // Values near the 1.5 MiB request limit, eight at once through a follower: each
    // AppendEntries must still fit in openraft's per-RPC time budget.
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let value = vec![b'v'; 1400 * 1024];
    let mut writers = Vec::new();
    for i in 0..8 {
        let mut c = cluster.client(follower).await;
        let value = value.clone();
        writers.push(tokio::spawn(async move { ok("put", c.put(format!("large/{i}"), value, None)).await }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        // One key per request: eight values exceed the client's 4 MiB receive limit.
        for k in 0..8 {
            let got = ok("get", c.get(format!("large/{k}"), None)).await;
            assert_eq!(got.kvs().len(), 1, "member {i} lacks large/{k}");
            assert!(got.kvs()[0].value() == value.as_slice(), "member {i} holds a damaged large/{k}");
        }
    }
}

/// The value of the metric series `series` (name and labels, as exported) of the
/// member at `endpoint`, if it has that series.
async fn metric(endpoint: &str, series: &str) -> Option<u64> {
    let Some((200, body)) = http_get(endpoint, "/metrics").await else { panic!("GET {endpoint}/metrics failed") };
    let line = body.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))?;
    Some(line.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).expect("a number") as u64)
}

/// `cairn_server_last_log_index` of the member at `endpoint`.
async fn last_log_index(endpoint: &str) -> u64 {
    metric(endpoint, "cairn_server_last_log_index").await.expect("last log index metric")
}

/// Writes through each member in turn, each followed by a linearizable read through
/// every follower that must see it; returns how the leader confirmed the followers'
/// ReadIndex requests: (by the request itself, by a quorum round).
async fn follower_reads(cluster: &Cluster, rounds: usize) -> (u64, u64) {
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..cluster.size()).filter(|&i| i != leader).collect();
    let mut writers = Vec::new();
    for i in 0..cluster.size() {
        writers.push(cluster.client(i).await);
    }
    let mut readers = Vec::new();
    for &i in &followers {
        readers.push(cluster.client(i).await);
    }
    for round in 0..rounds {
        let value = format!("v{round}");
        let writer = &mut writers[round % cluster.size()];
        let rev = ok("put", writer.put("follower-read/k", value.as_str(), None)).await.header().unwrap().revision();
        for r in readers.iter_mut() {
            let got = ok("get", r.get("follower-read/k", None)).await;
            assert_eq!(got.kvs()[0].value(), value.as_bytes(), "a linearizable read missed an acknowledged write");
            assert!(got.header().unwrap().revision() >= rev);
        }
    }
    assert_eq!(cluster.wait_for_leader().await, leader, "the leader changed during the test");
    // A counter appears with its first count.
    let served = |by: &str| format!("cairn_server_read_index_served_total{{confirmed_by=\"{by}\"}}");
    let endpoint = cluster.endpoint(leader);
    let request = metric(&endpoint, &served("request")).await.unwrap_or(0);
    (request, metric(&endpoint, &served("round")).await.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_members_a_followers_read_index_request_confirms_the_leadership_itself() {
    if is_etcd() {
        return;
    }
    const ROUNDS: usize = 30;
    let cluster = Cluster::start(3).await;
    let (by_request, _) = follower_reads(&cluster, ROUNDS).await;
    // Sequential reads: each follower's read asked the leader once.
    assert!(by_request >= 2 * ROUNDS as u64, "only {by_request} ReadIndex requests were confirmed by themselves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_five_members_a_followers_read_index_request_waits_for_a_quorum_round() {
    if is_etcd() {
        return;
    }
    const ROUNDS: usize = 10;
    let cluster = Cluster::start(5).await;
    let (by_request, by_round) = follower_reads(&cluster, ROUNDS).await;
    // A follower and the leader are two of five: no quorum.
    assert_eq!(by_request, 0, "a ReadIndex request was confirmed without a quorum");
    assert!(by_round >= 4 * ROUNDS as u64, "only {by_round} ReadIndex requests were served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_revision() {
    if is_etcd() {
        return;
    }
    const WRITES: usize = 200;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // Settle the first entries (leader's blank entry, member publishing).
    ok("put", cluster.client(leader).await.put("warm-up", "x", None)).await;
    let before = last_log_index(&cluster.endpoint(leader)).await;
    let start_revision =
        ok("get", cluster.client(leader).await.get("warm-up", None)).await.header().unwrap().revision();

    // Half through the leader, half forwarded by a follower, all at once.
    let mut writers = Vec::new();
    for i in 0..WRITES {
        let mut c = cluster.client(if i % 2 == 0 { leader } else { follower }).await;
        writers.push(tokio::spawn(async move {
            let resp = ok("put", c.put(format!("batched/{i:03}"), format!("v{i}"), None)).await;
            resp.header().expect("header").revision()
        }));
    }
    let mut revisions = Vec::new();
    for w in writers {
        revisions.push(w.await.unwrap());
    }
    revisions.sort_unstable();
    let expected: Vec<i64> = (start_revision + 1..=start_revision + WRITES as i64).collect();
    assert_eq!(revisions, expected, "every write has a revision of its own, with no gap");

    let entries = last_log_index(&cluster.endpoint(leader)).await - before;
    assert!(entries < WRITES as u64, "{WRITES} concurrent writes took {entries} log entries: none were batched");
    let got = ok("get", cluster.client(follower).await.get("batched/", Some(GetOptions::new().with_prefix()))).await;
    assert_eq!(got.kvs().len(), WRITES, "every write is readable through the follower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_confirms_a_read_index_request_by_itself_only_with_a_vote_for_its_term() {
    if is_etcd() {
        return;
    }
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // Commits an entry of the leader's term.
    let put = ok("put", cluster.client(leader).await.put("peer-read/k", "v", None)).await;
    let (cluster_id, term) = (put.header().unwrap().cluster_id(), put.header().unwrap().raft_term());
    let member_id = |status: etcd_client::StatusResponse| status.header().unwrap().member_id();
    let leader_id = member_id(ok("status", cluster.client(leader).await.status()).await);
    let follower_id = member_id(ok("status", cluster.client(follower).await.status()).await);

    // ReadIndex calls to the leader's peer port, as the follower sends them.
    let mut peer = PeerClient::connect(cluster.peer_url(leader)).await.expect("connect to the leader's peer port");
    let endpoint = cluster.endpoint(leader);
    let served = |by: &str| format!("cairn_server_read_index_served_total{{confirmed_by=\"{by}\"}}");
    let (by_request, by_round) = (served("request"), served("round"));
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "a vote for the leader's term",
            bincode::serialize(&Some(Vote::new_committed(term, leader_id))).unwrap(),
            &by_request,
        ),
        ("an earlier member's request (no payload)", Vec::new(), &by_round),
        ("no vote", bincode::serialize(&None::<Vote<u64>>).unwrap(), &by_round),
        (
            "a vote of an earlier term",
            bincode::serialize(&Some(Vote::new_committed(term - 1, leader_id))).unwrap(),
            &by_round,
        ),
    ];
    for (what, payload, counted) in cases {
        let before = metric(&endpoint, counted).await.unwrap_or(0);
        let reply = peer.read_index(PeerMessage { cluster_id, from: follower_id, payload }).await;
        let reply = reply.unwrap_or_else(|e| panic!("{what}: the call failed: {e}")).into_inner();
        let answer: Result<u64, RaftNodeError> = bincode::deserialize(&reply.payload).expect("a decodable reply");
        assert!(answer.expect(what) > 0, "{what}: a read index past the put");
        let after = metric(&endpoint, counted).await.unwrap_or(0);
        assert!(after > before, "{what}: not counted as {counted}");
    }
}
