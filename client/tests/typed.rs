//! The typed API against real 3-member Cairn clusters, with members killed under
//! it: CAS updates, resuming watches, mirrors, elections with fencing, leases.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{
    Bincode, Client, Election, Error, EventKind, Keyspace, LeaseHandle, LeaseState, Lock, Mirror, TypedEvent,
    WatchBatch,
};
use common::{ok, test_options, within, Cluster};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_update_under_contention_applies_each_increment_once() {
    const TASKS: u64 = 4;
    const INCREMENTS: u64 = 25;
    let cluster = Cluster::start(3).await;
    let mut handles = Vec::new();
    let ks: Keyspace<u64, Bincode> = Keyspace::new(cluster.client().await, "cas/").with_codec(Bincode);
    ok("create counter", ks.create("n", 0)).await;
    match within("create again", ks.create("n", 7)).await {
        Err(Error::ConditionFailed { .. }) => {}
        other => panic!("create of an existing key must fail with ConditionFailed, got {other:?}"),
    }
    for t in 0..TASKS {
        // Each task has its own client, starting at a different member.
        let ks: Keyspace<u64, Bincode> =
            Keyspace::new(cluster.client_starting_at(t as usize % 3).await, "cas/").with_codec(Bincode);
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..INCREMENTS {
                let v = ks.update("n", |n| n + 1).await.expect("update");
                seen.push((v.value, v.mod_revision));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(within("task", h).await.expect("task panicked"));
    }
    all.sort();
    let values: Vec<u64> = all.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (1..=TASKS * INCREMENTS).collect::<Vec<_>>(), "every increment exactly once");
    assert!(all.windows(2).all(|w| w[0].1 < w[1].1), "revisions grow with values: {all:?}");
    let fin = ok("get", ks.get("n")).await.expect("exists");
    assert_eq!(fin.value, TASKS * INCREMENTS);
    assert_eq!(fin.version, (TASKS * INCREMENTS + 1) as i64);
    match within("update missing", ks.update("missing", |n| n + 1)).await {
        Err(Error::NotFound { key }) => assert_eq!(key, "missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Conditional delete and reads of the past.
    match within("stale delete", ks.delete_if_revision("n", fin.mod_revision - 1)).await {
        Err(Error::ConditionFailed { .. }) => {}
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    let before = ok("get_at", ks.get_at("n", fin.mod_revision - 1)).await.expect("existed");
    assert_eq!(before.value, TASKS * INCREMENTS - 1);
    let d = ok("delete_if_revision", ks.delete_if_revision("n", fin.mod_revision)).await;
    assert_eq!(d.prev.map(|p| p.value), Some(TASKS * INCREMENTS));
    assert!(ok("gone", ks.get("n")).await.is_none());

    // An update keeps the key's lease.
    let lease = ok("grant", ks.client().lease_grant(30)).await;
    ok("create leased", ks.create_with_lease("leased", 1, lease.id)).await;
    let v = ok("update leased", ks.update("leased", |n| n + 1)).await;
    assert_eq!((v.value, v.lease), (2, lease.id));
    let raw = ok("raw get", ks.client().get(ks.full_key("leased")).send()).await.into_first().expect("exists");
    assert_eq!(raw.lease, lease.id);
}

/// Every (key, value, revision) change under `prefix` from `from` on, as the
/// server's history has it (a raw watch on a healthy member).
async fn committed_history(c: &Client, prefix: &str, from: i64, upto: i64) -> Vec<(String, String, i64)> {
    let mut w = ok("history watch", c.watch(prefix).prefix().start_revision(from).send()).await;
    let mut out = Vec::new();
    loop {
        let b: WatchBatch = within("history", w.next()).await.expect("open").expect("no error");
        for e in b.events {
            let key = e.kv.key_str().strip_prefix(prefix).expect("key under the prefix").to_string();
            let value = if e.kind == EventKind::Delete { String::new() } else { e.kv.value_str().into_owned() };
            out.push((key, value, e.kv.mod_revision));
        }
        if out.last().is_some_and(|l| l.2 >= upto) {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_watch_across_leader_kill_and_client_reconnect_delivers_exactly_the_committed_sequence() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    // The watcher talks to the leader first, so killing the leader also breaks
    // its stream and makes it reconnect elsewhere.
    let watcher: Keyspace<u64> = Keyspace::new(cluster.client_starting_at(leader).await, "w/");
    let writer: Keyspace<u64> = Keyspace::new(cluster.client_starting_at((leader + 1) % 3).await, "w/");
    let start = ok("list", watcher.list()).await.revision + 1;
    let mut events = watcher.watch(Some(start));

    // Halfway, the consumer also drops its stream and its client, and resumes
    // with a new client from the position the old stream reported.
    let (reconnect_tx, mut reconnect_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let collector = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut reconnected = false;
        loop {
            let next = tokio::select! {
                e = events.next() => e,
                eps = &mut reconnect_rx, if !reconnected => {
                    reconnected = true;
                    let from = events.next_revision().expect("position known");
                    drop(events);
                    let client = Client::connect(eps.expect("endpoints"), test_options()).await.expect("reconnect");
                    events = Keyspace::<u64>::new(client, "w/").watch(Some(from));
                    continue;
                }
            };
            let Some(e) = next else { panic!("typed watch ended early after {got:?}") };
            let e = e.expect("typed watch yields no error here");
            let done = e.key() == "done";
            got.push(match e {
                TypedEvent::Put { item, .. } => (item.key, item.value.to_string(), item.mod_revision),
                TypedEvent::Delete { key, revision, .. } => (key, String::new(), revision),
            });
            if done {
                assert!(reconnected, "the consumer never reconnected");
                return got;
            }
        }
    });

    let mut reconnect_tx = Some(reconnect_tx);
    let mut acked = Vec::new();
    for i in 0..60u64 {
        if i == 20 {
            cluster.kill(leader);
        }
        if i == 30 {
            let mut eps = cluster.endpoints();
            eps.rotate_left((leader + 2) % 3);
            reconnect_tx.take().expect("once").send(eps).expect("collector alive");
        }
        if i == 40 {
            cluster.restart(leader);
        }
        let key = format!("k{}", i % 7);
        // A write whose outcome is unknown is not retried (it may be committed);
        // only writes refused before being applied are.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match writer.put(&key, i).await {
                Ok(v) => {
                    acked.push((format!("k{}", i % 7), i.to_string(), v.mod_revision));
                    break;
                }
                Err(Error::OutcomeUnknown { .. }) => break,
                Err(e @ (Error::Unavailable { .. } | Error::Timeout { .. })) => {
                    assert!(Instant::now() < deadline, "writes failing for 20s: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("write {i}: {e}"),
            }
        }
    }
    cluster.wait_ready().await;
    let done_rev = ok("done marker", writer.put("done", 1)).await.mod_revision;
    let got = within("collector", collector).await.expect("collector");

    let history = committed_history(writer.client(), "w/", start, done_rev).await;
    assert_eq!(got, history, "the typed watch must deliver exactly the committed sequence");
    for a in &acked {
        assert!(got.contains(a), "acknowledged write {a:?} missing from the watch");
    }
    assert!(acked.len() >= 50, "too few writes were acknowledged: {}", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_converges_and_never_goes_back_in_revision() {
    if common::server_kind() == common::ServerKind::Etcd {
        // etcd before 3.4.25 / 3.5.8 may answer a progress request with a
        // revision whose events an unsynced watcher has not received yet (etcd
        // issue 15220), which a mirror cannot tell from real progress.
        eprintln!("skipped against etcd: its progress notifications run ahead of events");
        return;
    }
    let mut cluster = Cluster::start(3).await;
    // The mirror only knows member 0, so it must wait for it to come back and
    // resume (or relist, if the history it needs was compacted meanwhile).
    let only_0 = ok("connect", Client::connect([cluster.endpoint(0)], test_options())).await;
    let writer = cluster.client_starting_at(1).await;
    let ks: Keyspace<String> = Keyspace::new(writer.clone(), "m/");
    for i in 0..5 {
        ok("seed", ks.put(&format!("k{i}"), format!("v{i}"))).await;
    }
    let mirror = Arc::new(ok("mirror", Mirror::start(Keyspace::<String>::new(only_0, "m/"))).await);
    assert_eq!(mirror.snapshot().items.len(), 5);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (mirror, stop) = (mirror.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut changes = mirror.subscribe();
            while !stop.load(Ordering::Relaxed) {
                let snap = mirror.snapshot();
                assert!(snap.revision >= last, "mirror went back from {last} to {}", snap.revision);
                last = snap.revision;
                let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
            }
            last
        })
    };

    let mut rev = 0;
    for i in 0..30 {
        if i == 10 {
            cluster.kill(0);
        }
        let key = format!("k{}", i % 8);
        rev = if i % 5 == 4 {
            ok("delete", ks.delete(&key)).await.revision
        } else {
            ok("put", ks.put(&key, format!("x{i}"))).await.mod_revision
        };
        if i == 20 {
            // History the mirror has not seen yet is compacted away while its
            // only member is down.
            ok("compact", writer.compact(rev, false)).await;
        }
    }
    cluster.restart(0);
    cluster.wait_ready().await;
    let reached = ok("wait_for_revision", mirror.wait_for_revision(rev)).await;
    assert!(reached >= rev);
    stop.store(true, Ordering::Relaxed);
    within("sampler", sampler).await.expect("mirror revision never went back");

    let snap = mirror.snapshot();
    let listing = ok("list at mirror revision", ks.list()).await;
    let expected: BTreeMap<String, (String, i64)> =
        listing.items.into_iter().map(|v| (v.key, (v.value, v.mod_revision))).collect();
    let mirrored: BTreeMap<String, (String, i64)> =
        snap.items.iter().map(|(k, v)| (k.clone(), (v.value.clone(), v.mod_revision))).collect();
    assert_eq!(mirrored, expected, "mirror at {} differs from the server", snap.revision);
    assert_eq!(mirror.get("k0").map(|v| v.value), expected.get("k0").map(|v| v.0.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_one_leader_at_a_time_and_fencing_rejects_the_deposed_leader() {
    let mut cluster = Cluster::start(3).await;
    let a = cluster.client_starting_at(0).await;
    let b = cluster.client_starting_at(1).await;
    let admin = cluster.client_starting_at(2).await;
    let election_a = Election::new(&a, "elect/svc");
    let election_b = Election::new(&b, "elect/svc");

    let mut observed = election_b.observe();
    assert_eq!(ok("observe", async { observed.next().await.expect("first") }).await, None);

    let lease_a = ok("lease a", LeaseHandle::grant(&a, 5)).await;
    let lease_b = ok("lease b", LeaseHandle::grant(&b, 5)).await;
    let lead_a = ok("campaign a", election_a.campaign(&lease_a, "a")).await;
    let token_a = lead_a.fencing_token();
    let seen = ok("observe a", async { observed.next().await.expect("a") }).await.expect("a leads");
    assert_eq!((seen.value.as_slice(), seen.token), (&b"a"[..], token_a));

    let campaign_b = tokio::spawn(async move {
        let lead = election_b.campaign(&lease_b, "b").await;
        (lead, lease_b)
    });

    // A Raft leader change does not change who leads the election: leases
    // survive it.
    let raft_leader = cluster.wait_for_leader().await;
    cluster.kill(raft_leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(raft_leader);
    cluster.wait_ready().await;
    assert!(ok("a still leads", lead_a.is_leader()).await);
    assert!(lease_a.is_alive(), "lease a must survive a Raft leader change: {:?}", lease_a.state());
    if campaign_b.is_finished() {
        let (res, _) = campaign_b.await.expect("task");
        panic!("b's campaign ended while a leads: {res:?}");
    }
    ok("fenced write as a", lead_a.fence().put("elect/data", "from a")).await;

    // A is deposed: its lease ends (as if it had been paused for longer than
    // the TTL). It is told, and b takes over with a larger token.
    ok("revoke a's lease", admin.lease_revoke(lease_a.id())).await;
    let lost = within("a's loss is reported", lease_a.lost()).await;
    assert!(matches!(lost, Error::LeaseLost { .. }), "{lost:?}");
    let (lead_b, _lease_b) = within("b wins", campaign_b).await.expect("task");
    let lead_b = lead_b.expect("b's campaign");
    assert!(lead_b.fencing_token() > token_a);

    // The deposed leader's guarded write is refused; the new leader's is not.
    match within("deposed write", lead_a.fence().put("elect/data", "stale from a")).await {
        Err(Error::Fenced { token, .. }) => assert_eq!(token, token_a),
        other => panic!("the deposed leader's write must be fenced, got {other:?}"),
    }
    ok("fenced write as b", lead_b.fence().put("elect/data", "from b")).await;
    let data = ok("read", admin.get("elect/data").send()).await.into_first().unwrap();
    assert_eq!(data.value, b"from b");

    // Observers saw one leader at a time, in token order: a, then b.
    let mut leaders = vec![token_a];
    while leaders.last() != Some(&lead_b.fencing_token()) {
        if let Some(l) = ok("observe", async { observed.next().await.expect("stream open") }).await {
            leaders.push(l.token);
        }
    }
    assert!(leaders.windows(2).all(|w| w[0] <= w[1]), "leaders out of order: {leaders:?}");
    ok("resign b", lead_b.resign()).await;
    assert_eq!(ok("no leader", Election::new(&admin, "elect/svc").leader()).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_loss_is_reported() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client().await;

    // Kept alive well past its TTL.
    let lease = ok("grant", LeaseHandle::grant(&c, 2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease.is_alive(), "{:?}", lease.state());
    ok("still on the server", c.lease_time_to_live(lease.id(), false)).await;

    // Revoked by someone else: reported.
    ok("revoke", c.lease_revoke(lease.id())).await;
    let e = within("loss after revoke", lease.lost()).await;
    assert!(matches!(e, Error::LeaseLost { .. }), "{e:?}");
    assert!(matches!(lease.state(), LeaseState::Lost { .. }));

    // The only member the keeper knows dies: after one TTL without a confirmed
    // renewal, the holder is told (it cannot know whether the lease lives on).
    let lonely = ok("connect", Client::connect([cluster.endpoint(2)], test_options())).await;
    let lease = ok("grant", LeaseHandle::grant(&lonely, 3)).await;
    cluster.kill(2);
    let e = within("loss after member death", lease.lost()).await;
    assert!(matches!(e, Error::LeaseLost { .. }), "{e:?}");

    // Dropping a handle revokes its lease.
    let lease = ok("grant", LeaseHandle::grant(&c, 30)).await;
    let id = lease.id();
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.lease_time_to_live(id, false).await {
            Err(Error::LeaseNotFound { .. }) => break,
            _ => {
                assert!(Instant::now() < deadline, "dropped handle did not revoke its lease");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_and_fences_the_previous_holder() {
    let cluster = Cluster::start(3).await;
    let c1 = cluster.client_starting_at(0).await;
    let c2 = cluster.client_starting_at(1).await;
    let lease1 = ok("lease 1", LeaseHandle::grant(&c1, 10)).await;
    let lease2 = ok("lease 2", LeaseHandle::grant(&c2, 10)).await;
    let lock = Lock::new(&c1, "locks/job");
    let first = ok("acquire 1", lock.acquire(&lease1)).await;
    let waiting = {
        let lock = Lock::new(&c2, "locks/job");
        tokio::spawn(async move {
            let guard = lock.acquire(&lease2).await;
            (guard, lease2)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the lock must not be granted twice");
    let holder = ok("holder", lock.holder()).await.expect("held");
    assert_eq!(holder.token, first.fencing_token());
    ok("fenced write 1", first.fence().put("locks/job-data", "1")).await;

    let stale = first.fence();
    ok("unlock", first.unlock()).await;
    let (second, _lease2) = within("acquire 2", waiting).await.expect("task");
    let second = second.expect("second holder");
    assert!(second.fencing_token() > stale.token());
    match within("stale write", stale.put("locks/job-data", "stale")).await {
        Err(Error::Fenced { .. }) => {}
        other => panic!("the previous holder's write must be fenced, got {other:?}"),
    }
    ok("fenced write 2", second.fence().put("locks/job-data", "2")).await;
    assert!(ok("held", second.is_held()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_watch_moves_off_a_member_that_stops_answering() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let frozen = (leader + 1) % 3;
    // Keep-alive effectively off: only the watch's own progress probe can
    // notice that the member stopped answering.
    let opts = test_options()
        .keep_alive(Duration::from_secs(3600), Duration::from_secs(20))
        .keep_alive_while_idle(false)
        .watch_probe(Duration::from_millis(500), Duration::from_secs(1));
    let eps: Vec<String> = (0..3).map(|k| cluster.endpoint((frozen + k) % 3)).collect();
    let watcher = ok("connect", Client::connect(eps, opts)).await;
    let writer: Keyspace<u64> = Keyspace::new(cluster.client_starting_at(leader).await, "p/");
    let start = ok("put 0", writer.put("k", 0)).await.mod_revision;
    let mut events = Keyspace::<u64>::new(watcher, "p/").watch(Some(start));
    match ok("first event", async { events.next().await.expect("open") }).await {
        TypedEvent::Put { item, .. } => assert_eq!(item.value, 0),
        other => panic!("unexpected {other:?}"),
    }

    cluster.pause(frozen);
    for i in 1..=5u64 {
        ok("put", writer.put("k", i)).await;
    }
    for i in 1..=5u64 {
        match ok("event after the freeze", async { events.next().await.expect("open") }).await {
            TypedEvent::Put { item, .. } => assert_eq!(item.value, i, "no gap, no duplicate"),
            other => panic!("unexpected {other:?}"),
        }
    }
    cluster.resume(frozen);
}
