//! The lock workload: clients take a lock (a key created only if absent,
//! attached to their lease, kept alive), use the lock key's create revision as
//! a fencing token, and write a shared resource only through a Txn that checks
//! the token is still the lock's. Leases lapse under faults, so holders lose
//! the lock while they think they hold it: the fence must stop their writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::{
    compare, request_op, watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_stream::wrappers::ReceiverStream;

use super::{attempt, retry, run_clients, write_outcome, Attempt, Ctx, OpBuilder};
use crate::history::{OpKind, Outcome};

/// The lock key.
pub const LOCK_KEY: &str = "l/lock";
/// The resource the lock guards.
pub const RESOURCE_KEY: &str = "l/resource";
/// Lease TTL of a holder, in seconds (the server's minimum with default timing).
pub const LEASE_TTL_SECONDS: i64 = 2;
/// Keep-alive period.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// Guarded writes per holding at most.
pub const WRITES_PER_HOLD_MAX: u32 = 4;
/// Chance that a holder stalls (stops its keep-alives and sleeps past its
/// lease's TTL, like a long GC pause) before a guarded write: its lease lapses,
/// another client takes the lock, and the stalled write must be fenced off.
pub const STALL_PROBABILITY: f64 = 0.15;
/// How long a stall lasts.
pub const STALL: Duration = Duration::from_millis(3_500);

fn guard(token: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: LOCK_KEY.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(token)),
        ..Default::default()
    }
}

fn put_op(key: &str, value: String, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            lease,
            ..Default::default()
        })),
    }
}

/// Runs the lock clients until the deadline.
pub async fn run(ctx: &Ctx) {
    run_clients(ctx, |ctx, client| async move {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x10c6_0000 + client as u64));
        let mut seq = 0u32;
        while !ctx.done() {
            let node = rng.random_range(0..ctx.channels.len());
            let Some((lease, alive, stalled)) = grant(&ctx, client, node).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // Hold attempts with this lease until it lapses or the run ends.
            while !ctx.done() && alive.load(Ordering::Relaxed) {
                let node = rng.random_range(0..ctx.channels.len());
                match acquire(&ctx, client, node, lease).await {
                    // After holding (released or not), or an acquisition that
                    // may have succeeded, the lease is revoked below so that a
                    // lock key left behind does not block everyone.
                    Acquired::Yes(token) => {
                        hold(&ctx, client, token, &mut seq, &mut rng, &stalled).await;
                        break;
                    }
                    Acquired::No => tokio::time::sleep(ctx.client_interval).await,
                    Acquired::Unknown | Acquired::LeaseGone => break,
                }
            }
            alive.store(false, Ordering::Relaxed);
            let b = OpBuilder::start(&ctx, client, node);
            let mut l = LeaseClient::new(ctx.channels[node].clone());
            let op = OpKind::LeaseRevoke { lease };
            match attempt(ctx.op_timeout, l.lease_revoke(LeaseRevokeRequest { id: lease })).await {
                Attempt::Ok(r) => b.finish(&ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None),
                Attempt::Err { definite, message } => b.finish(&ctx, write_outcome(definite), op, None, Some(message)),
            }
        }
    })
    .await;
}

/// Grants a lease and keeps it alive in the background; `alive` turns false
/// when a keep-alive reports it expired (or the holder gives it up).
async fn grant(ctx: &Ctx, client: u32, node: usize) -> Option<(i64, Arc<AtomicBool>, Arc<AtomicBool>)> {
    let b = OpBuilder::start(ctx, client, node);
    let mut l = LeaseClient::new(ctx.channels[node].clone());
    let req = LeaseGrantRequest { ttl: LEASE_TTL_SECONDS, id: 0 };
    let resp = match attempt(ctx.op_timeout, l.lease_grant(req)).await {
        Attempt::Ok(r) if r.error.is_empty() => {
            let op = OpKind::LeaseGrant { lease: r.id, ttl: r.ttl };
            b.finish(ctx, Outcome::Ok, op, r.header.as_ref().map(|h| h.revision), None);
            r
        }
        Attempt::Ok(r) => {
            let op = OpKind::LeaseGrant { lease: 0, ttl: 0 };
            b.finish(ctx, Outcome::Fail, op, None, Some(r.error));
            return None;
        }
        Attempt::Err { definite, message } => {
            // A lease granted without our knowing is never used: no harm.
            let op = OpKind::LeaseGrant { lease: 0, ttl: 0 };
            b.finish(ctx, write_outcome(definite), op, None, Some(message));
            return None;
        }
    };
    let alive = Arc::new(AtomicBool::new(true));
    let stalled = Arc::new(AtomicBool::new(false));
    tokio::spawn(keep_alive(ctx.clone(), client, node, resp.id, alive.clone(), stalled.clone()));
    Some((resp.id, alive, stalled))
}

async fn keep_alive(
    ctx: Ctx,
    client: u32,
    mut node: usize,
    lease: i64,
    alive: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
) {
    while alive.load(Ordering::Relaxed) {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let mut l = LeaseClient::new(ctx.channels[node].clone());
        let stream = tokio::time::timeout(ctx.op_timeout, l.lease_keep_alive(ReceiverStream::new(rx))).await;
        if let Ok(Ok(stream)) = stream {
            let mut stream = stream.into_inner();
            while alive.load(Ordering::Relaxed) {
                if stalled.load(Ordering::Relaxed) {
                    tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                    continue;
                }
                let b = OpBuilder::start(&ctx, client, node);
                if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                    b.finish(
                        &ctx,
                        Outcome::Fail,
                        OpKind::KeepAlive { lease, ttl: None },
                        None,
                        Some("stream closed".into()),
                    );
                    break;
                }
                match tokio::time::timeout(ctx.op_timeout, stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        let op = OpKind::KeepAlive { lease, ttl: Some(r.ttl) };
                        b.finish(&ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None);
                        if r.ttl <= 0 {
                            alive.store(false, Ordering::Relaxed);
                            return;
                        }
                        tokio::time::sleep(KEEPALIVE_INTERVAL).await
                    }
                    other => {
                        let msg = match other {
                            Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                            Ok(Ok(None)) => "stream ended".to_string(),
                            _ => format!("no answer within {:?}", ctx.op_timeout),
                        };
                        b.finish(&ctx, Outcome::Info, OpKind::KeepAlive { lease, ttl: None }, None, Some(msg));
                        break;
                    }
                }
            }
        }
        node = (node + 1) % ctx.channels.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The result of an acquisition attempt.
enum Acquired {
    /// Taken, with this fencing token.
    Yes(i64),
    /// Held by another client, or the attempt certainly failed.
    No,
    /// The attempt may or may not have taken the lock.
    Unknown,
    /// The lease expired: a new one is needed.
    LeaseGone,
}

/// Tries to take the lock.
async fn acquire(ctx: &Ctx, client: u32, node: usize, lease: i64) -> Acquired {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let absent = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: LOCK_KEY.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let req = TxnRequest {
        compare: vec![absent],
        success: vec![put_op(LOCK_KEY, format!("c{client}"), lease)],
        failure: vec![],
    };
    match attempt(ctx.op_timeout, kv.txn(req)).await {
        Attempt::Ok(r) => {
            let rev = r.header.map(|h| h.revision);
            let token = if r.succeeded { rev } else { None };
            b.finish(ctx, Outcome::Ok, OpKind::Acquire { lease, token }, rev, None);
            token.map_or(Acquired::No, Acquired::Yes)
        }
        Attempt::Err { definite, message } => {
            let gone = message.contains("requested lease not found");
            b.finish(ctx, write_outcome(definite), OpKind::Acquire { lease, token: None }, None, Some(message));
            if gone {
                Acquired::LeaseGone
            } else if definite {
                Acquired::No
            } else {
                Acquired::Unknown
            }
        }
    }
}

/// Writes the resource a few times under the token, then releases the lock.
async fn hold(ctx: &Ctx, client: u32, token: i64, seq: &mut u32, rng: &mut ChaCha8Rng, stalled: &AtomicBool) {
    let writes = rng.random_range(1..=WRITES_PER_HOLD_MAX);
    for _ in 0..writes {
        tokio::time::sleep(ctx.client_interval).await;
        if rng.random_bool(STALL_PROBABILITY) {
            stalled.store(true, Ordering::Relaxed);
            tokio::time::sleep(STALL).await;
            stalled.store(false, Ordering::Relaxed);
        }
        let node = rng.random_range(0..ctx.channels.len());
        *seq += 1;
        let value = format!("t{token}-c{client}-s{seq}");
        let b = OpBuilder::start(ctx, client, node);
        let mut kv = KvClient::new(ctx.channels[node].clone());
        let req = TxnRequest {
            compare: vec![guard(token)],
            success: vec![put_op(RESOURCE_KEY, value.clone(), 0)],
            failure: vec![],
        };
        match attempt(ctx.op_timeout, kv.txn(req)).await {
            Attempt::Ok(r) => {
                let op = OpKind::GuardedWrite { token, value, succeeded: Some(r.succeeded) };
                b.finish(ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None);
                if !r.succeeded {
                    return; // the lock is gone
                }
            }
            Attempt::Err { definite, message } => {
                let op = OpKind::GuardedWrite { token, value, succeeded: None };
                b.finish(ctx, write_outcome(definite), op, None, Some(message));
            }
        }
    }
    let node = rng.random_range(0..ctx.channels.len());
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let del = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: LOCK_KEY.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let req = TxnRequest { compare: vec![guard(token)], success: vec![del], failure: vec![] };
    match attempt(ctx.op_timeout, kv.txn(req)).await {
        Attempt::Ok(r) => b.finish(ctx, Outcome::Ok, OpKind::Release { token }, r.header.map(|h| h.revision), None),
        Attempt::Err { definite, message } => {
            b.finish(ctx, write_outcome(definite), OpKind::Release { token }, None, Some(message))
        }
    }
}

/// Reads every version the resource ever had (a watch from revision 1 up to its
/// current mod revision) and records it.
pub async fn finish(ctx: &Ctx) -> Result<(), String> {
    let res = retry(Duration::from_secs(30), |i| {
        let node = i % ctx.channels.len();
        let timeout = ctx.op_timeout;
        let ch = ctx.channels[node].clone();
        async move {
            let b = OpBuilder::start(ctx, u32::MAX, node);
            let mut kv = KvClient::new(ch.clone());
            let req = RangeRequest { key: RESOURCE_KEY.as_bytes().to_vec(), ..Default::default() };
            let current = match attempt(timeout, kv.range(req)).await {
                Attempt::Ok(r) => r.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
                Attempt::Err { message, .. } => return Err(message),
            };
            let versions = versions_until(ch, current, timeout * 5).await?;
            Ok((b, versions))
        }
    })
    .await?;
    let (b, versions) = res;
    b.finish_final(ctx, Outcome::Ok, OpKind::ResourceHistory { versions }, None, None);
    Ok(())
}

async fn versions_until(
    ch: tonic::transport::Channel,
    until: i64,
    timeout: Duration,
) -> Result<Vec<(i64, String)>, String> {
    let mut out = Vec::new();
    if until == 0 {
        return Ok(out);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: RESOURCE_KEY.as_bytes().to_vec(),
            start_revision: 1,
            ..Default::default()
        })),
    };
    tx.send(create).await.map_err(|e| e.to_string())?;
    let mut w = WatchClient::new(ch);
    let collect = async {
        let mut stream = w.watch(ReceiverStream::new(rx)).await.map_err(|s| s.message().to_string())?.into_inner();
        loop {
            let Some(resp) = stream.message().await.map_err(|s| s.message().to_string())? else {
                return Err("watch ended early".to_string());
            };
            if resp.canceled || resp.compact_revision > 0 {
                return Err(format!("watch canceled: {} (compacted at {})", resp.cancel_reason, resp.compact_revision));
            }
            for e in resp.events {
                let kv = e.kv.unwrap_or_default();
                if e.r#type == 0 {
                    out.push((kv.mod_revision, String::from_utf8_lossy(&kv.value).into_owned()));
                }
                if kv.mod_revision >= until {
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(timeout, collect).await.map_err(|_| "resource history watch timed out".to_string())??;
    drop(tx);
    Ok(out)
}
