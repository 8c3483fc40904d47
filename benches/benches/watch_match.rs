//! Watch matching and fan-out: one put applied to the MVCC store, until every
//! watcher it matches has its event on its stream (the watch hub's dispatcher).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_server::mvcc::{Command, KvStore, PutRequest};
use cairn_server::schema;
use cairn_server::watch::{StreamGuard, StreamMessage, WatchHub, WatchSpec};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Watchers in every scenario.
const WATCHERS: usize = 1000;
/// Streams the watchers are spread over.
const STREAMS: usize = 10;

struct Fixture {
    _dir: TempDir,
    rt: Runtime,
    store: Arc<KvStore>,
    _hub: Arc<WatchHub>,
    streams: Vec<(StreamGuard, mpsc::Receiver<StreamMessage>)>,
    next: u64,
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

impl Fixture {
    /// A hub with WATCHERS watchers; `range_of(i)` gives watcher i's key and range end.
    fn new(range_of: impl Fn(usize) -> (Vec<u8>, Vec<u8>)) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let store = KvStore::open(schema::open_db(&dir.path().join("db")).expect("open RocksDB"));
        let (hub, streams) = rt.block_on(async {
            let hub = WatchHub::start(store.clone(), Duration::from_secs(600));
            let mut streams: Vec<_> = (0..STREAMS).map(|_| hub.open_stream()).collect();
            let rev = store.status().revision;
            for i in 0..WATCHERS {
                let (key, range_end) = range_of(i);
                let spec = WatchSpec {
                    watch_id: None,
                    key,
                    range_end,
                    start_revision: rev + 1,
                    no_put: false,
                    no_delete: false,
                    prev_kv: false,
                    progress_notify: false,
                    fragment: false,
                };
                let (guard, rx) = &mut streams[i % STREAMS];
                hub.create(guard.id, spec, rev).await.expect("create watch");
                match rx.recv().await {
                    Some(StreamMessage::Created { .. }) => {}
                    other => panic!("expected Created, got {other:?}"),
                }
            }
            (hub, streams)
        });
        Fixture { _dir: dir, rt, store, _hub: hub, streams, next: 0 }
    }

    /// Applies one put on `key` and waits for `matches` events in total.
    fn put_and_wait(&mut self, key: Vec<u8>, matches: usize) -> Duration {
        self.next += 1;
        let cmd = Command::Put(PutRequest { key, value: self.next.to_be_bytes().to_vec(), ..Default::default() });
        let started = Instant::now();
        let outcome = self.store.apply(&cmd, &[]).expect("apply");
        assert!(outcome.result.is_ok());
        let streams = &mut self.streams;
        self.rt.block_on(async {
            let mut seen = 0;
            while seen < matches {
                for (_, rx) in streams.iter_mut() {
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            StreamMessage::Events { events, .. } => seen += events.len(),
                            StreamMessage::Revision { watches, .. } => {
                                seen += watches.iter().map(|w| w.events.len()).sum::<usize>()
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                if seen < matches {
                    tokio::task::yield_now().await;
                }
            }
        });
        started.elapsed()
    }
}

fn bench_watch(c: &mut Criterion) {
    let mut group = c.benchmark_group("watch_match");
    group.throughput(Throughput::Elements(1));
    // Every watcher on one exact key of its own: a put matches one watcher.
    let mut f = Fixture::new(|i| (format!("/w/exact/{i:05}").into_bytes(), Vec::new()));
    let mut n = 0usize;
    group.bench_function("1000_exact_keys/put_matches_1", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    n += 1;
                    f.put_and_wait(format!("/w/exact/{:05}", n % WATCHERS).into_bytes(), 1)
                })
                .sum()
        })
    });
    drop(f);
    // 100 prefixes with 10 watchers each: a put matches 10.
    let mut f = Fixture::new(|i| {
        let p = format!("/w/p{:03}/", i % 100).into_bytes();
        let end = prefix_end(&p);
        (p, end)
    });
    group.bench_function("100_prefixes_x10/put_matches_10", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    n += 1;
                    f.put_and_wait(format!("/w/p{:03}/k{n}", n % 100).into_bytes(), 10)
                })
                .sum()
        })
    });
    drop(f);
    // Every watcher on the same prefix (the watch-latency workload): a put matches 1000.
    let mut f = Fixture::new(|_| (b"/w/all/".to_vec(), prefix_end(b"/w/all/")));
    group.bench_function("1000_same_prefix/put_matches_1000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    n += 1;
                    f.put_and_wait(format!("/w/all/k{}", n % 1000).into_bytes(), WATCHERS)
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_watch);
criterion_main!(benches);
