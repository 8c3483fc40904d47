//! The one place where internal errors become gRPC statuses, with etcd's codes and
//! messages wherever etcd has them, so that etcd clients recognise them.

use tonic::{Code, Status};

use crate::mvcc::MvccError;
use crate::raft::RaftNodeError;

/// Maps a key-space error to the status etcd sends for it.
pub fn mvcc_status(e: MvccError) -> Status {
    let code = match &e {
        MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => Code::OutOfRange,
        MvccError::LeaseNotFound { .. } => Code::NotFound,
        MvccError::LeaseExists { .. } => Code::FailedPrecondition,
        MvccError::LeaseTtlTooLarge { .. } => Code::OutOfRange,
        _ => Code::InvalidArgument,
    };
    let prefix = match &e {
        MvccError::TxnTooDeep { .. } | MvccError::InvalidRange { .. } => "cairn",
        _ => "etcdserver",
    };
    Status::new(code, format!("{prefix}: {e}"))
}

/// Maps a Raft error to the status etcd sends for it. All are `Unavailable`, which
/// etcd clients treat as "try again, perhaps elsewhere"; only `OutcomeUnknown`
/// leaves the client unsure whether a write happened, as etcd's message says.
pub fn raft_status(e: RaftNodeError) -> Status {
    let message = match e {
        RaftNodeError::NotLeader { .. } => "etcdserver: leader changed".to_string(),
        other => format!("etcdserver: {other}"),
    };
    Status::new(Code::Unavailable, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_messages_and_codes() {
        let s = mvcc_status(MvccError::Compacted { compact_revision: 5 });
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        );
        let s = mvcc_status(MvccError::FutureRevision { current_revision: 5 });
        assert_eq!(s.message(), "etcdserver: mvcc: required revision is a future revision");
        let s = mvcc_status(MvccError::EmptyKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
        let s = mvcc_status(MvccError::TooManyOps { max: 128 });
        assert_eq!(s.message(), "etcdserver: too many operations in txn request");
        let s = mvcc_status(MvccError::DuplicateKey);
        assert_eq!(s.message(), "etcdserver: duplicate key given in txn request");
        let s = mvcc_status(MvccError::LeaseNotFound { lease: 7 });
        assert_eq!((s.code(), s.message()), (Code::NotFound, "etcdserver: requested lease not found"));
        let s = mvcc_status(MvccError::LeaseExists { lease: 7 });
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
        let s = mvcc_status(MvccError::LeaseTtlTooLarge { ttl_seconds: 9_000_000_001 });
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
        let s = mvcc_status(MvccError::RequestTooLarge { bytes: 2, max: 1 });
        assert_eq!(s.message(), "etcdserver: request is too large");
        let s = raft_status(RaftNodeError::NoLeader);
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "etcdserver: no leader"));
        let s = raft_status(RaftNodeError::Timeout);
        assert_eq!(s.message(), "etcdserver: request timed out");
    }
}
