//! openraft's state machine over the MVCC store, and Raft snapshots of it.
//!
//! The applied log id and membership are written in the same RocksDB batch as the
//! data they describe. A snapshot is an export of one consistent RocksDB view,
//! streamed into a file ([`snapshot_file`]); the latest one is kept so that it
//! survives restarts and can be sent to followers in chunks without being read into
//! memory.
//!
//! Installing a received snapshot replaces the state in several RocksDB batches, so
//! it is made crash-safe with a redo marker: the verified snapshot file is kept,
//! a marker file naming it is made durable, the state is replaced, and only then is
//! the marker removed. A member that restarts with the marker present imports the
//! same file again before Raft starts, so it never runs on a half-installed state.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use tokio::fs::File as AsyncFile;

use super::log_store::LogSynced;
use super::snapshot_file::{self, Meta};
use super::{Entry, LogId, NodeId, Proposal, StorageError, StoredMembership, TypeConfig};
use crate::mvcc::{decode_meta, encode_meta, ApplyOutcome, Command, CommandResponse, KvStore};
use crate::schema::meta_keys;

/// The latest snapshot of this member.
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Present while a snapshot install is in progress; holds the name of the file
/// being installed.
const INSTALL_MARKER: &str = "installing";
const PARTIAL_SUFFIX: &str = ".part";

/// The Raft state machine: the MVCC store plus snapshot files.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<KvStore>,
    snapshot_dir: PathBuf,
    seq: Arc<AtomicU64>,
    /// Serialises replacing the current snapshot file.
    current: Arc<Mutex<()>>,
    /// The file a snapshot from the leader is being received into.
    receiving: Arc<Mutex<Option<PathBuf>>>,
    /// How much of this member's log is durable: entries are applied only once they
    /// are (see [`StateMachine::gated_by`]).
    log_synced: Option<LogSynced>,
}

impl StateMachine {
    /// Opens the state machine, finishing any snapshot install a crash interrupted
    /// and removing files of unfinished transfers.
    pub fn new(store: Arc<KvStore>, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = StateMachine {
            store,
            snapshot_dir,
            seq: Arc::new(AtomicU64::new(0)),
            current: Arc::default(),
            receiving: Arc::default(),
            log_synced: None,
        };
        sm.finish_interrupted_install()?;
        for entry in std::fs::read_dir(&sm.snapshot_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part" || e == "tmp") {
                tracing::info!(file = %path.display(), "removing the file of an unfinished snapshot transfer");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(sm)
    }

    /// Applies each entry only once this member's log holds it durably. A member's
    /// log store acknowledges its own appends as leader before their fsync (see
    /// [`LogStore`](super::LogStore)), so openraft may commit an entry that only the
    /// followers have on disk yet; the leader applies it (and so answers the client,
    /// serves reads of it and sends it to watchers) once its own copy is durable too.
    /// Followers' entries are durable before they acknowledge them, so there the gate
    /// waits only for entries this member wrote as leader just before it stepped
    /// down. Without it (tests, benchmarks), entries are applied as committed.
    pub fn gated_by(mut self, log_synced: LogSynced) -> Self {
        self.log_synced = Some(log_synced);
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.snapshot_dir.join(name)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn finish_interrupted_install(&self) -> io::Result<()> {
        let marker = self.path(INSTALL_MARKER);
        let name = match std::fs::read_to_string(&marker) {
            Ok(name) => name,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // The marker is written only once the file it names is complete and verified;
        // if that file is gone, the install had got as far as making it current.
        let source = self.path(name.trim());
        let source = if source.exists() { source } else { self.path(SNAPSHOT_FILE) };
        tracing::warn!(file = %source.display(), "a snapshot install was interrupted; installing it again");
        let (meta, _) = snapshot_file::verify(&source)?;
        self.import_and_adopt(&source, &meta)
    }

    /// Replaces the state with the verified snapshot file `source`, then makes it the
    /// current snapshot and clears the redo marker.
    fn import_and_adopt(&self, source: &Path, meta: &Meta) -> io::Result<()> {
        let marker = self.path(INSTALL_MARKER);
        let name = source.file_name().and_then(|n| n.to_str()).expect("snapshot files have UTF-8 names");
        std::fs::write(&marker, name)?;
        std::fs::File::open(&marker)?.sync_all()?;
        snapshot_file::sync_dir(&self.snapshot_dir)?;
        self.store.import(&mut snapshot_file::data_reader(source)?)?;
        {
            let _current = self.current.lock().expect("snapshot file lock");
            if source != self.path(SNAPSHOT_FILE) {
                std::fs::rename(source, self.path(SNAPSHOT_FILE))?;
            }
            snapshot_file::sync_dir(&self.snapshot_dir)?;
        }
        std::fs::remove_file(&marker)?;
        snapshot_file::sync_dir(&self.snapshot_dir)?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    fn applied_meta(log_id: &LogId, membership: Option<&StoredMembership>) -> Vec<(&'static [u8], Vec<u8>)> {
        let mut meta = vec![(meta_keys::APPLIED, encode_meta(&Some(*log_id)))];
        if let Some(m) = membership {
            meta.push((meta_keys::MEMBERSHIP, encode_meta(m)));
        }
        meta
    }

    fn apply_entry(&self, entry: &Entry) -> Result<Vec<ApplyOutcome>, rocksdb::Error> {
        let log_id = entry.log_id;
        match &entry.payload {
            EntryPayload::Normal(Proposal(commands)) if !commands.is_empty() => self.apply_commands(&log_id, commands),
            EntryPayload::Normal(_) | EntryPayload::Blank => {
                self.store.write_meta(&Self::applied_meta(&log_id, None))?;
                Ok(Vec::new())
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                let mut meta = Self::applied_meta(&log_id, Some(&stored));
                let view = self.store.read_view();
                let previous: StoredMembership =
                    view.meta(meta_keys::MEMBERSHIP).map(|b| decode_meta(&b)).unwrap_or_default();
                let mut removed: std::collections::BTreeSet<NodeId> =
                    view.meta(meta_keys::REMOVED_MEMBERS).map(|b| decode_meta(&b)).unwrap_or_default();
                drop(view);
                let gone: Vec<NodeId> =
                    previous.membership().nodes().map(|(id, _)| *id).filter(|id| m.get_node(id).is_none()).collect();
                if !gone.is_empty() {
                    removed.extend(gone);
                    meta.push((meta_keys::REMOVED_MEMBERS, encode_meta(&removed)));
                }
                self.store.write_meta(&meta)?;
                tracing::info!(index = log_id.index, term = log_id.leader_id.term, membership = %m, "membership changed");
                Ok(Vec::new())
            }
        }
    }

    /// Applies the commands of the entry `log_id` in order, each at its own revision
    /// (a later one reads what an earlier one wrote). Consecutive puts share one
    /// RocksDB batch ([`KvStore::apply_puts`]); every other command has a batch of its
    /// own. Every batch but the entry's last records how many of the entry's commands
    /// are applied ([`meta_keys::APPLYING`]); the last one records the entry as
    /// applied. A crash in between leaves the entry unapplied for openraft, which
    /// applies it again after the restart: the commands already applied are then
    /// skipped, so none is applied twice.
    fn apply_commands(&self, log_id: &LogId, commands: &[Command]) -> Result<Vec<ApplyOutcome>, rocksdb::Error> {
        let done = if commands.len() > 1 { self.commands_applied_of(log_id).min(commands.len()) } else { 0 };
        let mut outcomes = Vec::with_capacity(commands.len());
        if done > 0 {
            // Applied before a restart; whoever proposed them was answered then or has gone.
            let revision = self.store.status().revision;
            outcomes.resize(done, ApplyOutcome { revision, result: Ok(CommandResponse::None) });
        }
        let mut start = done;
        while start < commands.len() {
            let puts = commands[start..].iter().take_while(|c| matches!(c, Command::Put(_))).count();
            let end = start + puts.max(1);
            let meta = if end == commands.len() {
                Self::applied_meta(log_id, None)
            } else {
                vec![(meta_keys::APPLYING, encode_meta(&(*log_id, end)))]
            };
            if puts > 0 {
                outcomes.extend(self.store.apply_puts(&commands[start..end], &meta)?);
            } else {
                outcomes.push(self.store.apply(&commands[start], &meta)?);
            }
            start = end;
        }
        Ok(outcomes)
    }

    /// How many commands of the entry `log_id` an interrupted apply got through.
    fn commands_applied_of(&self, log_id: &LogId) -> usize {
        let applying: Option<(LogId, usize)> =
            self.store.read_view().meta(meta_keys::APPLYING).map(|b| decode_meta(&b));
        match applying {
            Some((partly, done)) if partly == *log_id => done,
            _ => 0,
        }
    }

    /// Writes an export of the current state to `path` (a snapshot file); returns its
    /// metadata and size.
    pub fn export_to(&self, path: &Path) -> io::Result<(Meta, u64)> {
        export_snapshot(&self.store, path, self.next_seq())
    }

    /// The current snapshot file, opened, with its metadata.
    fn open_current(&self) -> io::Result<Option<(Meta, std::fs::File)>> {
        let _current = self.current.lock().expect("snapshot file lock");
        let path = self.path(SNAPSHOT_FILE);
        let meta = match snapshot_file::read_meta(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((meta, std::fs::File::open(&path)?)))
    }

    fn build(&self) -> io::Result<(Meta, std::fs::File)> {
        let tmp = self.path(&format!("build-{}.tmp", self.next_seq()));
        let (meta, bytes) = match self.export_to(&tmp) {
            Ok(built) => built,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let _current = self.current.lock().expect("snapshot file lock");
        let path = self.path(SNAPSHOT_FILE);
        if let Ok(existing) = snapshot_file::read_meta(&path) {
            if existing.last_log_id > meta.last_log_id {
                // A newer snapshot was installed meanwhile; it stays current.
                std::fs::remove_file(&tmp)?;
                return Ok((existing, std::fs::File::open(&path)?));
            }
        }
        std::fs::rename(&tmp, &path)?;
        snapshot_file::sync_dir(&self.snapshot_dir)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "built snapshot");
        crate::observability::metrics().snapshot.build_bytes.observe(bytes as f64);
        Ok((meta, std::fs::File::open(&path)?))
    }
}

/// Writes an export of `store`'s current state to the snapshot file `path`; `seq`
/// makes the snapshot ID unique. Returns its metadata and size.
pub fn export_snapshot(store: &KvStore, path: &Path, seq: u64) -> io::Result<(Meta, u64)> {
    snapshot_file::write(path, |out| {
        let meta_values = store.export(out, &[meta_keys::APPLIED, meta_keys::MEMBERSHIP])?;
        let last_log_id: Option<LogId> = meta_values[0].as_deref().and_then(decode_meta);
        let last_membership: StoredMembership = meta_values[1].as_deref().map(decode_meta).unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        };
        Ok(SnapshotMeta { last_log_id, last_membership, snapshot_id })
    })
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snapshot(meta: Meta, file: std::fs::File) -> Snapshot<TypeConfig> {
    Snapshot { meta, snapshot: Box::new(AsyncFile::from_std(file)) }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _timer = crate::observability::metrics().snapshot.build_seconds.start_timer();
        let this = self.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &io::Error::other(e.to_string())))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(snapshot(meta, file))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let view = self.store.read_view();
        let applied: Option<LogId> = view.meta(meta_keys::APPLIED).and_then(|b| decode_meta(&b));
        let membership: StoredMembership =
            view.meta(meta_keys::MEMBERSHIP).map(|b| decode_meta(&b)).unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<ApplyOutcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(gate), Some(last)) = (&mut self.log_synced, entries.last()) {
            if !gate.durable(last.log_id.index).await {
                let e = io::Error::other(format!("entry {} is not durable in this member's log", last.log_id));
                return Err(sm_write_err(e));
            }
        }
        let mut outcomes = Vec::new();
        for entry in entries {
            let _apply = crate::observability::ApplyTimer::start(entry.log_id.index, entry.log_id.leader_id.term);
            outcomes.push(self.apply_entry(&entry).map_err(sm_write_err)?);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<AsyncFile>, StorageError> {
        let path = self.path(&format!("incoming-{}{PARTIAL_SUFFIX}", self.next_seq()));
        let previous = self.receiving.lock().expect("receiving slot").replace(path.clone());
        if let Some(previous) = previous {
            // An abandoned transfer (the leader changed or restarted it).
            let _ = tokio::fs::remove_file(previous).await;
        }
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &Meta, mut snapshot: Box<AsyncFile>) -> Result<(), StorageError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let _timer = crate::observability::metrics().snapshot.install_seconds.start_timer();
        let err = |e: io::Error| StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e));
        snapshot.flush().await.map_err(err)?;
        snapshot.sync_all().await.map_err(err)?;
        // The file openraft hands over is normally the one begin_receiving_snapshot
        // opened; compare inodes to be sure.
        let received = self.receiving.lock().expect("receiving slot").take();
        let given = snapshot.metadata().await.map_err(err)?;
        crate::observability::metrics().snapshot.install_bytes.observe(given.len() as f64);
        let received = received.filter(|path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).is_ok_and(|m| m.ino() == given.ino() && m.dev() == given.dev())
        });
        let source = match received {
            Some(path) => path,
            None => {
                // Not one we received (openraft hands over a snapshot directly):
                // copy it, so that the redo marker can name a file of our own.
                let path = self.path(&format!("incoming-{}{PARTIAL_SUFFIX}", self.next_seq()));
                let mut copy = AsyncFile::create(&path).await.map_err(err)?;
                snapshot.seek(io::SeekFrom::Start(0)).await.map_err(err)?;
                tokio::io::copy(&mut *snapshot, &mut copy).await.map_err(err)?;
                copy.sync_all().await.map_err(err)?;
                path
            }
        };
        drop(snapshot);
        let this = self.clone();
        let expected = meta.clone();
        let install = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let (found, _) = snapshot_file::verify(&source)?;
            if found.snapshot_id != expected.snapshot_id || found.last_log_id != expected.last_log_id {
                let _ = std::fs::remove_file(&source);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "received snapshot file holds {} but {} was announced",
                        found.snapshot_id, expected.snapshot_id
                    ),
                ));
            }
            this.import_and_adopt(&source, &found)
        });
        install.await.map_err(|e| err(io::Error::other(e.to_string())))?.map_err(err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.open_current().map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(current.map(|(meta, file)| snapshot(meta, file)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, Entry as RaftEntry};
    use tempfile::TempDir;

    use super::super::log_store::Durable;
    use super::*;
    use crate::mvcc::{PutRequest, TxnRequest};
    use crate::schema;

    fn open() -> (TempDir, StateMachine) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = schema::open_db(&dir.path().join("db")).expect("open RocksDB");
        let sm = StateMachine::new(KvStore::open(db), dir.path().join("snap")).expect("state machine");
        (dir, sm)
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            prev_kv: true,
            ..Default::default()
        })
    }

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(commands)),
        }
    }

    /// A batch of a put, a put of the same key, a failing txn-free command and one
    /// more put, so that later commands depend on earlier ones.
    fn batch() -> Vec<Command> {
        vec![
            put("a", "1"),
            put("a", "2"),
            Command::Txn(TxnRequest::default()),
            Command::LeaseRevoke { id: 42 },
            put("b", "3"),
        ]
    }

    #[tokio::test]
    async fn a_gated_state_machine_applies_an_entry_only_once_the_log_holds_it_durably() {
        let (_dir, sm) = open();
        let (durable, synced) = LogSynced::channel(Durable::Upto(1));
        let mut sm = sm.gated_by(synced);
        sm.apply(vec![entry(1, vec![put("a", "1")])]).await.expect("apply a durable entry");
        let mut waiting = sm.clone();
        let apply = tokio::spawn(async move { waiting.apply(vec![entry(2, vec![put("b", "2")])]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!apply.is_finished(), "entry 2 is not durable yet");
        let view = sm.store.read_view();
        assert_eq!(view.revision, 2, "entry 2 is not applied yet");
        drop(view);
        durable.send_replace(Durable::Upto(2));
        let outcomes = apply.await.expect("apply task").expect("apply once durable");
        assert_eq!(outcomes[0][0].revision, 3);

        let mut failing = sm.clone();
        let apply = tokio::spawn(async move { failing.apply(vec![entry(3, vec![put("c", "3")])]).await });
        durable.send_replace(Durable::Failed);
        assert!(apply.await.expect("apply task").is_err(), "an entry that cannot become durable fails to apply");
        assert_eq!(sm.store.read_view().revision, 3, "and changes nothing");
    }

    #[tokio::test]
    async fn commands_of_one_entry_apply_in_order_each_at_its_own_revision() {
        let (_dir, mut sm) = open();
        let outcomes = sm.apply(vec![entry(1, batch())]).await.expect("apply");
        assert_eq!(outcomes.len(), 1, "one result per entry");
        let outcomes = &outcomes[0];
        assert_eq!(outcomes.len(), 5, "one outcome per command");
        let revisions: Vec<i64> = outcomes.iter().map(|o| o.revision).collect();
        // The empty txn and the revoke of an unknown lease change nothing.
        assert_eq!(revisions, vec![2, 3, 3, 3, 4]);
        match &outcomes[1].result {
            Ok(CommandResponse::Put(p)) => {
                assert_eq!(p.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()), "sees the first put")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(outcomes[3].result.is_err(), "the revoke of an unknown lease fails alone");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|l| l.index), Some(1));
    }

    #[tokio::test]
    async fn an_entry_interrupted_between_commands_resumes_without_applying_any_twice() {
        let (_dir, mut whole) = open();
        whole.apply(vec![entry(1, batch())]).await.expect("apply");

        // What a crash after the first two commands leaves: their writes, with the
        // marker saying two are applied, and the entry not recorded as applied.
        let (_dir2, mut interrupted) = open();
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1);
        for (i, command) in batch().iter().take(2).enumerate() {
            interrupted.store.apply(command, &[(meta_keys::APPLYING, encode_meta(&(log_id, i + 1)))]).expect("apply");
        }
        let (applied, _) = interrupted.applied_state().await.expect("applied state");
        assert_eq!(applied, None, "openraft will apply the entry again");
        let outcomes = interrupted.apply(vec![entry(1, batch())]).await.expect("apply again");
        assert_eq!(outcomes[0].len(), 5);

        assert_eq!(interrupted.store.status().revision, whole.store.status().revision, "no put applied twice");
        assert_eq!(
            interrupted.store.read_view().hash_kv(0),
            whole.store.read_view().hash_kv(0),
            "same keys and history"
        );
        let (applied, _) = interrupted.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id));
    }

    #[tokio::test]
    async fn a_marker_of_another_entry_skips_nothing() {
        let (_dir, mut sm) = open();
        // A marker left by entry 1 (say, of a log a snapshot replaced) must not make
        // entry 2 skip anything.
        let stale = LogId::new(CommittedLeaderId::new(1, 1), 1);
        sm.store.write_meta(&[(meta_keys::APPLYING, encode_meta(&(stale, 3usize)))]).expect("write marker");
        sm.apply(vec![entry(2, batch())]).await.expect("apply");
        assert_eq!(sm.store.status().revision, 4, "all three puts applied");
    }
}
