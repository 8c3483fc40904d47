//! Checkers: each takes a recorded history and decides whether it is valid,
//! listing the anomalies it found with the operations involved.

use serde::{Deserialize, Serialize};

pub mod append;
pub mod durability;
pub mod linearizable;
pub mod lock;
pub mod watch;

/// Anomalies listed per checker at most; the count is kept in `anomaly_count`.
pub const ANOMALIES_LISTED_MAX: usize = 50;

/// The verdict of one checker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `true` when no anomaly was found.
    pub valid: bool,
    /// How many anomalies were found (only the first [`ANOMALIES_LISTED_MAX`] are listed).
    pub anomaly_count: usize,
    /// The anomalies, each a JSON object with a `type` and the operations involved.
    pub anomalies: Vec<serde_json::Value>,
    /// What was checked (counts), for the report.
    #[serde(default)]
    pub stats: serde_json::Value,
}

impl CheckResult {
    /// A result from a list of anomalies (valid when empty).
    pub fn from_anomalies(mut anomalies: Vec<serde_json::Value>, stats: serde_json::Value) -> CheckResult {
        let anomaly_count = anomalies.len();
        anomalies.truncate(ANOMALIES_LISTED_MAX);
        CheckResult { valid: anomaly_count == 0, anomaly_count, anomalies, stats }
    }

    /// The anomaly types found, for test assertions and summaries.
    pub fn anomaly_types(&self) -> Vec<String> {
        let mut t: Vec<String> =
            self.anomalies.iter().filter_map(|a| a.get("type").and_then(|t| t.as_str()).map(str::to_string)).collect();
        t.sort();
        t.dedup();
        t
    }
}
