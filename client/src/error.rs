//! The client's one error type, and the mapping from etcd's gRPC statuses to it.

use std::error::Error as StdError;
use std::time::Duration;

use tonic::{Code, Status};

/// Everything a call of this crate can fail with.
///
/// The variants are the decisions a caller has to make, not the wire's
/// vocabulary: etcd's error strings (`"etcdserver: mvcc: required revision has
/// been compacted"`, `"etcdserver: leader changed"`, ...) are mapped here and
/// never have to be matched as text.
///
/// ```
/// use cairn_client::Error;
///
/// fn retry_later(e: &Error) -> bool {
///     // Unavailable and Timeout were never applied; OutcomeUnknown may have been.
///     matches!(e, Error::Unavailable { .. } | Error::Timeout { .. })
/// }
/// assert!(!retry_later(&Error::OutcomeUnknown { reason: "leader changed".into() }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key the operation needs does not exist (typed API: `update` of a
    /// missing key, a resigned election, ...). Raw `get` answers `None` instead.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key, as the caller named it.
        key: String,
    },
    /// The requested revision has been compacted away: read at a later revision,
    /// or list again and watch from the listing's revision + 1.
    #[error("revision has been compacted{}", fmt_compact(*.compact_revision))]
    Compacted {
        /// The revision the store was compacted at: every revision below it is
        /// gone. `None` only if the server could not be asked (the etcd API
        /// reports it on watches; for reads the client asks with a probe watch).
        compact_revision: Option<i64>,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision is a future revision")]
    FutureRevision,
    /// A compare-and-swap found the key in another state than expected (typed
    /// `create` of an existing key, `update` that ran out of retries, ...).
    #[error("condition failed on key {key:?}: {detail}")]
    ConditionFailed {
        /// The key whose state differed.
        key: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// A fenced (guarded) write was refused because the fencing token is no longer
    /// the current holder: another leader or lock holder took over. Stop acting
    /// as the holder.
    #[error("fenced: {key:?} is no longer held at revision {token}")]
    Fenced {
        /// The election or lock key whose ownership was checked.
        key: String,
        /// The fencing token (the key's creation revision) that lost.
        token: i64,
    },
    /// The lease does not exist (never granted, revoked, or expired).
    #[error("lease {} not found", fmt_lease(*.lease))]
    LeaseNotFound {
        /// The lease ID, when the call named exactly one.
        lease: Option<i64>,
    },
    /// A lease held by a [`crate::LeaseHandle`] expired or was revoked: every key
    /// attached to it is gone.
    #[error("lease {lease} lost: {reason}")]
    LeaseLost {
        /// The lease ID.
        lease: i64,
        /// Why the keeper gave up.
        reason: String,
    },
    /// No member could serve the request right now (member down, no leader,
    /// election in progress). Nothing was applied: retrying later is safe.
    #[error("cluster unavailable: {reason}")]
    Unavailable {
        /// The last member's answer or the transport error.
        reason: String,
    },
    /// A write was sent but no answer says whether it was applied (the member
    /// died or leadership changed while it was in flight). It is **not**
    /// retried automatically: read the key to find out, or make the write
    /// idempotent (a txn compare) before retrying.
    #[error("outcome unknown: the write may or may not have been applied ({reason})")]
    OutcomeUnknown {
        /// What happened to the request.
        reason: String,
    },
    /// A read (or a write known not to have been sent) got no answer in time on
    /// any member.
    #[error("request timed out after {after:?}")]
    Timeout {
        /// The per-request timeout that expired.
        after: Duration,
    },
    /// The request is malformed (empty key, bad range, duplicate keys in a txn,
    /// too many operations, ...); retrying it unchanged fails again.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request exceeds the server's size limit.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// The cluster raised an alarm (`NOSPACE`, `CORRUPT`) and refuses writes until
    /// an operator clears it.
    #[error("cluster alarm: {0}")]
    Alarm(String),
    /// Authentication or authorisation failed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server does not implement this call (an older Cairn, or an etcd
    /// feature Cairn does not have).
    #[error("not supported by the server: {0}")]
    Unsupported(String),
    /// The client was configured wrongly (bad endpoint URL, no endpoints, TLS
    /// requested but not available, ...).
    #[error("client configuration: {0}")]
    Config(String),
    /// A watch was cancelled by the server for another reason than compaction.
    #[error("watch cancelled by the server: {reason}")]
    WatchCanceled {
        /// The server's cancel reason.
        reason: String,
    },
    /// A stored value could not be encoded or decoded with the keyspace's codec.
    #[error("codec error for key {key:?}: {message}")]
    Codec {
        /// The key whose value failed.
        key: String,
        /// The codec's message.
        message: String,
    },
    /// The background task behind a mirror, lease handle or watch has stopped
    /// (its client was dropped or it hit a permanent error it already reported).
    #[error("stopped: {0}")]
    Stopped(String),
    /// Any other status the server sent, kept verbatim.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// True for failures that changed nothing and may go away by themselves
    /// ([`Error::Unavailable`], [`Error::Timeout`]): retrying later is safe.
    /// False for [`Error::OutcomeUnknown`] (the write may be applied) and for
    /// everything retrying unchanged would repeat.
    ///
    /// ```
    /// use cairn_client::Error;
    /// assert!(Error::Unavailable { reason: "no leader".into() }.is_transient());
    /// assert!(!Error::OutcomeUnknown { reason: "leader changed".into() }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }
}

fn fmt_compact(rev: Option<i64>) -> String {
    rev.map(|r| format!(" (compacted at revision {r})")).unwrap_or_default()
}

fn fmt_lease(lease: Option<i64>) -> String {
    lease.map(|l| format!("{l:#x}")).unwrap_or_else(|| "(unknown)".into())
}

/// Convenience alias used by every call of this crate.
///
/// ```
/// fn parse(s: &str) -> cairn_client::Result<i64> {
///     s.parse().map_err(|_| cairn_client::Error::InvalidArgument(format!("not a number: {s}")))
/// }
/// assert!(parse("x").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a failed request may already have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A read, or anything that does not change state: always safe to repeat.
    Read,
    /// A state change: repeat only if it provably was not applied.
    Write,
}

/// What the retry loop does with a failed attempt.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Try again, preferably on another member.
    Retry(Error),
    /// Give up with this error.
    Fail(Error),
}

/// Classifies a status from one attempt of a request.
pub(crate) fn classify(status: Status, effect: Effect) -> Verdict {
    let msg = status.message().to_string();
    let not_applied = |reason: String| Verdict::Retry(Error::Unavailable { reason });
    let unknown = |reason: String| match effect {
        Effect::Read => Verdict::Retry(Error::Unavailable { reason }),
        Effect::Write => Verdict::Fail(Error::OutcomeUnknown { reason }),
    };
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal if !is_server_message(&msg) => {
            // The transport failed. A connection that could not be made never
            // carried the request; any other break may have come after it was sent.
            let detail = transport_detail(&status);
            if is_connect_failure(&detail) {
                not_applied(detail)
            } else {
                unknown(detail)
            }
        }
        Code::Unavailable => match msg.as_str() {
            // Refused before proposing: nothing was appended anywhere.
            "etcdserver: no leader"
            | "etcdserver: not leader"
            | "etcdserver: too many requests"
            | "etcdserver: unhealthy cluster" => not_applied(msg),
            // Proposed (or forwarded) and then lost track of: may have been applied.
            _ => unknown(msg),
        },
        Code::DeadlineExceeded => unknown(msg),
        Code::ResourceExhausted if msg.contains("too many requests") => not_applied(msg),
        _ => Verdict::Fail(from_status(status)),
    }
}

/// Maps a status that is not about availability to the error a caller acts on.
pub(crate) fn from_status(status: Status) -> Error {
    let msg = status.message().to_string();
    let text = msg.strip_prefix("etcdserver: ").unwrap_or(&msg);
    match (status.code(), text) {
        (_, "mvcc: required revision has been compacted") => Error::Compacted { compact_revision: None },
        (_, "mvcc: required revision is a future revision") => Error::FutureRevision,
        (_, "requested lease not found") => Error::LeaseNotFound { lease: None },
        (_, "mvcc: database space exceeded") => Error::Alarm("NOSPACE: database space exceeded".into()),
        (_, "corrupt cluster") => Error::Alarm("CORRUPT: cluster data is inconsistent".into()),
        (_, "request is too large") => Error::TooLarge(msg),
        (Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange, _) => Error::InvalidArgument(msg),
        (Code::PermissionDenied | Code::Unauthenticated, _) => Error::PermissionDenied(msg),
        (Code::Unimplemented, _) => Error::Unsupported(msg),
        (Code::Unavailable, _) => Error::Unavailable { reason: msg },
        (Code::NotFound, _) => Error::Server { code: Code::NotFound, message: msg },
        (code, _) => Error::Server { code, message: msg },
    }
}

/// Messages the server wrote (as opposed to transport errors tonic made up).
fn is_server_message(msg: &str) -> bool {
    msg.starts_with("etcdserver:") || msg.starts_with("cairn:") || msg.starts_with("mvcc:")
}

/// The status message followed by its whole source chain.
fn transport_detail(status: &Status) -> String {
    let mut out = status.message().to_string();
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn is_connect_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("tcp connect error")
        || d.contains("connection refused")
        || d.contains("error trying to connect")
        || d.contains("dns error")
        || d.contains("refused_stream")
        || d.contains("refused stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(status: Status, effect: Effect) -> Error {
        match classify(status, effect) {
            Verdict::Fail(e) => e,
            Verdict::Retry(e) => panic!("expected a final error, got retry {e:?}"),
        }
    }

    #[test]
    fn etcd_strings_map_to_variants() {
        let e = fail(Status::out_of_range("etcdserver: mvcc: required revision has been compacted"), Effect::Read);
        assert!(matches!(e, Error::Compacted { compact_revision: None }), "{e:?}");
        let e = fail(Status::out_of_range("etcdserver: mvcc: required revision is a future revision"), Effect::Read);
        assert!(matches!(e, Error::FutureRevision), "{e:?}");
        let e = fail(Status::not_found("etcdserver: requested lease not found"), Effect::Write);
        assert!(matches!(e, Error::LeaseNotFound { .. }), "{e:?}");
        let e = fail(Status::invalid_argument("etcdserver: key is not provided"), Effect::Write);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = fail(Status::resource_exhausted("etcdserver: mvcc: database space exceeded"), Effect::Write);
        assert!(matches!(e, Error::Alarm(_)), "{e:?}");
        let e = fail(Status::permission_denied("etcdserver: permission denied"), Effect::Read);
        assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
        let e = fail(Status::unimplemented("cairn: Maintenance.Defragment is not implemented yet"), Effect::Write);
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    }

    #[test]
    fn ambiguous_write_failures_are_outcome_unknown_and_reads_retry() {
        for msg in ["etcdserver: leader changed", "etcdserver: request timed out", "etcdserver: server stopped"] {
            let e = fail(Status::unavailable(msg), Effect::Write);
            assert!(matches!(e, Error::OutcomeUnknown { .. }), "{msg}: {e:?}");
            assert!(matches!(classify(Status::unavailable(msg), Effect::Read), Verdict::Retry(_)), "{msg}");
        }
        let v = classify(Status::unavailable("etcdserver: no leader"), Effect::Write);
        assert!(matches!(v, Verdict::Retry(Error::Unavailable { .. })), "{v:?}");
        let v = classify(Status::unavailable("tcp connect error: Connection refused (os error 111)"), Effect::Write);
        assert!(matches!(v, Verdict::Retry(_)), "{v:?}");
        let e = fail(Status::unknown("h2 protocol error: connection reset"), Effect::Write);
        assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e:?}");
    }
}
