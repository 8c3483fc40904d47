//! openraft's state machine over the MVCC store, and Raft snapshots of it.
//!
//! The applied log id and membership are written in the same RocksDB batch as the
//! data they describe. A snapshot is an export of one consistent RocksDB view; the
//! latest one is kept in a file so that it survives restarts.

use std::io::{self, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};

use super::{Entry, LogId, Member, NodeId, StorageError, StoredMembership, TypeConfig};
use crate::mvcc::{decode_meta, encode_meta, ApplyOutcome, CommandResponse, KvStore};
use crate::schema::meta_keys;

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The Raft state machine: the MVCC store plus snapshot files.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<KvStore>,
    snapshot_dir: PathBuf,
    snapshots_built: Arc<AtomicU64>,
}

impl StateMachine {
    pub fn new(store: Arc<KvStore>, snapshot_dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(StateMachine { store, snapshot_dir, snapshots_built: Arc::new(AtomicU64::new(0)) })
    }

    fn applied_meta(log_id: &LogId, membership: Option<&StoredMembership>) -> Vec<(&'static [u8], Vec<u8>)> {
        let mut meta = vec![(meta_keys::APPLIED, encode_meta(&Some(*log_id)))];
        if let Some(m) = membership {
            meta.push((meta_keys::MEMBERSHIP, encode_meta(m)));
        }
        meta
    }

    fn apply_entry(&self, entry: &Entry) -> Result<ApplyOutcome, rocksdb::Error> {
        let log_id = entry.log_id;
        match &entry.payload {
            EntryPayload::Normal(cmd) => {
                let meta = Self::applied_meta(&log_id, None);
                self.store.apply(cmd, &meta)
            }
            EntryPayload::Blank => {
                self.store.write_meta(&Self::applied_meta(&log_id, None))?;
                Ok(self.nothing_applied())
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                self.store.write_meta(&Self::applied_meta(&log_id, Some(&stored)))?;
                tracing::info!(index = log_id.index, term = log_id.leader_id.term, membership = %m, "membership changed");
                Ok(self.nothing_applied())
            }
        }
    }

    fn nothing_applied(&self) -> ApplyOutcome {
        ApplyOutcome { revision: self.store.status().revision, result: Ok(CommandResponse::None) }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    /// Saves a snapshot (meta and data) atomically: temporary file, fsync, rename.
    fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, Member>, data: &[u8]) -> io::Result<()> {
        let tmp = self.snapshot_dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            let meta = encode_meta(meta);
            f.write_all(&(meta.len() as u64).to_be_bytes())?;
            f.write_all(&meta)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.snapshot_path())?;
        sync_dir(&self.snapshot_dir)
    }

    fn load_snapshot(&self) -> io::Result<Option<Snapshot<TypeConfig>>> {
        let mut f = match std::fs::File::open(self.snapshot_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut len = [0u8; 8];
        f.read_exact(&mut len)?;
        let mut meta = vec![0u8; u64::from_be_bytes(len) as usize];
        f.read_exact(&mut meta)?;
        let meta: SnapshotMeta<NodeId, Member> = decode_meta(&meta);
        let mut data = Vec::new();
        f.read_to_end(&mut data)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _timer = crate::observability::metrics().snapshot.build_seconds.start_timer();
        let this = self.clone();
        let build = tokio::task::spawn_blocking(move || -> io::Result<Snapshot<TypeConfig>> {
            let mut data = Vec::new();
            let meta_values = this.store.export(&mut data, &[meta_keys::APPLIED, meta_keys::MEMBERSHIP])?;
            let last_log_id: Option<LogId> = meta_values[0].as_deref().and_then(decode_meta);
            let last_membership: StoredMembership = meta_values[1].as_deref().map(decode_meta).unwrap_or_default();
            let seq = this.snapshots_built.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match last_log_id {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
                None => format!("0-0-{seq}"),
            };
            let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
            this.save_snapshot(&meta, &data)?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
            crate::observability::metrics().snapshot.build_bytes.observe(data.len() as f64);
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
        });
        let snapshot = build
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &io::Error::other(e.to_string())))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(snapshot)
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let _timer = crate::observability::metrics().snapshot.install_seconds.start_timer();
        crate::observability::metrics().snapshot.install_bytes.observe(snapshot.get_ref().len() as f64);
        let this = self.clone();
        let meta_owned = meta.clone();
        let install = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let data = snapshot.into_inner();
            this.store.import(&mut data.as_slice())?;
            this.save_snapshot(&meta_owned, &data)
        });
        install
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io::Error::other(e.to_string())))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.load_snapshot().map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
