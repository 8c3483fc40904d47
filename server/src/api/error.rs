//! The one place where internal errors become gRPC statuses, with etcd's codes and
//! messages wherever etcd has them, so that etcd clients recognise them.

use tonic::{Code, Status};

use crate::mvcc::MvccError;
use crate::raft::{AdminError, RaftNodeError};

/// Maps a key-space error to the status etcd sends for it.
pub fn mvcc_status(e: MvccError) -> Status {
    let code = match &e {
        MvccError::Compacted { .. } | MvccError::FutureRevision { .. } => Code::OutOfRange,
        MvccError::LeaseNotFound { .. } => Code::NotFound,
        MvccError::LeaseExists { .. } => Code::FailedPrecondition,
        MvccError::LeaseTtlTooLarge { .. } => Code::OutOfRange,
        MvccError::NoSpace => Code::ResourceExhausted,
        MvccError::Corrupt => Code::DataLoss,
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
        // Nothing was proposed: etcd's "not leader", which clients may retry.
        RaftNodeError::NotLeader { .. } => "etcdserver: not leader".to_string(),
        other => format!("etcdserver: {other}"),
    };
    Status::new(Code::Unavailable, message)
}

/// Maps a refused membership or leadership request to etcd's status for it.
pub fn admin_status(e: AdminError) -> Status {
    let (code, message) = match e {
        AdminError::Raft(e) => return raft_status(e),
        AdminError::MemberNotFound => (Code::NotFound, "etcdserver: member not found".to_string()),
        AdminError::PeerUrlsExist => (Code::FailedPrecondition, "etcdserver: Peer URLs already exists".to_string()),
        AdminError::BadUrls(why) => {
            (Code::InvalidArgument, format!("etcdserver: given member URLs are invalid ({why})"))
        }
        AdminError::NotLearner => {
            (Code::FailedPrecondition, "etcdserver: can only promote a learner member".to_string())
        }
        AdminError::LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader".to_string(),
        ),
        AdminError::TooManyLearners => {
            (Code::FailedPrecondition, "etcdserver: too many learner members in cluster".to_string())
        }
        AdminError::Unhealthy(why) => (Code::Unavailable, format!("etcdserver: unhealthy cluster ({why})")),
        AdminError::BadTransferee => (Code::FailedPrecondition, "etcdserver: bad leader transferee".to_string()),
        AdminError::TransferTimeout => {
            (Code::DeadlineExceeded, "etcdserver: request timed out, leader transfer took too long".to_string())
        }
    };
    Status::new(code, message)
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
