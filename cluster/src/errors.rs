//! cairnctl's failures: a message for stderr, a hint that says what to do, and an exit code.

use std::fmt;
use std::time::Duration;

use cairn_client::Error as ClientError;

/// Exit codes (documented in `cairnctl --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The cluster refused or failed the request.
    Failed = 1,
    /// Invalid input (txn grammar, a malformed ID, ...).
    InvalidInput = 3,
    /// No endpoint reachable, or the command timed out.
    Unreachable = 4,
    /// A check found a problem (`cluster health`, `check perf`).
    CheckFailed = 5,
}

/// A failure of one cairnctl invocation.
#[derive(Debug)]
pub struct CliError {
    pub kind: ExitKind,
    pub message: String,
    /// What the operator can do about it.
    pub hint: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    pub fn new(kind: ExitKind, message: impl Into<String>) -> CliError {
        CliError { kind, message: message.into(), hint: None }
    }

    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError::new(ExitKind::InvalidInput, message)
    }

    pub fn failed(message: impl Into<String>) -> CliError {
        CliError::new(ExitKind::Failed, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with what was being done (`"get foo: "`).
    pub fn context(mut self, what: impl fmt::Display) -> CliError {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The command did not finish within `after`.
    pub fn timeout(after: Duration) -> CliError {
        CliError::new(ExitKind::Unreachable, format!("no answer within the command timeout ({after:?})")).with_hint(
            "check the cluster with `cairnctl endpoint health --cluster`, or allow more time with --command-timeout",
        )
    }

    /// Local I/O (stdin, a file, stdout).
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> CliError {
        CliError::failed(format!("{what}: {e}"))
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let message = e.to_string();
        let (kind, hint) = match &e {
            ClientError::Unavailable { .. } => (
                ExitKind::Unreachable,
                Some("check that --endpoints names running members (`cairnctl endpoint health`); a cluster without a quorum cannot serve".to_string()),
            ),
            ClientError::Timeout { .. } => (
                ExitKind::Unreachable,
                Some("the member did not answer in time: check `cairnctl endpoint health --cluster`, or raise --command-timeout".to_string()),
            ),
            ClientError::OutcomeUnknown { .. } => (
                ExitKind::Failed,
                Some("the write may or may not have been applied: read the key(s) before retrying".to_string()),
            ),
            ClientError::Compacted { .. } => (
                ExitKind::Failed,
                Some("that revision has been compacted: use a later --rev (`cairnctl get` prints the current revision with -w json)".to_string()),
            ),
            ClientError::FutureRevision => {
                (ExitKind::Failed, Some("the revision is newer than the store's current revision".to_string()))
            }
            ClientError::LeaseNotFound { .. } => (
                ExitKind::Failed,
                Some("the lease expired or was revoked: list live leases with `cairnctl lease list`".to_string()),
            ),
            ClientError::InvalidArgument(_) | ClientError::TooLarge(_) => (ExitKind::InvalidInput, None),
            ClientError::Config(_) => (
                ExitKind::InvalidInput,
                Some("endpoints are host:port or http://host:port, separated by commas".to_string()),
            ),
            ClientError::Alarm(_) => (
                ExitKind::Failed,
                Some("see `cairnctl alarm list`; fix the cause (free space, check data) then `cairnctl alarm disarm`".to_string()),
            ),
            ClientError::Unsupported(_) => (
                ExitKind::Failed,
                Some("this server does not implement the call; upgrade the server or use another member".to_string()),
            ),
            _ => (ExitKind::Failed, None),
        };
        CliError { kind, message, hint }
    }
}
