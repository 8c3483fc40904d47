//! The watch workload: writers put one to three keys of a prefix per
//! transaction; one watcher per member watches the prefix from revision 1 and,
//! whenever its stream breaks (and every few seconds anyway), resumes on the
//! next member from the revision after the last one it saw.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::{
    request_op, watch_request, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use cairn_proto::mvccpb::event::EventType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_stream::wrappers::ReceiverStream;

use super::{attempt, pace, retry, run_clients, write_outcome, Attempt, Ctx, OpBuilder};
use crate::history::{OpKind, Outcome, WatchEvent, WatchRecord};

/// The watched prefix.
pub const PREFIX: &str = "w/";
/// Keys under the prefix.
pub const KEYS: u64 = 16;
/// A watcher moves to the next member after this long on one (ms, range).
pub const SWITCH_MS: (u64, u64) = (3_000, 8_000);
/// How long watchers get to reach the final revision after the workload.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchers' shared state.
pub struct Watchers {
    last: Vec<Arc<AtomicI64>>,
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts one watcher per member.
pub fn start_watchers(ctx: &Ctx) -> Watchers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut last = Vec::new();
    let mut handles = Vec::new();
    for w in 0..ctx.channels.len() {
        let l = Arc::new(AtomicI64::new(1));
        last.push(l.clone());
        handles.push(tokio::spawn(watcher(ctx.clone(), w as u32, l, stop.clone())));
    }
    Watchers { last, stop, handles }
}

/// Pause between two linearizable-start probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the writers (and the start/progress prober) until the deadline.
pub async fn run(ctx: &Ctx) {
    let prober = tokio::spawn(probe(ctx.clone()));
    writers(ctx).await;
    let _ = prober.await;
}

/// Creates watches without a start revision and sends progress requests on
/// random members, recording the revisions they answer: each must be at or
/// after every write acknowledged before the request was sent.
async fn probe(ctx: Ctx) {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x960b_e000);
    while !ctx.done() {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let node = rng.random_range(0..ctx.channels.len());
        probe_once(&ctx, node).await;
    }
}

async fn probe_once(ctx: &Ctx, node: usize) {
    let client = u32::MAX - 1;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: b"w0".to_vec(),
            ..Default::default()
        })),
    };
    let b = OpBuilder::start(ctx, client, node);
    let _ = tx.send(create).await;
    let mut w = WatchClient::new(ctx.channels[node].clone());
    let created = tokio::time::timeout(ctx.op_timeout, async {
        let mut stream = w.watch(ReceiverStream::new(rx)).await.map_err(|s| s.message().to_string())?.into_inner();
        loop {
            match stream.message().await.map_err(|s| s.message().to_string())? {
                Some(r) if r.created => return Ok((stream, r.header.map(|h| h.revision))),
                Some(_) => continue,
                None => return Err("stream ended".to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {:?}", ctx.op_timeout)));
    let mut stream = match created {
        Ok((stream, rev)) => {
            b.finish(ctx, Outcome::Ok, OpKind::WatchCreate, rev, None);
            stream
        }
        Err(e) => return b.finish(ctx, Outcome::Fail, OpKind::WatchCreate, None, Some(e)),
    };
    let b = OpBuilder::start(ctx, client, node);
    let progress =
        WatchRequest { request_union: Some(watch_request::RequestUnion::ProgressRequest(Default::default())) };
    if tx.send(progress).await.is_err() {
        return b.finish(ctx, Outcome::Fail, OpKind::WatchProgress, None, Some("stream closed".into()));
    }
    // The answer is the first response without events (events may come first).
    let answer = tokio::time::timeout(ctx.op_timeout, async {
        loop {
            match stream.message().await.map_err(|s| s.message().to_string())? {
                Some(r) if r.events.is_empty() && !r.created && !r.canceled => return Ok(r.header.map(|h| h.revision)),
                Some(_) => continue,
                None => return Err("stream ended".to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {:?}", ctx.op_timeout)));
    match answer {
        Ok(rev) => b.finish(ctx, Outcome::Ok, OpKind::WatchProgress, rev, None),
        Err(e) => b.finish(ctx, Outcome::Fail, OpKind::WatchProgress, None, Some(e)),
    }
}

async fn writers(ctx: &Ctx) {
    let values = Arc::new(AtomicU64::new(1));
    run_clients(ctx, |ctx, client| {
        let values = values.clone();
        async move {
            let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x3a7c_0000 + client as u64));
            while !ctx.done() {
                pace(&ctx, &mut rng).await;
                if ctx.done() {
                    break;
                }
                let count = rng.random_range(1..=3);
                let mut keys: Vec<u64> = Vec::new();
                while keys.len() < count {
                    let k = rng.random_range(0..KEYS);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let puts: Vec<(String, String)> = keys
                    .into_iter()
                    .map(|k| (format!("{PREFIX}{k}"), format!("v{}", values.fetch_add(1, Ordering::Relaxed))))
                    .collect();
                let node = rng.random_range(0..ctx.channels.len());
                write(&ctx, client, node, puts).await;
            }
        }
    })
    .await;
}

async fn write(ctx: &Ctx, client: u32, node: usize, puts: Vec<(String, String)>) {
    let b = OpBuilder::start(ctx, client, node);
    let mut kv = KvClient::new(ctx.channels[node].clone());
    let success = puts
        .iter()
        .map(|(k, v)| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.clone().into_bytes(),
                value: v.clone().into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    let req = TxnRequest { compare: vec![], success, failure: vec![] };
    let op = OpKind::MultiPut { puts };
    match attempt(ctx.op_timeout, kv.txn(req)).await {
        Attempt::Ok(r) => b.finish(ctx, Outcome::Ok, op, r.header.map(|h| h.revision), None),
        Attempt::Err { definite, message } => b.finish(ctx, write_outcome(definite), op, None, Some(message)),
    }
}

async fn watcher(ctx: Ctx, w: u32, last: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    let n = ctx.channels.len();
    let mut node = w as usize % n;
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x7a7c_0000 + w as u64));
    while !stop.load(Ordering::Relaxed) {
        let start_revision = last.load(Ordering::Relaxed) + 1;
        ctx.recorder.watch(WatchRecord::Connect { watcher: w, node, start_revision, t_ns: ctx.now_ns() });
        let reason = stream_once(&ctx, w, node, start_revision, &last, &stop, &mut rng).await;
        ctx.recorder.watch(WatchRecord::Broken { watcher: w, node, t_ns: ctx.now_ns(), reason });
        node = (node + 1) % n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows one watch stream until it breaks, the watcher switches members, or it
/// is stopped; returns why it ended.
async fn stream_once(
    ctx: &Ctx,
    w: u32,
    node: usize,
    start_revision: i64,
    last: &AtomicI64,
    stop: &AtomicBool,
    rng: &mut ChaCha8Rng,
) -> String {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: b"w0".to_vec(),
            start_revision,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return "request channel closed".into();
    }
    let mut client = WatchClient::new(ctx.channels[node].clone());
    let mut stream = match tokio::time::timeout(ctx.op_timeout, client.watch(ReceiverStream::new(rx))).await {
        Err(_) => return format!("no answer within {:?}", ctx.op_timeout),
        Ok(Err(s)) => return format!("{:?}: {}", s.code(), s.message()),
        Ok(Ok(r)) => r.into_inner(),
    };
    let switch_at = Instant::now() + Duration::from_millis(rng.random_range(SWITCH_MS.0..=SWITCH_MS.1));
    loop {
        if stop.load(Ordering::Relaxed) {
            return "stopped".into();
        }
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep_until(switch_at.into()) => return "switching member".into(),
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return "stream ended".into(),
            Err(s) => return format!("{:?}: {}", s.code(), s.message()),
        };
        if resp.compact_revision > 0 {
            return format!("compacted at {}", resp.compact_revision);
        }
        if resp.canceled {
            return format!("canceled: {}", resp.cancel_reason);
        }
        if resp.events.is_empty() {
            continue;
        }
        let events: Vec<WatchEvent> = resp
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                WatchEvent {
                    revision: kv.mod_revision,
                    delete: e.r#type == EventType::Delete as i32,
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: String::from_utf8_lossy(&kv.value).into_owned(),
                }
            })
            .collect();
        let max = events.iter().map(|e| e.revision).max().unwrap_or(0);
        ctx.recorder.watch(WatchRecord::Events { watcher: w, node, t_ns: ctx.now_ns(), events });
        last.fetch_max(max, Ordering::Relaxed);
    }
}

/// Reads the final revision, waits for every watcher to reach it, stops them
/// and records the final revision.
pub async fn finish(ctx: &Ctx, watchers: Watchers) -> Result<(), String> {
    let final_rev = retry(Duration::from_secs(30), |i| {
        let node = i % ctx.channels.len();
        let mut kv = KvClient::new(ctx.channels[node].clone());
        let req =
            RangeRequest { key: b"w/".to_vec(), range_end: b"w0".to_vec(), count_only: true, ..Default::default() };
        let timeout = ctx.op_timeout;
        async move {
            match attempt(timeout, kv.range(req)).await {
                Attempt::Ok(r) => r.header.map(|h| h.revision).ok_or_else(|| "no header".to_string()),
                Attempt::Err { message, .. } => Err(message),
            }
        }
    })
    .await;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    if let Ok(rev) = final_rev {
        while Instant::now() < deadline && watchers.last.iter().any(|l| l.load(Ordering::Relaxed) < rev) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    watchers.stop.store(true, Ordering::Relaxed);
    for h in watchers.handles {
        let _ = h.await;
    }
    let rev = final_rev?;
    ctx.recorder.watch(WatchRecord::Final { revision: rev });
    Ok(())
}
