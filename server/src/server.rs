//! Wires a member together: storage, identity, Raft, and the client and peer gRPC
//! servers; runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use cairn_proto::coalesce::CoalescedWrites;
use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::etcdserverpb::watch_server::WatchServer;
use cairn_proto::peer::peer_server::PeerServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{
    serve_metrics, Api, ApiLimits, ClusterService, KvService, LeaseService, LenientAuthority, MaintenanceService,
    ObserveLayer, Observer, UnimplementedLayer, WatchService,
};
use crate::bootstrap;
use crate::config::{url_authority, ClusterState, Config};
use crate::lease::{LeaseSettings, Lessor};
use crate::limits::{CLIENT_STREAMS_PER_CONNECTION_MAX, GRPC_OVERHEAD_BYTES, RESPONSE_BYTES_MAX};
use crate::mvcc::KvStore;
use crate::observability::{self, TraceSettings};
use crate::raft::{PeerService, RaftNode};
use crate::schema;
use crate::watch::WatchHub;

/// The RocksDB directory inside a data directory.
pub const DB_DIR: &str = "db";
/// The Raft snapshot (and backup scratch) directory inside a data directory.
pub const SNAPSHOT_DIR: &str = "snap";

/// Runs a member until it is asked to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    check_data_dir(dir)?;
    observability::configure(TraceSettings {
        apply_warn: config.warning_apply_duration,
        request_warn: config.warning_unary_request_duration,
    });
    let db =
        schema::open_db(&dir.join(DB_DIR)).with_context(|| format!("opening the database in {}", dir.display()))?;
    schema::spawn_stall_guard(Arc::downgrade(&db)).context("starting the write stall guard")?;
    let joined = if bootstrap::must_join(&db, &config)? { Some(bootstrap::discover(&config).await?) } else { None };
    let (identity, fresh) = bootstrap::load_or_create(&db, dir, &config, joined)?;
    let store = KvStore::open(db.clone());
    let settings = config.raft.clone();
    let node =
        RaftNode::start(identity.member_id, identity.cluster_id, db, store.clone(), dir.join(SNAPSHOT_DIR), settings)
            .await
            .context("starting raft")?;
    let lease_settings = LeaseSettings {
        checkpoint_interval: config.lease_checkpoint_interval,
        election_timeout: std::time::Duration::from_millis(config.raft.election_timeout_ms),
        request_timeout: config.raft.request_timeout,
    };
    let lessor = Lessor::new(node.clone(), store.clone(), lease_settings);
    // Listen before forming the cluster, so that peers' first messages find us.
    let peer_listeners = bind_all(&config.listen_peer_urls).await?;
    let client_listeners = bind_all(&config.listen_client_urls).await?;
    let metrics_listeners = bind_all(&config.listen_metrics_urls).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for listener in peer_listeners {
        let peer = PeerServer::new(PeerService::new(node.clone(), lessor.clone(), stop_rx.clone()))
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let router = tonic::transport::Server::builder().layer(ObserveLayer::peer()).add_service(peer);
        servers.push(tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), stopped(stop_rx.clone()))));
    }
    // A new member of a new cluster forms it (also after a crash between creating
    // its identity and forming the cluster); a joining member waits for the leader.
    let formed = node.raft.is_initialized().await.context("reading raft state")?;
    if !formed && config.initial_cluster_state == ClusterState::New {
        node.bootstrap(bootstrap::initial_members(&config)).await.context("forming the cluster")?;
    }
    // Like etcd, serve clients once this member's name and client URLs are
    // published, so that a member list read anywhere names them; bounded, so that a
    // member without a quorum still serves what it can (publishing goes on).
    let mut publishing = tokio::spawn(node.clone().publish(config.name.clone(), config.advertise_client_urls.clone()));
    if tokio::time::timeout(config.raft.request_timeout, &mut publishing).await.is_err() {
        tracing::warn!("could not publish this member's name and client URLs yet; serving clients meanwhile");
    }
    if let Some(interval) = config.corrupt_check_interval {
        tokio::spawn(node.clone().check_corruption(interval));
    }
    let limits = ApiLimits {
        request_bytes_max: config.request_bytes_max,
        txn_ops_max: config.txn_ops_max,
        request_timeout: config.raft.request_timeout,
        quota_backend_bytes: config.quota_backend_bytes,
    };
    let hub = WatchHub::start(store.clone(), config.watch_progress_notify_interval);
    let api = Api::new(node.clone(), store, limits, dir.join(SNAPSHOT_DIR));
    let lessor_task = tokio::spawn(lessor.clone().run(stop_rx.clone()));
    let observer = Observer::start(api.clone(), hub.clone());
    for listener in metrics_listeners {
        servers.push(tokio::spawn(serve_metrics(listener, observer.clone(), stopped(stop_rx.clone()))));
    }
    for listener in client_listeners {
        let kv = KvServer::new(KvService::new(api.clone()))
            .max_decoding_message_size(config.request_bytes_max + GRPC_OVERHEAD_BYTES)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let maintenance =
            MaintenanceServer::new(MaintenanceService::new(api.clone())).max_encoding_message_size(RESPONSE_BYTES_MAX);
        let cluster = ClusterServer::new(ClusterService::new(api.clone()));
        let watch = WatchServer::new(WatchService::new(api.clone(), hub.clone()))
            .max_encoding_message_size(RESPONSE_BYTES_MAX)
            .max_decoding_message_size(config.request_bytes_max + GRPC_OVERHEAD_BYTES);
        let lease = LeaseServer::new(LeaseService::new(api.clone(), lessor.clone()));
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(CLIENT_STREAMS_PER_CONNECTION_MAX))
            // HTTP/1.1 too, for /metrics, /health, /livez and /readyz next to gRPC.
            .accept_http1(true)
            .layer(ObserveLayer::client(observer.clone()))
            .layer(UnimplementedLayer)
            .add_service(kv)
            .add_service(watch)
            .add_service(lease)
            .add_service(maintenance)
            .add_service(cluster);
        // etcdctl's per-endpoint commands send URLs as :authority, which h2 refuses.
        let connections = incoming(listener).map(|conn| conn.map(LenientAuthority::new));
        servers.push(tokio::spawn(router.serve_with_incoming_shutdown(connections, stopped(stop_rx.clone()))));
    }
    tracing::info!(
        name = %config.name,
        member = format_args!("{:x}", identity.member_id),
        cluster = format_args!("{:x}", identity.cluster_id),
        clients = %config.listen_client_urls.join(","),
        peers = %config.listen_peer_urls.join(","),
        metrics = %config.listen_metrics_urls.join(","),
        new = fresh,
        "serving"
    );
    let mut removed = node.removed();
    let stop = tokio::select! {
        _ = wait_for_signal() => Stop::Asked,
        _ = removed.wait_for(|r| *r) => Stop::Removed,
        fatal = raft_failure(&node) => Stop::RaftFailed(fatal),
    };
    match &stop {
        Stop::Asked => tracing::info!("stopping"),
        Stop::Removed => tracing::error!("this member was removed from the cluster; stopping (a removed member cannot rejoin: add a new member with an empty data directory)"),
        Stop::RaftFailed(fatal) => tracing::error!(error = %fatal, "raft stopped on a fatal error; stopping (a restart recovers from the durable log and state)"),
    }
    let _ = stop_tx.send(true);
    for server in servers {
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "a gRPC server stopped with an error");
        }
    }
    let _ = lessor_task.await;
    stop_raft(&node).await;
    match stop {
        Stop::Asked => Ok(()),
        Stop::Removed => bail!("member {:x} was removed from the cluster", identity.member_id),
        Stop::RaftFailed(fatal) => bail!("member {:x}: raft stopped: {fatal}", identity.member_id),
    }
}

/// Why a member stops.
enum Stop {
    /// SIGINT or SIGTERM.
    Asked,
    /// The cluster removed this member.
    Removed,
    /// openraft stopped on a fatal error (a storage error, for one); the process
    /// exits rather than go on serving without Raft.
    RaftFailed(String),
}

/// Resolves once openraft's core has stopped on a fatal error.
async fn raft_failure(node: &Arc<RaftNode>) -> String {
    let mut status = node.status();
    let failed = match status.wait_for(|s| s.failed.is_some()).await {
        Ok(s) => s.failed.clone().unwrap_or_default(),
        Err(_) => "raft's core ended".to_string(),
    };
    failed
}

async fn stop_raft(node: &Arc<RaftNode>) {
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
}

/// A data directory is either new, empty, or one Cairn created.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading the data directory {}", dir.display()))?;
    let has_db = dir.join(DB_DIR).is_dir();
    if !has_db && entries.next().is_some() {
        bail!(
            "data directory {} is not empty and holds no Cairn database; refusing to use it (choose an empty or new directory)",
            dir.display()
        );
    }
    Ok(())
}

async fn bind_all(urls: &[String]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for url in urls {
        let authority = url_authority(url);
        let addr: SocketAddr = match authority.parse() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(authority)
                .await
                .with_context(|| format!("resolving {url}"))?
                .next()
                .with_context(|| format!("{url} resolves to no address"))?,
        };
        listeners.push(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {url}"))?);
    }
    Ok(listeners)
}

/// Accepted connections, without Nagle's delay, their small frames written together
/// and a flush's first write held back for one pass through the run queue, so that
/// answers completed with it can join it (see [`CoalescedWrites::server`]).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<CoalescedWrites<tokio::net::TcpStream>>> + Send + 'static {
    TcpListenerStream::new(listener).map(|conn| {
        conn.map(|stream| {
            let _ = stream.set_nodelay(true);
            CoalescedWrites::server(stream)
        })
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
