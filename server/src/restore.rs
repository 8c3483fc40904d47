//! `cairn restore`: turns a backup (Maintenance.Snapshot, `etcdctl snapshot save`)
//! into the data directory of one member of a new cluster.
//!
//! Every key, value, revision and lease of the backup is kept; the Raft state, the
//! membership, removed members and alarms of the old cluster are not. The new
//! cluster's ID derives from its members, its token and the backup's checksum, so
//! it differs from the old cluster's and every member restored from the same backup
//! with the same `--initial-cluster` and token agrees on it.

use std::path::Path;

use anyhow::{bail, Context};

use crate::bootstrap;
use crate::config::Config;
use crate::mvcc::KvStore;
use crate::raft::snapshot_file;
use crate::schema::{self, meta_keys};

/// What a restore produced.
#[derive(Debug)]
pub struct Restored {
    pub revision: i64,
    pub cluster_id: u64,
    pub member_id: u64,
    pub bytes: u64,
}

/// Restores `backup` into `config.data_dir`, which must not exist or be empty.
pub fn restore(backup: &Path, config: &Config) -> anyhow::Result<Restored> {
    let dir = &config.data_dir;
    if dir.exists() && std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_some() {
        bail!("data directory {} is not empty; restore needs a new (or empty) directory", dir.display());
    }
    let (_, bytes) =
        snapshot_file::verify(backup).with_context(|| format!("checking the backup {}", backup.display()))?;
    let digest = snapshot_file::digest(backup)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = schema::open_db(&dir.join(crate::server::DB_DIR)).context("creating the database")?;
    let store = KvStore::open(db.clone());
    store
        .import(&mut snapshot_file::data_reader(backup)?)
        .with_context(|| format!("importing {}", backup.display()))?;
    store.delete_meta(&[
        meta_keys::APPLIED,
        meta_keys::APPLYING,
        meta_keys::MEMBERSHIP,
        meta_keys::REMOVED_MEMBERS,
        meta_keys::ALARMS,
    ])?;
    let identity = bootstrap::create_restored(&db, config, digest)?;
    let revision = store.status().revision;
    drop(store);
    db.flush_wal(true)?;
    Ok(Restored { revision, cluster_id: identity.cluster_id, member_id: identity.member_id, bytes })
}
