//! The leader's periodic cross-member data check: every member's HashKV at one
//! revision must be equal; a member whose hash differs gets the CORRUPT alarm,
//! which stops writes cluster-wide until an operator has looked.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::network::PeerRpc;
use super::{AdminRequest, AdminResponse, AdminResult, RaftNode, RaftNodeError};
use crate::limits::MEMBER_PROBE_TIMEOUT_MS;
use crate::mvcc::{AlarmKind, Command, KvStore, MvccError, Revision};

/// One member's hash of its key space at a revision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// `store`'s HashKV at `revision` (blocking: reads the whole key space).
pub(super) fn hash_kv_of(store: &KvStore, revision: Revision) -> Result<KvHash, MvccError> {
    let view = store.read_view();
    let (hash, revision) = view.hash_kv(revision)?;
    Ok(KvHash { hash, revision, compact_revision: view.compact_revision })
}

impl RaftNode {
    /// Runs the check every `interval` while this member leads. Runs until Raft stops.
    pub async fn check_corruption(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if self.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            if let Err(e) = self.compare_hashes().await {
                tracing::warn!(error = %e, "corruption check did not complete");
            }
        }
    }

    async fn compare_hashes(self: &Arc<Self>) -> Result<(), RaftNodeError> {
        let store = self.store.clone();
        let ours = tokio::task::spawn_blocking(move || hash_kv_of(&store, 0))
            .await
            .map_err(|_| RaftNodeError::Stopped)?
            .map_err(|_| RaftNodeError::Timeout)?;
        let probe = Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS * 30);
        for m in self.members().into_iter().filter(|m| m.id != self.id) {
            let req = AdminRequest::HashKv { revision: ours.revision };
            let answer = self
                .net
                .call::<_, Result<AdminResult, RaftNodeError>>(m.id, &m.member, PeerRpc::Admin, &req, probe)
                .await;
            let Ok(Ok(Ok(AdminResponse::Hash(theirs)))) = answer else {
                continue; // unreachable, behind, or compacted past it: nothing to compare
            };
            if theirs.compact_revision == ours.compact_revision && theirs.hash != ours.hash {
                tracing::error!(
                    member = format_args!("{:x}", m.id),
                    revision = ours.revision,
                    ours = ours.hash,
                    theirs = theirs.hash,
                    "members' data differ at the same revision; raising CORRUPT"
                );
                let alarm = Command::Alarm { activate: true, member: m.id, alarm: AlarmKind::Corrupt };
                self.write(alarm).await?;
            }
        }
        Ok(())
    }
}
