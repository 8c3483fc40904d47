//! HTTP endpoints for operators, as etcd serves them: `/metrics` (Prometheus text),
//! `/health` (etcd's JSON), `/livez` and `/readyz`. They share the client port with
//! gRPC (HTTP/1.1 and HTTP/2 on one listener) and are also served alone on
//! `--listen-metrics-urls`. [`ObserveLayer`] dispatches them in front of the gRPC
//! services and records per-RPC metrics and slow-request traces.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Frame;
use openraft::ServerState;
use tokio::net::TcpListener;
use tonic::body::Body;
use tower::{Layer, Service};

use super::Api;
use crate::limits::HEALTH_READ_TIMEOUT_MS;
use crate::mvcc::AlarmKind;
use crate::observability::{self, member_label, metrics};
use crate::raft::{NodeId, RaftStatus};
use crate::watch::WatchHub;

const PATH_METRICS: &str = "/metrics";
const PATH_HEALTH: &str = "/health";
const PATH_LIVEZ: &str = "/livez";
const PATH_READYZ: &str = "/readyz";

/// Reads the member's state for the endpoints.
pub struct Observer {
    api: Arc<Api>,
    hub: Arc<WatchHub>,
    /// One scrape at a time: a refresh clears the per-peer gauges before setting
    /// them, which a concurrent scrape must not see.
    scrape: std::sync::Mutex<()>,
}

impl Observer {
    /// Starts counting leader changes and returns the endpoints' state.
    pub fn start(api: Arc<Api>, hub: Arc<WatchHub>) -> Arc<Self> {
        tokio::spawn(count_leader_changes(api.node.status()));
        Arc::new(Observer { api, hub, scrape: std::sync::Mutex::new(()) })
    }

    /// Sets the gauges that are read rather than counted, then encodes every metric.
    pub fn metrics_text(&self) -> String {
        let _one = self.scrape.lock().expect("scrape lock");
        self.refresh();
        metrics().encode()
    }

    fn refresh(&self) {
        let m = metrics();
        let raft = self.api.node.raft.metrics().borrow().clone();
        m.raft.has_leader.set(raft.current_leader.is_some() as i64);
        m.raft.is_leader.set((raft.state == ServerState::Leader) as i64);
        m.raft.is_learner.set((raft.state == ServerState::Learner) as i64);
        m.raft.term.set(raft.current_term as i64);
        let membership = raft.membership_config.membership();
        m.raft.members.with_label_values(&["voter"]).set(membership.voter_ids().count() as i64);
        m.raft.members.with_label_values(&["learner"]).set(membership.learner_ids().count() as i64);
        let last = raft.last_log_index.unwrap_or(0);
        m.raft.last_log_index.set(last as i64);
        m.raft.proposals_applied_total.set(raft.last_applied.map_or(0, |l| l.index) as i64);
        m.raft.peer_replication_lag_entries.reset();
        if let (ServerState::Leader, Some(replication)) = (raft.state, &raft.replication) {
            for (peer, matched) in replication.iter().filter(|(p, _)| **p != raft.id) {
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                m.raft.peer_replication_lag_entries.with_label_values(&[&member_label(*peer)]).set(lag as i64);
            }
        }
        let store = &self.api.store;
        let status = store.status();
        m.mvcc.current_revision.set(status.revision);
        m.mvcc.compact_revision.set(status.compact_revision);
        let (size, in_use) = store.disk_usage();
        m.mvcc.db_total_size_bytes.set(size as i64);
        m.mvcc.db_in_use_bytes.set(in_use as i64);
        m.mvcc.keys_total.set(store.keys_estimate() as i64);
        let (streams, watchers, slow, queued) = self.hub.stats();
        m.watch.streams.set(streams as i64);
        m.watch.watchers.set(watchers as i64);
        m.watch.slow_watchers.set(slow as i64);
        m.watch.pending_messages.set(queued as i64);
        m.lease.active.set(store.read_view().leases().len() as i64);
        let alarms = store.alarms();
        for (kind, name) in [(AlarmKind::NoSpace, "NOSPACE"), (AlarmKind::Corrupt, "CORRUPT")] {
            observability::set_alarm(name, alarms.iter().any(|(_, k)| *k == kind));
        }
    }

    /// `Ok` if the member knows a leader and serves a linearizable read in time;
    /// otherwise why not, in etcd's words where etcd has them. With `serializable`
    /// (etcd's `?serializable=true`), a local read suffices.
    pub async fn health(&self, serializable: bool) -> Result<(), String> {
        let node = &self.api.node;
        if node.leader().is_none() {
            return Err("RAFT NO LEADER".into());
        }
        // As etcd: a raised alarm makes every member unhealthy.
        if let Some((_, kind)) = self.api.store.alarms().into_iter().next() {
            return Err(match kind {
                AlarmKind::NoSpace => "ALARM NOSPACE".into(),
                AlarmKind::Corrupt => "ALARM CORRUPT".into(),
            });
        }
        if serializable {
            let _ = self.api.store.read_view().revision;
            return Ok(());
        }
        let timeout = Duration::from_millis(HEALTH_READ_TIMEOUT_MS);
        match tokio::time::timeout(timeout, node.linearizable_barrier()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("QGET ERROR: linearizable read failed: {e}")),
            Err(_) => Err(format!("QGET ERROR: linearizable read did not finish within {timeout:?}")),
        }
    }

    async fn respond(&self, path: &str, query: &str) -> Response<Body> {
        let serializable = query.split('&').any(|p| p == "serializable=true");
        match path {
            PATH_METRICS => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics_text()),
            PATH_HEALTH => {
                let (status, body) = match self.health(serializable).await {
                    Ok(()) => (StatusCode::OK, serde_json::json!({"health": "true"})),
                    Err(reason) => {
                        tracing::warn!(reason = %reason, "/health error");
                        (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": reason}))
                    }
                };
                text(status, "application/json", body.to_string())
            }
            PATH_LIVEZ => {
                // The process answers and its store serves a local read.
                let _ = self.api.store.read_view().revision;
                text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
            }
            PATH_READYZ => match self.health(false).await {
                Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
                Err(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("[-]linearizable_read failed: {reason}\nreadyz check failed\n"),
                ),
            },
            _ => not_found(),
        }
    }
}

fn is_endpoint(req: &Request<Body>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && matches!(req.uri().path(), PATH_METRICS | PATH_HEALTH | PATH_LIVEZ | PATH_READYZ)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n".into())
}

/// Counts every change of the known leader (to another member or to none and back).
async fn count_leader_changes(mut rx: tokio::sync::watch::Receiver<RaftStatus>) {
    let mut last: Option<NodeId> = None;
    loop {
        let leader = rx.borrow_and_update().leader;
        if leader.is_some() && leader != last {
            metrics().raft.leader_changes_seen_total.inc();
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves only the operator endpoints on `listener` (for `--listen-metrics-urls`).
pub async fn serve_metrics(
    listener: TcpListener,
    observer: Arc<Observer>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let not_found = tower::service_fn(|_: Request<Body>| async { Ok::<_, Infallible>(not_found()) });
    tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(ObserveLayer { observer: Some(observer), role: Role::EndpointsOnly })
        .serve_with_incoming_shutdown(not_found, tokio_stream::wrappers::TcpListenerStream::new(listener), stop)
        .await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The client port: endpoints, gRPC metrics and request traces.
    Client,
    /// The peer port: traces of requests forwarded to this member as leader.
    Peer,
    EndpointsOnly,
}

/// Serves the operator endpoints and observes gRPC calls; see the module docs.
#[derive(Clone)]
pub struct ObserveLayer {
    observer: Option<Arc<Observer>>,
    role: Role,
}

impl ObserveLayer {
    /// For the client port.
    pub fn client(observer: Arc<Observer>) -> Self {
        ObserveLayer { observer: Some(observer), role: Role::Client }
    }

    /// For the peer port.
    pub fn peer() -> Self {
        ObserveLayer { observer: None, role: Role::Peer }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, layer: self.clone() }
    }
}

/// The service [`ObserveLayer`] wraps around the gRPC routes.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(observer) = self.layer.observer.as_ref().filter(|_| is_endpoint(&req)) {
            let observer = observer.clone();
            let (path, query) = (req.uri().path().to_string(), req.uri().query().unwrap_or("").to_string());
            return Box::pin(async move { Ok(observer.respond(&path, &query).await) });
        }
        let path = req.uri().path().to_string();
        match self.layer.role {
            Role::Client => {}
            Role::Peer if TRACED_PEER_PATHS.contains(&path.as_str()) => {
                let call = self.inner.call(req);
                return Box::pin(async move { observability::traced(&path, call).await });
            }
            Role::Peer | Role::EndpointsOnly => return Box::pin(self.inner.call(req)),
        }
        let rpc = RpcLabels::of(&path);
        let labels = [rpc.kind, rpc.service, rpc.method];
        metrics().grpc.started_total.with_label_values(&labels).inc();
        let req = req.map(|body| Body::new(Counted::new(body, Finish::Request { rpc })));
        let call = self.inner.call(req);
        let start = Instant::now();
        Box::pin(async move {
            let response = if rpc.kind == UNARY { observability::traced(&path, call).await? } else { call.await? };
            let code = response.headers().get(GRPC_STATUS).and_then(|v| v.to_str().ok()).map(code_name);
            Ok(response.map(|body| Body::new(Counted::new(body, Finish::Response { rpc, start, code }))))
        })
    }
}

/// Peer calls traced on the leader: requests forwarded by followers.
const TRACED_PEER_PATHS: [&str; 2] = ["/cairn.peer.v1.Peer/Forward", "/cairn.peer.v1.Peer/Lease"];

const GRPC_STATUS: &str = "grpc-status";
const UNARY: &str = "unary";

/// The client RPCs metrics are labelled with; anything else counts as `unknown` so
/// that a client cannot create labels at will.
const KNOWN_RPCS: [(&str, &[&str]); 6] = [
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    ("etcdserverpb.Lease", &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"]),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    (
        "etcdserverpb.Maintenance",
        &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

#[derive(Clone, Copy, Debug)]
struct RpcLabels {
    kind: &'static str,
    service: &'static str,
    method: &'static str,
}

impl RpcLabels {
    fn of(path: &str) -> RpcLabels {
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
        let known = KNOWN_RPCS
            .iter()
            .find(|(s, _)| *s == service)
            .and_then(|(s, methods)| methods.iter().find(|m| **m == method).map(|m| (*s, *m)));
        let Some((service, method)) = known else {
            return RpcLabels { kind: UNARY, service: "unknown", method: "unknown" };
        };
        let kind = match (service, method) {
            ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
            ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
            _ => UNARY,
        };
        RpcLabels { kind, service, method }
    }
}

/// go-grpc-prometheus's name of a numeric gRPC status code.
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>().ok().and_then(|i| NAMES.get(i).copied()).unwrap_or("Unknown")
}

/// What a counted body records when it is dropped.
enum Finish {
    Request { rpc: RpcLabels },
    Response { rpc: RpcLabels, start: Instant, code: Option<&'static str> },
}

/// A body that counts the bytes that pass through it and, on drop, records them
/// (and, for a response, the call's status code and duration).
struct Counted {
    inner: Body,
    bytes: u64,
    ended: bool,
    finish: Finish,
}

impl Counted {
    fn new(inner: Body, finish: Finish) -> Self {
        // An empty body is dropped at once (tonic does not send it): it has ended.
        let ended = http_body::Body::is_end_stream(&inner);
        Counted { inner, bytes: 0, ended, finish }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if let (Some(trailers), Finish::Response { code, .. }) = (frame.trailers_ref(), &mut self.finish) {
                    if let Some(c) = trailers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()) {
                        *code = Some(code_name(c));
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Finish::Response { code, .. } = &mut self.finish {
                    *code = Some(code_name(&(status.code() as i32).to_string()));
                }
            }
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let grpc = &metrics().grpc;
        match &self.finish {
            Finish::Request { rpc } => {
                grpc.request_bytes.with_label_values(&[rpc.service, rpc.method]).observe(self.bytes as f64);
            }
            Finish::Response { rpc, start, code } => {
                let code = code.unwrap_or(if self.ended { "OK" } else { "Canceled" });
                let labels = [rpc.kind, rpc.service, rpc.method];
                grpc.handled_total.with_label_values(&[rpc.kind, rpc.service, rpc.method, code]).inc();
                grpc.handling_seconds.with_label_values(&labels).observe(start.elapsed().as_secs_f64());
                grpc.response_bytes.with_label_values(&[rpc.service, rpc.method]).observe(self.bytes as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_bounded_to_known_methods() {
        let put = RpcLabels::of("/etcdserverpb.KV/Put");
        assert_eq!((put.kind, put.service, put.method), ("unary", "etcdserverpb.KV", "Put"));
        assert_eq!(RpcLabels::of("/etcdserverpb.Watch/Watch").kind, "bidi_stream");
        let odd = RpcLabels::of("/etcdserverpb.KV/Whatever123");
        assert_eq!((odd.service, odd.method), ("unknown", "unknown"));
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("14"), "Unavailable");
        assert_eq!(code_name("99"), "Unknown");
    }
}
