//! The recorded history of a run: one [`Op`] per client operation, watch stream
//! records, and the durability probe, each serialisable as JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it took effect (for writes) and its results are known.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Indeterminate (timed out, connection lost): it may or may not have taken effect.
    Info,
}

/// One micro-operation of an append-workload transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Mop {
    /// Append `value` to the list at `key`.
    Append {
        /// The list's key.
        key: String,
        /// The appended element, unique per key.
        value: u64,
    },
    /// Read the list at `key`; `value` is the list read (when the transaction is ok).
    Read {
        /// The list's key.
        key: String,
        /// The list read, `None` until known.
        value: Option<Vec<u64>>,
    },
}

/// What an operation did, with its results once known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpKind {
    /// Register read: `value` is the value read (`None`: key absent).
    Read {
        /// Register key.
        key: String,
        /// Value read.
        value: Option<u64>,
    },
    /// Register write.
    Write {
        /// Register key.
        key: String,
        /// Value written (unique in the run).
        value: u64,
    },
    /// Register compare-and-set; `succeeded` is known for ok operations.
    Cas {
        /// Register key.
        key: String,
        /// Expected value.
        from: u64,
        /// New value (unique in the run).
        to: u64,
        /// Whether the compare held.
        succeeded: Option<bool>,
    },
    /// A list-append transaction.
    Txn {
        /// The micro-operations, in order.
        mops: Vec<Mop>,
        /// `(key, encoded list)` the transaction stored, known when it is ok.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stored: Vec<(String, String)>,
    },
    /// Watch workload write: puts of several keys in one transaction (one revision).
    MultiPut {
        /// `(key, value)` pairs; values are unique in the run.
        puts: Vec<(String, String)>,
    },
    /// Lock acquisition attempt; `token` (the lock key's create revision) when acquired.
    Acquire {
        /// Lease the lock key is attached to.
        lease: i64,
        /// Fencing token when acquired; `None` when the lock was held by another.
        token: Option<i64>,
    },
    /// A write to the shared resource guarded by the lock's fencing token.
    GuardedWrite {
        /// Fencing token the write is guarded by.
        token: i64,
        /// The value written.
        value: String,
        /// Whether the guard held.
        succeeded: Option<bool>,
    },
    /// A lease grant; `lease` and `ttl` are known when it is ok.
    LeaseGrant {
        /// The lease granted (0 until known).
        lease: i64,
        /// The TTL granted, in seconds.
        ttl: i64,
    },
    /// One keep-alive on a stream; `ttl` is the answer (seconds; 0 when expired).
    KeepAlive {
        /// The lease.
        lease: i64,
        /// The TTL answered.
        ttl: Option<i64>,
    },
    /// A lease revoke by its holder.
    LeaseRevoke {
        /// The lease.
        lease: i64,
    },
    /// Lock release (delete guarded by the token).
    Release {
        /// Fencing token released.
        token: i64,
    },
    /// A watch created without a start revision; the op's `revision` is the
    /// created response's header revision (where the watch starts).
    WatchCreate,
    /// A progress request on a watch stream; the op's `revision` is the answer.
    WatchProgress,
    /// Read at the end of the lock workload: every version the resource key ever had.
    ResourceHistory {
        /// `(mod_revision, value)` in revision order.
        versions: Vec<(i64, String)>,
    },
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the run.
    pub id: u64,
    /// The client (logical process) that issued it.
    pub client: u32,
    /// Index of the member it was sent to.
    pub node: usize,
    /// Nanoseconds since the start of the run when it was invoked.
    pub start_ns: u64,
    /// Nanoseconds since the start of the run when it completed or was given up on.
    pub end_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What it did.
    pub op: OpKind,
    /// The revision of the response header (ok operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The error, for failed and indeterminate operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set on the final read of a workload (made after every fault healed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_final: bool,
}

impl Op {
    /// The `(key, value)` pairs this operation stored, if it was acknowledged and
    /// stored something: each must be readable at [`Op::revision`] after a restart.
    pub fn acked_puts(&self) -> Vec<(String, String)> {
        if self.outcome != Outcome::Ok {
            return Vec::new();
        }
        match &self.op {
            OpKind::Write { key, value } => vec![(key.clone(), value.to_string())],
            OpKind::Cas { key, to, succeeded: Some(true), .. } => vec![(key.clone(), to.to_string())],
            OpKind::MultiPut { puts } => puts.clone(),
            OpKind::GuardedWrite { value, succeeded: Some(true), .. } => {
                vec![(crate::workload::lock::RESOURCE_KEY.to_string(), value.clone())]
            }
            OpKind::Txn { stored, .. } => stored.clone(),
            _ => Vec::new(),
        }
    }
}

/// Encodes a list as stored by the append workload: comma-separated decimals.
pub fn encode_list(list: &[u64]) -> String {
    list.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}

/// Decodes a stored list; an empty string is the empty list.
pub fn decode_list(s: &str) -> std::result::Result<Vec<u64>, std::num::ParseIntError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(|p| p.parse::<u64>()).collect()
}

/// One watch event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Revision of the change (the key's mod revision).
    pub revision: i64,
    /// `true` for a delete.
    pub delete: bool,
    /// Key.
    pub key: String,
    /// Value (empty for a delete).
    pub value: String,
}

/// A record of a watcher's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchRecord {
    /// A watch was (re)created on `node` from `start_revision`.
    Connect {
        /// Watcher index.
        watcher: u32,
        /// Member index.
        node: usize,
        /// Requested start revision.
        start_revision: i64,
        /// Nanoseconds since the start of the run.
        t_ns: u64,
    },
    /// One response carrying events.
    Events {
        /// Watcher index.
        watcher: u32,
        /// Member index.
        node: usize,
        /// Nanoseconds since the start of the run.
        t_ns: u64,
        /// The events, in the order received.
        events: Vec<WatchEvent>,
    },
    /// The stream was cancelled or compacted by the server, or failed.
    Broken {
        /// Watcher index.
        watcher: u32,
        /// Member index.
        node: usize,
        /// Nanoseconds since the start of the run.
        t_ns: u64,
        /// Why.
        reason: String,
    },
    /// The run's last revision, read linearizably after the workload stopped;
    /// every watcher was given time to reach it.
    Final {
        /// The cluster's revision at the end.
        revision: i64,
    },
}

/// One acknowledged write and what a read at its revision returned after every
/// member was killed and restarted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurabilityProbe {
    /// Operation that wrote it.
    pub op: u64,
    /// Key.
    pub key: String,
    /// Value acknowledged.
    pub value: String,
    /// Revision acknowledged.
    pub revision: i64,
    /// `(value, mod_revision)` read at `revision`; `None` if the key was absent.
    pub found: Option<(String, i64)>,
    /// Set if the probe could not be read at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes values as JSON lines.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(f);
    for item in items {
        serde_json::to_writer(&mut w, item).map_err(|e| Error::json(path, e))?;
        w.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}

/// Reads JSON lines; a missing file is an empty list.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(v);
    }
    Ok(out)
}

/// Counts of operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely failed.
    pub failed: u64,
    /// Indeterminate.
    pub indeterminate: u64,
}

impl OpCounts {
    /// Counts `ops` by outcome.
    pub fn of(ops: &[Op]) -> OpCounts {
        let mut c = OpCounts::default();
        for op in ops {
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.failed += 1,
                Outcome::Info => c.indeterminate += 1,
            }
        }
        c
    }
}
