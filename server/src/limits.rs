//! Every bound Cairn enforces, with its unit in the name and the qualifier last.
//!
//! Limits that operators may change are the defaults of settings in
//! [`crate::config`]; the rest are fixed here so that no queue, batch or
//! request is unbounded.

/// Largest request a client may send, as etcd's `--max-request-bytes` (1.5 MiB).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1536 * 1024;

/// Extra room the gRPC decoder allows above `request_bytes_max`, so that a request
/// just over the limit is decoded and answered with etcd's "request is too large"
/// instead of a transport error (etcd allows the same 512 KiB).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Most compares, and most operations per branch, in one Txn (etcd's `--max-txn-ops`).
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// Deepest nesting of Txn inside Txn; bounds recursion on input.
pub const TXN_DEPTH_MAX: usize = 16;

/// Largest gRPC response a member sends (etcd's default send limit is effectively unlimited;
/// ours is bounded).
pub const RESPONSE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Most concurrent gRPC streams (requests in flight) on one client connection.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// How long a client request may wait for Raft (commit, forward, read index).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 7_000;

/// Raft heartbeat interval (etcd's `--heartbeat-interval`).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;

/// Raft election timeout (etcd's `--election-timeout`); openraft randomises between
/// this and twice this.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;

/// Applied entries between two Raft snapshots (etcd's `--snapshot-count`).
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 100_000;

/// Log entries kept behind a snapshot so a slightly slow follower catches up from the
/// log rather than a snapshot (etcd's `--experimental-snapshot-catchup-entries`).
pub const SNAPSHOT_CATCHUP_ENTRIES_DEFAULT: u64 = 5_000;

/// Most log entries sent in one AppendEntries RPC.
pub const APPEND_ENTRIES_MAX: u64 = 1_024;

/// Most batches of client commands proposed to Raft and not yet applied at once, on
/// the leader. openraft 0.9 appends one entry at a time and waits for its fsync before
/// it takes the next request, so every proposal costs one fsync on the leader's
/// critical path; commands that arrive while this many batches are in flight (or
/// while one is, for less than [`PROPOSAL_EXTRA_SLOT_AFTER_MS`]) wait and go
/// together in the next one.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;

/// How long the batch of proposals in flight must have been out before a second one
/// may join it. A Raft entry costs every member work of its own, so under load fewer,
/// larger entries leave more CPU to the commands; but with one batch in flight and
/// no more, a slow round (an fsync behind a RocksDB flush) holds up every write
/// behind it. Measured against two batches at once (puts, 64 clients, closed loop,
/// four alternating pairs): 2 ms gave +8.6% puts, 5 ms +13%; but at 5 ms the p99 of
/// puts at half etcd's peak rose above etcd's in two of three rounds of `compare`
/// (1.40× over the rounds), at 2 ms it stayed below (0.77× and 0.83× in two
/// compares; benches/RESULTS.md, eleventh session).
pub const PROPOSAL_EXTRA_SLOT_AFTER_MS: u64 = 2;

/// Most batches of writes a follower has forwarded to the leader and not yet had
/// answered; writes that arrive meanwhile go together in the next peer call. The
/// leader batches what it receives again. 2, 4 and 8 measured the same (put, 64
/// clients closed loop and 3,455/s open loop).
pub const FORWARDS_IN_FLIGHT_MAX: usize = 2;

/// Most client commands in one Raft entry.
pub const PROPOSAL_BATCH_COMMANDS_MAX: usize = 1_024;

/// Most bytes (encoded) of client commands in one Raft entry; a single larger
/// command (up to the request limit) still goes alone.
pub const PROPOSAL_BATCH_BYTES_MAX: u64 = 1024 * 1024;

/// Most bytes of log entries sent in one AppendEntries RPC (a single larger entry is
/// still sent alone). openraft gives each AppendEntries one heartbeat interval, so a
/// batch must encode, travel and be appended well within it.
pub const APPEND_ENTRIES_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// Largest encoded request a member sends to a peer over the peer's pipe (one stream
/// shared by many small calls); a larger one goes as a call of its own, so that it
/// holds up no small call behind it.
pub const PIPE_PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Replies of one pipe that may wait to be sent before the calls that made them
/// wait too.
pub const PIPE_REPLIES_QUEUED_MAX: usize = 1024;

/// Bytes of snapshot sent in one InstallSnapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// zstd level of the store export in snapshot files: the fastest, which still
/// shrinks a typical export several times.
pub const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

/// Bytes of state written per RocksDB batch while a snapshot is imported, so that
/// installing a snapshot of any size takes bounded memory.
pub const SNAPSHOT_IMPORT_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How long one InstallSnapshot RPC may take. The last chunk's RPC also covers the
/// receiver importing the whole snapshot, so this is generous.
pub const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 300_000;

/// Most learners at once (etcd's default `--max-learners`).
pub const LEARNERS_MAX: usize = 1;

/// A learner may be promoted once its log reaches this share (in percent) of the
/// leader's (etcd's rule).
pub const LEARNER_READY_PERCENT: u64 = 90;

/// How long the leader waits for a member to answer a liveness probe before a
/// membership change.
pub const MEMBER_PROBE_TIMEOUT_MS: u64 = 1_000;

/// How often the leader looks for new voters (added as learners) that have caught up.
pub const PENDING_VOTER_CHECK_INTERVAL_MS: u64 = 500;

/// How long a leadership transfer waits for the target to catch up with the log.
pub const LEADER_TRANSFER_CATCHUP_MS_MAX: u64 = 5_000;

/// Default database size quota (etcd's `--quota-backend-bytes` defaults to 2 GiB;
/// RocksDB reclaims space in the background, so Cairn allows more).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 8 * 1024 * 1024 * 1024;

/// Default interval of the leader's cross-member hash comparison.
pub const CORRUPT_CHECK_INTERVAL_MS_DEFAULT: u64 = 300_000;

/// Bytes per message when a backup (Maintenance.Snapshot) is streamed to a client.
pub const BACKUP_STREAM_CHUNK_BYTES: usize = 1024 * 1024;

/// How long the database size measured for the quota check is reused.
pub const QUOTA_CHECK_INTERVAL_MS: u64 = 100;

/// Most pending log flushes merged into one fsync by the group committer.
pub const LOG_FLUSH_BATCH_MAX: usize = 4_096;

/// History entries deleted per RocksDB write batch by the background compactor.
pub const COMPACTION_BATCH_KEYS_MAX: usize = 10_000;

/// Peer RPC timeout for a forwarded write or a read-index request; Raft RPCs use
/// openraft's own per-RPC timeouts.
pub const PEER_FORWARD_TIMEOUT_MS: u64 = 10_000;

/// Bounded wait for a leader before a request is answered "no leader".
pub const LEADER_WAIT_MS_MAX: u64 = 5_000;

/// Bound on one attempt to publish a member's name and client URLs, in election
/// timeouts; a slower attempt is abandoned and the next one starts.
pub const PUBLISH_ATTEMPT_ELECTION_TIMEOUTS: u64 = 3;

/// Times a follower re-forwards a request whose target stopped being leader.
pub const FORWARD_ATTEMPTS_MAX: usize = 5;

/// Lease reads are served only while the last quorum acknowledgement is younger than
/// this fraction (in percent) of the minimum election timeout, to leave room for
/// clock-rate drift between members.
pub const LEASE_READ_ELECTION_FRACTION_PERCENT: u64 = 70;

/// Most memory the applier's cache of recently written live keys takes (their create
/// revision, version and lease, so that a put need not read them from RocksDB).
/// About 150k keys of 32 bytes; a key beyond it is read from RocksDB.
pub const LIVE_KEY_CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Revisions the store's change feed holds for a subscriber that has not read them
/// yet; one that falls further behind catches up from stored history instead.
pub const CHANGE_FEED_REVISIONS_MAX: usize = 4_096;

/// Messages a watch stream buffers for its client; a watcher whose stream is full
/// is moved to catch up from stored history instead of holding events in memory.
pub const WATCH_STREAM_BUFFER_MESSAGES: usize = 64;

/// Most events in one catch-up message to a watcher (whole revisions only, so a
/// single large revision may exceed it).
pub const WATCH_CATCHUP_EVENTS_MAX: usize = 1_000;

/// Most watchers brought forward in one catch-up round.
pub const WATCH_CATCHUP_WATCHERS_PER_ROUND_MAX: usize = 256;

/// Pause between catch-up rounds while some watcher is still behind.
pub const WATCH_CATCHUP_INTERVAL_MS: u64 = 50;

/// Default interval of progress notifications for watchers that ask for them
/// (etcd's `--experimental-watch-progress-notify-interval`).
pub const WATCH_PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT: u64 = 600_000;

/// Largest lease TTL a client may ask for (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;

/// A granted TTL below this share (in percent) of the election timeout is raised to
/// it, as etcd does: a lease must outlive the election that a leader change takes.
pub const LEASE_TTL_MIN_ELECTION_TIMEOUT_PERCENT: u64 = 150;

/// The shortest lease TTL granted: 1.5 election timeouts, rounded up to whole seconds
/// (2 s with the default election timeout, as etcd's).
pub fn lease_ttl_seconds_min(election_timeout_ms: u64) -> i64 {
    (election_timeout_ms * LEASE_TTL_MIN_ELECTION_TIMEOUT_PERCENT).div_ceil(100 * 1000) as i64
}

/// How often the leader commits the remaining TTL of its leases through Raft, so that
/// a leader change does not start them over (`--lease-checkpoint-interval`).
pub const LEASE_CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// How often the leader looks for expired leases (etcd's revoke loop runs every 500 ms).
pub const LEASE_EXPIRY_TICK_MS: u64 = 500;

/// Expired leases revoked per tick of the expiry loop; more wait for the next tick
/// (etcd revokes at most 1,000 per second).
pub const LEASE_REVOKES_PER_TICK_MAX: usize = 500;

/// Leases in one checkpoint command (etcd's `maxLeaseCheckpointBatchSize`). With more
/// leases, each checkpoint round takes the next batch in ID order.
pub const LEASE_CHECKPOINT_BATCH_MAX: usize = 1_000;

/// Keep-alive responses queued for one client stream before the server stops reading
/// its requests.
pub const LEASE_KEEPALIVE_RESPONSES_PENDING_MAX: usize = 16;

/// Random IDs tried for a lease granted with ID 0 before giving up.
pub const LEASE_ID_ATTEMPTS_MAX: usize = 8;

/// Default for `--warning-apply-duration`: applying one entry for longer logs a
/// slow-apply trace (etcd's default).
pub const WARNING_APPLY_DURATION_MS_DEFAULT: u64 = 100;

/// Default for `--warning-unary-request-duration`: a client request that takes
/// longer logs its steps.
pub const WARNING_UNARY_REQUEST_DURATION_MS_DEFAULT: u64 = 1_000;

/// How long `/health` and `/readyz` wait for a linearizable read (ReadIndex).
pub const HEALTH_READ_TIMEOUT_MS: u64 = 2_000;

/// Apply timings kept so that a request trace can find when its entry was applied.
pub const APPLY_TIMINGS_KEPT: usize = 4_096;
