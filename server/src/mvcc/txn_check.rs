//! Checks a request can be applied before it is proposed: keys present, flags
//! consistent, ranges well-formed, Txn within limits and free of duplicate keys.

use std::collections::HashSet;

use super::range::RangeEnd;
use super::{Command, Compare, DeleteRangeRequest, MvccError, PutRequest, RangeRequest, RequestOp, TxnRequest};
use crate::limits::{LEASE_TTL_SECONDS_MAX, TXN_DEPTH_MAX};

/// Validates a command the way etcd does before proposing it. `txn_ops_max` bounds
/// compares and ops per branch.
pub fn validate_command(cmd: &Command, txn_ops_max: usize) -> Result<(), MvccError> {
    match cmd {
        Command::Put(r) => validate_put(r),
        Command::DeleteRange(r) => validate_delete(r),
        Command::Txn(r) => {
            validate_txn(r, txn_ops_max, 1)?;
            check_intervals(&r.success)?;
            check_intervals(&r.failure)?;
            Ok(())
        }
        Command::Compact { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseCheckpoint { .. }
        | Command::Alarm { .. } => Ok(()),
        Command::LeaseGrant { ttl_seconds, .. } if *ttl_seconds > LEASE_TTL_SECONDS_MAX => {
            Err(MvccError::LeaseTtlTooLarge { ttl_seconds: *ttl_seconds })
        }
        Command::LeaseGrant { .. } => Ok(()),
    }
}

/// Validates a Range request.
pub fn validate_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    validate_bounds(&r.key, &r.range_end)
}

fn validate_put(r: &PutRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

fn validate_delete(r: &DeleteRangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    validate_bounds(&r.key, &r.range_end)
}

fn validate_compare(c: &Compare) -> Result<(), MvccError> {
    if c.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    validate_bounds(&c.key, &c.range_end)
}

/// A range end that is neither empty, `"\0"`, nor above the key selects nothing; etcd
/// silently answers empty, Cairn says the request is malformed.
fn validate_bounds(key: &[u8], range_end: &[u8]) -> Result<(), MvccError> {
    if let RangeEnd::Before(end) = RangeEnd::from_request(range_end) {
        if end.as_slice() <= key {
            return Err(MvccError::InvalidRange {
                key: String::from_utf8_lossy(key).into_owned(),
                range_end: String::from_utf8_lossy(&end).into_owned(),
            });
        }
    }
    Ok(())
}

fn validate_txn(r: &TxnRequest, ops_max: usize, depth: usize) -> Result<(), MvccError> {
    if depth > TXN_DEPTH_MAX {
        return Err(MvccError::TxnTooDeep { max: TXN_DEPTH_MAX });
    }
    if r.compare.len() > ops_max || r.success.len() > ops_max || r.failure.len() > ops_max {
        return Err(MvccError::TooManyOps { max: ops_max });
    }
    for c in &r.compare {
        validate_compare(c)?;
    }
    for op in r.success.iter().chain(&r.failure) {
        match op {
            RequestOp::Range(r) => validate_range(r)?,
            RequestOp::Put(r) => validate_put(r)?,
            RequestOp::DeleteRange(r) => validate_delete(r)?,
            RequestOp::Txn(r) => validate_txn(r, ops_max, depth + 1)?,
        }
    }
    Ok(())
}

/// A deleted interval: `[start, end)`.
struct Deleted {
    start: Vec<u8>,
    end: RangeEnd,
}

impl Deleted {
    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// etcd's duplicate-key rule: within the branch that runs, no key is put twice and no
/// key is both put and deleted. Keys put in the `success` and `failure` branches of a
/// nested Txn may coincide, since only one branch runs. Returns the keys put and the
/// ranges deleted at this level and below.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>), MvccError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => {
                Some(Deleted { start: d.key.clone(), end: RangeEnd::from_request(&d.range_end) })
            }
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let deleted = |dels: &[Deleted], key: &[u8]| dels.iter().any(|d| d.contains(key));
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest { key: k.into(), ..Default::default() })
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: false })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Command {
        Command::Txn(TxnRequest { compare: vec![], success, failure })
    }

    #[test]
    fn duplicate_puts_are_refused() {
        assert_eq!(validate_command(&txn(vec![put("a"), put("a")], vec![]), 128), Err(MvccError::DuplicateKey));
        assert_eq!(validate_command(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
    }

    #[test]
    fn put_inside_a_deleted_range_is_refused() {
        assert_eq!(validate_command(&txn(vec![del("a", "c"), put("b")], vec![]), 128), Err(MvccError::DuplicateKey));
        assert_eq!(validate_command(&txn(vec![del("a", "c"), put("c")], vec![]), 128), Ok(()));
        assert_eq!(validate_command(&txn(vec![del("a", "c"), del("b", "d")], vec![]), 128), Ok(()));
    }

    #[test]
    fn nested_branches_may_put_the_same_key_but_not_over_a_put() {
        let Command::Txn(inner) = txn(vec![put("k")], vec![put("k")]) else { unreachable!() };
        let ok = txn(vec![RequestOp::Txn(inner.clone())], vec![]);
        assert_eq!(validate_command(&ok, 128), Ok(()));
        let clash = txn(vec![RequestOp::Txn(inner), put("k")], vec![]);
        assert_eq!(validate_command(&clash, 128), Err(MvccError::DuplicateKey));
    }

    #[test]
    fn limits_and_malformed_ranges_are_refused() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(validate_command(&txn(many, vec![]), 128), Err(MvccError::TooManyOps { max: 128 }));
        assert!(matches!(
            validate_command(&txn(vec![del("b", "a")], vec![]), 128),
            Err(MvccError::InvalidRange { .. })
        ));
        assert_eq!(validate_command(&txn(vec![put("")], vec![]), 128), Err(MvccError::EmptyKey));
    }
}
