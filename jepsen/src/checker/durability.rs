//! Durability: after every member was killed at once and restarted, every
//! acknowledged write must be readable at the revision it was acknowledged with.

use serde_json::json;

use super::CheckResult;
use crate::history::DurabilityProbe;

/// Checks the probes made after the kill-all restart. `ran` is false when the
/// run never reached the durability phase (an anomaly: nothing was verified).
pub fn check(probes: &[DurabilityProbe], ran: bool) -> CheckResult {
    if !ran {
        return CheckResult::from_anomalies(
            vec![json!({"type": "not-run", "note": "the cluster did not come back after the kill-all restart"})],
            json!({}),
        );
    }
    let mut anomalies = Vec::new();
    for p in probes {
        if let Some(e) = &p.error {
            anomalies.push(json!({"type": "unreadable", "op": p.op, "key": p.key, "revision": p.revision, "error": e}));
            continue;
        }
        match &p.found {
            Some((v, r)) if *v == p.value && *r == p.revision => {}
            found => anomalies.push(json!({"type": "lost-write", "op": p.op, "key": p.key, "value": p.value,
                "revision": p.revision, "found": found})),
        }
    }
    CheckResult::from_anomalies(anomalies, json!({"acked_writes_probed": probes.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(found: Option<(&str, i64)>) -> DurabilityProbe {
        DurabilityProbe {
            op: 1,
            key: "k".into(),
            value: "v".into(),
            revision: 5,
            found: found.map(|(v, r)| (v.to_string(), r)),
            error: None,
        }
    }

    #[test]
    fn present_writes_are_valid() {
        assert!(check(&[probe(Some(("v", 5)))], true).valid);
    }

    #[test]
    fn missing_or_different_writes_are_lost() {
        assert_eq!(check(&[probe(None)], true).anomaly_types(), vec!["lost-write"]);
        assert_eq!(check(&[probe(Some(("w", 5)))], true).anomaly_types(), vec!["lost-write"]);
        assert_eq!(check(&[probe(Some(("v", 4)))], true).anomaly_types(), vec!["lost-write"]);
    }

    #[test]
    fn a_run_without_the_restart_is_not_valid() {
        assert!(!check(&[], false).valid);
    }
}
