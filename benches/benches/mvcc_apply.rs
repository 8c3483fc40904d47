//! The MVCC apply path: committed entries applied through Cairn's Raft state
//! machine (`RaftStateMachine::apply`) into a real RocksDB, as a member applies them.

use std::cell::Cell;
use std::sync::Arc;

use cairn_server::mvcc::{Command, KvStore, PutRequest, RequestOp, TxnRequest};
use cairn_server::raft::{Entry, Proposal, StateMachine};
use cairn_server::schema;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// Value size of every put (etcd's benchmark default is 8; 256 matches the scale runs).
const VALUE_BYTES: usize = 256;
/// Keys the overwrite benchmarks cycle through.
const KEY_SPACE: u64 = 10_000;
/// Puts per entry in the random-overwrite benchmark: the average proposal batch of a
/// 64-client put benchmark on three members (98k puts in 7.2k entries).
const PROPOSAL_PUTS: usize = 13;

struct Fixture {
    _dir: TempDir,
    sm: StateMachine,
    next_index: Cell<u64>,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
        let store: Arc<KvStore> = KvStore::open(db);
        let sm = StateMachine::new(store, dir.path().join("snapshots")).expect("state machine");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { _dir: dir, sm, next_index: Cell::new(1), rt }
    }

    fn entries(&self, cmds: Vec<Command>) -> Vec<Entry> {
        cmds.into_iter()
            .map(|cmd| {
                let index = self.next_index.get();
                self.next_index.set(index + 1);
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Proposal(vec![cmd])),
                }
            })
            .collect()
    }

    /// One entry carrying every command of `cmds`, as a leader proposes a batch.
    fn proposal(&self, cmds: Vec<Command>) -> Vec<Entry> {
        let index = self.next_index.get();
        self.next_index.set(index + 1);
        vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(cmds)),
        }]
    }

    fn apply(&self, entries: Vec<Entry>) {
        let mut sm = self.sm.clone();
        let outcomes = self.rt.block_on(sm.apply(entries)).expect("apply");
        assert!(outcomes.iter().flatten().all(|o| o.result.is_ok()), "every command applies");
    }
}

fn put(key: u64) -> PutRequest {
    PutRequest {
        key: format!("/bench/mvcc/{key:012}").into_bytes(),
        value: vec![b'v'; VALUE_BYTES],
        ..Default::default()
    }
}

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_apply");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        let f = Fixture::new();
        let mut n = 0u64;
        group.bench_function(format!("put_new_key/batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let cmds = (0..batch).map(|_| {
                        n += 1;
                        Command::Put(put(n))
                    });
                    f.entries(cmds.collect())
                },
                |entries| f.apply(entries),
                BatchSize::SmallInput,
            )
        });
        let f = Fixture::new();
        let mut n = 0u64;
        group.bench_function(format!("put_overwrite/batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let cmds = (0..batch).map(|_| {
                        n += 1;
                        Command::Put(put(n % KEY_SPACE))
                    });
                    f.entries(cmds.collect())
                },
                |entries| f.apply(entries),
                BatchSize::SmallInput,
            )
        });
    }
    // As a member applies a 64-client put benchmark: each entry carries the commands
    // of one proposal batch (13 on average), on keys drawn at random from the key
    // space, so that every memtable insert lands somewhere new.
    group.throughput(Throughput::Elements(PROPOSAL_PUTS as u64));
    let f = Fixture::new();
    let mut rng = StdRng::seed_from_u64(7);
    group.bench_function(format!("put_random_overwrite/{PROPOSAL_PUTS}_per_entry"), |b| {
        b.iter_batched(
            || {
                let cmds = (0..PROPOSAL_PUTS).map(|_| Command::Put(put(rng.random_range(0..KEY_SPACE)))).collect();
                f.proposal(cmds)
            },
            |entries| f.apply(entries),
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    let f = Fixture::new();
    let mut n = 0u64;
    group.bench_function("txn_8_puts", |b| {
        b.iter_batched(
            || {
                let success = (0..8)
                    .map(|_| {
                        n += 1;
                        RequestOp::Put(put(n % KEY_SPACE))
                    })
                    .collect();
                f.entries(vec![Command::Txn(TxnRequest { compare: vec![], success, failure: vec![] })])
            },
            |entries| f.apply(entries),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
