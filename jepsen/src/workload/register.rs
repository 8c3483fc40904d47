//! The register workload: reads, writes and compare-and-sets of many keys
//! through random members. Keys rotate so that each key's history stays short
//! enough for the linearizability search.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{attempt, pace, run_clients, write_outcome, Attempt, Ctx, OpBuilder};
use crate::history::{OpKind, Outcome};

/// Keys in use at any time.
pub const ACTIVE_KEYS: u64 = 8;
/// Operations (over all keys) before the workload moves to fresh keys.
pub const OPS_PER_KEY_GENERATION: u64 = 600;

/// Runs the register workload until the deadline.
pub async fn run(ctx: &Ctx) {
    let seq = Arc::new(AtomicU64::new(0));
    let values = Arc::new(AtomicU64::new(1));
    let last_seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    run_clients(ctx, |ctx, client| {
        let (seq, values, last_seen) = (seq.clone(), values.clone(), last_seen.clone());
        async move {
            let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x5eed_0000 + client as u64));
            while !ctx.done() {
                pace(&ctx, &mut rng).await;
                if ctx.done() {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let key =
                    format!("r/{}", (n / OPS_PER_KEY_GENERATION) * ACTIVE_KEYS + rng.random_range(0..ACTIVE_KEYS));
                let node = rng.random_range(0..ctx.channels.len());
                let roll: f64 = rng.random();
                if roll < 0.5 {
                    read(&ctx, client, node, key, &last_seen).await;
                } else if roll < 0.75 {
                    write(&ctx, client, node, key, values.fetch_add(1, Ordering::Relaxed)).await;
                } else {
                    let from = last_seen.lock().expect("last seen").get(&key).copied().unwrap_or(0);
                    cas(&ctx, client, node, key, from, values.fetch_add(1, Ordering::Relaxed)).await;
                }
            }
        }
    })
    .await;
}

fn parse(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

async fn read(ctx: &Ctx, client: u32, node: usize, key: String, last_seen: &Mutex<HashMap<String, u64>>) {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let req = RangeRequest {
        key: key.clone().into_bytes(),
        serializable: ctx.reads == super::ReadMode::Serializable,
        ..Default::default()
    };
    match attempt(ctx.op_timeout, kv.range(req)).await {
        Attempt::Ok(r) => {
            let value = r.kvs.first().and_then(|kv| parse(&kv.value));
            if let Some(v) = value {
                last_seen.lock().expect("last seen").insert(key.clone(), v);
            }
            let rev = r.header.map(|h| h.revision);
            b.finish(ctx, Outcome::Ok, OpKind::Read { key, value }, rev, None);
        }
        // A read has no effect: any error is a definite failure.
        Attempt::Err { message, .. } => {
            b.finish(ctx, Outcome::Fail, OpKind::Read { key, value: None }, None, Some(message))
        }
    }
}

async fn write(ctx: &Ctx, client: u32, node: usize, key: String, value: u64) {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let req = PutRequest { key: key.clone().into_bytes(), value: value.to_string().into_bytes(), ..Default::default() };
    let op = OpKind::Write { key, value };
    match attempt(ctx.op_timeout, kv.put(req)).await {
        Attempt::Ok(r) => b.finish(ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None),
        Attempt::Err { definite, message } => b.finish(ctx, write_outcome(definite), op, None, Some(message)),
    }
}

async fn cas(ctx: &Ctx, client: u32, node: usize, key: String, from: u64, to: u64) {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key.clone().into_bytes(),
            target_union: Some(compare::TargetUnion::Value(from.to_string().into_bytes())),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone().into_bytes(),
                value: to.to_string().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    match attempt(ctx.op_timeout, kv.txn(req)).await {
        Attempt::Ok(r) => {
            let op = OpKind::Cas { key, from, to, succeeded: Some(r.succeeded) };
            b.finish(ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None)
        }
        Attempt::Err { definite, message } => {
            let op = OpKind::Cas { key, from, to, succeeded: None };
            b.finish(ctx, write_outcome(definite), op, None, Some(message))
        }
    }
}
