//! The list-append workload: transactions of appends and reads over a few
//! keys. Each transaction reads its keys at one revision, then commits its
//! appends with a Txn guarded by every key's mod revision, so it either takes
//! effect exactly on the state it read or not at all (a failed compare is a
//! definite failure).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{attempt, pace, retry, run_clients, write_outcome, Attempt, Ctx, OpBuilder};
use crate::history::{decode_list, encode_list, Mop, OpKind, Outcome};

/// Keys in use at any time.
pub const ACTIVE_KEYS: u64 = 6;
/// Transactions before the workload moves to fresh keys.
pub const TXNS_PER_KEY_GENERATION: u64 = 400;
/// Micro-operations per transaction at most.
pub const MOPS_MAX: usize = 4;
/// Keys read by one final-read transaction at most (below `--max-txn-ops`).
const FINAL_READ_KEYS_MAX: usize = 64;

/// Runs the append workload until the deadline.
pub async fn run(ctx: &Ctx) -> Vec<String> {
    let seq = Arc::new(AtomicU64::new(0));
    let values = Arc::new(AtomicU64::new(1));
    let used: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    run_clients(ctx, |ctx, client| {
        let (seq, values, used) = (seq.clone(), values.clone(), used.clone());
        async move {
            let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0xa99e_0000 + client as u64));
            while !ctx.done() {
                pace(&ctx, &mut rng).await;
                if ctx.done() {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let base = (n / TXNS_PER_KEY_GENERATION) * ACTIVE_KEYS;
                let count = rng.random_range(1..=MOPS_MAX);
                let mut keys: Vec<u64> = Vec::new();
                while keys.len() < count.min(ACTIVE_KEYS as usize) {
                    let k = base + rng.random_range(0..ACTIVE_KEYS);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let mops: Vec<Mop> = keys
                    .into_iter()
                    .map(|k| {
                        let key = format!("a/{k}");
                        used.lock().expect("used keys").insert(key.clone());
                        if rng.random_bool(0.5) {
                            Mop::Append { key, value: values.fetch_add(1, Ordering::Relaxed) }
                        } else {
                            Mop::Read { key, value: None }
                        }
                    })
                    .collect();
                let node = rng.random_range(0..ctx.channels.len());
                txn(&ctx, client, node, mops).await;
            }
        }
    })
    .await;
    let used = used.lock().expect("used keys").iter().cloned().collect();
    used
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// `(list, mod_revision)` of each key, from a read-only Txn of ranges.
fn snapshot(resp: &TxnResponse, keys: &[&str]) -> Result<Vec<(Vec<u64>, i64)>, String> {
    let mut out = Vec::new();
    for (i, r) in resp.responses.iter().enumerate() {
        let Some(response_op::Response::ResponseRange(range)) = &r.response else {
            return Err(format!("response {i} is not a range"));
        };
        match range.kvs.first() {
            None => out.push((Vec::new(), 0)),
            Some(kv) => {
                let s = String::from_utf8_lossy(&kv.value);
                let list = decode_list(&s).map_err(|e| format!("key {}: bad list {s:?}: {e}", keys[i]))?;
                out.push((list, kv.mod_revision));
            }
        }
    }
    if out.len() != keys.len() {
        return Err(format!("{} ranges answered for {} keys", out.len(), keys.len()));
    }
    Ok(out)
}

async fn txn(ctx: &Ctx, client: u32, node: usize, mut mops: Vec<Mop>) {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let keys: Vec<&str> = mops
        .iter()
        .map(|m| match m {
            Mop::Append { key, .. } | Mop::Read { key, .. } => key.as_str(),
        })
        .collect();
    let read_req = TxnRequest { compare: vec![], success: keys.iter().map(|k| range_op(k)).collect(), failure: vec![] };
    let snap = match attempt(ctx.op_timeout, kv.txn(read_req)).await {
        Attempt::Ok(r) => snapshot(&r, &keys).map(|s| (s, r.header.map(|h| h.revision))),
        Attempt::Err { message, .. } => Err(message),
    };
    let keys: Vec<String> = keys.into_iter().map(str::to_string).collect();
    let (snap, read_rev) = match snap {
        Ok(s) => s,
        // Nothing was written yet: a definite failure.
        Err(e) => return b.finish(ctx, Outcome::Fail, OpKind::Txn { mops, stored: Vec::new() }, None, Some(e)),
    };
    let appends: Vec<usize> = (0..mops.len()).filter(|i| matches!(mops[*i], Mop::Append { .. })).collect();
    // Fill in the reads (each key appears once per transaction).
    for (i, m) in mops.iter_mut().enumerate() {
        if let Mop::Read { value, .. } = m {
            *value = Some(snap[i].0.clone());
        }
    }
    if appends.is_empty() {
        return b.finish(ctx, Outcome::Ok, OpKind::Txn { mops, stored: Vec::new() }, read_rev, None);
    }
    let mut stored = Vec::new();
    let mut puts = Vec::new();
    for &i in &appends {
        let Mop::Append { key, value } = &mops[i] else { unreachable!() };
        let mut list = snap[i].0.clone();
        list.push(*value);
        let enc = encode_list(&list);
        stored.push((key.clone(), enc.clone()));
        puts.push(RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone().into_bytes(),
                value: enc.into_bytes(),
                ..Default::default()
            })),
        });
    }
    let compares = keys
        .iter()
        .zip(&snap)
        .map(|(k, (_, rev))| Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: k.clone().into_bytes(),
            target_union: Some(compare::TargetUnion::ModRevision(*rev)),
            ..Default::default()
        })
        .collect();
    let write_req = TxnRequest { compare: compares, success: puts, failure: vec![] };
    match attempt(ctx.op_timeout, kv.txn(write_req)).await {
        Attempt::Ok(r) if r.succeeded => {
            b.finish(ctx, Outcome::Ok, OpKind::Txn { mops, stored }, r.header.map(|h| h.revision), None)
        }
        Attempt::Ok(_) => {
            clear_reads(&mut mops);
            b.finish(
                ctx,
                Outcome::Fail,
                OpKind::Txn { mops, stored: Vec::new() },
                None,
                Some("compare failed (conflict)".into()),
            )
        }
        Attempt::Err { definite, message } => {
            clear_reads(&mut mops);
            b.finish(ctx, write_outcome(definite), OpKind::Txn { mops, stored: Vec::new() }, None, Some(message))
        }
    }
}

/// A transaction that did not commit (or may not have) read nothing it can vouch for.
fn clear_reads(mops: &mut [Mop]) {
    for m in mops {
        if let Mop::Read { value, .. } = m {
            *value = None;
        }
    }
}

/// Reads every key the workload used, after the faults healed (marked final).
pub async fn final_reads(ctx: &Ctx, keys: &[String]) -> Result<(), String> {
    for chunk in keys.chunks(FINAL_READ_KEYS_MAX) {
        let resp = retry(Duration::from_secs(30), |i| {
            let node = i % ctx.channels.len();
            let mut kv = KvClient::new(ctx.channels[node].clone());
            let req =
                TxnRequest { compare: vec![], success: chunk.iter().map(|k| range_op(k)).collect(), failure: vec![] };
            let timeout = ctx.op_timeout;
            async move {
                let b = OpBuilder::start(ctx, u32::MAX, node);
                match attempt(timeout, kv.txn(req)).await {
                    Attempt::Ok(r) => Ok((b, r)),
                    Attempt::Err { message, .. } => Err(message),
                }
            }
        })
        .await?;
        let (b, r) = resp;
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let snap = snapshot(&r, &refs)?;
        let mops =
            chunk.iter().zip(snap).map(|(k, (list, _))| Mop::Read { key: k.clone(), value: Some(list) }).collect();
        b.finish_final(ctx, Outcome::Ok, OpKind::Txn { mops, stored: Vec::new() }, r.header.map(|h| h.revision), None);
    }
    Ok(())
}
