//! Compatibility with the `etcd-client` crate: every KV operation and option a
//! Rust service would use, against a 3-member cluster, through followers and
//! the leader.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ok, within, Cluster};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

/// (key, value, create_revision, mod_revision, version, lease)
type Kv = (String, String, i64, i64, i64, i64);

fn kv_tuple(kv: &KeyValue) -> Kv {
    (
        String::from_utf8(kv.key().to_vec()).unwrap(),
        String::from_utf8(kv.value().to_vec()).unwrap(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

fn keys(resp: &GetResponse) -> Vec<String> {
    resp.kvs().iter().map(|kv| String::from_utf8(kv.key().to_vec()).unwrap()).collect()
}

fn rev_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("response has a header").revision()
}

async fn get(c: &mut Client, key: &str, opts: GetOptions) -> GetResponse {
    ok(&format!("get {key}"), c.get(key, Some(opts))).await
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let resp = ok(&format!("put {key}"), c.put(key, value, None)).await;
    rev_of(resp.header())
}

async fn leader_and_follower(cluster: &Cluster) -> (Client, Client) {
    let leader = cluster.wait_for_leader().await;
    let follower = (0..cluster.size()).find(|&i| i != leader).unwrap();
    (cluster.client(leader).await, cluster.client(follower).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_prev_kv_and_response_headers() {
    let cluster = Cluster::start(3).await;
    let mut clients = Vec::new();
    let mut member_ids = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        let status = ok("status", c.status()).await;
        let id = status.header().expect("status header").member_id();
        assert_ne!(id, 0);
        member_ids.push(id);
        clients.push(c);
    }
    assert_eq!(member_ids.iter().collect::<BTreeSet<_>>().len(), 3, "member ids are distinct: {member_ids:?}");

    let resp = ok("put h/a", clients[1].put("h/a", "1", None)).await;
    let h = resp.header().expect("put header");
    let cluster_id = h.cluster_id();
    assert_ne!(cluster_id, 0);
    assert_eq!(h.member_id(), member_ids[1], "header names the member that answered");
    assert!(h.raft_term() >= 1);
    let r1 = h.revision();
    assert!(r1 >= 2, "the first write gets revision >= 2 (revision 1 is the empty store)");
    assert!(resp.prev_key().is_none());

    // prev_kv of an existing key, through another member.
    let opts = PutOptions::new().with_prev_key();
    let resp = ok("put h/a prev_kv", clients[2].put("h/a", "2", Some(opts.clone()))).await;
    assert_eq!(rev_of(resp.header()), r1 + 1);
    assert_eq!(resp.prev_key().map(kv_tuple), Some(("h/a".into(), "1".into(), r1, r1, 1, 0)));
    // prev_kv of a key that does not exist.
    let resp = ok("put h/b prev_kv", clients[0].put("h/b", "x", Some(opts))).await;
    assert_eq!(rev_of(resp.header()), r1 + 2);
    assert!(resp.prev_key().is_none());
    // Without prev_kv nothing is returned even if the key exists.
    let resp = ok("put h/b", clients[0].put("h/b", "y", None)).await;
    assert!(resp.prev_key().is_none());
    let r4 = rev_of(resp.header());
    assert_eq!(r4, r1 + 3);

    // Every kind of response carries the same header fields, on every member.
    for (i, c) in clients.iter_mut().enumerate() {
        let g = get(c, "h/a", GetOptions::new()).await;
        let d = ok("delete nothing", c.delete("h/none", None)).await;
        let t = ok("empty txn", c.txn(Txn::new())).await;
        let s = ok("status", c.status()).await;
        for h in [g.header(), d.header(), t.header(), s.header()] {
            let h = h.expect("header");
            assert_eq!(h.cluster_id(), cluster_id, "member {i}");
            assert_eq!(h.member_id(), member_ids[i], "member {i}");
            assert!(h.raft_term() >= 1, "member {i}");
            assert_eq!(h.revision(), r4, "member {i}: nothing written since");
        }
        assert_eq!(
            g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
            vec![("h/a".into(), "2".into(), r1, r1 + 1, 2, 0)]
        );
        assert_eq!(d.deleted(), 0);
        assert!(t.succeeded(), "a txn without compares succeeds");
        assert!(t.op_responses().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_every_option() {
    let cluster = Cluster::start(3).await;
    let (mut leader, mut follower) = leader_and_follower(&cluster).await;
    // Same data as the etcdctl sort test: every target gives a distinct order.
    // create: c a d b; mod: a d b c; version: a(1) d(2) b(3) c(4);
    // value: d("b") b("k") c("p") a("z").
    let mut revs = Vec::new();
    for (k, v) in common::SORT_FIXTURE {
        revs.push(put(&mut leader, k, v).await);
    }
    put(&mut leader, "s0", "after prefix").await;
    let last = put(&mut leader, "r", "before prefix").await;
    for w in revs.windows(2) {
        assert_eq!(w[1], w[0] + 1);
    }
    let r0 = revs[0];

    // Single key, prefix, from_key, explicit range, all keys.
    let g = get(&mut follower, "s/c", GetOptions::new()).await;
    assert_eq!(g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(), vec![("s/c".into(), "p".into(), r0, r0 + 9, 4, 0)]);
    assert_eq!((g.count(), g.more()), (1, false));
    assert_eq!(rev_of(g.header()), last);
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&g), vec!["s/a", "s/b", "s/c", "s/d"]);
    assert_eq!(g.count(), 4);
    let g = get(&mut follower, "s/c", GetOptions::new().with_from_key()).await;
    assert_eq!(keys(&g), vec!["s/c", "s/d", "s0"]);
    let g = get(&mut follower, "s/b", GetOptions::new().with_range("s/d")).await;
    assert_eq!(keys(&g), vec!["s/b", "s/c"]);
    let g = get(&mut follower, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&g), vec!["r", "s/a", "s/b", "s/c", "s/d", "s0"]);

    // Revision: the past, as it was.
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_revision(r0 + 4)).await;
    assert_eq!(
        g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![
            ("s/a".into(), "z".into(), r0 + 1, r0 + 1, 1, 0),
            ("s/b".into(), "q".into(), r0 + 3, r0 + 3, 1, 0),
            ("s/c".into(), "n".into(), r0, r0 + 4, 2, 0),
            ("s/d".into(), "a".into(), r0 + 2, r0 + 2, 1, 0),
        ]
    );
    assert_eq!(g.count(), 4);
    assert_eq!(rev_of(g.header()), last, "header carries the current revision");
    let g = get(&mut leader, "s/", GetOptions::new().with_prefix().with_revision(r0 - 1)).await;
    assert_eq!((g.kvs().len(), g.count()), (0, 0));

    // Limit: count is the whole range, more says there is more.
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_limit(3)).await;
    assert_eq!(keys(&g), vec!["s/a", "s/b", "s/c"]);
    assert_eq!((g.count(), g.more()), (4, true));
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_limit(4)).await;
    assert_eq!((keys(&g).len(), g.count(), g.more()), (4, 4, false));
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_limit(10)).await;
    assert_eq!((keys(&g).len(), g.count(), g.more()), (4, 4, false));

    // Sort, every target and order; sort happens before the limit.
    let cases: [(SortTarget, [&str; 4]); 5] = [
        (SortTarget::Key, ["s/a", "s/b", "s/c", "s/d"]),
        (SortTarget::Create, ["s/c", "s/a", "s/d", "s/b"]),
        (SortTarget::Mod, ["s/a", "s/d", "s/b", "s/c"]),
        (SortTarget::Version, ["s/a", "s/d", "s/b", "s/c"]),
        (SortTarget::Value, ["s/d", "s/b", "s/c", "s/a"]),
    ];
    for (target, asc) in cases {
        let mut desc = asc;
        desc.reverse();
        let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_sort(target, SortOrder::Ascend)).await;
        assert_eq!(keys(&g), asc, "{target:?} ascending");
        let g = get(&mut leader, "s/", GetOptions::new().with_prefix().with_sort(target, SortOrder::Descend)).await;
        assert_eq!(keys(&g), desc, "{target:?} descending");
        let opts = GetOptions::new().with_prefix().with_sort(target, SortOrder::Descend).with_limit(2);
        let g = get(&mut follower, "s/", opts).await;
        assert_eq!(keys(&g), desc[..2].to_vec(), "{target:?} descending, limit 2");
        assert_eq!((g.count(), g.more()), (4, true));
        // A target other than KEY with order NONE sorts ascending.
        let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_sort(target, SortOrder::None)).await;
        assert_eq!(keys(&g), asc, "{target:?} with order NONE");
    }

    // keys_only: values are empty, everything else is there.
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_keys_only()).await;
    assert_eq!(
        g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![
            ("s/a".into(), "".into(), r0 + 1, r0 + 1, 1, 0),
            ("s/b".into(), "".into(), r0 + 3, r0 + 8, 3, 0),
            ("s/c".into(), "".into(), r0, r0 + 9, 4, 0),
            ("s/d".into(), "".into(), r0 + 2, r0 + 5, 2, 0),
        ]
    );
    // count_only: no kvs, the count, more is false even with a limit.
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_count_only()).await;
    assert_eq!((g.kvs().len(), g.count(), g.more()), (0, 4, false));
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_count_only().with_limit(1)).await;
    assert_eq!((g.kvs().len(), g.count(), g.more()), (0, 4, false));

    // Serializable reads on a follower see the data once it is applied there.
    let mut seen = Vec::new();
    for _ in 0..50 {
        let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_serializable()).await;
        seen = keys(&g);
        if seen.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, vec!["s/a", "s/b", "s/c", "s/d"]);
    let g = get(&mut follower, "s/c", GetOptions::new().with_serializable().with_revision(r0 + 4)).await;
    assert_eq!(g.kvs()[0].value(), b"n");

    // Mod/create revision filters; count is not filtered.
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_min_mod_revision(r0 + 5)).await;
    assert_eq!(keys(&g), vec!["s/b", "s/c", "s/d"]);
    assert_eq!(g.count(), 4, "count ignores the revision filters");
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_max_mod_revision(r0 + 5)).await;
    assert_eq!(keys(&g), vec!["s/a", "s/d"]);
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_min_create_revision(r0 + 1)).await;
    assert_eq!(keys(&g), vec!["s/a", "s/b", "s/d"]);
    let g = get(&mut follower, "s/", GetOptions::new().with_prefix().with_max_create_revision(r0 + 1)).await;
    assert_eq!(keys(&g), vec!["s/a", "s/c"]);
    let opts = GetOptions::new()
        .with_prefix()
        .with_min_create_revision(r0 + 1)
        .with_max_create_revision(r0 + 2)
        .with_min_mod_revision(r0 + 2);
    let g = get(&mut leader, "s/", opts).await;
    assert_eq!(keys(&g), vec!["s/d"]);
    // Limit applies after the filter.
    let opts = GetOptions::new().with_prefix().with_min_mod_revision(r0 + 5).with_limit(2);
    let g = get(&mut follower, "s/", opts).await;
    assert_eq!(keys(&g), vec!["s/b", "s/c"]);
    assert_eq!((g.count(), g.more()), (4, true));
    let opts = GetOptions::new().with_prefix().with_min_mod_revision(r0 + 5).with_limit(3);
    let g = get(&mut follower, "s/", opts).await;
    assert_eq!(keys(&g), vec!["s/b", "s/c", "s/d"]);
    assert_eq!((g.count(), g.more()), (4, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prev_kv() {
    let cluster = Cluster::start(3).await;
    let (mut leader, mut follower) = leader_and_follower(&cluster).await;
    let ra = put(&mut leader, "d/a", "1").await;
    put(&mut leader, "d/b", "2").await;
    put(&mut leader, "d/b", "2b").await;
    put(&mut leader, "d/c", "3").await;
    let last = put(&mut leader, "e", "4").await;

    let d = ok("delete d/a", follower.delete("d/a", Some(DeleteOptions::new().with_prev_key()))).await;
    assert_eq!(d.deleted(), 1);
    assert_eq!(d.prev_kvs().iter().map(kv_tuple).collect::<Vec<_>>(), vec![("d/a".into(), "1".into(), ra, ra, 1, 0)]);
    assert_eq!(rev_of(d.header()), last + 1);

    // Nothing to delete: no new revision.
    let d = ok("delete d/a again", follower.delete("d/a", Some(DeleteOptions::new().with_prev_key()))).await;
    assert_eq!((d.deleted(), d.prev_kvs().len()), (0, 0));
    assert_eq!(rev_of(d.header()), last + 1);

    // Ranged delete without prev_kv.
    let d = ok("delete [d/b, d/c)", follower.delete("d/b", Some(DeleteOptions::new().with_range("d/c")))).await;
    assert_eq!((d.deleted(), d.prev_kvs().len()), (1, 0));
    assert_eq!(rev_of(d.header()), last + 2);

    // Prefix delete with prev_kv; one revision for all keys.
    put(&mut leader, "d/x", "x").await;
    let d = ok("delete d/ prefix", leader.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key()))).await;
    assert_eq!(d.deleted(), 2);
    let prev: Vec<(String, String)> = d
        .prev_kvs()
        .iter()
        .map(|kv| {
            let t = kv_tuple(kv);
            (t.0, t.1)
        })
        .collect();
    assert_eq!(prev, vec![("d/c".into(), "3".into()), ("d/x".into(), "x".into())]);
    assert_eq!(rev_of(d.header()), last + 4);

    // Recreated after delete: new create revision, version restarts at 1.
    let r = put(&mut follower, "d/a", "again").await;
    let g = get(&mut follower, "d/", GetOptions::new().with_prefix()).await;
    assert_eq!(g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(), vec![("d/a".into(), "again".into(), r, r, 1, 0)]);
    // Tombstones are history: the deleted key is readable at an old revision.
    let g = get(&mut follower, "d/b", GetOptions::new().with_revision(last)).await;
    assert_eq!(g.kvs()[0].value(), b"2b");
    let g = get(&mut follower, "d/b", GetOptions::new().with_revision(last + 2)).await;
    assert!(g.kvs().is_empty());
    // from_key delete.
    let d = ok("delete from d/", follower.delete("d/", Some(DeleteOptions::new().with_from_key()))).await;
    assert_eq!(d.deleted(), 2, "d/a and e");
    let g = get(&mut leader, "", GetOptions::new().with_all_keys()).await;
    assert!(g.kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_nesting() {
    let cluster = Cluster::start(3).await;
    let (mut leader, mut follower) = leader_and_follower(&cluster).await;
    let create = put(&mut leader, "x/k", "m").await;
    let modr = put(&mut leader, "x/k", "n").await;
    let current = modr;

    use CompareOp::{Equal, Greater, Less, NotEqual};
    // (compare against the actual value, a smaller one and a larger one)
    type MakeCmp = Box<dyn Fn(CompareOp, i64) -> Compare>;
    let targets: Vec<(&str, MakeCmp, i64)> = vec![
        ("version", Box::new(|op, d| Compare::version("x/k", op, 2 + d)), 0),
        ("create", Box::new(move |op, d| Compare::create_revision("x/k", op, create + d)), 0),
        ("mod", Box::new(move |op, d| Compare::mod_revision("x/k", op, modr + d)), 0),
        (
            "value",
            Box::new(|op, d| {
                let v = match d {
                    -1 => "m",
                    0 => "n",
                    _ => "o",
                };
                Compare::value("x/k", op, v)
            }),
            0,
        ),
        ("lease", Box::new(|op, d| Compare::lease("x/k", op, d)), 0),
    ];
    for (name, make, _) in &targets {
        for (op, truth) in [
            (Equal, [false, true, false]),
            (NotEqual, [true, false, true]),
            // GREATER: the key's value is greater than the given one.
            (Greater, [true, false, false]),
            (Less, [false, false, true]),
        ] {
            for (i, d) in [-1i64, 0, 1].into_iter().enumerate() {
                let txn = Txn::new().when(vec![make(op, d)]).and_then(vec![TxnOp::get("x/k", None)]).or_else(vec![]);
                let t = ok("txn", follower.txn(txn)).await;
                assert_eq!(t.succeeded(), truth[i], "{name} {op:?} (actual {d:+})");
                assert_eq!(t.op_responses().len(), if truth[i] { 1 } else { 0 });
                assert_eq!(rev_of(t.header()), current, "a read-only txn does not bump");
            }
        }
    }

    // A missing key compares as zero, except VALUE, which always fails.
    for (cmp, expected) in [
        (Compare::version("x/missing", Equal, 0), true),
        (Compare::create_revision("x/missing", Equal, 0), true),
        (Compare::mod_revision("x/missing", Less, 1), true),
        (Compare::lease("x/missing", Equal, 0), true),
        (Compare::value("x/missing", Equal, ""), false),
        (Compare::value("x/missing", NotEqual, "a"), false),
        (Compare::value("x/missing", Less, "z"), false),
    ] {
        let t = ok("txn", leader.txn(Txn::new().when(vec![cmp.clone()]))).await;
        assert_eq!(t.succeeded(), expected, "{cmp:?}");
    }

    // Ranged compares: every key in the range must satisfy the compare.
    put(&mut leader, "r/a", "1").await;
    put(&mut leader, "r/b", "2").await;
    put(&mut leader, "r/b", "2").await;
    put(&mut leader, "r/c", "3").await;
    let current = put(&mut leader, "r/c", "3").await;
    for (cmp, expected) in [
        (Compare::version("r/a", Greater, 0).with_range("r/d"), true),
        (Compare::version("r/a", Greater, 1).with_range("r/d"), false),
        (Compare::version("r/b", Greater, 1).with_range("r/d"), true),
        (Compare::version("r/", Greater, 0).with_prefix(), true),
        (Compare::value("r/", Less, "4").with_prefix(), true),
        (Compare::value("r/", Less, "3").with_prefix(), false),
        (Compare::value("r/a", NotEqual, "2").with_range("r/c"), false),
        (Compare::create_revision("r/", Less, current).with_prefix(), true),
        (Compare::mod_revision("r/", Equal, current).with_prefix(), false),
        (Compare::lease("r/", Equal, 0).with_prefix(), true),
        // An empty range: the zero key-value for numbers, failure for VALUE.
        (Compare::version("r/x", Equal, 0).with_range("r/y"), true),
        (Compare::value("r/x", NotEqual, "v").with_range("r/y"), false),
    ] {
        let t = ok("ranged txn", follower.txn(Txn::new().when(vec![cmp.clone()]))).await;
        assert_eq!(t.succeeded(), expected, "{cmp:?}");
    }

    // Several compares: all must hold.
    let both = vec![Compare::value("r/a", Equal, "1"), Compare::version("r/b", Equal, 2)];
    let t = ok("txn", leader.txn(Txn::new().when(both))).await;
    assert!(t.succeeded());
    let one_false = vec![Compare::value("r/a", Equal, "1"), Compare::version("r/b", Equal, 3)];
    let t = ok("txn", leader.txn(Txn::new().when(one_false))).await;
    assert!(!t.succeeded());

    // A txn with writes: one revision for all ops; ops see earlier ops.
    let txn = Txn::new()
        .when(vec![Compare::version("r/a", Equal, 1)])
        .and_then(vec![
            TxnOp::put("w/a", "1", None),
            TxnOp::put("r/a", "1b", Some(PutOptions::new().with_prev_key())),
            TxnOp::delete("r/c", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get("w/", Some(GetOptions::new().with_prefix())),
        ])
        .or_else(vec![TxnOp::put("w/failed", "1", None)]);
    let t = ok("txn with writes", follower.txn(txn)).await;
    assert!(t.succeeded());
    let rev = rev_of(t.header());
    assert_eq!(rev, current + 1);
    let responses = t.op_responses();
    assert_eq!(responses.len(), 4);
    match &responses[1] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().map(|kv| kv.value().to_vec()), Some(b"1".to_vec())),
        other => panic!("expected a put response, got {other:?}"),
    }
    match &responses[2] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"3");
        }
        other => panic!("expected a delete response, got {other:?}"),
    }
    match &responses[3] {
        TxnOpResponse::Get(g) => {
            assert_eq!(
                g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
                vec![("w/a".into(), "1".into(), rev, rev, 1, 0)]
            );
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    let g = get(&mut leader, "w/failed", GetOptions::new()).await;
    assert!(g.kvs().is_empty());

    // Nested txn: the inner txn's branch is chosen by its own compares, all
    // writes share the outer txn's revision.
    let inner = Txn::new()
        .when(vec![Compare::version("n/b", Equal, 0)])
        .and_then(vec![TxnOp::put("n/b", "inner-then", None)])
        .or_else(vec![TxnOp::put("n/c", "inner-else", None)]);
    let outer = Txn::new()
        .when(vec![Compare::version("n/a", Equal, 0)])
        .and_then(vec![TxnOp::put("n/a", "outer", None), TxnOp::txn(inner.clone())])
        .or_else(vec![TxnOp::txn(inner)]);
    let t = ok("nested txn", leader.txn(outer.clone())).await;
    assert!(t.succeeded());
    let rev = rev_of(t.header());
    let responses = t.op_responses();
    assert_eq!(responses.len(), 2);
    match &responses[1] {
        TxnOpResponse::Txn(inner) => {
            assert!(inner.succeeded());
            assert_eq!(inner.op_responses().len(), 1);
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
    let g = get(&mut follower, "n/", GetOptions::new().with_prefix()).await;
    assert_eq!(
        g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        vec![("n/a".into(), "outer".into(), rev, rev, 1, 0), ("n/b".into(), "inner-then".into(), rev, rev, 1, 0),]
    );
    // Again: the outer compare fails now and so does the inner one.
    let t = ok("nested txn again", follower.txn(outer)).await;
    assert!(!t.succeeded());
    match &t.op_responses()[..] {
        [TxnOpResponse::Txn(inner)] => assert!(!inner.succeeded()),
        other => panic!("expected one txn response, got {other:?}"),
    }
    let g = get(&mut follower, "n/c", GetOptions::new()).await;
    assert_eq!(g.kvs()[0].value(), b"inner-else");
    assert_eq!(g.kvs()[0].mod_revision(), rev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_logical_and_physical() {
    let cluster = Cluster::start(3).await;
    let (mut leader, mut follower) = leader_and_follower(&cluster).await;
    let mut revs = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        revs.push(put(&mut leader, "c/k", v).await);
    }
    let c = ok("compact", follower.compact(revs[1], None)).await;
    assert_eq!(rev_of(c.header()), revs[3], "compaction does not bump the revision");
    let old = within("get compacted", follower.get("c/k", Some(GetOptions::new().with_revision(revs[0])))).await;
    common::assert_grpc_error(
        "get at a compacted revision",
        old,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let g = get(&mut leader, "c/k", GetOptions::new().with_revision(revs[1])).await;
    assert_eq!(g.kvs()[0].value(), b"v2", "the compaction revision itself is readable");

    let c = ok("physical compact", leader.compact(revs[2], Some(CompactionOptions::new().with_physical()))).await;
    assert_eq!(rev_of(c.header()), revs[3]);
    for client in [&mut leader, &mut follower] {
        let old = within("get compacted", client.get("c/k", Some(GetOptions::new().with_revision(revs[1])))).await;
        common::assert_grpc_error(
            "get below the physical compaction",
            old,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        let g = get(client, "c/k", GetOptions::new().with_revision(revs[2])).await;
        assert_eq!(g.kvs()[0].value(), b"v3");
        let g = get(client, "c/k", GetOptions::new()).await;
        assert_eq!(g.kvs()[0].value(), b"v4");
        assert_eq!(g.kvs()[0].version(), 4, "compaction keeps the version");
        assert_eq!(g.kvs()[0].create_revision(), revs[0], "and the create revision");
    }
}
