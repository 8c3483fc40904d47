//! The operator endpoints of real 3-member clusters: `/metrics` counters move with
//! writes on every member, leadership gauges agree, a paused follower shows as
//! lagging with failing sends on the leader (and then catching up from a snapshot),
//! and `/health` tells a member that can serve linearizable reads from one that
//! cannot.
//!
//! ```text
//! cargo test -p cairn-server --test metrics
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{http_get, is_etcd, ok, Cluster};

/// Bound for one HTTP request (a paused member accepts but never answers).
/// Bound for a metric to reach the expected value.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const WRITES: u64 = 40;

/// Samples of the Prometheus text format: `name{labels}` → value, labels sorted as
/// the encoder writes them.
type Samples = BTreeMap<String, f64>;

fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("malformed sample line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("malformed value in {line:?}"));
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series {series}");
    }
    samples
}

async fn scrape(endpoint: &str) -> Samples {
    match http_get(endpoint, "/metrics").await {
        Some((200, body)) => parse(&body),
        other => panic!("GET {endpoint}/metrics: {other:?}"),
    }
}

fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// Member IDs (hex, as metrics label peers) of every member.
async fn member_ids(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..cluster.size() {
        let status = ok("status", cluster.client(i).await.status()).await;
        ids.push(format!("{:x}", status.header().expect("header").member_id()));
    }
    ids
}

/// Scrapes `endpoint` until `check` passes on the samples or [`SETTLE_TIMEOUT`] ends.
async fn eventually(endpoint: &str, what: &str, check: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let samples = scrape(endpoint).await;
        if check(&samples) {
            return samples;
        }
        if Instant::now() >= deadline {
            panic!("{endpoint}: {what} not reached within {SETTLE_TIMEOUT:?}; last samples: {samples:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_burst_moves_disk_and_raft_counters_on_every_member() {
    if is_etcd() {
        eprintln!("skipped: Cairn's metric names");
        return;
    }
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut before = Vec::new();
    for ep in cluster.endpoints() {
        before.push(scrape(&ep).await);
    }
    let watched = (leader + 1) % cluster.size();
    let mut watch_client = cluster.client(watched).await;
    let (_watcher, mut events) =
        ok("watch", watch_client.watch("m/", Some(etcd_client::WatchOptions::new().with_prefix()))).await;
    let mut client = cluster.client(leader).await;
    ok("lease grant", client.lease_grant(60, None)).await;
    for i in 0..WRITES {
        ok("put", client.put(format!("m/{i}"), "v", None)).await;
    }
    let mut seen = 0;
    while seen < WRITES {
        let response = ok("watch events", events.message()).await.expect("the watch stream stays open");
        seen += response.events().len() as u64;
    }
    let writes = WRITES as f64;
    // The lease grant is one more entry.
    let entries = writes + 1.0;
    for (i, ep) in cluster.endpoints().iter().enumerate() {
        let b = &before[i];
        let grew = |s: &Samples, name: &str, by: f64| value(s, name) - value(b, name) >= by;
        let after = eventually(ep, "counters moved by the writes", |s| {
            grew(s, "cairn_server_proposals_applied_total", entries)
                && grew(s, "cairn_server_proposals_committed_total", entries)
                && grew(s, "cairn_disk_backend_commit_duration_seconds_count", entries)
                && grew(s, "cairn_disk_wal_fsync_duration_seconds_count", 1.0)
        })
        .await;
        // Each write waits for the leader's fsync of its entry before it is answered,
        // so the leader synced at least once per write; a follower may group entries.
        if i == leader {
            assert!(grew(&after, "cairn_disk_wal_fsync_duration_seconds_count", writes), "leader fsyncs");
            let puts = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",\
                        grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
            assert!(grew(&after, puts, writes), "Put calls counted on {ep}");
        }
        assert_eq!(value(&after, "cairn_server_has_leader"), 1.0, "{ep} has a leader");
        assert_eq!(value(&after, "cairn_cluster_members{role=\"voter\"}"), 3.0, "{ep} voters");
        assert_eq!(value(&after, "cairn_server_is_leader"), (i == leader) as u8 as f64, "{ep} is_leader");
        assert!(value(&after, "cairn_server_leader_changes_seen_total") >= 1.0, "{ep} saw the election");
        assert!(value(&after, "cairn_mvcc_current_revision") > writes, "{ep} revision");
        assert!(value(&after, "process_resident_memory_bytes") > 0.0, "{ep} process metrics");
        assert_eq!(value(&after, "cairn_lease_active"), 1.0, "{ep} leases");
        if i == watched {
            assert_eq!(value(&after, "cairn_debugging_mvcc_watch_stream_total"), 1.0, "{ep} watch streams");
            assert_eq!(value(&after, "cairn_debugging_mvcc_watcher_total"), 1.0, "{ep} watchers");
            assert!(value(&after, "cairn_debugging_mvcc_events_total") >= writes, "{ep} watch events sent");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_follower_lags_on_the_leader_and_an_isolated_member_is_unhealthy() {
    if is_etcd() {
        eprintln!("skipped: Cairn's metric names");
        return;
    }
    // Frequent snapshots and a short log behind them: the paused follower, once
    // resumed, catches up from a snapshot.
    let cluster = Cluster::start_with(3, &["--snapshot-count", "20", "--snapshot-catchup-entries", "5"]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers().await;
    let (paused, other) = (followers[0], followers[1]);
    let ids = member_ids(&cluster).await;
    let leader_ep = cluster.endpoint(leader);
    let lag = format!("cairn_server_peer_replication_lag_entries{{To=\"{}\"}}", ids[paused]);
    let failures = format!("cairn_network_peer_sent_failures_total{{To=\"{}\"}}", ids[paused]);
    let failures_before = value(&scrape(&leader_ep).await, &failures);

    cluster.pause(paused);
    let mut client = cluster.client(leader).await;
    for i in 0..WRITES {
        ok("put", client.put(format!("lag/{i}"), "v", None)).await;
    }
    eventually(&leader_ep, "the paused follower lags and sends to it fail", |s| {
        value(s, &lag) >= WRITES as f64 && value(s, &failures) > failures_before
    })
    .await;
    for i in [leader, other] {
        let answer = http_get(&cluster.endpoint(i), "/health").await;
        assert_eq!(answer, Some((200, "{\"health\":\"true\"}".to_string())), "member {i} with a quorum");
    }

    cluster.resume(paused);
    let paused_ep = cluster.endpoint(paused);
    eventually(&paused_ep, "the resumed follower installed a snapshot", |s| {
        value(s, "cairn_snap_install_duration_seconds_count") >= 1.0 && value(s, "cairn_snap_install_bytes_sum") > 0.0
    })
    .await;
    let on_leader = scrape(&leader_ep).await;
    assert!(value(&on_leader, "cairn_snap_build_duration_seconds_count") >= 1.0, "the leader built a snapshot");
    assert!(value(&on_leader, "cairn_snap_sent_bytes_total") > 0.0, "the leader sent a snapshot");

    // With the leader and that follower paused, the remaining member is a minority of one.
    cluster.pause(paused);
    cluster.pause(leader);
    let isolated = cluster.endpoint(other);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (status, body) = loop {
        if let Some(answer @ (503, _)) = http_get(&isolated, "/health").await {
            break answer;
        }
        assert!(Instant::now() < deadline, "{isolated} still reports healthy without a quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let json: serde_json::Value = serde_json::from_str(&body).expect("/health answers JSON");
    assert_eq!((status, json["health"].as_str()), (503, Some("false")), "{body}");
    assert!(!json["reason"].as_str().unwrap_or("").is_empty(), "an unhealthy answer says why: {body}");
    if json["reason"] == "RAFT NO LEADER" {
        // Without a leader, even a serializable health check fails.
        assert_eq!(http_get(&isolated, "/health?serializable=true").await.map(|a| a.0), Some(503));
    }
    let ready = http_get(&isolated, "/readyz").await.expect("/readyz answers");
    assert_eq!(ready.0, 503, "{ready:?}");
    assert_eq!(http_get(&isolated, "/livez").await, Some((200, "ok\n".to_string())));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_metrics_urls_serve_the_operator_endpoints_alone() {
    if is_etcd() {
        eprintln!("skipped: etcd 3.4 has no /livez");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::start_with(1, &["--listen-metrics-urls", &url]).await;
    assert_eq!(http_get(&url, "/health").await, Some((200, "{\"health\":\"true\"}".to_string())));
    assert_eq!(http_get(&url, "/health?serializable=true").await, Some((200, "{\"health\":\"true\"}".to_string())));
    assert_eq!(value(&scrape(&url).await, "cairn_server_is_leader"), 1.0);
    assert_eq!(http_get(&url, "/livez").await, Some((200, "ok\n".to_string())));
    assert_eq!(http_get(&url, "/etcdserverpb.KV/Range").await.map(|a| a.0), Some(404));
    // The client port serves the same endpoints next to gRPC.
    assert_eq!(http_get(&cluster.endpoint(0), "/readyz").await, Some((200, "ok\n".to_string())));
}
