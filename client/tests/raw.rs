//! The raw API against a real 3-member Cairn cluster: KV options, transactions,
//! watch, leases, error mapping and endpoint failover.

mod common;

use cairn_client::{
    Client, Compare, CompareOp, Error, EventKind, Keyspace, SortOrder, SortTarget, TxnOp, TxnOpResponse,
};
use common::{ok, test_options, within, Cluster};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_kv_txn_watch_lease_and_error_mapping() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client().await;

    // Put/get with options.
    let r1 = ok("put a", c.put("t/a", "1").send()).await.header.revision;
    ok("put b", c.put("t/b", "2").send()).await;
    let r3 = ok("put a again", c.put("t/a", "3").prev_kv().send()).await;
    assert_eq!(r3.prev_kv.expect("prev_kv asked for").value, b"1");
    let all = ok("get prefix", c.get("t/").prefix().send()).await;
    assert_eq!(all.kvs.len(), 2);
    assert_eq!((all.kvs[0].key_str(), all.kvs[0].value_str()), ("t/a".into(), "3".into()));
    let old = ok("get at r1", c.get("t/a").revision(r1).send()).await;
    assert_eq!(old.into_first().expect("existed at r1").value, b"1");
    let limited = ok("get limit", c.get("t/").prefix().limit(1).sort(SortTarget::Mod, SortOrder::Descend).send()).await;
    assert_eq!((limited.kvs[0].key_str().to_string(), limited.more, limited.count), ("t/a".to_string(), true, 2));
    let count = ok("count", c.get("t/").prefix().count_only().serializable().send()).await;
    assert!(count.kvs.is_empty() && count.count == 2);
    assert!(ok("missing", c.get("t/zzz").send()).await.into_first().is_none());

    // Txn: compare-and-swap that succeeds, then one that fails and reads instead.
    let a = ok("get a", c.get("t/a").send()).await.into_first().unwrap();
    let t = ok(
        "txn ok",
        c.txn()
            .when([Compare::mod_revision("t/a", CompareOp::Equal, a.mod_revision)])
            .and_then([TxnOp::put("t/a", "4")])
            .or_else([TxnOp::get("t/a")])
            .send(),
    )
    .await;
    assert!(t.succeeded);
    let t = ok(
        "txn stale",
        c.txn()
            .when([Compare::mod_revision("t/a", CompareOp::Equal, a.mod_revision)])
            .and_then([TxnOp::put("t/a", "5")])
            .or_else([TxnOp::get("t/a")])
            .send(),
    )
    .await;
    assert!(!t.succeeded);
    match &t.responses[..] {
        [TxnOpResponse::Get(g)] => assert_eq!(g.kvs[0].value, b"4"),
        other => panic!("expected one get response, got {other:?}"),
    }

    // Watch from a past revision replays history in order, with prev_kv.
    let mut w = ok("watch", c.watch("t/a").prev_kv().start_revision(r1).send()).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = within("watch event", w.next()).await.expect("stream open").expect("no error");
        seen.extend(batch.events.into_iter().map(|e| (e.kind, e.kv.value_str().to_string())));
    }
    assert_eq!(seen, [(EventKind::Put, "1".into()), (EventKind::Put, "3".into()), (EventKind::Put, "4".into())]);
    drop(w);

    // Compaction: reads and watches below it map to Compacted.
    let now = ok("del b", c.delete("t/b").send()).await.header.revision;
    ok("compact", c.compact(now, true)).await;
    match within("get compacted", c.get("t/a").revision(r1).send()).await {
        Err(Error::Compacted { compact_revision: Some(rev) }) => assert_eq!(rev, now),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let w = within("watch compacted", c.watch("t/a").start_revision(r1).send()).await;
    let err = match w {
        Err(e) => e,
        Ok(mut w) => within("watch compacted event", w.next()).await.expect("an item").expect_err("must fail"),
    };
    match err {
        Error::Compacted { compact_revision: Some(rev) } => assert_eq!(rev, now),
        other => panic!("expected Compacted with revision {now}, got {other:?}"),
    }
    // A typed watch that cannot resume surfaces the compaction and ends.
    let mut typed = Keyspace::<String>::new(c.clone(), "t/").watch(Some(r1));
    match within("typed watch compacted", typed.next()).await {
        Some(Err(Error::Compacted { compact_revision: Some(rev) })) => assert_eq!(rev, now),
        other => panic!("expected Compacted with revision {now}, got {other:?}"),
    }
    assert!(within("typed watch ends", typed.next()).await.is_none());
    match within("future", c.get("t/a").revision(now + 1000).send()).await {
        Err(Error::FutureRevision) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }

    // Leases: grant, attach, ttl, revoke; unknown leases map to LeaseNotFound.
    let lease = ok("grant", c.lease_grant(30)).await;
    ok("put with lease", c.put("t/leased", "x").lease(lease.id).send()).await;
    let ttl = ok("ttl", c.lease_time_to_live(lease.id, true)).await;
    assert_eq!(ttl.keys, vec![b"t/leased".to_vec()]);
    assert!(ok("leases", c.lease_leases()).await.contains(&lease.id));
    let mut ka = ok("keep-alive stream", c.lease_keep_alive(lease.id)).await;
    assert!(ok("keep alive", ka.keep_alive()).await > 0);
    ok("revoke", c.lease_revoke(lease.id)).await;
    assert!(ok("leased key gone", c.get("t/leased").send()).await.kvs.is_empty());
    match within("revoke again", c.lease_revoke(lease.id)).await {
        Err(Error::LeaseNotFound { lease: Some(id) }) => assert_eq!(id, lease.id),
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    match within("put with unknown lease", c.put("t/x", "y").lease(0x1234_5678).send()).await {
        Err(Error::LeaseNotFound { lease: Some(0x1234_5678) }) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    match within("keep alive revoked", ka.keep_alive()).await {
        Err(Error::LeaseNotFound { .. }) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    match within("ttl revoked", c.lease_time_to_live(lease.id, false)).await {
        Err(Error::LeaseNotFound { .. }) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }

    // Bad input maps to InvalidArgument.
    match within("empty key", c.put("", "v").send()).await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // One revision larger than the server's message limit (a delete of 30
    // values of 100 KiB, with prev_kv) arrives fragmented and is reassembled
    // into one whole batch.
    let big = vec![b'x'; 100 * 1024];
    for i in 0..30 {
        ok("put big", c.put(format!("frag/{i:02}"), big.clone()).send()).await;
    }
    let del = ok("delete big", c.delete("frag/").prefix().send()).await;
    assert_eq!(del.deleted, 30);
    let mut w =
        ok("watch big", c.watch("frag/").prefix().prev_kv().fragment().start_revision(del.header.revision).send())
            .await;
    let batch = within("big batch", w.next()).await.expect("open").expect("no error");
    assert_eq!(batch.events.len(), 30, "the revision arrives whole");
    assert!(batch
        .events
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.prev_kv.as_ref().is_some_and(|p| p.value == big)));

    // Status of every member through pinned clients.
    let mut leaders = Vec::new();
    for ep in c.endpoints() {
        leaders.push(ok("status", c.pinned(&ep).unwrap().status()).await.leader);
    }
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "members disagree on the leader: {leaders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_another_endpoint() {
    let mut cluster = Cluster::start(3).await;

    // A dead first endpoint does not stop connect.
    let dead = "http://127.0.0.1:1".to_string();
    let mut eps = vec![dead.clone()];
    eps.extend(cluster.endpoints());
    let c = ok("connect past a dead endpoint", Client::connect(&eps, test_options())).await;
    assert_ne!(c.current_endpoint(), dead);
    ok("write", c.put("f/k", "1").send()).await;

    // Kill whatever member the client uses: reads and writes move on.
    let c = cluster.client_starting_at(0).await;
    assert_eq!(c.current_endpoint(), cluster.endpoint(0));
    let c2 = cluster.client_starting_at(0).await;
    ok("write before", c.put("f/k", "2").send()).await;
    ok("read before", c2.get("f/k").send()).await;
    cluster.kill(0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got = ok("read after kill", c.get("f/k").send()).await.into_first().expect("key exists");
    assert_eq!(got.value, b"2");
    assert_ne!(c.current_endpoint(), cluster.endpoint(0));
    // The write cannot have reached the dead member (connection refused), so it
    // is retried on another member.
    ok("write via failover", c2.put("f/k", "3").send()).await;
    assert_ne!(c2.current_endpoint(), cluster.endpoint(0));
    assert_eq!(ok("read", c.get("f/k").send()).await.into_first().unwrap().value, b"3");

    // No member reachable at all: a clear Unavailable.
    match Client::connect([dead.as_str()], test_options()).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match Client::connect(["not a url"], test_options()).await {
        Err(Error::Config(_)) => {}
        other => panic!("expected Config, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_from_a_frozen_member_and_ambiguous_writes_are_not_retried() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let frozen = (leader + 1) % 3;
    let opts = || test_options().request_timeout(std::time::Duration::from_secs(2));
    let eps = |first: usize| (0..3).map(|k| cluster.endpoint((first + k) % 3)).collect::<Vec<_>>();
    let reader = ok("connect reader", Client::connect(eps(frozen), opts())).await;
    let writer = ok("connect writer", Client::connect(eps(frozen), opts())).await;
    ok("warm reader", reader.get("x").send()).await;
    ok("warm writer", writer.get("x").send()).await;
    assert_eq!(writer.current_endpoint(), cluster.endpoint(frozen));

    cluster.pause(frozen);
    // A read gets no answer from the frozen member and is retried elsewhere.
    ok("read past a frozen member", reader.get("x").send()).await;
    assert_ne!(reader.current_endpoint(), cluster.endpoint(frozen));
    // A write that got no answer may still be applied (the member may process
    // it when it wakes up): it is reported, not retried.
    match within("write to a frozen member", writer.put("ambiguous", "v").send()).await {
        Err(Error::OutcomeUnknown { .. }) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    cluster.resume(frozen);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let kv = ok("read back", reader.get("ambiguous").send()).await.into_first();
    assert!(kv.as_ref().is_none_or(|kv| kv.version == 1), "the ambiguous write was applied more than once: {kv:?}");
    // The client moved on: the next write goes elsewhere and succeeds.
    ok("write after failover", writer.put("after", "v").send()).await;
}
