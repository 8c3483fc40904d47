//! The Lease API through the `etcd-client` crate on 3-member clusters: grant,
//! revoke, keep-alive, time-to-live and list on every member; keys attached to a
//! lease and deleted with it at one revision; expiry; keep-alives and remaining
//! TTLs across a leader kill; etcd's errors.

mod common;

use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use common::{assert_grpc_error, is_etcd, ok, within, Cluster};
use etcd_client::{Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// Bound for a short lease to expire and its keys to go.
const EXPIRY_WAIT: Duration = Duration::from_secs(20);

async fn grant(c: &mut Client, ttl: i64) -> i64 {
    let resp = ok("lease grant", c.lease_grant(ttl, None)).await;
    assert!(resp.id() > 0, "server-chosen lease IDs are positive: {}", resp.id());
    resp.id()
}

/// (remaining TTL, granted TTL, attached keys) as member `c` reports them.
async fn time_to_live(c: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let opts = LeaseTimeToLiveOptions::new().with_keys();
    let resp = ok("lease timetolive", c.lease_time_to_live(id, Some(opts))).await;
    assert_eq!(resp.id(), id);
    let mut keys: Vec<String> = resp.keys().iter().map(|k| String::from_utf8(k.clone()).unwrap()).collect();
    keys.sort();
    (resp.ttl(), resp.granted_ttl(), keys)
}

async fn lease_ids(c: &mut Client) -> Vec<i64> {
    let resp = ok("lease leases", c.leases()).await;
    let mut ids: Vec<i64> = resp.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    ids
}

async fn put_with_lease(c: &mut Client, key: &str, lease: i64) -> i64 {
    let resp = ok(&format!("put {key}"), c.put(key, "v", Some(PutOptions::new().with_lease(lease)))).await;
    resp.header().unwrap().revision()
}

/// The key's lease, or `None` if the key does not exist.
async fn lease_of(c: &mut Client, key: &str) -> Option<i64> {
    let resp = ok(&format!("get {key}"), c.get(key, None)).await;
    resp.kvs().first().map(|kv| kv.lease())
}

async fn revision(c: &mut Client) -> i64 {
    ok("get", c.get("lease-test/revision-probe", None)).await.header().unwrap().revision()
}

/// Sends one keep-alive on a fresh stream to `endpoint`; answers the TTL the server
/// gave. Raw gRPC: the `etcd-client` crate turns TTL 0 into an error of its own.
async fn keep_alive_once(endpoint: &str, id: i64) -> i64 {
    let mut client = ok("connect", LeaseClient::connect(endpoint.to_string())).await;
    let requests = tokio_stream::iter(vec![pb::LeaseKeepAliveRequest { id }]);
    let mut stream = ok("lease keep-alive", client.lease_keep_alive(requests)).await.into_inner();
    let resp = ok("keep-alive answer", stream.message()).await.expect("a keep-alive answer");
    assert_eq!(resp.id, id);
    resp.ttl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_revoke_time_to_live_and_list_on_every_member() {
    let cluster = Cluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    for i in 0..3 {
        let id = grant(&mut clients[i], 60).await;
        let key = format!("lease/member-{i}");
        put_with_lease(&mut clients[i], &key, id).await;
        for c in clients.iter_mut() {
            assert!(lease_ids(c).await.contains(&id), "member {i}'s lease is listed everywhere");
            let (ttl, granted, keys) = time_to_live(c, id).await;
            assert_eq!(granted, 60);
            assert!(ttl > 0 && ttl <= 60, "remaining TTL {ttl}");
            assert_eq!(keys, vec![key.clone()]);
            assert_eq!(lease_of(c, &key).await, Some(id));
        }
        let revoker = (i + 1) % 3;
        ok("lease revoke", clients[revoker].lease_revoke(id)).await;
        for c in clients.iter_mut() {
            assert!(!lease_ids(c).await.contains(&id));
            assert_eq!(time_to_live(c, id).await, (-1, 0, vec![]), "a revoked lease reports TTL -1");
            assert_eq!(lease_of(c, &key).await, None, "the attached key went with the lease");
        }
    }
    // A client-chosen ID, and a TTL below the minimum raised to it (2 s with the
    // default 1 s election timeout, for etcd and Cairn alike).
    let resp = ok("grant with an ID", clients[1].lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x1234)))).await;
    assert_eq!((resp.id(), resp.ttl()), (0x1234, 2));
    assert_eq!(time_to_live(&mut clients[2], 0x1234).await.1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_every_attached_key_at_one_revision() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut c = cluster.client((leader + 1) % 3).await;
    let id = grant(&mut c, 60).await;
    let other = grant(&mut c, 60).await;
    for key in ["r/a", "r/b", "r/c", "r/moved", "r/unleased", "r/kept"] {
        put_with_lease(&mut c, key, id).await;
    }
    ok("put", c.put("r/plain", "v", None)).await;
    let txn = Txn::new().and_then(vec![TxnOp::put("r/txn", "v", Some(PutOptions::new().with_lease(id)))]);
    ok("txn put with a lease", c.txn(txn)).await;
    // Overwriting with another lease, or with none, detaches the key; ignore_lease
    // keeps the lease it had.
    put_with_lease(&mut c, "r/moved", other).await;
    ok("put without lease", c.put("r/unleased", "w", None)).await;
    ok("put ignore_lease", c.put("r/kept", "w", Some(PutOptions::new().with_ignore_lease()))).await;
    ok("delete", c.delete("r/c", None)).await;
    assert_eq!(lease_of(&mut c, "r/kept").await, Some(id));
    assert_eq!(time_to_live(&mut c, id).await.2, vec!["r/a", "r/b", "r/kept", "r/txn"]);
    assert_eq!(time_to_live(&mut c, other).await.2, vec!["r/moved"]);

    let before = revision(&mut c).await;
    ok("lease revoke", c.lease_revoke(id)).await;
    let after = revision(&mut c).await;
    assert_eq!(after, before + 1, "every attached key is deleted at one revision");
    for key in ["r/a", "r/b", "r/kept", "r/txn"] {
        assert_eq!(lease_of(&mut c, key).await, None, "{key} was attached");
        let old = ok("get old", c.get(key, Some(GetOptions::new().with_revision(before)))).await;
        assert_eq!(old.kvs().len(), 1, "{key} is still in the history before the revoke");
    }
    assert_eq!(lease_of(&mut c, "r/moved").await, Some(other));
    assert_eq!(lease_of(&mut c, "r/unleased").await, Some(0));
    assert_eq!(lease_of(&mut c, "r/plain").await, Some(0));
    // A lease without keys is revoked without a new revision.
    let empty = grant(&mut c, 60).await;
    ok("lease revoke", c.lease_revoke(empty)).await;
    assert_eq!(revision(&mut c).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_takes_its_keys_with_it() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let id = grant(&mut c, 2).await;
    put_with_lease(&mut c, "expire/a", id).await;
    put_with_lease(&mut c, "expire/b", id).await;
    let deadline = Instant::now() + EXPIRY_WAIT;
    loop {
        let gone = lease_of(&mut c, "expire/a").await.is_none();
        if gone && !lease_ids(&mut c).await.contains(&id) {
            break;
        }
        assert!(Instant::now() < deadline, "a 2 s lease still exists after {EXPIRY_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let mut m = cluster.client(i).await;
        assert_eq!(lease_of(&mut m, "expire/a").await, None);
        assert_eq!(lease_of(&mut m, "expire/b").await, None);
        assert_eq!(time_to_live(&mut m, id).await.0, -1);
        assert_eq!(keep_alive_once(&cluster.endpoint(i), id).await, 0, "keep-alive of a revoked lease answers TTL 0");
    }
}

/// Keeps lease `id` alive through member `i` for `duration`, one keep-alive every
/// 500 ms; a stream that fails (while a leader is being elected) is opened again.
async fn keep_alive_for(cluster: &Cluster, i: usize, id: i64, ttl: i64, duration: Duration) {
    let deadline = Instant::now() + duration;
    let mut c = cluster.client(i).await;
    let mut last_ok = Instant::now();
    while Instant::now() < deadline {
        let attempt = async {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            while Instant::now() < deadline {
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => assert_eq!(resp.ttl(), ttl, "the lease was still alive"),
                    None => return Ok::<_, etcd_client::Error>(()),
                }
                last_ok = Instant::now();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(())
        };
        let result = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(r) => r.map_err(|e| format!("{e:?}")),
            Err(_) => Err("keep-alive stalled for 10 s".to_string()),
        };
        if let Err(e) = result {
            assert!(last_ok.elapsed() < Duration::from_secs(20), "no keep-alive went through for 20 s: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_a_lease_past_its_ttl_even_across_a_leader_kill() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let survivor = (leader + 1) % 3;
    let mut c = cluster.client(survivor).await;
    let id = grant(&mut c, 5).await;
    put_with_lease(&mut c, "alive/k", id).await;
    keep_alive_for(&cluster, survivor, id, 5, Duration::from_secs(8)).await;
    assert!(time_to_live(&mut c, id).await.0 > 0, "kept alive past its 5 s TTL");

    cluster.kill(leader);
    keep_alive_for(&cluster, survivor, id, 5, Duration::from_secs(12)).await;
    cluster.wait_for_leader().await;
    let (ttl, granted, keys) = time_to_live(&mut c, id).await;
    assert!(ttl > 0, "the lease outlived the leader kill");
    assert_eq!((granted, keys), (5, vec!["alive/k".to_string()]));
    assert_eq!(lease_of(&mut c, "alive/k").await, Some(id));
}

/// etcd issue 9888: a leader change must not give a lease its whole TTL back, nor
/// expire it early. Cairn-only: etcd 3.4 without checkpoints resets the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_survives_a_leader_kill_without_reset_or_early_expiry() {
    if is_etcd() {
        return;
    }
    let mut cluster = Cluster::start_with(3, &["--lease-checkpoint-interval", "500"]).await;
    let leader = cluster.wait_for_leader().await;
    let survivor = (leader + 1) % 3;
    let mut c = cluster.client(survivor).await;
    let id = grant(&mut c, 20).await;
    put_with_lease(&mut c, "cp/k", id).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (before, _, _) = time_to_live(&mut c, id).await;
    assert!(before > 0 && before < 20, "{before}");

    cluster.kill(leader);
    cluster.wait_for_leader().await;
    // The new leader adds one election timeout (1 s) of grace to the last checkpoint
    // (at most 500 ms old): after 3 s more, the TTL it reports must be below the one
    // reported before the kill, whereas a reset would report about 20 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, granted, keys) = time_to_live(&mut c, id).await;
    assert!(after > 0, "the lease expired early: {after}");
    assert!(after <= before, "remaining TTL went from {before} s to {after} s across the leader kill");
    assert_eq!((granted, keys), (20, vec!["cp/k".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_etcds_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(follower).await;
    let id = grant(&mut c, 60).await;
    put_with_lease(&mut c, "err/k", id).await;
    let before = revision(&mut c).await;
    let leases = lease_ids(&mut c).await;
    let unknown = 0x7777_1234;

    let r = within("revoke unknown", c.lease_revoke(unknown)).await;
    assert_grpc_error("revoke an unknown lease", r, Code::NotFound, LEASE_NOT_FOUND);
    assert_eq!(time_to_live(&mut c, unknown).await, (-1, 0, vec![]));
    assert_eq!(keep_alive_once(&cluster.endpoint(follower), unknown).await, 0);
    assert_eq!(keep_alive_once(&cluster.endpoint(leader), id).await, 60);
    let r = within("put", c.put("err/new", "v", Some(PutOptions::new().with_lease(unknown)))).await;
    assert_grpc_error("put with an unknown lease", r, Code::NotFound, LEASE_NOT_FOUND);
    let txn = Txn::new().and_then(vec![TxnOp::put("err/new", "v", Some(PutOptions::new().with_lease(unknown)))]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn put with an unknown lease", r, Code::NotFound, LEASE_NOT_FOUND);
    // Inside a Txn etcd checks the key before the lease.
    let put = PutOptions::new().with_ignore_value().with_lease(unknown);
    let txn = Txn::new().and_then(vec![TxnOp::put("err/missing", "", Some(put))]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn ignore_value put on a missing key", r, Code::InvalidArgument, "etcdserver: key not found");
    let r = within("grant", c.lease_grant(9_000_000_001, None)).await;
    assert_grpc_error("grant a too large TTL", r, Code::OutOfRange, "etcdserver: too large lease TTL");
    let r = within("grant", c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))).await;
    assert_grpc_error("grant an existing ID", r, Code::FailedPrecondition, "etcdserver: lease already exists");

    assert_eq!(revision(&mut c).await, before);
    assert_eq!(lease_ids(&mut c).await, leases);
    assert_eq!(time_to_live(&mut c, id).await.1, 60, "the existing lease kept its TTL");
    assert_eq!(lease_of(&mut c, "err/new").await, None);
    // The largest TTL is accepted.
    let resp = ok("grant the largest TTL", c.lease_grant(9_000_000_000, None)).await;
    assert_eq!(resp.ttl(), 9_000_000_000);
}
