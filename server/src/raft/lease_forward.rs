//! Lease requests that only the leader can answer, because only the leader keeps
//! lease expiry times: followers forward them over the peer `Lease` RPC.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::RaftNodeError;

/// A lease request for the leader. Each answers one number.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCall {
    /// Renew the lease; answers its granted TTL in seconds, or 0 if it does not exist
    /// or has expired.
    KeepAlive { id: i64 },
    /// Answers the lease's remaining TTL in milliseconds, or -1 if it does not exist
    /// or has expired.
    RemainingMs { id: i64 },
}

/// The leader's side of [`LeaseCall`]. Implemented by the lessor (`crate::lease`) and
/// declared here so that this module needs nothing from it. A member that does not
/// lead answers [`RaftNodeError::NotLeader`], so that the caller tries the leader.
pub trait LeaseLeader: Send + Sync {
    fn serve(&self, call: LeaseCall) -> BoxFuture<'_, Result<i64, RaftNodeError>>;
}
