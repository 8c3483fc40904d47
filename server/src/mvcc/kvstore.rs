//! The MVCC store: applies commands in log order, serves reads from consistent
//! views, and exports or imports its whole state for Raft snapshots.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use parking_lot::{RwLock, RwLockReadGuard};
use rocksdb::{SnapshotWithThreadMode, WriteBatch, WriteOptions, DB};
use tokio::sync::broadcast;

use super::lease_table::{self, LeaseRecord};
use super::live_keys::LiveKeys;
use super::range::{decode, encode, execute_range, Source};
use super::txn_check::validate_command;
use super::write_txn::WriteTxn;
use super::{
    AlarmKind, ApplyOutcome, Change, Command, CommandResponse, Compactor, MvccError, RangeRequest, RangeResponse,
    Revision, RevisionEvents,
};
use crate::limits::{CHANGE_FEED_REVISIONS_MAX, SNAPSHOT_IMPORT_BATCH_BYTES_MAX};
use crate::schema::{self, meta_keys, CF_META, STATE_MACHINE_CFS};

/// Revision of an empty store, as in etcd.
const FIRST_REVISION: Revision = 1;

/// Where the store's revisions stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// The state only the applier changes.
struct Applied {
    revision: Revision,
    compact_revision: Revision,
    alarms: BTreeSet<(u64, AlarmKind)>,
    /// Metadata of recently written live keys, exactly as committed.
    keys: LiveKeys,
}

pub struct KvStore {
    db: Arc<DB>,
    applied: Mutex<Applied>,
    compactor: Compactor,
    /// The change feed: every committed revision, in order. Bounded: a subscriber
    /// that falls behind learns it lagged and must catch up from stored history.
    changes: broadcast::Sender<Change>,
    /// Grows whenever the set of leases may have changed (grant, revoke, snapshot
    /// install), so that the lessor rescans only then.
    lease_generation: AtomicU64,
    published: Published,
    /// Readers (views, the compactor) hold it shared; a snapshot import holds it
    /// exclusively, so that nobody sees a half-replaced state.
    gate: Arc<RwLock<()>>,
}

/// The revisions of the last write, published for [`KvStore::read_view`], which
/// otherwise reads them from its snapshot: two RocksDB lookups per read, in a
/// metadata table whose memtable holds a version of the revision for every write.
///
/// A sequence lock. The applier (one at a time, under the applier lock) makes `seq`
/// odd before a write that may change the revisions and, once the write is done,
/// stores them and makes `seq` even again. A view that reads the same even `seq`
/// before its snapshot and after reading the revisions knows that no such write
/// started or ended in between: its snapshot holds exactly the writes whose
/// revisions it read. Otherwise it reads them from the snapshot. An odd `seq` also
/// means "not published" (at open, and from the start of an import until the
/// state is reloaded).
struct Published {
    seq: AtomicU64,
    revision: AtomicI64,
    compact_revision: AtomicI64,
}

impl Published {
    fn unpublished() -> Published {
        Published { seq: AtomicU64::new(1), revision: AtomicI64::new(0), compact_revision: AtomicI64::new(0) }
    }

    /// Before a write that may change the revisions (under the applier lock).
    fn begin_write(&self) {
        let seq = self.seq.load(Ordering::SeqCst);
        if seq.is_multiple_of(2) {
            self.seq.store(seq + 1, Ordering::SeqCst);
        }
    }

    /// After the write, with the revisions it left (under the applier lock).
    fn publish(&self, revision: Revision, compact_revision: Revision) {
        self.revision.store(revision, Ordering::SeqCst);
        self.compact_revision.store(compact_revision, Ordering::SeqCst);
        self.seq.store((self.seq.load(Ordering::SeqCst) | 1) + 1, Ordering::SeqCst);
    }
}

/// A consistent, read-only view of the store at one revision.
pub struct ReadView<'a> {
    pub(super) db: &'a DB,
    pub(super) snap: SnapshotWithThreadMode<'a, DB>,
    pub revision: Revision,
    pub compact_revision: Revision,
    _gate: RwLockReadGuard<'a, ()>,
}

impl ReadView<'_> {
    /// Executes a Range at this view.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let src = Source { db: self.db, snap: &self.snap, overlay: None };
        execute_range(&src, req, self.revision, self.compact_revision)
    }

    /// Reads a state-machine metadata value as of this view.
    pub fn meta(&self, key: &[u8]) -> Option<Vec<u8>> {
        read_meta(&self.snap, self.db, key)
    }

    /// Lease `id`, if it is granted and not revoked.
    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        lease_table::get(self.db, &self.snap, id)
    }

    /// Every lease, in ID order.
    pub fn leases(&self) -> Vec<(i64, LeaseRecord)> {
        lease_table::list(self.db, &self.snap)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        lease_table::attached_keys(self.db, &self.snap, id)
    }
}

/// Whether `cmd` may be applied: the structure checks again, with no configurable
/// limit, so that every member refuses the same malformed entry the same way, and
/// the raised `alarms` (CORRUPT refuses client writes, NOSPACE what may grow the
/// database).
fn admit(cmd: &Command, alarms: &BTreeSet<(u64, AlarmKind)>) -> Result<(), MvccError> {
    validate_command(cmd, usize::MAX)?;
    let alarmed = |kind| alarms.iter().any(|(_, k)| *k == kind);
    if cmd.is_client_write() && alarmed(AlarmKind::Corrupt) {
        return Err(MvccError::Corrupt);
    }
    if cmd.needs_space() && alarmed(AlarmKind::NoSpace) {
        return Err(MvccError::NoSpace);
    }
    Ok(())
}

fn read_meta(snap: &SnapshotWithThreadMode<'_, DB>, db: &DB, key: &[u8]) -> Option<Vec<u8>> {
    snap.get_cf(schema::cf(db, CF_META), key).unwrap_or_else(|e| panic!("reading state machine metadata failed: {e}"))
}

fn revision_value(bytes: Option<Vec<u8>>, default: Revision) -> Revision {
    bytes.map_or(default, |b| i64::from_be_bytes(b.as_slice().try_into().expect("revision is 8 bytes")))
}

impl KvStore {
    /// Opens the store on a database created by [`schema::open_db`].
    pub fn open(db: Arc<DB>) -> Arc<Self> {
        Self::open_with_key_cache(db, LiveKeys::new())
    }

    fn open_with_key_cache(db: Arc<DB>, keys: LiveKeys) -> Arc<Self> {
        let gate = Arc::new(RwLock::new(()));
        let compactor = Compactor::start(db.clone(), gate.clone());
        let (changes, _) = broadcast::channel(CHANGE_FEED_REVISIONS_MAX);
        let store = Arc::new(KvStore {
            db,
            applied: Mutex::new(Applied { revision: 0, compact_revision: 0, alarms: BTreeSet::new(), keys }),
            compactor,
            changes,
            lease_generation: AtomicU64::new(0),
            published: Published::unpublished(),
            gate,
        });
        store.reload();
        store
    }

    /// Re-reads the applied state from disk (after open or a snapshot install) and
    /// resumes any unfinished compaction.
    ///
    /// The revisions must be unpublished (as at open, and after `begin_write`), so
    /// that the view reads them from disk.
    fn reload(&self) {
        assert!(!self.published.seq.load(Ordering::SeqCst).is_multiple_of(2), "reload with the revisions published");
        let view = self.read_view();
        let finished = revision_value(view.meta(meta_keys::COMPACT_FINISHED), 0);
        {
            let mut applied = self.applied.lock().expect("applier lock");
            applied.revision = view.revision;
            applied.compact_revision = view.compact_revision;
            applied.alarms = view.meta(meta_keys::ALARMS).map(|b| decode(&b, "alarms")).unwrap_or_default();
            applied.keys.clear();
            self.published.publish(view.revision, view.compact_revision);
        }
        self.compactor.reset(finished);
        if view.compact_revision > finished {
            self.compactor.schedule(view.compact_revision);
        }
        self.lease_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A number that grows whenever a lease was granted or revoked. Read it before
    /// a [`KvStore::read_view`]: a view taken after it sees at least those changes.
    pub fn lease_generation(&self) -> u64 {
        self.lease_generation.load(Ordering::SeqCst)
    }

    /// Subscribes to the change feed. Everything committed after this call is
    /// announced, in order, unless the subscriber lags (then it must read history).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A consistent view of the latest applied state.
    pub fn read_view(&self) -> ReadView<'_> {
        // Recursive: a thread may hold two views, even while an import waits.
        let gate = self.gate.read_recursive();
        let seq = self.published.seq.load(Ordering::SeqCst);
        let snap = self.db.snapshot();
        let published = seq.is_multiple_of(2).then(|| {
            let revision = self.published.revision.load(Ordering::SeqCst);
            let compact_revision = self.published.compact_revision.load(Ordering::SeqCst);
            (revision, compact_revision)
        });
        let (revision, compact_revision) = match published {
            Some(revisions) if self.published.seq.load(Ordering::SeqCst) == seq => revisions,
            _ => (
                revision_value(read_meta(&snap, &self.db, meta_keys::REVISION), FIRST_REVISION),
                revision_value(read_meta(&snap, &self.db, meta_keys::COMPACT_REVISION), 0),
            ),
        };
        ReadView { db: &self.db, snap, revision, compact_revision, _gate: gate }
    }

    /// The latest applied revisions.
    pub fn status(&self) -> StoreStatus {
        let applied = self.applied.lock().expect("applier lock");
        StoreStatus { revision: applied.revision, compact_revision: applied.compact_revision }
    }

    /// Bytes on disk and bytes in use, for the whole member database.
    pub fn disk_usage(&self) -> (u64, u64) {
        schema::disk_usage(&self.db)
    }

    /// Deletes state-machine metadata values (used by restore to drop the old
    /// cluster's Raft state).
    pub fn delete_meta(&self, keys: &[&[u8]]) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for k in keys {
            batch.delete_cf(schema::cf(&self.db, CF_META), k);
        }
        {
            let _applied = self.applied.lock().expect("applier lock");
            self.published.begin_write();
            self.db.write(batch)?;
        }
        self.reload();
        Ok(())
    }

    /// Asks RocksDB to rewrite every table now (etcd's defragment), so that space
    /// freed by compaction is returned at once. Reads and writes continue meanwhile.
    pub fn compact_storage(&self) -> Result<(), rocksdb::Error> {
        for name in schema::ALL_CFS {
            self.db.compact_range_cf(schema::cf(&self.db, name), None::<&[u8]>, None::<&[u8]>);
        }
        self.db.flush_wal(true)
    }

    /// The raised alarms: (member ID, alarm).
    pub fn alarms(&self) -> BTreeSet<(u64, AlarmKind)> {
        self.applied.lock().expect("applier lock").alarms.clone()
    }

    /// An estimate of the live keys, for metrics.
    pub fn keys_estimate(&self) -> u64 {
        schema::live_keys_estimate(&self.db)
    }

    /// The background compactor (to wait for physical compaction).
    pub fn compactor(&self) -> &Compactor {
        &self.compactor
    }

    /// Writes metadata alone (for log entries that carry no command).
    pub fn write_meta(&self, meta: &[(&[u8], Vec<u8>)]) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        self.add_meta(&mut batch, meta);
        self.commit(batch, None)
    }

    /// Writes an applier's batch (unsynced: the Raft log, in the same WAL, is
    /// synced). A batch that changes the revisions names them in `revisions`
    /// (current, compacted): they are published around the write (see [`Published`]).
    fn commit(&self, batch: WriteBatch, revisions: Option<(Revision, Revision)>) -> Result<(), rocksdb::Error> {
        if revisions.is_some() {
            self.published.begin_write();
        }
        crate::observability::backend_commit(|| self.db.write_opt(batch, &unsynced()))?;
        if let Some((revision, compact_revision)) = revisions {
            self.published.publish(revision, compact_revision);
        }
        Ok(())
    }

    fn add_meta(&self, batch: &mut WriteBatch, meta: &[(&[u8], Vec<u8>)]) {
        let cf = schema::cf(&self.db, CF_META);
        for (k, v) in meta {
            assert!(
                ![meta_keys::REVISION, meta_keys::COMPACT_REVISION].contains(k),
                "the revisions are written by the applier, which publishes them"
            );
            batch.put_cf(cf, k, v);
        }
    }

    /// Applies one committed command, writing `meta` (the applied log id and so on) in
    /// the same batch. The write is not synced: the Raft log, in the same WAL, is.
    pub fn apply(&self, cmd: &Command, meta: &[(&[u8], Vec<u8>)]) -> Result<ApplyOutcome, rocksdb::Error> {
        let mut applied = self.applied.lock().expect("applier lock");
        let snap = self.db.snapshot();
        let mut txn = WriteTxn::new(&self.db, &snap, &applied.keys, applied.revision, applied.compact_revision);
        let mut alarms = None;
        let result = admit(cmd, &applied.alarms).and_then(|()| match cmd {
            Command::Put(r) => txn.put(r).map(CommandResponse::Put),
            Command::DeleteRange(r) => txn.delete_range(r).map(CommandResponse::DeleteRange),
            Command::Txn(r) => txn.txn(r).map(CommandResponse::Txn),
            Command::Compact { revision } => check_compact(*revision, &applied).map(|()| CommandResponse::Compact),
            Command::LeaseGrant { id, ttl_seconds } => {
                txn.lease_grant(*id, *ttl_seconds).map(|()| CommandResponse::LeaseGrant)
            }
            Command::LeaseRevoke { id } => txn.lease_revoke(*id).map(|()| CommandResponse::LeaseRevoke),
            Command::LeaseCheckpoint { checkpoints } => {
                txn.lease_checkpoint(checkpoints).map(|()| CommandResponse::LeaseCheckpoint)
            }
            Command::Alarm { activate, member, alarm } => {
                let mut set = applied.alarms.clone();
                if *activate {
                    set.insert((*member, *alarm));
                } else {
                    set.remove(&(*member, *alarm));
                }
                alarms = Some(set);
                Ok(CommandResponse::Alarm)
            }
        });
        let changed = result.is_ok() && txn.changed();
        let (mut batch, events, keys) = match &result {
            Ok(_) => txn.into_parts(),
            Err(_) => Default::default(),
        };
        let revision = if changed { applied.revision + 1 } else { applied.revision };
        assert!(revision >= applied.revision, "revision went backwards");
        if changed {
            batch.put_cf(schema::cf(&self.db, CF_META), meta_keys::REVISION, revision.to_be_bytes());
        }
        if let Some(set) = &alarms {
            batch.put_cf(schema::cf(&self.db, CF_META), meta_keys::ALARMS, encode(set));
        }
        let mut compacted = None;
        if let (Ok(_), Command::Compact { revision: r }) = (&result, cmd) {
            batch.put_cf(schema::cf(&self.db, CF_META), meta_keys::COMPACT_REVISION, r.to_be_bytes());
            compacted = Some(*r);
        }
        self.add_meta(&mut batch, meta);
        drop(snap);
        let revisions =
            (changed || compacted.is_some()).then(|| (revision, compacted.unwrap_or(applied.compact_revision)));
        self.commit(batch, revisions)?;
        applied.keys.set_all(keys);
        if result.is_ok() && matches!(cmd, Command::LeaseGrant { .. } | Command::LeaseRevoke { .. }) {
            self.lease_generation.fetch_add(1, Ordering::SeqCst);
        }
        applied.revision = revision;
        if let Some(set) = alarms {
            applied.alarms = set;
        }
        if changed {
            // Announced under the applier lock, so the feed is in revision order. No
            // subscriber is fine.
            let _ = self.changes.send(Change::Committed(Arc::new(RevisionEvents { revision, events })));
        }
        if let Some(r) = compacted {
            applied.compact_revision = r;
            self.compactor.schedule(r);
        }
        Ok(ApplyOutcome { revision, result })
    }

    /// Applies consecutive puts, each at its own revision, in one RocksDB write that
    /// also holds `meta`. Same outcomes, data and change feed as applying them one by
    /// one with [`KvStore::apply`], for one snapshot, one write and one revision
    /// record instead of one per put. A put reads the changes of the ones before it;
    /// one that fails changes nothing (it fails before it writes), so the others
    /// still apply. Only puts may be given: they read nothing that an earlier put of
    /// the run could have changed other than the keys' current records, which the
    /// write carries forward.
    pub fn apply_puts(&self, puts: &[Command], meta: &[(&[u8], Vec<u8>)]) -> Result<Vec<ApplyOutcome>, rocksdb::Error> {
        let mut applied = self.applied.lock().expect("applier lock");
        let snap = self.db.snapshot();
        let mut txn = WriteTxn::new(&self.db, &snap, &applied.keys, applied.revision, applied.compact_revision);
        let mut revision = applied.revision;
        let mut committed = Vec::new();
        let mut outcomes = Vec::with_capacity(puts.len());
        for cmd in puts {
            let Command::Put(put) = cmd else { unreachable!("apply_puts was given a {}", cmd.kind()) };
            let result = admit(cmd, &applied.alarms).and_then(|()| txn.put(put));
            if let Some((next, events)) = txn.next_revision() {
                debug_assert!(result.is_ok(), "a failed put wrote nothing");
                revision = next;
                committed.push(RevisionEvents { revision, events });
            }
            outcomes.push(ApplyOutcome { revision, result: result.map(CommandResponse::Put) });
        }
        let (mut batch, _, keys) = txn.into_parts();
        if revision != applied.revision {
            batch.put_cf(schema::cf(&self.db, CF_META), meta_keys::REVISION, revision.to_be_bytes());
        }
        self.add_meta(&mut batch, meta);
        drop(snap);
        self.commit(batch, (revision != applied.revision).then_some((revision, applied.compact_revision)))?;
        applied.keys.set_all(keys);
        applied.revision = revision;
        for changes in committed {
            // Under the applier lock, in order, as in `apply`.
            let _ = self.changes.send(Change::Committed(Arc::new(changes)));
        }
        Ok(outcomes)
    }

    /// Writes every state-machine record of one consistent view to `out`, and returns
    /// the metadata values named in `meta_keys` as of that view.
    pub fn export(&self, out: &mut dyn Write, wanted_meta: &[&[u8]]) -> io::Result<Vec<Option<Vec<u8>>>> {
        let view = self.read_view();
        out.write_all(SNAPSHOT_MAGIC)?;
        for (index, name) in STATE_MACHINE_CFS.iter().enumerate() {
            let mut it = view.snap.raw_iterator_cf(schema::cf(&self.db, name));
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                out.write_all(&[index as u8])?;
                write_bytes(out, k)?;
                write_bytes(out, v)?;
                it.next();
            }
            it.status().map_err(io::Error::other)?;
        }
        out.write_all(&[SNAPSHOT_END])?;
        Ok(wanted_meta.iter().map(|k| view.meta(k)).collect())
    }

    /// Replaces the whole state with an exported one, streaming: memory stays bounded
    /// by [`SNAPSHOT_IMPORT_BATCH_BYTES_MAX`] whatever the size of the state.
    ///
    /// Readers wait while it runs, so none sees a half-replaced state. The replacement
    /// is several RocksDB batches, so a crash (or an error after the first batch)
    /// leaves the tables partly replaced: the caller must be able to run the import
    /// again from the start (the Raft state machine keeps a redo marker for that).
    /// Input that is not an export is refused before anything is changed.
    pub fn import(&self, input: &mut impl Read) -> io::Result<()> {
        let gate = self.gate.write();
        // Hold the applier lock so that no apply interleaves with the replacement.
        let mut applied = self.applied.lock().expect("applier lock");
        let mut magic = [0u8; SNAPSHOT_MAGIC.len()];
        input.read_exact(&mut magic)?;
        if magic != *SNAPSHOT_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Cairn snapshot (bad magic)"));
        }
        // Unpublished until `reload` has read the imported revisions (and for good,
        // so that views read them from disk, if the import fails half-way).
        self.published.begin_write();
        // The tables are about to change under the cache: from here on, every put
        // reads RocksDB until `reload` (which clears it again) is done.
        applied.keys.clear();
        let mut batch = WriteBatch::default();
        for name in STATE_MACHINE_CFS {
            let cf = schema::cf(&self.db, name);
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek_to_first();
            let Some(first) = it.key().map(<[u8]>::to_vec) else {
                it.status().map_err(io::Error::other)?;
                continue;
            };
            it.seek_to_last();
            let last = it.key().map(<[u8]>::to_vec).unwrap_or_else(|| first.clone());
            // One range tombstone for the whole table, then the last key itself.
            batch.delete_range_cf(cf, &first, &last);
            batch.delete_cf(cf, &last);
        }
        let unsynced = unsynced();
        loop {
            let mut tag = [0u8; 1];
            input.read_exact(&mut tag)?;
            if tag[0] == SNAPSHOT_END {
                break;
            }
            let name = STATE_MACHINE_CFS.get(tag[0] as usize).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("snapshot names unknown table {}", tag[0]))
            })?;
            let key = read_bytes(input)?;
            let value = read_bytes(input)?;
            batch.put_cf(schema::cf(&self.db, name), key, value);
            if batch.size_in_bytes() >= SNAPSHOT_IMPORT_BATCH_BYTES_MAX {
                self.db.write_opt(std::mem::take(&mut batch), &unsynced).map_err(io::Error::other)?;
            }
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(batch, &sync).map_err(io::Error::other)?;
        drop(applied);
        drop(gate);
        self.reload();
        let _ = self.changes.send(Change::Jumped { revision: self.status().revision });
        Ok(())
    }
}

fn check_compact(rev: Revision, applied: &Applied) -> Result<(), MvccError> {
    if rev <= applied.compact_revision {
        return Err(MvccError::Compacted { compact_revision: applied.compact_revision });
    }
    if rev > applied.revision {
        return Err(MvccError::FutureRevision { current_revision: applied.revision });
    }
    Ok(())
}

fn unsynced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    opts
}

const SNAPSHOT_MAGIC: &[u8; 12] = b"CAIRNSNAP\x00\x00\x01";
const SNAPSHOT_END: u8 = 0xff;

fn write_bytes(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

fn read_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// Encodes a metadata value for [`KvStore::apply`]'s `meta`.
pub fn encode_meta<T: serde::Serialize>(value: &T) -> Vec<u8> {
    encode(value)
}

/// Decodes a metadata value read with [`ReadView::meta`].
pub fn decode_meta<T: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) -> T {
    decode(bytes, "state machine metadata")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::live_keys::ENTRY_OVERHEAD_BYTES;
    use crate::mvcc::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

    fn store() -> (tempfile::TempDir, Arc<KvStore>) {
        let dir = tempfile::tempdir().unwrap();
        let db = schema::open_db(dir.path()).unwrap();
        (dir, KvStore::open(db))
    }

    fn put(store: &KvStore, key: &str, value: &str) -> Revision {
        let cmd = Command::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() });
        store.apply(&cmd, &[]).unwrap().revision
    }

    fn get_at(store: &KvStore, key: &str, revision: Revision) -> Result<Option<Vec<u8>>, MvccError> {
        let req = RangeRequest { key: key.into(), revision, ..Default::default() };
        Ok(store.read_view().range(&req)?.kvs.pop().map(|kv| kv.value))
    }

    fn history_len(store: &KvStore) -> usize {
        let mut it = store.db.raw_iterator_cf(schema::cf(&store.db, schema::CF_HISTORY));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        n
    }

    fn feed(rx: &mut broadcast::Receiver<Change>) -> Vec<RevisionEvents> {
        let mut seen = Vec::new();
        while let Ok(change) = rx.try_recv() {
            match change {
                Change::Committed(r) => seen.push((*r).clone()),
                Change::Jumped { revision } => panic!("unexpected jump to {revision}"),
            }
        }
        seen
    }

    #[test]
    fn a_run_of_puts_applies_as_the_same_puts_one_by_one() {
        let p = |key: &str, value: &str, edit: fn(&mut PutRequest)| {
            let mut req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
            edit(&mut req);
            Command::Put(req)
        };
        let puts = vec![
            p("a", "1", |_| {}),
            p("a", "2", |r| r.lease = 7),
            p("b", "1", |r| r.prev_kv = true),
            p("b", "2", |r| r.prev_kv = true),
            p("zz", "", |r| r.ignore_value = true),
            p("a", "3", |r| {
                r.ignore_lease = true;
                r.prev_kv = true
            }),
            p("c", "1", |r| r.lease = 99),
            p("a", "", |r| r.ignore_value = true),
            p("a", "4", |_| {}),
            p("", "no key", |_| {}),
        ];
        let (_d1, one_by_one) = store();
        let (_d2, together) = store();
        for s in [&one_by_one, &together] {
            s.apply(&Command::LeaseGrant { id: 7, ttl_seconds: 60 }, &[]).unwrap();
            put(s, "b", "0");
        }
        let (mut feed1, mut feed2) = (one_by_one.subscribe(), together.subscribe());

        let expected: Vec<ApplyOutcome> = puts.iter().map(|c| one_by_one.apply(c, &[]).unwrap()).collect();
        let got = together.apply_puts(&puts, &[(meta_keys::APPLIED, b"x".to_vec())]).unwrap();

        assert_eq!(got, expected);
        assert!(expected.iter().filter(|o| o.result.is_err()).count() >= 3, "the run has failing puts: {expected:?}");
        assert_eq!(together.status(), one_by_one.status());
        assert_eq!(together.read_view().revision, one_by_one.read_view().revision, "the stored revision");
        assert_eq!(together.read_view().hash_kv(0).unwrap(), one_by_one.read_view().hash_kv(0).unwrap());
        for lease in [7, 99] {
            assert_eq!(together.read_view().lease_keys(lease), one_by_one.read_view().lease_keys(lease));
        }
        assert_eq!(feed(&mut feed2), feed(&mut feed1), "the same revisions announced, in order");
        assert_eq!(together.read_view().meta(meta_keys::APPLIED), Some(b"x".to_vec()), "meta written with the run");
    }

    /// One step of [`puts_served_from_the_live_key_cache_match_puts_read_from_rocksdb`].
    #[derive(Clone, Debug)]
    enum Step {
        Put { key: u8, lease: bool, ignore_value: bool, ignore_lease: bool, prev_kv: bool },
        Delete { key: u8 },
        TxnPuts { first: u8, second: u8 },
        Grant,
        Revoke,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let key = 0u8..4;
        prop_oneof![
            6 => (key.clone(), any::<bool>(), prop::bool::weighted(0.2), prop::bool::weighted(0.2), any::<bool>())
                .prop_map(|(key, lease, ignore_value, ignore_lease, prev_kv)| Step::Put {
                    key, lease, ignore_value, ignore_lease, prev_kv
                }),
            1 => key.clone().prop_map(|key| Step::Delete { key }),
            1 => (key.clone(), key).prop_map(|(first, second)| Step::TxnPuts { first, second }),
            1 => Just(Step::Grant),
            1 => Just(Step::Revoke),
        ]
    }

    fn command(step: &Step, n: usize) -> Command {
        let key = |k: &u8| format!("k{k}").into_bytes();
        let value = format!("v{n}").into_bytes();
        match step {
            Step::Put { key: k, lease, ignore_value, ignore_lease, prev_kv } => Command::Put(PutRequest {
                key: key(k),
                value: if *ignore_value { Vec::new() } else { value },
                lease: if *lease { 1 } else { 0 },
                ignore_value: *ignore_value,
                ignore_lease: *ignore_lease,
                prev_kv: *prev_kv,
            }),
            Step::Delete { key: k } => {
                Command::DeleteRange(DeleteRangeRequest { key: key(k), range_end: Vec::new(), prev_kv: false })
            }
            Step::TxnPuts { first, second } => Command::Txn(TxnRequest {
                compare: vec![],
                success: [first, second]
                    .iter()
                    .map(|k| RequestOp::Put(PutRequest { key: key(k), value: value.clone(), ..Default::default() }))
                    .collect(),
                failure: vec![],
            }),
            Step::Grant => Command::LeaseGrant { id: 1, ttl_seconds: 60 },
            Step::Revoke => Command::LeaseRevoke { id: 1 },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A store whose cache holds two keys (so that keys are evicted and read back)
        /// and applies runs of puts together, against one that caches nothing and
        /// applies one command at a time: same outcomes, data, leases and change feed;
        /// and every previous version the feed left out is the one history holds.
        #[test]
        fn puts_served_from_the_live_key_cache_match_puts_read_from_rocksdb(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let open = |keys| {
                let dir = tempfile::tempdir().unwrap();
                let store = KvStore::open_with_key_cache(schema::open_db(dir.path()).unwrap(), keys);
                (dir, store)
            };
            let (_d1, cached) = open(LiveKeys::with_capacity(2 * (2 + ENTRY_OVERHEAD_BYTES)));
            let (_d2, uncached) = open(LiveKeys::with_capacity(0));
            let (mut feed1, mut feed2) = (cached.subscribe(), uncached.subscribe());
            let commands: Vec<Command> = steps.iter().enumerate().map(|(n, s)| command(s, n)).collect();
            let expected: Vec<ApplyOutcome> = commands.iter().map(|c| uncached.apply(c, &[]).unwrap()).collect();
            let mut got = Vec::new();
            for run in commands.chunk_by(|a, b| matches!((a, b), (Command::Put(_), Command::Put(_)))) {
                if run.len() > 1 {
                    got.extend(cached.apply_puts(run, &[]).unwrap());
                } else {
                    got.push(cached.apply(&run[0], &[]).unwrap());
                }
            }
            proptest::prop_assert_eq!(&got, &expected);
            proptest::prop_assert_eq!(cached.read_view().hash_kv(0).unwrap(), uncached.read_view().hash_kv(0).unwrap());
            proptest::prop_assert_eq!(cached.read_view().lease_keys(1), uncached.read_view().lease_keys(1));
            let announced = feed(&mut feed1);
            proptest::prop_assert_eq!(&announced, &feed(&mut feed2));
            let view = cached.read_view();
            let stored = view.history(0, usize::MAX).unwrap();
            for (live, from_history) in announced.iter().zip(&stored) {
                for (event, full) in live.events.iter().zip(&from_history.events) {
                    if event.prev_elided() {
                        proptest::prop_assert_eq!(view.version_before(&event.kv.key, live.revision), full.prev_kv.clone());
                        proptest::prop_assert!(full.prev_kv.is_some(), "an elided previous version exists");
                    } else {
                        proptest::prop_assert_eq!(event, full);
                    }
                }
            }
        }
    }

    #[test]
    fn an_installed_snapshot_replaces_what_the_live_key_cache_knows() {
        let (_d1, s) = store();
        for value in ["1", "2", "3"] {
            put(&s, "k", value); // cached at version 3
        }
        let (_d2, other) = store();
        put(&other, "x", "1");
        let created = put(&other, "k", "only");
        let mut exported = Vec::new();
        other.export(&mut exported, &[]).unwrap();
        s.import(&mut exported.as_slice()).unwrap();

        put(&s, "k", "after");
        let kv = s.read_view().range(&RangeRequest { key: "k".into(), ..Default::default() }).unwrap().kvs.remove(0);
        assert_eq!((kv.version, kv.create_revision), (2, created), "the installed key's next version");
    }

    #[tokio::test]
    async fn physical_compaction_keeps_what_reads_at_or_above_it_need() {
        let (_dir, s) = store();
        let r_a1 = put(&s, "a", "1");
        put(&s, "a", "2");
        put(&s, "b", "1");
        let del = Command::DeleteRange(DeleteRangeRequest { key: "b".into(), ..Default::default() });
        let r_del = s.apply(&del, &[]).unwrap().revision;
        let r_a3 = put(&s, "a", "3");
        assert_eq!(history_len(&s), 5);
        assert_eq!(get_at(&s, "a", r_a1).unwrap(), Some(b"1".to_vec()));

        let compact = Command::Compact { revision: r_del };
        assert_eq!(s.apply(&compact, &[]).unwrap().result, Ok(CommandResponse::Compact));
        s.compactor().wait_finished(r_del).await;

        // a@2 (newest live version below the compaction), a@3, and b's tombstone at
        // the compaction revision itself (a watch may start there) remain; b@1 and
        // a@1 are gone.
        assert_eq!(history_len(&s), 3);
        assert_eq!(get_at(&s, "a", r_del).unwrap(), Some(b"2".to_vec()));
        assert_eq!(get_at(&s, "b", r_del).unwrap(), None);
        assert_eq!(get_at(&s, "a", r_a3).unwrap(), Some(b"3".to_vec()));
        assert!(matches!(get_at(&s, "a", r_a1), Err(MvccError::Compacted { .. })));
        let again = s.apply(&compact, &[]).unwrap();
        assert!(matches!(again.result, Err(MvccError::Compacted { .. })));
    }

    #[test]
    fn failed_txn_changes_nothing_and_consumes_no_revision() {
        let (_dir, s) = store();
        let before = put(&s, "a", "1");
        let txn = Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest { key: "b".into(), value: "x".into(), ..Default::default() }),
                RequestOp::Put(PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() }),
            ],
            failure: vec![],
        });
        let outcome = s.apply(&txn, &[]).unwrap();
        assert_eq!(outcome.result, Err(MvccError::KeyNotFound));
        assert_eq!(outcome.revision, before);
        assert_eq!(get_at(&s, "b", 0).unwrap(), None);
        assert_eq!(s.status().revision, before);
    }

    #[test]
    fn nested_compares_are_decided_before_the_txn_runs() {
        use crate::mvcc::{Compare, CompareResult, CompareTarget, ResponseOp};
        let (_dir, s) = store();
        let absent = |k: &str| Compare {
            key: k.into(),
            range_end: vec![],
            target: CompareTarget::Version(0),
            result: CompareResult::Equal,
        };
        // The outer txn creates "k"; the nested compare "k is absent" still holds,
        // because etcd decides every compare against the state before the txn.
        let nested = TxnRequest {
            compare: vec![absent("k")],
            success: vec![RequestOp::Put(PutRequest { key: "then".into(), ..Default::default() })],
            failure: vec![RequestOp::Put(PutRequest { key: "else".into(), ..Default::default() })],
        };
        let txn = Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }),
                RequestOp::Txn(nested),
            ],
            failure: vec![],
        });
        let outcome = s.apply(&txn, &[]).unwrap();
        let Ok(CommandResponse::Txn(resp)) = outcome.result else { panic!("{outcome:?}") };
        let ResponseOp::Txn(inner) = &resp.responses[1].response else { panic!("{resp:?}") };
        assert!(inner.succeeded);
        assert!(get_at(&s, "then", 0).unwrap().is_some());
        assert!(get_at(&s, "else", 0).unwrap().is_none());
    }

    #[tokio::test]
    async fn history_replays_every_change_with_prev_kv_even_after_compaction() {
        use crate::mvcc::{Change, EventKind};
        let (_dir, s) = store();
        let mut feed = s.subscribe();
        let r1 = put(&s, "a", "1");
        let r2 = put(&s, "a", "2");
        let del = Command::DeleteRange(DeleteRangeRequest { key: "a".into(), ..Default::default() });
        let r3 = s.apply(&del, &[]).unwrap().revision;
        put(&s, "b", "1");
        for expected in [r1, r2, r3] {
            let Ok(Change::Committed(rev)) = feed.recv().await else { panic!("feed closed") };
            assert_eq!(rev.revision, expected);
        }

        let all = s.read_view().history(r1, usize::MAX).unwrap();
        assert_eq!(all.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![r1, r2, r3, r3 + 1]);
        let second = &all[1].events[0];
        assert_eq!((second.kind, second.prev_kv.as_ref().unwrap().value.as_slice()), (EventKind::Put, &b"1"[..]));
        let deleted = &all[2].events[0];
        assert_eq!(deleted.kind, EventKind::Delete);
        assert_eq!((deleted.kv.mod_revision, deleted.kv.value.is_empty()), (r3, true));
        assert_eq!(deleted.prev_kv.as_ref().unwrap().value, b"2");
        // Whole revisions only, stopping after the limit is reached.
        assert_eq!(s.read_view().history(r1, 2).unwrap().len(), 2);

        // Compacting at the delete keeps the delete itself replayable.
        s.apply(&Command::Compact { revision: r3 }, &[]).unwrap();
        s.compactor().wait_finished(r3).await;
        let from_compaction = s.read_view().history(r3, usize::MAX).unwrap();
        assert_eq!(from_compaction[0].events[0].kind, EventKind::Delete);
        assert!(matches!(s.read_view().history(r2, 10), Err(MvccError::Compacted { .. })));
    }

    fn put_leased(store: &KvStore, key: &str, lease: i64) -> Result<CommandResponse, MvccError> {
        let cmd = Command::Put(PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() });
        store.apply(&cmd, &[]).unwrap().result
    }

    #[test]
    fn revoke_deletes_attached_keys_at_one_revision_and_snapshots_carry_leases() {
        use crate::mvcc::LeaseCheckpoint;
        let (_dir, s) = store();
        assert_eq!(put_leased(&s, "a", 7), Err(MvccError::LeaseNotFound { lease: 7 }));
        let generation = s.lease_generation();
        let grant = |id| Command::LeaseGrant { id, ttl_seconds: 10 };
        assert_eq!(s.apply(&grant(7), &[]).unwrap().result, Ok(CommandResponse::LeaseGrant));
        assert_eq!(s.apply(&grant(7), &[]).unwrap().result, Err(MvccError::LeaseExists { lease: 7 }));
        assert_eq!(s.apply(&grant(8), &[]).unwrap().revision, 1, "a grant changes no key");
        assert!(s.lease_generation() > generation);
        for key in ["a", "b", "moved", "gone"] {
            put_leased(&s, key, 7).unwrap();
        }
        put_leased(&s, "moved", 8).unwrap();
        let del = Command::DeleteRange(DeleteRangeRequest { key: "gone".into(), ..Default::default() });
        s.apply(&del, &[]).unwrap();
        assert_eq!(s.read_view().lease_keys(7), vec![b"a".to_vec(), b"b".to_vec()]);
        let checkpoint = |grant| Command::LeaseCheckpoint {
            checkpoints: vec![LeaseCheckpoint { id: 7, grant, remaining_ms: 4_000 }],
        };
        s.apply(&checkpoint(2), &[]).unwrap();
        assert_eq!(s.read_view().lease(7).unwrap().remaining_ms, 0, "a checkpoint of another grant of 7");
        s.apply(&checkpoint(1), &[]).unwrap();
        assert_eq!(s.read_view().lease(7), Some(LeaseRecord { ttl_seconds: 10, remaining_ms: 4_000, grant: 1 }));
        assert_eq!(s.read_view().lease(8).unwrap().grant, 2);

        let mut data = Vec::new();
        s.export(&mut data, &[]).unwrap();
        let (_dir2, t) = store();
        t.import(&mut data.as_slice()).unwrap();
        assert_eq!(t.read_view().leases(), s.read_view().leases());
        assert_eq!(t.read_view().lease_keys(8), vec![b"moved".to_vec()]);

        let before = s.status().revision;
        let outcome = s.apply(&Command::LeaseRevoke { id: 7 }, &[]).unwrap();
        assert_eq!(outcome.revision, before + 1, "every attached key at one revision");
        assert_eq!(get_at(&s, "a", 0).unwrap(), None);
        assert_eq!(get_at(&s, "b", 0).unwrap(), None);
        assert_eq!(get_at(&s, "a", before).unwrap(), Some(b"v".to_vec()));
        assert_eq!(get_at(&s, "moved", 0).unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.read_view().lease(7), None);
        assert!(s.read_view().lease_keys(7).is_empty());
        let again = s.apply(&Command::LeaseRevoke { id: 7 }, &[]).unwrap();
        assert_eq!(again.result, Err(MvccError::LeaseNotFound { lease: 7 }));
    }

    #[test]
    fn export_then_import_reproduces_the_store() {
        let (_dir, s) = store();
        put(&s, "a", "1");
        put(&s, "a\0b", "2");
        let r = put(&s, "c", "3");
        let mut data = Vec::new();
        s.export(&mut data, &[]).unwrap();

        let (_dir2, t) = store();
        put(&t, "stale", "x");
        t.import(&mut data.as_slice()).unwrap();
        assert_eq!(t.status().revision, r);
        assert_eq!(get_at(&t, "stale", 0).unwrap(), None);
        assert_eq!(get_at(&t, "a\0b", 0).unwrap(), Some(b"2".to_vec()));
        assert_eq!(get_at(&t, "a", 2).unwrap(), Some(b"1".to_vec()));
        let mut bad = b"NOTASNAPSHOT".to_vec();
        bad.push(0xff);
        assert!(t.import(&mut bad.as_slice()).is_err());
        assert_eq!(t.status().revision, r, "a rejected snapshot changes nothing");
        assert_eq!(t.published.seq.load(Ordering::SeqCst) % 2, 0, "the imported revisions are published");
        assert_eq!(t.read_view().revision, r);
    }

    /// The revisions a view carries are those its snapshot holds, whether they came
    /// from the published copy or from disk, while puts, runs of puts and
    /// compactions are applied.
    #[test]
    fn views_carry_the_revisions_their_snapshot_holds_while_writes_run() {
        let (_dir, s) = store();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut views = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let v = s.read_view();
                        let stored = revision_value(v.meta(meta_keys::REVISION), FIRST_REVISION);
                        let compacted = revision_value(v.meta(meta_keys::COMPACT_REVISION), 0);
                        assert_eq!((v.revision, v.compact_revision), (stored, compacted), "view {views}");
                        views += 1;
                    }
                    views
                })
            })
            .collect();
        for i in 0..600u32 {
            let r = put(&s, &format!("k{}", i % 50), "v");
            let run: Vec<Command> = (0..3)
                .map(|j| {
                    Command::Put(PutRequest { key: format!("r{j}").into(), value: b"v".to_vec(), ..Default::default() })
                })
                .collect();
            s.apply_puts(&run, &[]).unwrap();
            if i % 100 == 99 {
                s.apply(&Command::Compact { revision: r }, &[]).unwrap();
            }
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
        assert_eq!(s.published.seq.load(Ordering::SeqCst) % 2, 0, "published after the last write");
        let v = s.read_view();
        assert_eq!((v.revision, v.compact_revision), (s.status().revision, s.status().compact_revision));
        assert_eq!(v.revision, 1 + 600 * 4);
    }
}
