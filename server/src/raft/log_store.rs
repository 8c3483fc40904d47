//! The Raft log in RocksDB, with group commit: appends are written at once (so they
//! are readable) and acknowledged to openraft only after an fsync, and one fsync
//! covers every append that queued up while the previous one ran.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{StorageIOError, Vote};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::background::Worker;
use crate::limits::LOG_FLUSH_BATCH_MAX;
use crate::schema::{self, raft_state_keys, CF_RAFT_LOG, CF_RAFT_STATE};

/// Called once the appended entries are durable (or the sync failed).
type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The log store; cheap to clone (a clone is also its log reader). The group-commit
/// thread stops and is joined when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Worker<mpsc::Sender<FlushDone>>>,
}

impl LogStore {
    pub fn open(db: Arc<DB>) -> Self {
        let (flushes, mut rx) = mpsc::channel::<FlushDone>(LOG_FLUSH_BATCH_MAX);
        let syncer_db = db.clone();
        let syncer =
            Worker::spawn("cairn-log-sync", flushes, move || group_commit(&mut rx, || syncer_db.flush_wal(true)));
        LogStore { db, syncer: Arc::new(syncer) }
    }

    /// What [`RaftLogStorage::append`] does, with any completion callback: writes
    /// `entries` at once and calls `done` when they are durable (group commit).
    /// Public for the micro-benchmarks, which cannot build openraft's callback.
    pub async fn append_then(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), StorageError> {
        let cf = schema::cf(&self.db, CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, schema::log_key(entry.log_id.index), encode(&entry));
        }
        // Written now so that readers see the entries; durable once the group
        // committer has synced the WAL, which is when openraft hears of it.
        self.write(batch, false).map_err(write_err)?;
        // Waits (without blocking a runtime thread) only if the queue is full.
        self.syncer
            .sender()
            .send(Box::new(done))
            .await
            .map_err(|_| StorageIOError::write_logs(&io::Error::other("log sync thread stopped")).into())
    }

    fn get_state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, rocksdb::Error> {
        let bytes = self.db.get_cf(schema::cf(&self.db, CF_RAFT_STATE), key)?;
        Ok(bytes.map(|b| {
            bincode::deserialize(&b)
                .unwrap_or_else(|e| panic!("corrupt raft state {}: {e}", String::from_utf8_lossy(key)))
        }))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)
    }

    fn put_state<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(schema::cf(&self.db, CF_RAFT_STATE), key, encode(value));
        self.write(batch, sync)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, rocksdb::Error> {
        let mut it = self.db.raw_iterator_cf(schema::cf(&self.db, CF_RAFT_LOG));
        it.seek_to_last();
        it.status()?;
        Ok(it.value().map(|v| decode_entry(v).log_id))
    }
}

/// Takes every append queued so far, syncs once for all of them, and acknowledges
/// them; repeats until the store is dropped.
fn group_commit<E: std::fmt::Display>(rx: &mut mpsc::Receiver<FlushDone>, mut sync: impl FnMut() -> Result<(), E>) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while pending.len() < LOG_FLUSH_BATCH_MAX {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let result = crate::observability::wal_fsync(&mut sync);
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync of the raft log failed");
        }
        for done in pending.drain(..) {
            done(result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode encoding of an in-memory value cannot fail")
}

fn decode_entry(bytes: &[u8]) -> Entry {
    bincode::deserialize(bytes).unwrap_or_else(|e| panic!("corrupt raft log entry ({} bytes): {e}", bytes.len()))
}

fn write_err(e: rocksdb::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: rocksdb::Error) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut it = self.db.raw_iterator_cf(schema::cf(&self.db, CF_RAFT_LOG));
        it.seek(schema::log_key(start));
        let mut entries = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let index = schema::log_index(k);
            if !range.contains(&index) {
                break;
            }
            let entry = decode_entry(v);
            assert_eq!(entry.log_id.index, index, "raft log entry stored under the wrong index");
            entries.push(entry);
            it.next();
        }
        it.status().map_err(read_err)?;
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_state(raft_state_keys::LAST_PURGED).map_err(read_err)?;
        let last_log_id = self.last_entry_log_id().map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_state(raft_state_keys::VOTE, vote, true).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(raft_state_keys::VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        crate::observability::committed(committed.map(|l| l.index));
        self.put_state(raft_state_keys::COMMITTED, &committed, false).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_state::<Option<LogId>>(raft_state_keys::COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.append_then(entries, move |result| callback.log_io_completed(result)).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            schema::cf(&self.db, CF_RAFT_LOG),
            schema::log_key(log_id.index),
            schema::log_key(u64::MAX),
        );
        batch.delete_cf(schema::cf(&self.db, CF_RAFT_LOG), schema::log_key(u64::MAX));
        self.write(batch, true).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(schema::cf(&self.db, CF_RAFT_STATE), raft_state_keys::LAST_PURGED, encode(&log_id));
        batch.delete_range_cf(schema::cf(&self.db, CF_RAFT_LOG), schema::log_key(0), schema::log_key(log_id.index + 1));
        // A synced write also syncs every state machine write before it in the shared
        // WAL, so the applied state that replaces these entries is durable first.
        self.write(batch, true).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    #[test]
    fn queued_appends_share_one_fsync() {
        let (tx, mut rx) = mpsc::channel::<FlushDone>(LOG_FLUSH_BATCH_MAX);
        let acked = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let acked = acked.clone();
            tx.try_send(Box::new(move |r| acked.lock().unwrap().push((i, r.is_ok())))).unwrap();
        }
        drop(tx);
        let mut syncs = 0;
        group_commit(&mut rx, || {
            syncs += 1;
            Ok::<(), String>(())
        });
        assert_eq!(syncs, 1, "100 queued appends need one fsync");
        let acked = acked.lock().unwrap();
        assert_eq!(acked.len(), 100);
        assert!(acked.iter().enumerate().all(|(i, &(j, ok))| i == j && ok), "acknowledged in order, all ok");
    }

    #[test]
    fn a_failed_fsync_fails_every_append_it_covered() {
        let (tx, mut rx) = mpsc::channel::<FlushDone>(8);
        let failures = Arc::new(AtomicU64::new(0));
        for _ in 0..3 {
            let failures = failures.clone();
            tx.try_send(Box::new(move |r| {
                if r.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }))
            .unwrap();
        }
        drop(tx);
        group_commit(&mut rx, || Err("disk gone"));
        assert_eq!(failures.load(Ordering::Relaxed), 3);
    }
}
