//! Raft log append: entries written to RocksDB and acknowledged after the group
//! commit's fsync, through `LogStore::append_then` (the body of openraft's `append`).

use std::time::{Duration, Instant};

use cairn_server::mvcc::{Command, PutRequest};
use cairn_server::raft::{Entry, LogStore, Proposal};
use cairn_server::schema;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use tokio::sync::oneshot;

/// Value size of the put in every entry.
const VALUE_BYTES: usize = 256;

fn entry(index: u64) -> Entry {
    let put = PutRequest {
        key: format!("/bench/log/{index:012}").into_bytes(),
        value: vec![b'v'; VALUE_BYTES],
        ..Default::default()
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(vec![Command::Put(put)])),
    }
}

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        LogStore::open(schema::open_db(&dir.path().join("db")).expect("open RocksDB"), 1).expect("open the log");
    let mut next = 1u64;
    let mut group = c.benchmark_group("log_append");
    // One append of `batch` entries, waited for until durable (one fsync each).
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("durable/batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let entries: Vec<Entry> = (next..next + batch).map(entry).collect();
                    next += batch;
                    let started = Instant::now();
                    rt.block_on(async {
                        let (tx, rx) = oneshot::channel();
                        store.append_then(entries, move |r| drop(tx.send(r))).await.expect("append");
                        rx.await.expect("flush callback").expect("fsync");
                    });
                    total += started.elapsed();
                }
                total
            })
        });
    }
    // 64 single-entry appends in flight at once: group commit shares the fsyncs.
    group.throughput(Throughput::Elements(64));
    group.bench_function("durable/64_concurrent_appends", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let entries: Vec<Entry> = (next..next + 64).map(entry).collect();
                next += 64;
                let started = Instant::now();
                rt.block_on(async {
                    let mut waits = Vec::with_capacity(entries.len());
                    for e in entries {
                        let (tx, rx) = oneshot::channel();
                        store.append_then([e], move |r| drop(tx.send(r))).await.expect("append");
                        waits.push(rx);
                    }
                    for rx in waits {
                        rx.await.expect("flush callback").expect("fsync");
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
