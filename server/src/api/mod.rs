//! The etcd v3 gRPC API on top of Raft and the MVCC store: request conversion and
//! validation, error mapping, and the services.

mod authority;
mod cluster;
mod convert;
mod error;
mod http;
mod kv;
mod lease;
mod maintenance;
mod unimplemented;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;

use cairn_proto::etcdserverpb::ResponseHeader;

pub use authority::LenientAuthority;
pub use cluster::ClusterService;
pub use error::{admin_status, mvcc_status, raft_status};
pub use http::{serve_metrics, ObserveLayer, Observer};
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use unimplemented::UnimplementedLayer;
pub use watch::WatchService;

use crate::limits::QUOTA_CHECK_INTERVAL_MS;
use crate::mvcc::{AlarmKind, Command, KvStore, MvccError, Revision};
use crate::raft::RaftNode;

/// Limits the API enforces on requests.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    pub request_timeout: std::time::Duration,
    /// Database size above which NOSPACE is raised.
    pub quota_backend_bytes: u64,
}

/// What every service needs: the Raft node, the store and the limits.
pub struct Api {
    pub node: Arc<RaftNode>,
    pub store: Arc<KvStore>,
    pub limits: ApiLimits,
    /// Where backups are written before they are streamed.
    pub scratch_dir: PathBuf,
    /// The database size last measured for the quota check, and when.
    db_size: Mutex<(Option<Instant>, u64)>,
    backups: AtomicU64,
}

impl Api {
    pub fn new(node: Arc<RaftNode>, store: Arc<KvStore>, limits: ApiLimits, scratch_dir: PathBuf) -> Arc<Self> {
        Arc::new(Api { node, store, limits, scratch_dir, db_size: Mutex::new((None, 0)), backups: AtomicU64::new(0) })
    }

    /// Refuses a command that may grow the database once it is over its quota, and
    /// raises this member's NOSPACE alarm (as etcd does): from then on only reads,
    /// deletes and compaction are served, cluster-wide, until the alarm is disarmed.
    async fn check_quota(&self, cmd: &Command) -> Result<(), Status> {
        if !cmd.needs_space() {
            return Ok(());
        }
        let size = {
            let mut cached = self.db_size.lock().expect("db size cache");
            // Only a size under the quota is reused: one over it is measured again, so
            // that space freed a moment ago counts at once.
            let fresh = cached.0.is_some_and(|t| t.elapsed() < Duration::from_millis(QUOTA_CHECK_INTERVAL_MS))
                && cached.1 <= self.limits.quota_backend_bytes;
            if !fresh {
                *cached = (Some(Instant::now()), self.store.disk_usage().0);
            }
            cached.1
        };
        if size <= self.limits.quota_backend_bytes {
            return Ok(());
        }
        if !self.store.alarms().contains(&(self.node.id, AlarmKind::NoSpace)) {
            tracing::warn!(
                db_size = size,
                quota = self.limits.quota_backend_bytes,
                "database over its quota; raising NOSPACE"
            );
            let alarm = Command::Alarm { activate: true, member: self.node.id, alarm: AlarmKind::NoSpace };
            self.node.write(alarm).await.map_err(raft_status)?;
        }
        Err(mvcc_status(MvccError::NoSpace))
    }

    /// Writes a consistent backup into a temporary file (removed when dropped);
    /// returns it, its size and the revision it holds.
    fn write_backup(&self) -> std::io::Result<(tempfile::NamedTempFile, u64, Revision)> {
        let file = tempfile::Builder::new().prefix("backup-").suffix(".tmp").tempfile_in(&self.scratch_dir)?;
        let seq = self.backups.fetch_add(1, Ordering::Relaxed);
        let revision = self.store.status().revision;
        let (_, size) = crate::raft::export_snapshot(&self.store, file.path(), seq)?;
        Ok((file, size, revision))
    }

    /// The header every response carries.
    fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.id,
            revision,
            raft_term: self.node.term(),
        })
    }
}
