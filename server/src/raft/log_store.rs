//! The Raft log in RocksDB, with group commit: appends are written at once (so they
//! are readable) and one fsync covers every append that queued up while the previous
//! one ran.
//!
//! # When an append is acknowledged
//!
//! openraft 0.9 waits for each append's acknowledgment before it goes on to its next
//! command, replication included. A follower's append is acknowledged after its fsync,
//! as Raft requires: its reply to the leader says the entries are durable. If the
//! leader's own appends waited for their fsync too, its disk write and the followers'
//! would run one after the other, and every commit would pay for two fsyncs in a row.
//!
//! So a leader's append of entries it created itself is acknowledged as soon as it is
//! written, and replication starts while its fsync runs, as etcd's leader sends its
//! entries before it writes them to its own WAL. openraft then counts the leader in
//! the quorum before its copy is durable; two gates keep that from being seen before
//! it is:
//!
//! - the state machine applies an entry only once it is durable here
//!   ([`StateMachine::gated_by`](super::StateMachine::gated_by)), so no client hears of
//!   a write (and no read or watch sees it) before a quorum has it on disk;
//! - the commit index sent to followers never passes what is durable here, and names
//!   only an entry of the leader's own term ([`LogSynced`], used by the peer
//!   network), so that a follower does not apply an entry that a majority may not
//!   hold on disk.
//!
//! A member knows that it is the leader of a term from the vote it saved in this
//! process: a committed vote for itself. Until it saves another vote, every append
//! it does is its own. (A member that resumes leadership after a restart, without
//! an election, acknowledges after the fsync until the next election.)
//!
//! # Standing
//!
//! What the store last saved of the member's place in the cluster (its vote and
//! the commit index) is also kept in memory, as a [`Standing`] that
//! ReadIndex reads (see [`RaftNode`](super::RaftNode)). openraft saves a vote before
//! it answers a vote request or asks for votes, so a member whose saved vote is for
//! a leader has not helped elect any later one.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LeaderId, StorageIOError, Vote};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::background::Worker;
use crate::limits::LOG_FLUSH_BATCH_MAX;
use crate::schema::{self, raft_state_keys, CF_RAFT_LOG, CF_RAFT_STATE};

/// Called once the appended entries are durable (or the sync failed).
type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// One append waiting for the group commit's next fsync.
struct PendingSync {
    /// Index of the append's last entry (0 for a barrier with no entries).
    last_index: u64,
    /// What to call once it is durable; `None` if it was acknowledged already.
    done: Option<FlushDone>,
}

/// How much of this member's log is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every entry up to this index is covered by a completed fsync.
    Upto(u64),
    /// An fsync failed: nothing written since is known to be durable, and nothing
    /// will become so.
    Failed,
}

/// Follows how much of the log is durable (see the module documentation).
#[derive(Clone)]
pub struct LogSynced(watch::Receiver<Durable>);

impl LogSynced {
    /// A follower of the durable index set by the returned sender, for tests of
    /// what waits on it.
    #[cfg(test)]
    pub(crate) fn channel(durable: Durable) -> (watch::Sender<Durable>, LogSynced) {
        let (tx, rx) = watch::channel(durable);
        (tx, LogSynced(rx))
    }

    /// How much of the log is durable now.
    pub fn now(&self) -> Durable {
        *self.0.borrow()
    }

    /// Waits until every entry up to `index` is durable. Returns `false` if that will
    /// not happen: an fsync failed, or the log store is gone.
    pub async fn durable(&mut self, index: u64) -> bool {
        let reached = self.0.wait_for(|d| match d {
            Durable::Upto(upto) => *upto >= index,
            Durable::Failed => true,
        });
        reached.await.is_ok_and(|d| matches!(*d, Durable::Upto(_)))
    }
}

/// What a member's log store saved last, as of one moment (see the module
/// documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// The vote saved last (read back at start).
    pub vote: Option<Vote<NodeId>>,
    /// `vote` was saved by this process, not read back at start.
    pub vote_saved_here: bool,
    /// The commit index openraft saved last in this process.
    pub committed: Option<LogId>,
}

impl Standing {
    /// The leader ID under which member `id` leads: the vote it saved in this
    /// process, if that is committed and for itself.
    pub fn leading(&self, id: NodeId) -> Option<LeaderId<NodeId>> {
        let own = |v: &Vote<NodeId>| v.is_committed() && v.leader_id().node_id == id;
        self.vote.filter(|v| self.vote_saved_here && own(v)).map(|v| *v.leader_id())
    }

    /// As the leader `id`, an index at or above every entry committed so far: its
    /// commit index, once that is an entry of its own term (a leader commits only
    /// those, and every entry before one is committed too). `None` if `id` does
    /// not lead, or has not committed an entry of its term yet (then an entry an
    /// earlier leader committed may lie beyond its commit index).
    pub fn read_index(&self, id: NodeId) -> Option<u64> {
        let leading = self.leading(id)?;
        self.committed.filter(|c| c.leader_id.term == leading.term).map(|c| c.index)
    }
}

/// Reads a log store's [`Standing`]; cheap to clone, and does not keep the store
/// open.
#[derive(Clone)]
pub struct StandingView(Arc<Mutex<Standing>>);

impl StandingView {
    /// The standing as of now.
    pub fn get(&self) -> Standing {
        *self.0.lock().expect("standing lock")
    }
}

/// The log store; cheap to clone (a clone is also its log reader). The group-commit
/// thread stops and is joined when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    id: NodeId,
    syncer: Arc<Worker<mpsc::Sender<PendingSync>>>,
    synced: Arc<watch::Sender<Durable>>,
    /// What was saved last of the member's vote and commit index.
    standing: Arc<Mutex<Standing>>,
    /// The commit index openraft saved last, if not written yet: it goes into the
    /// next append's batch (see [`RaftLogStorage::save_committed`] below).
    unwritten_committed: Arc<Mutex<Option<Option<LogId>>>>,
}

impl LogStore {
    /// Opens the log of member `id` in `db`, after an fsync of everything written to
    /// it before (a restart after a crash may have recovered unsynced writes).
    pub fn open(db: Arc<DB>, id: NodeId) -> Result<Self, rocksdb::Error> {
        db.flush_wal(true)?;
        let syncer_db = db.clone();
        Self::with_sync(db, id, move || syncer_db.flush_wal(true))
    }

    /// A log store whose group commit makes the log durable with `sync`.
    fn with_sync<E: std::fmt::Display>(
        db: Arc<DB>,
        id: NodeId,
        sync: impl FnMut() -> Result<(), E> + Send + 'static,
    ) -> Result<Self, rocksdb::Error> {
        let last = last_entry_log_id(&db)?;
        let vote = get_state(&db, raft_state_keys::VOTE)?;
        let standing = Standing { vote, vote_saved_here: false, committed: None };
        let synced = Arc::new(watch::channel(Durable::Upto(last.map_or(0, |l| l.index))).0);
        let (pending, mut rx) = mpsc::channel::<PendingSync>(LOG_FLUSH_BATCH_MAX);
        let syncer_synced = synced.clone();
        let syncer = Worker::spawn("cairn-log-sync", pending, move || group_commit(&mut rx, sync, &syncer_synced));
        Ok(LogStore {
            db,
            id,
            syncer: Arc::new(syncer),
            synced,
            standing: Arc::new(Mutex::new(standing)),
            unwritten_committed: Arc::default(),
        })
    }

    /// Follows how much of the log is durable.
    pub fn synced(&self) -> LogSynced {
        LogSynced(self.synced.subscribe())
    }

    /// Reads what the store saved last of the member's vote and commit index.
    pub fn standing(&self) -> StandingView {
        StandingView(self.standing.clone())
    }

    /// What [`RaftLogStorage::append`] does, with any completion callback: writes
    /// `entries` at once and calls `done` when openraft may count them as this
    /// member's: after the group commit's fsync, or at once if this member leads and
    /// created them (see the module documentation). Public for the micro-benchmarks,
    /// which cannot build openraft's callback.
    pub async fn append_then(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), StorageError> {
        if *self.synced.borrow() == Durable::Failed {
            let e = io::Error::other("an earlier fsync of the raft log failed");
            return Err(StorageIOError::write_logs(&e).into());
        }
        let leading = self.standing.lock().expect("standing lock").leading(self.id);
        let cf = schema::cf(&self.db, CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        let (mut last_index, mut own) = (0, leading.is_some());
        for entry in entries {
            own &= Some(entry.log_id.leader_id) == leading;
            last_index = entry.log_id.index;
            batch.put_cf(cf, schema::log_key(entry.log_id.index), encode(&entry));
        }
        if let Some(committed) = self.unwritten_committed.lock().expect("committed lock").take() {
            batch.put_cf(schema::cf(&self.db, CF_RAFT_STATE), raft_state_keys::COMMITTED, encode(&committed));
        }
        // Written now so that readers see the entries (replication reads them).
        self.write(batch, false).map_err(write_err)?;
        let done: Option<FlushDone> = if own {
            done(Ok(()));
            None
        } else {
            Some(Box::new(done))
        };
        self.queue_sync(PendingSync { last_index, done }).await
    }

    /// Hands `pending` to the group committer. Waits (without blocking a runtime
    /// thread) only if its queue is full.
    async fn queue_sync(&self, pending: PendingSync) -> Result<(), StorageError> {
        self.syncer
            .sender()
            .send(pending)
            .await
            .map_err(|_| StorageIOError::write_logs(&io::Error::other("log sync thread stopped")).into())
    }

    fn get_state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, rocksdb::Error> {
        get_state(&self.db, key)
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
}

fn get_state<T: DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, rocksdb::Error> {
    let bytes = db.get_cf(schema::cf(db, CF_RAFT_STATE), key)?;
    Ok(bytes.map(|b| {
        bincode::deserialize(&b).unwrap_or_else(|e| panic!("corrupt raft state {}: {e}", String::from_utf8_lossy(key)))
    }))
}

fn last_entry_log_id(db: &DB) -> Result<Option<LogId>, rocksdb::Error> {
    let mut it = db.raw_iterator_cf(schema::cf(db, CF_RAFT_LOG));
    it.seek_to_last();
    it.status()?;
    Ok(it.value().map(|v| decode_entry(v).log_id))
}

/// Takes every append queued so far, syncs once for all of them, records in `synced`
/// how far the log is durable, and acknowledges those not acknowledged yet; repeats
/// until the store is dropped.
fn group_commit<E: std::fmt::Display>(
    rx: &mut mpsc::Receiver<PendingSync>,
    mut sync: impl FnMut() -> Result<(), E>,
    synced: &watch::Sender<Durable>,
) {
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
        match &result {
            Ok(()) => {
                let upto = pending.iter().map(|p| p.last_index).max().unwrap_or(0);
                synced.send_if_modified(|d| match d {
                    Durable::Upto(i) if *i < upto => {
                        *i = upto;
                        true
                    }
                    _ => false,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "fsync of the raft log failed");
                synced.send_replace(Durable::Failed);
            }
        }
        for done in pending.drain(..).filter_map(|p| p.done) {
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
        let last_log_id = last_entry_log_id(&self.db).map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_state(raft_state_keys::VOTE, vote, true).map_err(|e| StorageIOError::write_vote(&e))?;
        // Only now, once it is durable: openraft answers the request that changed
        // the vote after this returns.
        let mut standing = self.standing.lock().expect("standing lock");
        (standing.vote, standing.vote_saved_here) = (Some(*vote), true);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(raft_state_keys::VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// openraft saves the commit index on every commit, before it applies the
    /// entries, and reads it back only when it starts, to apply the entries known
    /// committed without waiting to hear from a leader. A write of its own here would
    /// delay every apply by a RocksDB write, so the index is written with the next
    /// append instead. What a restart finds is then the index saved last before the
    /// last append: it may lag (openraft then starts from what was applied), but it
    /// is never ahead of what is committed, which is all that matters.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        crate::observability::committed(committed.map(|l| l.index));
        *self.unwritten_committed.lock().expect("committed lock") = Some(committed);
        self.standing.lock().expect("standing lock").committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(committed) = *self.unwritten_committed.lock().expect("committed lock") {
            return Ok(committed);
        }
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
        // Appends still waiting for an fsync must not raise the durable index past the
        // cut once they finish: wait for them first.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue_sync(PendingSync { last_index: 0, done: Some(Box::new(move |r| drop(tx.send(r)))) }).await?;
        rx.await
            .map_err(|_| io::Error::other("log sync thread stopped"))
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            schema::cf(&self.db, CF_RAFT_LOG),
            schema::log_key(log_id.index),
            schema::log_key(u64::MAX),
        );
        batch.delete_cf(schema::cf(&self.db, CF_RAFT_LOG), schema::log_key(u64::MAX));
        self.write(batch, true).map_err(write_err)?;
        self.synced.send_if_modified(|d| match d {
            Durable::Upto(i) if *i >= log_id.index => {
                *i = log_id.index.saturating_sub(1);
                true
            }
            _ => false,
        });
        Ok(())
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
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;
    use tokio::sync::oneshot::error::TryRecvError;

    fn pending(last_index: u64, done: impl FnOnce(io::Result<()>) + Send + 'static) -> PendingSync {
        PendingSync { last_index, done: Some(Box::new(done)) }
    }

    #[test]
    fn queued_appends_share_one_fsync() {
        let (tx, mut rx) = mpsc::channel::<PendingSync>(LOG_FLUSH_BATCH_MAX);
        let acked = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let acked = acked.clone();
            tx.try_send(pending(i + 1, move |r| acked.lock().unwrap().push((i, r.is_ok())))).unwrap();
        }
        drop(tx);
        let mut syncs = 0;
        let synced = watch::channel(Durable::Upto(0)).0;
        group_commit(
            &mut rx,
            || {
                syncs += 1;
                Ok::<(), String>(())
            },
            &synced,
        );
        assert_eq!(syncs, 1, "100 queued appends need one fsync");
        assert_eq!(*synced.borrow(), Durable::Upto(100), "the fsync made all of them durable");
        let acked = acked.lock().unwrap();
        assert_eq!(acked.len(), 100);
        assert!(acked.iter().enumerate().all(|(i, &(j, ok))| i as u64 == j && ok), "acknowledged in order, all ok");
    }

    #[test]
    fn a_failed_fsync_fails_every_append_it_covered() {
        let (tx, mut rx) = mpsc::channel::<PendingSync>(8);
        let failures = Arc::new(AtomicU64::new(0));
        for i in 0..3 {
            let failures = failures.clone();
            tx.try_send(pending(i + 1, move |r| {
                if r.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }))
            .unwrap();
        }
        drop(tx);
        let synced = watch::channel(Durable::Upto(0)).0;
        group_commit(&mut rx, || Err("disk gone"), &synced);
        assert_eq!(failures.load(Ordering::Relaxed), 3);
        assert_eq!(*synced.borrow(), Durable::Failed);
    }

    /// A log store of member 1 whose fsyncs each wait for the test to allow one.
    fn gated_store() -> (TempDir, LogStore, std_mpsc::Sender<()>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
        let (allow, allowed) = std_mpsc::channel::<()>();
        let store = LogStore::with_sync(db.clone(), 1, move || {
            allowed.recv().map_err(|_| "test over")?;
            db.flush_wal(true).map_err(|e| e.to_string())
        })
        .expect("log store");
        (dir, store, allow)
    }

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    fn entry(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry { log_id: log_id(term, leader, index), payload: EntryPayload::Blank }
    }

    /// Appends `entries` and returns a receiver of their acknowledgment.
    async fn append(store: &LogStore, entries: Vec<Entry>) -> tokio::sync::oneshot::Receiver<io::Result<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append_then(entries, move |r| drop(tx.send(r))).await.expect("append");
        rx
    }

    async fn wait_durable(synced: &mut LogSynced, index: u64) {
        let durable = tokio::time::timeout(Duration::from_secs(10), synced.durable(index)).await;
        assert_eq!(durable.ok(), Some(true), "entries up to {index} never became durable");
    }

    #[tokio::test]
    async fn a_leaders_own_entries_are_acknowledged_before_their_fsync_and_durable_only_after() {
        let (_dir, mut store, allow) = gated_store();
        let mut synced = store.synced();
        store.save_vote(&Vote::new_committed(2, 1)).await.expect("save vote");
        let mut acked = append(&store, vec![entry(2, 1, 1), entry(2, 1, 2)]).await;
        assert!(acked.try_recv().expect("acknowledged before the fsync").is_ok());
        assert_eq!(synced.now(), Durable::Upto(0), "not durable before the fsync");
        let early = tokio::time::timeout(Duration::from_millis(50), synced.durable(2)).await;
        assert!(early.is_err(), "durable only after the fsync");
        allow.send(()).unwrap();
        wait_durable(&mut synced, 2).await;
        assert_eq!(synced.now(), Durable::Upto(2));
    }

    #[tokio::test]
    async fn other_appends_are_acknowledged_only_after_their_fsync() {
        let (_dir, mut store, allow) = gated_store();
        let synced = store.synced();
        let cases: [(Vote<NodeId>, u64, NodeId); 4] = [
            // A follower of member 2.
            (Vote::new_committed(2, 2), 2, 2),
            // A candidate: its vote is not committed.
            (Vote::new(3, 1), 3, 1),
            // A leader appending entries of its earlier term (sent back by another leader).
            (Vote::new_committed(4, 1), 3, 1),
            // A member that voted for a leader of a higher term.
            (Vote::new(5, 3), 4, 1),
        ];
        for (i, (vote, term, leader)) in cases.into_iter().enumerate() {
            let index = i as u64 + 1;
            store.save_vote(&vote).await.expect("save vote");
            let mut acked = append(&store, vec![entry(term, leader, index)]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(matches!(acked.try_recv(), Err(TryRecvError::Empty)), "case {i}: waits for the fsync");
            assert_eq!(synced.now(), Durable::Upto(index - 1), "case {i}: not durable before the fsync");
            allow.send(()).unwrap();
            assert!(acked.await.expect("acknowledged").is_ok(), "case {i}");
            assert_eq!(synced.now(), Durable::Upto(index), "case {i}: durable when acknowledged");
        }
        assert_eq!(store.standing().get().leading(1), None);
    }

    #[tokio::test]
    async fn the_standing_follows_what_the_store_saves() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
        let mut store = LogStore::open(db.clone(), 1).expect("log store");
        let view = store.standing();
        assert_eq!(view.get(), Standing::default(), "an empty store");

        store.save_vote(&Vote::new(2, 1)).await.expect("save vote");
        assert_eq!(view.get().vote, Some(Vote::new(2, 1)));
        assert_eq!(view.get().leading(1), None, "a candidate does not lead");

        store.save_vote(&Vote::new_committed(2, 1)).await.expect("save vote");
        assert_eq!(view.get().leading(1), Some(LeaderId::new(2, 1)));
        assert_eq!(view.get().leading(3), None, "member 3 does not lead");
        // Elected knowing entries up to 5 (of term 1) committed.
        store.save_committed(Some(log_id(1, 3, 5))).await.expect("save");
        assert_eq!(view.get().committed, Some(log_id(1, 3, 5)));
        assert_eq!(view.get().read_index(1), None, "nothing of its term committed yet");
        store.save_committed(Some(log_id(2, 1, 8))).await.expect("save");
        assert_eq!(view.get().read_index(1), Some(8), "an entry of its term committed: the commit index");

        store.save_vote(&Vote::new(3, 2)).await.expect("save vote");
        assert_eq!(view.get().read_index(1), None, "having voted for another, it no longer leads");

        drop(store);
        let reopened = LogStore::open(db, 1).expect("log store");
        let standing = reopened.standing().get();
        assert_eq!(standing.vote, Some(Vote::new(3, 2)), "the vote is read back at start");
        assert!(!standing.vote_saved_here);
    }

    #[test]
    fn a_vote_read_back_at_start_does_not_make_the_member_lead() {
        let committed = Some(log_id(2, 1, 4));
        let standing = Standing { vote: Some(Vote::new_committed(2, 1)), committed, ..Standing::default() };
        assert_eq!(standing.leading(1), None);
        assert_eq!(standing.read_index(1), None);
        assert_eq!(Standing { vote_saved_here: true, ..standing }.read_index(1), Some(4));
    }

    #[tokio::test]
    async fn the_commit_index_is_written_with_the_next_append() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
        let mut store = LogStore::open(db.clone(), 1).expect("log store");
        store.save_committed(Some(log_id(1, 2, 1))).await.expect("save");
        assert_eq!(store.read_committed().await.expect("read"), Some(log_id(1, 2, 1)), "read back at once");
        let stored = |store: &LogStore| store.get_state::<Option<LogId>>(raft_state_keys::COMMITTED).unwrap().flatten();
        assert_eq!(stored(&store), None, "not written on its own");
        append(&store, vec![entry(1, 2, 2)]).await.await.expect("acknowledged").expect("synced");
        assert_eq!(stored(&store), Some(log_id(1, 2, 1)), "written with the append");
        drop(store);
        let mut reopened = LogStore::open(db, 1).expect("log store");
        assert_eq!(reopened.read_committed().await.expect("read"), Some(log_id(1, 2, 1)));
    }

    #[tokio::test]
    async fn after_a_failed_fsync_appends_are_refused_and_write_nothing() {
        let (_dir, mut store, allow) = gated_store();
        store.save_vote(&Vote::new_committed(1, 2)).await.expect("save vote");
        let acked = append(&store, vec![entry(1, 2, 1)]).await;
        drop(allow); // the next fsync fails
        assert!(acked.await.expect("answered").is_err(), "the append its fsync covered fails");
        assert_eq!(store.synced().now(), Durable::Failed);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let refused = store.append_then([entry(1, 2, 2)], move |r| drop(tx.send(r))).await;
        assert!(refused.is_err(), "a later append is refused");
        let last = store.get_log_state().await.expect("log state").last_log_id.map(|l| l.index);
        assert_eq!(last, Some(1), "and writes nothing");
    }

    #[tokio::test]
    async fn truncation_lowers_the_durable_index() {
        let (_dir, mut store, allow) = gated_store();
        let mut synced = store.synced();
        store.save_vote(&Vote::new_committed(1, 2)).await.expect("save vote");
        let acked = append(&store, (1..=5).map(|i| entry(1, 2, i)).collect()).await;
        allow.send(()).unwrap();
        acked.await.expect("acknowledged").expect("synced");
        wait_durable(&mut synced, 5).await;
        allow.send(()).unwrap(); // for the truncation's barrier
        store.truncate(LogId::new(CommittedLeaderId::new(1, 2), 3)).await.expect("truncate");
        assert_eq!(synced.now(), Durable::Upto(2));
        assert_eq!(store.get_log_state().await.expect("log state").last_log_id.map(|l| l.index), Some(2));
    }
}
