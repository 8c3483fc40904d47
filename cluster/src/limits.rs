//! Every bound and default cairnctl applies, in one place.

/// `cluster health`: applied-index lag (entries) behind the leader above which a
/// member is reported as lagging.
pub const HEALTH_LAG_ENTRIES_MAX: u64 = 1000;

/// `txn`: longest input line accepted (bytes); longer input is a grammar error
/// rather than an unbounded allocation.
pub const TXN_LINE_BYTES_MAX: usize = 1 << 20;

/// `txn`: most compares or requests in one section (etcd's default `--max-txn-ops`).
pub const TXN_SECTION_OPS_MAX: usize = 128;

/// `put`: largest value read from stdin (etcd's default request size limit is 1.5 MiB).
pub const STDIN_VALUE_BYTES_MAX: u64 = 2 << 20;

/// `check perf`: latency (ms) at the 99th percentile above which the run fails.
pub const PERF_P99_MS_MAX: u64 = 500;

/// `check perf`: share (percent) of the load's target throughput a run must reach.
pub const PERF_THROUGHPUT_PERCENT_MIN: u64 = 90;

/// `check perf`: size of each value written (bytes).
pub const PERF_VALUE_BYTES: usize = 256;

/// `check perf`: latencies above this (ms) are clamped into the histogram's top bucket.
pub const PERF_LATENCY_MS_TRACKED_MAX: u64 = 60_000;

/// `check perf`: distinct keys the load writes (round-robin), so that the run
/// measures writes and not the growth of one key's history.
pub const PERF_KEYS: u64 = 1000;

/// `watch -- command`: longest a per-event command may run before it is killed.
pub const WATCH_COMMAND_SECONDS_MAX: u64 = 60;

/// `watch`, `lease keep-alive`: attempts to reopen a broken stream (each on the
/// next member) before giving up.
pub const STREAM_REOPEN_ATTEMPTS_MAX: u32 = 20;
