//! Every Prometheus metric a member exports, in one registry. Names follow etcd's
//! (`etcd_disk_wal_fsync_duration_seconds` → `cairn_disk_wal_fsync_duration_seconds`)
//! wherever etcd has one, so that existing dashboards and alerts translate.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label of per-peer metrics: the peer's member ID in hex, as etcd's `To`.
pub const PEER_LABEL: &str = "To";
/// Alarm types the alarm gauge always reports (0 or 1), as etcd's `AlarmType`.
pub const ALARM_TYPES: [&str; 2] = ["NOSPACE", "CORRUPT"];

/// The metrics, grouped as etcd groups them.
pub struct Metrics {
    registry: Registry,
    names: Vec<&'static str>,
    pub disk: Disk,
    pub mvcc: Mvcc,
    pub raft: RaftMetrics,
    pub snapshot: SnapshotMetrics,
    pub network: Network,
    pub grpc: Grpc,
    pub watch: WatchMetrics,
    pub lease: LeaseMetrics,
}

/// Durations of the writes that make data durable.
pub struct Disk {
    /// One observation per fsync of the Raft log (one fsync covers a group of appends).
    pub wal_fsync_seconds: Histogram,
    /// One observation per state-machine batch written to RocksDB (one per applied command).
    pub backend_commit_seconds: Histogram,
    /// 1 while RocksDB stops or slows writes (its write stall), as last checked.
    pub write_stalled: IntGauge,
    /// Write stalls seen to begin.
    pub write_stalls_total: IntCounter,
    /// Time writes were seen held back, in whole check intervals.
    pub write_stall_seconds_total: Counter,
}

/// The key space.
pub struct Mvcc {
    pub db_total_size_bytes: IntGauge,
    pub db_in_use_bytes: IntGauge,
    pub keys_total: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
}

/// Raft state and proposals.
pub struct RaftMetrics {
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    /// Members in the current configuration, by role (`voter`, `learner`).
    pub members: IntGaugeVec,
    pub leader_changes_seen_total: IntCounter,
    pub term: IntGauge,
    pub last_log_index: IntGauge,
    /// etcd's name; a gauge holding the commit index.
    pub proposals_committed_total: IntGauge,
    /// etcd's name; a gauge holding the applied index.
    pub proposals_applied_total: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed_total: IntCounter,
    /// On the leader: log entries each peer lacks (last log index − peer's matched index).
    pub peer_replication_lag_entries: IntGaugeVec,
    /// Durations of applying one log entry to the state machine.
    pub apply_duration_seconds: Histogram,
    pub slow_apply_total: IntCounter,
    pub slow_request_total: IntCounter,
    /// Active alarms by type (1 active, 0 not).
    pub alarms: IntGaugeVec,
}

/// Raft snapshots.
pub struct SnapshotMetrics {
    pub build_seconds: Histogram,
    pub build_bytes: Histogram,
    pub send_seconds: Histogram,
    pub send_bytes_total: IntCounter,
    pub install_seconds: Histogram,
    pub install_bytes: Histogram,
}

/// Calls to other members.
pub struct Network {
    /// Calls that failed: refused, unreachable, timed out, or abandoned.
    pub peer_sent_failures_total: IntCounterVec,
    /// Round trips of heartbeats (AppendEntries without entries).
    pub peer_round_trip_time_seconds: HistogramVec,
    /// Requests this member sent to the leader instead of serving them itself.
    pub forwarded_total: IntCounterVec,
    /// On the leader: followers' ReadIndex requests, by how the leadership was
    /// confirmed (`request`: by the request itself; `round`: by a quorum round).
    pub read_index_served_total: IntCounterVec,
}

/// Client requests, with go-grpc-prometheus's names and labels.
pub struct Grpc {
    pub started_total: IntCounterVec,
    pub handled_total: IntCounterVec,
    pub handling_seconds: HistogramVec,
    pub request_bytes: HistogramVec,
    pub response_bytes: HistogramVec,
}

/// Watch streams and watchers.
pub struct WatchMetrics {
    pub streams: IntGauge,
    pub watchers: IntGauge,
    /// Watchers behind the head, catching up from history (etcd's slow watchers).
    pub slow_watchers: IntGauge,
    pub events_sent_total: IntCounter,
    /// Messages queued on watch streams, not yet taken by their clients.
    pub pending_messages: IntGauge,
}

/// Leases.
pub struct LeaseMetrics {
    pub active: IntGauge,
    pub granted_total: IntCounter,
    pub revoked_total: IntCounter,
    pub expired_total: IntCounter,
    pub renewed_total: IntCounter,
}

/// The member's metrics; registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    /// The Prometheus text exposition of every metric, process metrics included.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding metrics into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The name of every metric family Cairn defines (process metrics aside).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    fn new() -> Metrics {
        let r = &mut Names { registry: Registry::new(), names: Vec::new() };
        #[cfg(target_os = "linux")]
        r.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registering process metrics");
        let latency = || exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
        let sizes = || exponential_buckets(64.0, 4.0, 12).expect("valid buckets");
        let slow = || exponential_buckets(0.1, 2.0, 10).expect("valid buckets");
        let rtt = || exponential_buckets(0.0001, 2.0, 16).expect("valid buckets");
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_method = ["grpc_service", "grpc_method"];
        let m = Metrics {
            disk: Disk {
                wal_fsync_seconds: histogram(
                    r,
                    "cairn_disk_wal_fsync_duration_seconds",
                    "Latency of the Raft log fsyncs (one per group commit).",
                    latency(),
                ),
                backend_commit_seconds: histogram(
                    r,
                    "cairn_disk_backend_commit_duration_seconds",
                    "Latency of state-machine batch writes to RocksDB.",
                    latency(),
                ),
                write_stalled: gauge(
                    r,
                    "cairn_disk_write_stalled",
                    "1 while RocksDB stops or slows writes (a write stall: flushes or compactions behind), as last checked.",
                ),
                write_stalls_total: counter(r, "cairn_disk_write_stalls_total", "RocksDB write stalls seen to begin."),
                write_stall_seconds_total: float_counter(
                    r,
                    "cairn_disk_write_stall_seconds_total",
                    "Time RocksDB was seen stopping or slowing writes, in whole intervals of the stall guard's checks.",
                ),
            },
            mvcc: Mvcc {
                db_total_size_bytes: gauge(
                    r,
                    "cairn_mvcc_db_total_size_in_bytes",
                    "Bytes the member database takes on disk.",
                ),
                db_in_use_bytes: gauge(
                    r,
                    "cairn_mvcc_db_total_size_in_use_in_bytes",
                    "Bytes of live data in the member database (RocksDB's estimate).",
                ),
                keys_total: gauge(r, "cairn_debugging_mvcc_keys_total", "Live keys (RocksDB's estimate)."),
                current_revision: gauge(r, "cairn_mvcc_current_revision", "Revision of the key space."),
                compact_revision: gauge(r, "cairn_mvcc_compact_revision", "Revision up to which history is compacted."),
            },
            raft: RaftMetrics {
                has_leader: gauge(r, "cairn_server_has_leader", "1 if the member knows a leader, else 0."),
                is_leader: gauge(r, "cairn_server_is_leader", "1 if the member is the leader, else 0."),
                is_learner: gauge(r, "cairn_server_is_learner", "1 if the member is a learner, else 0."),
                members: gauge_vec(
                    r,
                    "cairn_cluster_members",
                    "Members in the current Raft configuration, by role.",
                    &["role"],
                ),
                leader_changes_seen_total: counter(
                    r,
                    "cairn_server_leader_changes_seen_total",
                    "Leader changes this member has seen since it started.",
                ),
                term: gauge(r, "cairn_server_term", "Current Raft term."),
                last_log_index: gauge(r, "cairn_server_last_log_index", "Index of the last entry in the Raft log."),
                proposals_committed_total: gauge(
                    r,
                    "cairn_server_proposals_committed_total",
                    "Raft commit index (the number of committed entries).",
                ),
                proposals_applied_total: gauge(
                    r,
                    "cairn_server_proposals_applied_total",
                    "Raft applied index (the number of applied entries).",
                ),
                proposals_pending: gauge(
                    r,
                    "cairn_server_proposals_pending",
                    "Client writes received by this member and not answered yet.",
                ),
                proposals_failed_total: counter(
                    r,
                    "cairn_server_proposals_failed_total",
                    "Client writes that failed in Raft (no leader, timeout, leader change).",
                ),
                peer_replication_lag_entries: gauge_vec(
                    r,
                    "cairn_server_peer_replication_lag_entries",
                    "On the leader: log entries a peer has not acknowledged yet.",
                    &[PEER_LABEL],
                ),
                apply_duration_seconds: histogram(
                    r,
                    "cairn_server_apply_duration_seconds",
                    "Time to apply one committed entry to the state machine.",
                    latency(),
                ),
                slow_apply_total: counter(
                    r,
                    "cairn_server_slow_apply_total",
                    "Entries whose apply took longer than --warning-apply-duration.",
                ),
                slow_request_total: counter(
                    r,
                    "cairn_server_slow_requests_total",
                    "Unary requests that took longer than --warning-unary-request-duration.",
                ),
                alarms: gauge_vec(
                    r,
                    "cairn_server_alarms",
                    "Active alarms by type (1 active, 0 not).",
                    &["alarm_type"],
                ),
            },
            snapshot: SnapshotMetrics {
                build_seconds: histogram(
                    r,
                    "cairn_snap_build_duration_seconds",
                    "Time to build a Raft snapshot.",
                    slow(),
                ),
                build_bytes: histogram(r, "cairn_snap_build_bytes", "Size of built Raft snapshots.", sizes()),
                send_seconds: histogram(
                    r,
                    "cairn_snap_send_duration_seconds",
                    "Time of one snapshot transfer call to a peer.",
                    slow(),
                ),
                send_bytes_total: counter(r, "cairn_snap_sent_bytes_total", "Snapshot bytes sent to peers."),
                install_seconds: histogram(
                    r,
                    "cairn_snap_install_duration_seconds",
                    "Time to install a snapshot received from the leader.",
                    slow(),
                ),
                install_bytes: histogram(r, "cairn_snap_install_bytes", "Size of installed snapshots.", sizes()),
            },
            network: Network {
                peer_sent_failures_total: counter_vec(
                    r,
                    "cairn_network_peer_sent_failures_total",
                    "Calls to a peer that failed (refused, unreachable or timed out).",
                    &[PEER_LABEL],
                ),
                peer_round_trip_time_seconds: histogram_vec(
                    r,
                    "cairn_network_peer_round_trip_time_seconds",
                    "Round-trip time of heartbeats to a peer.",
                    &[PEER_LABEL],
                    rtt(),
                ),
                forwarded_total: counter_vec(
                    r,
                    "cairn_server_forwarded_requests_total",
                    "Calls to the leader for requests not served here, by kind (Forward, Lease, ReadIndex); one Forward call carries a batch of writes, one ReadIndex call serves every read waiting for it.",
                    &["type"],
                ),
                read_index_served_total: counter_vec(
                    r,
                    "cairn_server_read_index_served_total",
                    "On the leader: followers' ReadIndex requests answered, by how leadership was confirmed (request: the follower's request counted as its confirmation; round: a quorum round).",
                    &["confirmed_by"],
                ),
            },
            grpc: Grpc {
                started_total: counter_vec(r, "grpc_server_started_total", "RPCs started on the server.", &grpc_labels),
                handled_total: counter_vec(
                    r,
                    "grpc_server_handled_total",
                    "RPCs completed on the server, by status code.",
                    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                ),
                handling_seconds: histogram_vec(
                    r,
                    "grpc_server_handling_seconds",
                    "Time from receiving an RPC to its last response byte (the whole stream for streams).",
                    &grpc_labels,
                    prometheus::DEFAULT_BUCKETS.to_vec(),
                ),
                request_bytes: histogram_vec(
                    r,
                    "cairn_grpc_server_request_bytes",
                    "Bytes received per RPC (the whole stream for streams).",
                    &grpc_method,
                    sizes(),
                ),
                response_bytes: histogram_vec(
                    r,
                    "cairn_grpc_server_response_bytes",
                    "Bytes sent per RPC (the whole stream for streams).",
                    &grpc_method,
                    sizes(),
                ),
            },
            watch: WatchMetrics {
                streams: gauge(r, "cairn_debugging_mvcc_watch_stream_total", "Open watch streams."),
                watchers: gauge(r, "cairn_debugging_mvcc_watcher_total", "Watchers."),
                slow_watchers: gauge(
                    r,
                    "cairn_debugging_mvcc_slow_watcher_total",
                    "Watchers behind the head, catching up from history.",
                ),
                events_sent_total: counter(r, "cairn_debugging_mvcc_events_total", "Events sent to watchers."),
                pending_messages: gauge(
                    r,
                    "cairn_debugging_mvcc_pending_events_total",
                    "Watch messages queued for clients that have not taken them yet.",
                ),
            },
            lease: LeaseMetrics {
                active: gauge(r, "cairn_lease_active", "Granted leases not yet revoked or expired."),
                granted_total: counter(r, "cairn_debugging_lease_granted_total", "Leases granted through this member."),
                revoked_total: counter(r, "cairn_debugging_lease_revoked_total", "Leases revoked through this member."),
                expired_total: counter(r, "cairn_lease_expired_total", "Leases this member expired as the leader."),
                renewed_total: counter(
                    r,
                    "cairn_debugging_lease_renewed_total",
                    "Keep-alives received by this member.",
                ),
            },
            registry: r.registry.clone(),
            names: std::mem::take(&mut r.names),
        };
        for alarm in ALARM_TYPES {
            m.raft.alarms.with_label_values(&[alarm]).set(0);
        }
        m
    }
}

/// The registry, and the names registered in it.
struct Names {
    registry: Registry,
    names: Vec<&'static str>,
}

impl Names {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&mut self, name: &'static str, c: C) -> C {
        self.registry.register(Box::new(c.clone())).expect("unique metric");
        self.names.push(name);
        c
    }
}

fn gauge(r: &mut Names, name: &'static str, help: &str) -> IntGauge {
    r.add(name, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(r: &mut Names, name: &'static str, help: &str, labels: &[&str]) -> IntGaugeVec {
    r.add(name, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn counter(r: &mut Names, name: &'static str, help: &str) -> IntCounter {
    r.add(name, IntCounter::new(name, help).expect("valid metric"))
}

fn float_counter(r: &mut Names, name: &'static str, help: &str) -> Counter {
    r.add(name, Counter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &mut Names, name: &'static str, help: &str, labels: &[&str]) -> IntCounterVec {
    r.add(name, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(r: &mut Names, name: &'static str, help: &str, buckets: Vec<f64>) -> Histogram {
    r.add(name, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
}

fn histogram_vec(r: &mut Names, name: &'static str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    r.add(name, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_and_encodes() {
        let m = metrics();
        m.disk.wal_fsync_seconds.observe(0.002);
        m.raft.has_leader.set(1);
        let text = m.encode();
        for name in [
            "cairn_disk_wal_fsync_duration_seconds_count",
            "cairn_server_has_leader 1",
            "cairn_server_alarms{alarm_type=\"NOSPACE\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
