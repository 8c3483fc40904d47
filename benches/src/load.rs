//! The workloads and the loop that drives them: closed loop (each client sends its
//! next request when the previous one is answered) or open loop (requests are due
//! at a fixed rate and latency counts from when a request was due, so a stalled
//! server is not hidden by coordinated omission).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient, watch_request,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::procstat::{ServerProc, ServerUsage, UsageStart};
use crate::report::{Latency, RunResult, WatchStats};
use crate::unary::{UnaryConn, KV_PUT, KV_RANGE, KV_TXN};

/// Largest latency the histograms record (longer ones are clamped to it).
const LATENCY_US_MAX: u64 = 120_000_000;
/// Distinct error messages kept per run (the rest are counted under "other").
const ERROR_KINDS_MAX: usize = 16;
/// Concurrent puts used to preload keys before `range` and `mixed`.
const PRELOAD_CONCURRENCY: usize = 64;
/// How long `watch-latency` waits for the last events after its last put.
const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of the leases `lease-keepalive` keeps alive.
const KEEPALIVE_LEASE_TTL_SECONDS: i64 = 60;
/// Prefix of every key a workload writes.
pub const KEY_PREFIX: &str = "/bench/k/";
/// Prefix of the keys `watch-latency` writes and watches.
pub const WATCH_PREFIX: &str = "/bench/w/";
/// Per-watch-stream buffer of create requests.
const WATCH_REQUEST_BUFFER: usize = 1024;

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts of `--value-size` bytes on keys of the key space.
    Put,
    /// Ranges (single key, or `--range-prefix`) at `--consistency`.
    Range,
    /// Txns of `--txn-ops` puts, no compares.
    TxnPut,
    /// Ranges and puts, `--read-ratio` of them reads.
    Mixed,
    /// `--watchers` watchers on one prefix, puts at `--watch-put-rate`; put-to-event latency.
    WatchLatency,
    /// One lease per client, kept alive over a LeaseKeepAlive stream.
    LeaseKeepalive,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_possible_value().expect("no skipped variants");
        f.write_str(v.get_name())
    }
}

/// Read consistency of ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    Linearizable,
    Serializable,
}

/// How much load, and of which shape.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Concurrent clients (each has at most one request in flight). Not used by
    /// `watch-latency`, whose puts go at --watch-put-rate.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections the clients share (spread over the endpoints).
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Stop after this many requests (instead of after --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// How long each workload runs (e.g. 30s, 2m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_secs")]
    pub duration: Duration,
    /// Open loop: requests per second, due at fixed intervals, latency counted from
    /// when each was due. Without it the loop is closed. `watch-latency` is always
    /// open loop, at --watch-put-rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Key length in bytes (keys are `/bench/k/` and a zero-padded number).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Keys in order (0, 1, 2, ... wrapping at --key-space) instead of random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Range consistency.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Ranges read the whole key prefix (up to --range-limit keys) instead of one key.
    #[arg(long)]
    pub range_prefix: bool,
    /// Limit of a prefix range.
    #[arg(long, default_value_t = 100)]
    pub range_limit: i64,
    /// Share of reads in `mixed` (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Puts per Txn in `txn-put`.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Watchers in `watch-latency`.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub watch_streams: usize,
    /// Puts per second while `watch-latency` measures.
    #[arg(long, default_value_t = 100.0)]
    pub watch_put_rate: f64,
    /// `range` and `mixed` do not write the key space first (it is already there).
    #[arg(long)]
    pub no_preload: bool,
    /// Bound for one request; a request that takes longer counts as failed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde_secs")]
    pub request_timeout: Duration,
}

/// (De)serializes a `Duration` as seconds (a float), for readable JSON.
mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

impl LoadSpec {
    /// Refuses settings that cannot run.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 || self.conns == 0 {
            bail!("--clients and --conns must be at least 1");
        }
        if self.key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio must be between 0 and 1, not {}", self.read_ratio);
        }
        if matches!(self.rate, Some(r) if r.is_nan() || r <= 0.0)
            || self.watch_put_rate.is_nan()
            || self.watch_put_rate <= 0.0
        {
            bail!("--rate and --watch-put-rate must be positive");
        }
        if self.watchers == 0 || self.watch_streams == 0 {
            bail!("--watchers and --watch-streams must be at least 1");
        }
        if self.txn_ops == 0 {
            bail!("--txn-ops must be at least 1");
        }
        if self.value_size < 8 {
            bail!("--value-size must be at least 8 (watch-latency stores a timestamp in the value)");
        }
        Ok(())
    }

    /// The key numbered `n`, KEY_PREFIX + `n` zero-padded to --key-size bytes.
    pub fn key(&self, prefix: &str, n: u64) -> Vec<u8> {
        let digits = self.key_size.saturating_sub(prefix.len()).max(1);
        format!("{prefix}{n:0digits$}").into_bytes()
    }
}

/// The clients of one endpoint connection.
#[derive(Clone)]
struct Conn {
    kv: KvClient<Channel>,
    /// The request loop's Put, Range and Txn calls (see [`crate::unary`]).
    unary: UnaryConn,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
}

/// Normalises `host:port` to `http://host:port`.
pub fn endpoint_url(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Conn>> {
    if endpoints.is_empty() {
        bail!("no endpoints");
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let url = endpoint_url(&endpoints[i % endpoints.len()]);
        let ch = Channel::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        let unary = UnaryConn::connect(&url).await?;
        conns.push(Conn {
            kv: KvClient::new(ch.clone()),
            unary,
            lease: LeaseClient::new(ch.clone()),
            watch: WatchClient::new(ch),
        });
    }
    Ok(conns)
}

/// What the request loop measured.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"),
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.hist.saturating_record((latency.as_micros() as u64).clamp(1, LATENCY_US_MAX));
            }
            Err(e) => self.fail(e, 1),
        }
    }

    fn fail(&mut self, error: String, n: u64) {
        self.failed += n;
        let kind = if self.errors.len() < ERROR_KINDS_MAX || self.errors.contains_key(&error) {
            error
        } else {
            "other".to_string()
        };
        *self.errors.entry(kind).or_default() += n;
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.ok += other.ok;
        for (e, n) in other.errors {
            self.fail(e, n);
        }
    }
}

/// Per-client state between requests.
struct Client {
    conn: Conn,
    rng: SmallRng,
    /// `lease-keepalive`: the client's keep-alive stream.
    keepalive: Option<KeepAlive>,
}

/// One lease's keep-alive stream. Replies come in the order of the requests and
/// carry nothing else to match them by, so a request that timed out leaves its
/// reply owed: the next request reads past it rather than taking it for its own.
struct KeepAlive {
    lease: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    replies: Streaming<LeaseKeepAliveResponse>,
    /// Requests sent whose replies were not read yet.
    owed: u64,
}

impl KeepAlive {
    /// Sends one keep-alive and reads replies until its own. Cancel-safe: dropped at
    /// any point, it leaves `owed` counting every reply still to come.
    async fn renew(&mut self) -> Result<(), String> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.lease })
            .await
            .map_err(|_| "keep-alive stream closed".to_string())?;
        self.owed += 1;
        loop {
            let reply = match self.replies.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("keep-alive stream ended".into()),
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
            };
            self.owed -= 1;
            if self.owed == 0 {
                return match reply.ttl {
                    ttl if ttl > 0 => Ok(()),
                    ttl => Err(format!("lease {} expired (TTL {ttl})", reply.id)),
                };
            }
        }
    }
}

/// What every client shares.
struct Shared {
    workload: Workload,
    spec: LoadSpec,
    value: Vec<u8>,
    next_key: AtomicU64,
}

impl Shared {
    fn key_number(&self, rng: &mut SmallRng) -> u64 {
        if self.spec.sequential_keys {
            self.next_key.fetch_add(1, Ordering::Relaxed) % self.spec.key_space
        } else {
            rng.random_range(0..self.spec.key_space)
        }
    }

    fn put(&self, rng: &mut SmallRng) -> PutRequest {
        PutRequest {
            key: self.spec.key(KEY_PREFIX, self.key_number(rng)),
            value: self.value.clone(),
            ..Default::default()
        }
    }

    fn range(&self, rng: &mut SmallRng) -> RangeRequest {
        let serializable = self.spec.consistency == Consistency::Serializable;
        if self.spec.range_prefix {
            let mut end = KEY_PREFIX.as_bytes().to_vec();
            *end.last_mut().expect("non-empty prefix") += 1;
            RangeRequest {
                key: KEY_PREFIX.as_bytes().to_vec(),
                range_end: end,
                limit: self.spec.range_limit,
                serializable,
                ..Default::default()
            }
        } else {
            RangeRequest { key: self.spec.key(KEY_PREFIX, self.key_number(rng)), serializable, ..Default::default() }
        }
    }

    /// One request of the workload.
    async fn op(&self, c: &mut Client) -> Result<(), String> {
        let kv = &mut c.conn.unary;
        match self.workload {
            Workload::Put => kv.call::<_, PutResponse>(KV_PUT, &self.put(&mut c.rng)).await.map(drop),
            Workload::Range => kv.call::<_, RangeResponse>(KV_RANGE, &self.range(&mut c.rng)).await.map(drop),
            Workload::TxnPut => {
                let success = (0..self.spec.txn_ops)
                    .map(|_| RequestOp { request: Some(request_op::Request::RequestPut(self.put(&mut c.rng))) })
                    .collect();
                let txn = TxnRequest { compare: vec![], success, failure: vec![] };
                kv.call::<_, TxnResponse>(KV_TXN, &txn).await.map(drop)
            }
            Workload::Mixed => {
                if c.rng.random_bool(self.spec.read_ratio) {
                    kv.call::<_, RangeResponse>(KV_RANGE, &self.range(&mut c.rng)).await.map(drop)
                } else {
                    kv.call::<_, PutResponse>(KV_PUT, &self.put(&mut c.rng)).await.map(drop)
                }
            }
            Workload::LeaseKeepalive => c.keepalive.as_mut().ok_or("no lease stream")?.renew().await,
            Workload::WatchLatency => unreachable!("watch-latency has its own loop"),
        }
    }
}

/// Runs one workload against `endpoints`, recording the usage of `procs`.
/// `quiet` is awaited after the key space is written (`range`, `mixed`) and before
/// the measurement starts: `compare` waits there for the servers to go idle, so
/// that the flushes and compactions the preload set off are not measured.
pub async fn run(
    endpoints: &[String],
    target: &str,
    workload: Workload,
    spec: &LoadSpec,
    procs: &[ServerProc],
    progress: bool,
    quiet: impl std::future::Future<Output = ()>,
) -> Result<RunResult> {
    spec.validate()?;
    let conns = connect(endpoints, spec.conns).await?;
    let mut rng = SmallRng::from_os_rng();
    let value: Vec<u8> = (0..spec.value_size).map(|_| rng.random_range(b'a'..=b'z')).collect();
    let shared = Arc::new(Shared { workload, spec: spec.clone(), value: value.clone(), next_key: AtomicU64::new(0) });
    if matches!(workload, Workload::Range | Workload::Mixed) && !spec.no_preload {
        preload(&conns, spec, &value).await?;
    }
    quiet.await;
    let (tally, elapsed, usage, watch) = if workload == Workload::WatchLatency {
        let (tally, elapsed, usage, stats) = watch_latency(&conns, spec, procs, progress).await?;
        (tally, elapsed, usage, Some(stats))
    } else {
        let clients = make_clients(&conns, workload, spec).await?;
        let usage = UsageStart::take(procs).await;
        let (tally, elapsed) = drive(shared, clients, progress).await;
        (tally, elapsed, usage.finish().await, None)
    };
    Ok(RunResult::new(
        target,
        endpoints,
        workload,
        spec,
        elapsed,
        tally.ok,
        tally.failed,
        tally.errors,
        Latency::of(&tally.hist),
        watch,
        usage,
    ))
}

async fn make_clients(conns: &[Conn], workload: Workload, spec: &LoadSpec) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let mut conn = conns[i % conns.len()].clone();
        let keepalive = if workload == Workload::LeaseKeepalive {
            let grant = conn.lease.lease_grant(LeaseGrantRequest { ttl: KEEPALIVE_LEASE_TTL_SECONDS, id: 0 });
            let lease = tokio::time::timeout(spec.request_timeout, grant)
                .await
                .context("lease grant: no answer")?
                .context("grant a lease for lease-keepalive")?
                .into_inner();
            let (tx, rx) = mpsc::channel(1);
            // A first keep-alive is queued before the call: etcd completes the call
            // (sends its headers) only with its first response.
            tx.send(LeaseKeepAliveRequest { id: lease.id }).await.context("queue the first keep-alive")?;
            let open = async {
                let mut responses = conn.lease.lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
                responses.message().await?.ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))?;
                Ok::<_, tonic::Status>(responses)
            };
            let responses = tokio::time::timeout(spec.request_timeout, open)
                .await
                .context("open a keep-alive stream: no answer")?
                .context("open a keep-alive stream")?;
            Some(KeepAlive { lease: lease.id, requests: tx, replies: responses, owed: 0 })
        } else {
            None
        };
        clients.push(Client { conn, rng: SmallRng::from_os_rng(), keepalive });
    }
    Ok(clients)
}

/// Writes every key of the key space once (not measured).
async fn preload(conns: &[Conn], spec: &LoadSpec, value: &[u8]) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..PRELOAD_CONCURRENCY.min(spec.key_space as usize) {
        let mut kv = conns[i % conns.len()].kv.clone();
        let (next, spec, value) = (next.clone(), spec.clone(), value.to_vec());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.key_space {
                    return Ok::<(), anyhow::Error>(());
                }
                let req = PutRequest { key: spec.key(KEY_PREFIX, n), value: value.clone(), ..Default::default() };
                kv.put(req).await.with_context(|| format!("preload key {n}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn progress_bar(spec: &LoadSpec, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    match spec.total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {per_sec}, eta {eta}")
                .expect("valid progress template"),
        ),
        None => ProgressBar::new(spec.duration.as_secs().max(1))
            .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} s {msg}").expect("valid progress template")),
    }
}

/// The request loop: every client runs until the total or the duration is reached.
async fn drive(shared: Arc<Shared>, clients: Vec<Client>, show_progress: bool) -> (Tally, Duration) {
    let spec = shared.spec.clone();
    let bar = progress_bar(&spec, show_progress);
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.duration;
    let ticker = spec.total.is_none().then(|| {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(start.elapsed().as_secs());
                bar.set_message(format!("{} requests", done.load(Ordering::Relaxed)));
            }
        })
    });
    let mut tasks = Vec::new();
    for mut client in clients {
        let (shared, issued, done, bar) = (shared.clone(), issued.clone(), done.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let spec = &shared.spec;
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if spec.total.is_some_and(|t| i >= t) {
                    break;
                }
                let due = match spec.rate {
                    Some(rate) => start + Duration::from_secs_f64(i as f64 / rate),
                    None => Instant::now(),
                };
                if spec.total.is_none() && due >= deadline {
                    break;
                }
                // Only an open loop waits. tokio rounds a timer up to its next
                // millisecond tick, so even a wait until "now" held every closed-loop
                // request back by up to a millisecond.
                if spec.rate.is_some() && due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let result = match tokio::time::timeout(spec.request_timeout, shared.op(&mut client)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {:?}", spec.request_timeout)),
                };
                tally.record(due.elapsed(), result);
                done.fetch_add(1, Ordering::Relaxed);
                if spec.total.is_some() {
                    bar.inc(1);
                }
            }
            tally
        }));
    }
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await.expect("client task panicked"));
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    bar.finish_and_clear();
    (tally, elapsed)
}

/// The range_end that selects every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Opens `watchers` watchers on WATCH_PREFIX spread over streams and connections;
/// returns one task per stream that tallies put-to-event latency until `stop`.
async fn open_watchers(
    conns: &[Conn],
    spec: &LoadSpec,
    epoch: Instant,
    received: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<Tally>>> {
    let streams = spec.watch_streams.min(spec.watchers);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let per_stream = spec.watchers / streams + usize::from(s < spec.watchers % streams);
        let mut client = conns[s % conns.len()].watch.clone();
        let (tx, rx) = mpsc::channel(WATCH_REQUEST_BUFFER);
        // Queue the creates before the call returns: etcd sends the response headers
        // only with its first message, so the call completes only once it answered one.
        let creates = tx.clone();
        let sender = tokio::spawn(async move {
            for _ in 0..per_stream {
                let create = WatchCreateRequest {
                    key: WATCH_PREFIX.as_bytes().to_vec(),
                    range_end: prefix_end(WATCH_PREFIX.as_bytes()),
                    ..Default::default()
                };
                let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
                if creates.send(req).await.is_err() {
                    break;
                }
            }
        });
        let mut responses = client.watch(ReceiverStream::new(rx)).await.context("open a watch stream")?.into_inner();
        sender.await.context("watch create sender")?;
        let mut created = 0;
        while created < per_stream {
            let r = responses.message().await.context("watch stream")?.context("watch stream ended")?;
            if r.canceled {
                bail!("watch refused: {}", r.cancel_reason);
            }
            created += usize::from(r.created);
        }
        let (received, mut stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut tally = Tally::new();
            loop {
                let r = tokio::select! {
                    _ = stop.changed() => break,
                    r = responses.message() => r,
                };
                let r = match r {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tally.fail("watch stream ended".into(), 1);
                        break;
                    }
                    Err(s) => {
                        tally.fail(format!("watch stream: {:?}: {}", s.code(), s.message()), 1);
                        break;
                    }
                };
                let now = epoch.elapsed();
                for ev in &r.events {
                    let sent = ev
                        .kv
                        .as_ref()
                        .and_then(|kv| kv.value.get(..8))
                        .map(|b| Duration::from_nanos(u64::from_be_bytes(b.try_into().expect("8 bytes"))));
                    match sent {
                        Some(sent) => tally.record(now.saturating_sub(sent), Ok(())),
                        None => tally.fail("event without a timestamp".into(), 1),
                    }
                }
                received.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
            tally
        }));
    }
    Ok(tasks)
}

/// `watch-latency`: puts at a fixed rate (open loop), each carrying its send time,
/// and the delay until each watcher receives its event.
/// The usage of `procs` covers the puts and their events, not the creation of the
/// watchers before them.
async fn watch_latency(
    conns: &[Conn],
    spec: &LoadSpec,
    procs: &[ServerProc],
    show_progress: bool,
) -> Result<(Tally, Duration, Vec<ServerUsage>, WatchStats)> {
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let receivers = open_watchers(conns, spec, epoch, received.clone(), stop_rx).await?;
    let usage = UsageStart::take(procs).await;

    let bar = progress_bar(spec, show_progress);
    let start = Instant::now();
    let mut puts = JoinSet::new();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / spec.watch_put_rate);
        if spec.total.map_or(due >= start + spec.duration, |t| i >= t) {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        bar.set_position(if spec.total.is_some() { i } else { start.elapsed().as_secs() });
        let mut value = vec![b'w'; spec.value_size];
        // The time it is sent, not the time it was due: this loop never waits for
        // the server (each put is a task of its own), so there is no coordinated
        // omission to correct, and the due time would charge the generator's own
        // late wake-ups to the server (1.5–2 ms at the median with 1,000 watchers,
        // when tried).
        value[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
        let req = PutRequest { key: spec.key(WATCH_PREFIX, i % spec.key_space), value, ..Default::default() };
        let mut kv = conns[(i as usize) % conns.len()].kv.clone();
        let timeout = spec.request_timeout;
        // Not waiting for the previous put keeps the rate fixed when one is slow.
        puts.spawn(async move {
            match tokio::time::timeout(timeout, kv.put(req)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) => Err(format!("put: {:?}: {}", s.code(), s.message())),
                Err(_) => Err(format!("put: no answer within {timeout:?}")),
            }
        });
    }
    let mut put_tally = Tally::new();
    while let Some(r) = puts.join_next().await {
        put_tally.record(Duration::ZERO, r.expect("put task panicked"));
    }
    let events_expected = put_tally.ok * spec.watchers as u64;

    let drain_deadline = Instant::now() + WATCH_DRAIN_TIMEOUT;
    while received.load(Ordering::Relaxed) < events_expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let usage = usage.finish().await;
    let _ = stop_tx.send(true);
    let mut tally = Tally::new();
    for r in receivers {
        tally.merge(r.await.expect("watch receiver panicked"));
    }
    bar.finish_and_clear();
    let events_received = received.load(Ordering::Relaxed);
    if events_received < events_expected {
        tally.fail(format!("events missing after {WATCH_DRAIN_TIMEOUT:?}"), events_expected - events_received);
    }
    for (e, n) in put_tally.errors {
        tally.fail(e, n);
    }
    let stats = WatchStats {
        watchers: spec.watchers as u64,
        puts: put_tally.ok + put_tally.failed,
        events_expected,
        events_received,
    };
    Ok((tally, elapsed, usage, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
    use cairn_proto::etcdserverpb::{
        LeaseGrantResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
        LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    };
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        load: LoadSpec,
    }

    fn spec(args: &[&str]) -> LoadSpec {
        Args::parse_from(std::iter::once("test").chain(args.iter().copied())).load
    }

    #[test]
    fn keys_have_the_requested_size_and_sort_by_number() {
        let s = spec(&["--key-size", "32"]);
        let (a, b) = (s.key(KEY_PREFIX, 9), s.key(KEY_PREFIX, 10));
        assert_eq!(a.len(), 32);
        assert!(a < b, "zero padding keeps numeric order");
        assert!(a.starts_with(KEY_PREFIX.as_bytes()));
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--read-ratio", "1.5"][..], "--read-ratio"),
            (&["--rate", "0"][..], "--rate"),
            (&["--value-size", "4"][..], "--value-size"),
        ] {
            let err = spec(args).validate().expect_err("refused").to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        spec(&[]).validate().expect("the defaults are valid");
    }

    /// A lease service that holds back its answer to the first keep-alive until the
    /// second arrives, then answers both in order: the first with TTL -1
    /// (expired), the second with TTL 10.
    struct LateFirstAnswer;

    #[tonic::async_trait]
    impl Lease for LateFirstAnswer {
        async fn lease_grant(
            &self,
            _: tonic::Request<LeaseGrantRequest>,
        ) -> Result<tonic::Response<LeaseGrantResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("keep-alive only"))
        }

        async fn lease_revoke(
            &self,
            _: tonic::Request<LeaseRevokeRequest>,
        ) -> Result<tonic::Response<LeaseRevokeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("keep-alive only"))
        }

        type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, tonic::Status>>;

        async fn lease_keep_alive(
            &self,
            request: tonic::Request<Streaming<LeaseKeepAliveRequest>>,
        ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, tonic::Status> {
            let mut requests = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let (Ok(Some(first)), Ok(Some(second))) = (requests.message().await, requests.message().await) else {
                    return;
                };
                for (id, ttl) in [(first.id, -1), (second.id, 10)] {
                    let _ = tx.send(Ok(LeaseKeepAliveResponse { id, ttl, header: None })).await;
                }
                while let Ok(Some(_)) = requests.message().await {}
            });
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        }

        async fn lease_time_to_live(
            &self,
            _: tonic::Request<LeaseTimeToLiveRequest>,
        ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("keep-alive only"))
        }

        async fn lease_leases(
            &self,
            _: tonic::Request<LeaseLeasesRequest>,
        ) -> Result<tonic::Response<LeaseLeasesResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("keep-alive only"))
        }
    }

    #[tokio::test]
    async fn a_keepalive_after_one_that_timed_out_skips_the_late_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LeaseServer::new(LateFirstAnswer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = LeaseClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = mpsc::channel(1);
        let replies = client.lease_keep_alive(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut keepalive = KeepAlive { lease: 7, requests: tx, replies, owed: 0 };

        // The server answers the first keep-alive only after the second is sent, so
        // this one gives up whatever the machine's speed, its answer still owed.
        let first = tokio::time::timeout(Duration::from_millis(200), keepalive.renew()).await;
        assert!(first.is_err(), "the first keep-alive was answered: {first:?}");
        assert_eq!(keepalive.owed, 1);

        // The late answer (TTL -1) comes first; taken for the second keep-alive's,
        // it would report the lease expired.
        keepalive.renew().await.expect("the second keep-alive reads its own answer");
        assert_eq!(keepalive.owed, 0);
        server.abort();
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/bench/w/"), b"/bench/w0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
