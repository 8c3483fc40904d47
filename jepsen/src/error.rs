//! The library's error type.

use std::path::{Path, PathBuf};

/// Errors of the harness library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("cairn-jepsen: {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// A JSON file could not be written or read as a whole.
    #[error("cairn-jepsen: {path}: {cause}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: serde_json::Error,
    },
    /// A line of a JSON-lines file did not parse.
    #[error("cairn-jepsen: {path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// A system command (ip, nft, tc) failed.
    #[error("cairn-jepsen: `{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or the spawn error.
        message: String,
    },
    /// The network or cluster could not be set up or driven.
    #[error("cairn-jepsen: {0}")]
    Setup(String),
    /// Bad options.
    #[error("cairn-jepsen: {0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), cause: source }
    }

    pub(crate) fn json(path: &Path, source: serde_json::Error) -> Error {
        Error::Json { path: path.to_path_buf(), cause: source }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
