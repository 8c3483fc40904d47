//! The Maintenance API on real clusters: backups and restore, the space quota and
//! its alarm, defragmentation, hashes.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{ok, retry, Cluster};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, GetOptions};

/// Key, value, create revision, mod revision, version, lease.
type KvTuple = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Streams a backup into a file; returns its size.
async fn save_backup(c: &mut Client, path: &std::path::Path) -> u64 {
    let mut stream = ok("snapshot", c.snapshot()).await;
    let mut f = std::fs::File::create(path).expect("create backup file");
    let mut total = 0u64;
    let mut last_remaining = None;
    while let Some(msg) = ok("snapshot chunk", stream.message()).await {
        f.write_all(msg.blob()).unwrap();
        total += msg.blob().len() as u64;
        last_remaining = Some(msg.remaining_bytes());
    }
    assert_eq!(last_remaining, Some(0), "the last chunk says nothing remains");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_keeps_every_key_value_and_revision() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    for n in 0..50 {
        ok("put", c.put(format!("key{n:02}"), format!("v{n}"), None)).await;
    }
    ok("overwrite", c.put("key07", "seven", None)).await;
    ok("delete", c.delete("key08", None)).await;
    let lease = ok("lease", c.lease_grant(600, None)).await.id();
    ok("put with lease", c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease)))).await;
    let before = ok("read all", c.get("", Some(GetOptions::new().with_from_key()))).await;
    let revision = before.header().unwrap().revision();

    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let size = save_backup(&mut c, &backup).await;
    assert!(size > 0);
    drop(cluster);

    let restored = Cluster::start_restored(3, &backup).await;
    let mut r = restored.client(2).await;
    let after = ok("read all", r.get("", Some(GetOptions::new().with_from_key()))).await;
    assert_eq!(after.header().unwrap().revision(), revision, "the revision carries over");
    let pairs = |resp: &etcd_client::GetResponse| -> Vec<KvTuple> {
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()
    };
    assert_eq!(pairs(&after), pairs(&before), "every key, value and revision");
    // History survives too: the old value of key07.
    let old = ok("read the past", r.get("key07", Some(GetOptions::new().with_revision(revision - 3)))).await;
    assert_eq!(old.kvs()[0].value(), b"v7");
    // It is a new cluster with its own ID, and it takes writes.
    assert_ne!(after.header().unwrap().cluster_id(), before.header().unwrap().cluster_id());
    let put = ok("write", r.put("new", "1", None)).await;
    assert_eq!(put.header().unwrap().revision(), revision + 1);
    let ttl = ok("lease survives", r.lease_time_to_live(lease, None)).await;
    assert!(ttl.ttl() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_quota_raises_nospace_and_compaction_defrag_disarm_restore_writes() {
    let quota = 4 * 1024 * 1024;
    let cluster = Cluster::start_with(1, &["--quota-backend-bytes", &quota.to_string()]).await;
    let mut c = cluster.client(0).await;
    let value = vec![b'q'; 256 * 1024];
    let mut refused = None;
    for n in 0..400 {
        match c.put("big", value.clone(), None).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, err) = refused.expect("writes are refused once the database exceeds its quota");
    assert!(n > 0);
    common::assert_grpc_error::<()>(
        "put over quota",
        Err(err),
        tonic::Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    // The alarm is raised and listed; reads and deletes still work.
    let alarms = ok("alarm list", c.alarm(AlarmAction::Get, AlarmType::None, None)).await;
    assert!(alarms.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace), "NOSPACE is listed");
    ok("read", c.get("big", None)).await;
    let (status, body) = common::http_get(&cluster.endpoint(0), "/health").await.expect("/health answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ALARM NOSPACE"), "/health names the alarm: {body}");
    let rev = ok("delete", c.delete("absent", None)).await.header().unwrap().revision();
    // Compact away the history, give the space back, disarm: writes work again.
    ok("compact", c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical()))).await;
    ok("defragment", c.defragment()).await;
    let size = ok("status", c.status()).await.db_size();
    eprintln!("database size after compaction and defragmentation: {size} bytes (quota {quota})");
    for a in alarms.alarms() {
        let mut opts = AlarmOptions::new();
        opts.with_member(a.member_id());
        ok("disarm", c.alarm(AlarmAction::Deactivate, a.alarm(), Some(opts))).await;
    }
    retry("writes accepted after disarm", Duration::from_secs(30), Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            match c.put("after", "ok", None).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let size = c.status().await.map(|s| s.db_size()).unwrap_or(-1);
                    let alarms =
                        c.alarm(AlarmAction::Get, AlarmType::None, None).await.map(|a| a.alarms().len()).unwrap_or(99);
                    Err(format!("{e} (db size {size}, {alarms} alarms)"))
                }
            }
        }
    })
    .await;
    let alarms = ok("alarm list", c.alarm(AlarmAction::Get, AlarmType::None, None)).await;
    assert!(alarms.alarms().is_empty(), "no alarm is left");
    let (status, body) = common::http_get(&cluster.endpoint(0), "/health").await.expect("/health answers");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_is_equal_on_every_member_and_follows_compaction() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    for n in 0..30 {
        ok("put", c.put(format!("h{}", n % 7), format!("{n}"), None)).await;
    }
    ok("delete", c.delete("h3", None)).await;
    let rev = ok("get", c.get("h0", None)).await.header().unwrap().revision();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = cluster.client(i).await;
        ok("barrier", m.get("h0", None)).await;
        let h = ok("hash kv", m.hash_kv(rev)).await;
        hashes.push(h.hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // An older revision hashes differently.
    let older = ok("hash kv older", c.hash_kv(rev - 5)).await.hash();
    assert_ne!(older, hashes[0]);
    // After a compaction (physical on the member asked, perhaps not yet on the
    // others), members report the new compact revision and agree again.
    ok("compact", c.compact(rev - 5, Some(etcd_client::CompactionOptions::new().with_physical()))).await;
    let mut after = Vec::new();
    for i in 0..3 {
        let mut m = cluster.client(i).await;
        ok("barrier", m.get("h0", None)).await;
        let h = ok("hash kv after compaction", m.hash_kv(rev)).await;
        assert_eq!(h.compact_version(), rev - 5);
        after.push(h.hash());
    }
    assert!(after.windows(2).all(|w| w[0] == w[1]), "{after:?}");
    common::assert_grpc_error(
        "hash a compacted revision",
        c.hash_kv(rev - 10).await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let status = ok("status", c.status()).await;
    assert!(status.db_size() > 0);
    assert!(status.raft_index() >= status.raft_applied_index() || status.raft_applied_index() > 0);
}

/// A member whose data differ from the others' at the same revision (here: one
/// history record rewritten on disk while it was down) is found by the leader's
/// periodic HashKV comparison; CORRUPT is raised and writes stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_check_raises_corrupt_on_a_member_whose_data_differ() {
    let mut cluster = Cluster::start_with(3, &["--corrupt-check-interval", "500"]).await;
    let mut c = cluster.client(0).await;
    for n in 0..10 {
        ok("put", c.put(format!("c{n}"), format!("value-{n}"), None)).await;
    }
    let leader = cluster.wait_for_leader().await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    ok("barrier", cluster.client(victim).await.get("c9", None)).await;
    cluster.kill(victim);
    {
        let db = cairn_server::schema::open_db(&cluster.data_dir(victim).join("db")).expect("open the member's db");
        let cf = cairn_server::schema::cf(&db, cairn_server::schema::CF_HISTORY);
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        let (first_key, first_value) = (it.key().unwrap().to_vec(), it.value().unwrap().to_vec());
        it.next();
        let other_value = it.value().unwrap().to_vec();
        assert_ne!(first_value, other_value);
        drop(it);
        db.put_cf(cf, first_key, other_value).expect("rewrite one history record");
        db.flush_wal(true).unwrap();
    }
    cluster.restart(victim);
    cluster.wait_ready().await;
    retry("CORRUPT raised", Duration::from_secs(60), Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
            if alarms.alarms().iter().any(|a| a.alarm() == AlarmType::Corrupt) {
                Ok(())
            } else {
                Err(etcd_client::Error::InvalidArgs("no CORRUPT alarm yet".into()))
            }
        }
    })
    .await;
    common::assert_grpc_error(
        "write while CORRUPT",
        c.put("x", "y", None).await,
        tonic::Code::DataLoss,
        "etcdserver: corrupt cluster",
    );
    ok("reads still work", c.get("c1", None)).await;
}
