//! Every RocksDB column family and key encoding Cairn stores, in one place.
//!
//! One RocksDB instance per member holds both the Raft log and the state machine, so
//! that both share one write-ahead log: an fsync of the log also makes every state
//! machine write before it durable.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Env, Options, DB};

/// Raft log entries: `log_key(index)` → bincode `Entry`.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Raft hard state: vote, committed and purged log ids.
pub const CF_RAFT_STATE: &str = "raft_state";
/// Live keys at the current revision: user key → bincode `KvRecord`.
pub const CF_KV: &str = "kv";
/// Every version of every key: `history_key(key, rev)` → bincode `Option<KvRecord>`
/// (`None` is a tombstone). Newest version of a key first.
pub const CF_HISTORY: &str = "kv_history";
/// Changes in revision order: `event_key(rev, sub)` → user key.
pub const CF_EVENTS: &str = "kv_events";
/// State machine metadata, written in the same batch as the data it describes.
pub const CF_META: &str = "sm_meta";
/// This member's identity: cluster id, member id, name.
pub const CF_IDENTITY: &str = "identity";
/// Granted leases: `lease_key(id)` → bincode `LeaseRecord` (granted TTL, last
/// checkpointed remaining TTL).
pub const CF_LEASES: &str = "leases";
/// Keys attached to each lease: `lease_attachment_key(id, user key)` → empty.
pub const CF_LEASE_KEYS: &str = "lease_keys";

/// Column families that make up the state machine, and so a snapshot. New ones go at
/// the end: a snapshot names each by its position here.
pub const STATE_MACHINE_CFS: [&str; 6] = [CF_KV, CF_HISTORY, CF_EVENTS, CF_META, CF_LEASES, CF_LEASE_KEYS];

/// Every column family.
pub const ALL_CFS: [&str; 9] =
    [CF_RAFT_LOG, CF_RAFT_STATE, CF_KV, CF_HISTORY, CF_EVENTS, CF_META, CF_IDENTITY, CF_LEASES, CF_LEASE_KEYS];

/// Keys in [`CF_RAFT_STATE`].
pub mod raft_state_keys {
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";
}

/// Keys in [`CF_META`].
pub mod meta_keys {
    /// Last applied log id.
    pub const APPLIED: &[u8] = b"applied";
    /// While the commands of one entry are applied (each in a batch of its own): the
    /// entry's log id and how many of its commands are applied (bincode).
    pub const APPLYING: &[u8] = b"applying";
    /// Last applied membership.
    pub const MEMBERSHIP: &[u8] = b"membership";
    /// Current MVCC revision (i64, big endian).
    pub const REVISION: &[u8] = b"revision";
    /// Revision below which history may no longer be read (logical compaction).
    pub const COMPACT_REVISION: &[u8] = b"compact_revision";
    /// Revision up to which history has been physically removed.
    pub const COMPACT_FINISHED: &[u8] = b"compact_finished";
    /// Leases granted so far (u64, big endian): each grant's sequence number.
    pub const LEASE_GRANTS: &[u8] = b"lease_grants";
    /// IDs of members removed from the cluster (bincode `BTreeSet<u64>`): never reused,
    /// and their messages are refused.
    pub const REMOVED_MEMBERS: &[u8] = b"removed_members";
    /// Raised alarms (bincode `BTreeSet<(member id, AlarmKind)>`).
    pub const ALARMS: &[u8] = b"alarms";
}

/// Keys in [`CF_IDENTITY`].
pub mod identity_keys {
    pub const IDENTITY: &[u8] = b"identity";
    /// SHA-256 of the backup a restored member was created from.
    pub const RESTORED_FROM: &[u8] = b"restored_from";
}

/// Bytes a flush or compaction writes to a table file between two syncs of it, so
/// that the kernel writes a table back as it grows rather than all at once.
pub const BACKGROUND_BYTES_PER_SYNC: u64 = 1 << 20;

/// Memtable size of [`CF_KV`] and [`CF_HISTORY`]. Every put inserts into both at a
/// random place of a skiplist, and the walk down a skiplist the size of RocksDB's
/// default memtable (64 MiB) misses the CPU caches and the TLB at nearly every
/// level: it was 15% of the machine's CPU under 64-client puts, and 8% with 8 MiB
/// memtables (16 MiB gave the same throughput and holds more large values); the
/// members' RSS drops by a third (benches/RESULTS.md, sixth session).
pub const MVCC_MEMTABLE_BYTES: usize = 16 << 20;

/// Memtables [`CF_KV`] and [`CF_HISTORY`] may each hold, the one being written and
/// those waiting for their flush. Small memtables fill quickly under large values,
/// so more of them may wait for a flush: RocksDB slows writes down once three wait
/// and stops them at four (with RocksDB's default of two, it stops them as soon as
/// one waits). Together they hold half of RocksDB's default two of 64 MiB.
pub const MVCC_MEMTABLES_MAX: i32 = 4;

/// Opens (creating if needed) the member's database with every column family.
pub fn open_db(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    // Memtable flushes and compactions run at the lowest CPU priority (nice 19), so
    // that they take the CPU that requests leave idle rather than stall requests. A
    // flush turns a whole memtable (64 MiB when this was measured) into a table at
    // once; on a busy machine at normal priority, the members' requests stalled for
    // up to 400 ms while it ran. Should flushes fall behind on a saturated machine,
    // RocksDB holds writes back until they catch up (its write stall), which frees
    // the CPU they need; but if other processes keep every core busy, that stall
    // lasts until they yield. [`spawn_stall_guard`] raises them while writes wait
    // for them. This is RocksDB's default environment, shared by every database of
    // the process.
    let mut env = Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_high_priority_thread_pool_cpu_priority();
    opts.set_env(&env);
    // No rate limiter on flushes and compactions: a flush that falls behind the
    // writes stops them (RocksDB's write stall), so it must run at the disk's pace.
    // RocksDB's auto-tuned limiter drops to a twentieth of its maximum after ten idle
    // seconds and regains 5% per ten seconds; 1 MiB puts after an idle spell stopped
    // behind its flushes for 20 s and timed out. A fixed 64 MiB/s limit held them to
    // 18 puts/s with 3 s stops. The limiter was meant to keep flushes from stalling
    // small puts; at half of etcd's peak put rate the median p99 of four runs
    // without it matched that of ten with it (benches/RESULTS.md). Table files are
    // synced as they grow instead.
    opts.set_bytes_per_sync(BACKGROUND_BYTES_PER_SYNC);
    let cache = Cache::new_lru_cache(128 * 1024 * 1024);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&cache);
        block.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&block);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if [CF_KV, CF_HISTORY].contains(name) {
            cf_opts.set_write_buffer_size(MVCC_MEMTABLE_BYTES);
            cf_opts.set_max_write_buffer_number(MVCC_MEMTABLES_MAX);
        }
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}

/// How often [`spawn_stall_guard`] checks whether RocksDB holds writes back.
pub const STALL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Nice value of RocksDB's flush and compaction threads (RocksDB's "low" CPU
/// priority; see [`open_db`]).
const BACKGROUND_NICE: i32 = 19;

/// Raises RocksDB's flush and compaction threads to normal CPU priority while
/// RocksDB holds writes back, and lowers them again once it no longer does.
///
/// At nice 19 those threads get the CPU that requests leave idle. When a flush falls
/// behind, RocksDB stops or slows writes until it catches up; if other processes
/// keep every core busy meanwhile, a flush at nice 19 gets almost none of it, and
/// writes stay stopped (a 64 MiB flush took 10 s beside three busy processes, and puts
/// timed out). Raising a thread's priority takes `CAP_SYS_NICE` (or an `RLIMIT_NICE`
/// of 20): root has it unless a container drops it, as Docker's and Kubernetes'
/// defaults do (`--cap-add SYS_NICE`). Without it, the guard logs one warning and
/// writes wait for the flush.
///
/// The guard runs on a thread of its own and ends once `db` is dropped.
pub fn spawn_stall_guard(db: Weak<DB>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("cairn-stall-guard".into()).spawn(move || {
        let mut raised = false;
        let mut warned = false;
        let mut seen = StallSeen::default();
        loop {
            std::thread::sleep(STALL_CHECK_INTERVAL);
            let Some(db) = db.upgrade() else { return };
            let stalled = writes_held_back(&db);
            drop(db);
            seen.checked(stalled, STALL_CHECK_INTERVAL);
            if stalled == raised {
                continue;
            }
            let nice = if stalled { 0 } else { BACKGROUND_NICE };
            match renice_background_threads(nice) {
                Ok(()) => {
                    raised = stalled;
                    tracing::debug!(raised, "RocksDB write stall changed: background threads reniced");
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(
                        error = %e,
                        nice,
                        "could not renice RocksDB's flush and compaction threads (raising needs CAP_SYS_NICE); \
                         writes held back wait for them at their current priority"
                    );
                }
                Err(_) => {}
            }
        }
    })
}

/// What the stall guard's checks have seen, exported as the `cairn_disk_write_stall*`
/// metrics.
#[derive(Default)]
struct StallSeen {
    stalled: bool,
}

impl StallSeen {
    /// Records a check, `interval` after the previous one, that found writes held
    /// back (`stalled`) or not.
    fn checked(&mut self, stalled: bool, interval: Duration) {
        let disk = &crate::observability::metrics().disk;
        if stalled {
            if !self.stalled {
                disk.write_stalls_total.inc();
            }
            disk.write_stall_seconds_total.inc_by(interval.as_secs_f64());
        }
        disk.write_stalled.set(i64::from(stalled));
        self.stalled = stalled;
    }
}

/// Whether RocksDB stops or slows writes now (its write stall).
fn writes_held_back(db: &DB) -> bool {
    let prop = |name| db.property_int_value(name).ok().flatten().unwrap_or(0);
    prop("rocksdb.is-write-stopped") > 0 || prop("rocksdb.actual-delayed-write-rate") > 0
}

/// Sets the nice value of every RocksDB background thread of this process.
fn renice_background_threads(nice: i32) -> std::io::Result<()> {
    let threads = rocksdb_threads()?;
    if threads.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no RocksDB background thread found by name"));
    }
    for (tid, _) in threads {
        // SAFETY: setpriority only reads its integer arguments; a thread that has
        // exited since the listing makes it fail with ESRCH, which is ignored.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The thread ID and name of every RocksDB thread of this process (RocksDB names
/// its pool threads `rocksdb:low`, `rocksdb:high`, ...).
fn rocksdb_threads() -> std::io::Result<Vec<(libc::id_t, String)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        if comm.starts_with("rocksdb:") {
            threads.push((tid, comm.trim().to_string()));
        }
    }
    Ok(threads)
}

/// Bytes the state machine takes on disk (SST files plus memtables), and an estimate
/// of the bytes that hold live data. Like etcd's backend size, it leaves out the Raft
/// log (etcd's WAL), which is purged behind snapshots.
pub fn disk_usage(db: &DB) -> (u64, u64) {
    let prop = |cf, name| db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
    STATE_MACHINE_CFS.iter().fold((0, 0), |(size, live), name| {
        let cf = self::cf(db, name);
        let mem = prop(cf, "rocksdb.size-all-mem-tables");
        (
            size + prop(cf, "rocksdb.total-sst-files-size") + mem,
            live + prop(cf, "rocksdb.estimate-live-data-size") + mem,
        )
    })
}

/// RocksDB's estimate of the live keys (overwrites and deletes not yet compacted
/// may count).
pub fn live_keys_estimate(db: &DB) -> u64 {
    db.property_int_value_cf(cf(db, CF_KV), "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
}

/// Handle of a column family that [`open_db`] always creates.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} missing: database not opened by schema::open_db"))
}

/// Raft log key: the index, big endian, so that keys sort by index.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Inverse of [`log_key`].
pub fn log_index(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().expect("raft log key is 8 bytes"))
}

/// Order-preserving, prefix-free encoding of a user key: `0x00` becomes `0x00 0xff`
/// and the key ends with `0x00 0x01`, so `(key, rev)` pairs sort by key, then rev.
pub fn escape_key(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 10);
    for &b in user_key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

/// History key: escaped user key, then the revision inverted so the newest sorts first.
pub fn history_key(user_key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = escape_key(user_key);
    out.extend_from_slice(&inverted_rev(rev));
    out
}

fn inverted_rev(rev: i64) -> [u8; 8] {
    assert!(rev >= 0, "revision {rev} is negative");
    (u64::MAX - rev as u64).to_be_bytes()
}

/// Splits a history key into the user key and revision.
pub fn decode_history_key(key: &[u8]) -> (Vec<u8>, i64) {
    assert!(key.len() >= 10, "history key too short: {key:?}");
    let (escaped, rev) = key.split_at(key.len() - 8);
    let rev = u64::MAX - u64::from_be_bytes(rev.try_into().expect("8 bytes"));
    let mut user = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        let b = escaped[i];
        if b == 0 {
            match escaped.get(i + 1) {
                Some(0xff) => {
                    user.push(0);
                    i += 2;
                    continue;
                }
                Some(0x01) if i + 2 == escaped.len() => break,
                _ => panic!("corrupt history key {key:?}"),
            }
        }
        user.push(b);
        i += 1;
    }
    (user, rev as i64)
}

/// Event key: revision then sub-revision, big endian.
pub fn event_key(rev: i64, sub: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(rev as u64).to_be_bytes());
    out[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    out
}

/// Inverse of [`event_key`].
pub fn decode_event_key(key: &[u8]) -> (i64, i64) {
    assert_eq!(key.len(), 16, "event key is 16 bytes");
    let rev = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let sub = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    (rev as i64, sub as i64)
}

/// Lease key: the ID as a big-endian `u64`, so that leases sort by ID (positive IDs
/// first, as etcd lists them).
pub fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// Inverse of [`lease_key`] (also reads the ID at the front of an attachment key).
pub fn decode_lease_key(key: &[u8]) -> i64 {
    assert!(key.len() >= 8, "lease key too short: {key:?}");
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes")) as i64
}

/// Attachment key: the lease key, then the user key as is (the lease key has a fixed
/// length, so a prefix scan on [`lease_key`] finds exactly one lease's keys).
pub fn lease_attachment_key(id: i64, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + user_key.len());
    out.extend_from_slice(&lease_key(id));
    out.extend_from_slice(user_key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nice values of this process's threads named `name`.
    fn nice_of_threads(name: &str) -> Vec<i64> {
        let threads = rocksdb_threads().expect("list threads");
        let named = threads.into_iter().filter(|(_, comm)| comm == name);
        named
            .filter_map(|(tid, _)| std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok())
            .map(|stat| {
                // Fields after the command's closing parenthesis; nice is the 19th field.
                let after = &stat[stat.rfind(')').expect("comm in parentheses") + 2..];
                after.split(' ').nth(16).expect("nice field").parse().expect("nice")
            })
            .collect()
    }

    /// `name = value` options of each column family in the newest OPTIONS file
    /// RocksDB wrote into `dir`: `(cf, option) → value`.
    fn persisted_cf_options(dir: &Path) -> std::collections::HashMap<(String, String), String> {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .max_by_key(|p| {
                p.file_name().unwrap().to_string_lossy().trim_start_matches("OPTIONS-").parse::<u64>().unwrap()
            })
            .expect("RocksDB writes an OPTIONS file");
        let mut options = std::collections::HashMap::new();
        let mut section = None;
        for line in std::fs::read_to_string(newest).unwrap().lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("[CFOptions \"").and_then(|l| l.strip_suffix("\"]")) {
                section = Some(name.to_string());
            } else if line.starts_with('[') {
                section = None;
            } else if let (Some(cf), Some((k, v))) = (&section, line.split_once('=')) {
                options.insert((cf.clone(), k.to_string()), v.to_string());
            }
        }
        options
    }

    #[test]
    fn the_mvcc_column_families_have_small_memtables() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        drop(db);
        let options = persisted_cf_options(dir.path());
        let get = |cf: &str, k: &str| options.get(&(cf.to_string(), k.to_string())).cloned();
        for name in [CF_KV, CF_HISTORY] {
            assert_eq!(get(name, "write_buffer_size"), Some(MVCC_MEMTABLE_BYTES.to_string()), "{name}");
            assert_eq!(get(name, "max_write_buffer_number"), Some(MVCC_MEMTABLES_MAX.to_string()), "{name}");
        }
        // The others keep RocksDB's default: their inserts land in order.
        assert_eq!(get(CF_RAFT_LOG, "write_buffer_size"), Some((64usize << 20).to_string()));
    }

    #[test]
    fn flushes_and_compactions_run_at_the_lowest_cpu_priority() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let cf = cf(&db, CF_KV);
        db.put_cf(cf, b"k", b"v").unwrap();
        db.flush_cf(cf).unwrap();
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        // A pool's thread takes the lowered priority when it next runs a job: the
        // ones that ran the flush (high) and the compaction (low) have it.
        for pool in ["rocksdb:high", "rocksdb:low"] {
            let nice = nice_of_threads(pool);
            assert!(nice.contains(&19), "no {pool} thread at nice 19: {nice:?}");
        }
        // What the stall guard does while writes are held back, and after. (In this
        // test, as the threads are shared by every database of the process.) A
        // thread that has not run a job yet lowers itself at its first one, which
        // another test may schedule at any moment: raised, the threads that ran this
        // test's jobs must be at 0; lowered, every thread must be at 19.
        match renice_background_threads(0) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("raising a thread's priority is not permitted here (no CAP_SYS_NICE): {e}");
                return;
            }
            other => other.expect("raise"),
        }
        for pool in ["rocksdb:high", "rocksdb:low"] {
            let nice = nice_of_threads(pool);
            assert!(nice.contains(&0), "no {pool} thread raised to nice 0: {nice:?}");
        }
        renice_background_threads(BACKGROUND_NICE).expect("lower");
        for pool in ["rocksdb:high", "rocksdb:low"] {
            let nice = nice_of_threads(pool);
            assert!(nice.iter().all(|n| *n == 19), "{pool} threads not all back at nice 19: {nice:?}");
        }
    }

    #[test]
    fn the_stall_metrics_count_stalls_and_the_time_writes_were_held_back() {
        let disk = &crate::observability::metrics().disk;
        let (stalls, seconds) = (disk.write_stalls_total.get(), disk.write_stall_seconds_total.get());
        let mut seen = StallSeen::default();
        let interval = Duration::from_millis(100);
        seen.checked(false, interval);
        assert_eq!(disk.write_stalled.get(), 0);
        seen.checked(true, interval);
        seen.checked(true, interval);
        assert_eq!(disk.write_stalled.get(), 1, "stalled while the checks find writes held back");
        seen.checked(false, interval);
        seen.checked(true, interval);
        seen.checked(false, interval);
        assert_eq!(disk.write_stalled.get(), 0);
        assert_eq!(disk.write_stalls_total.get() - stalls, 2, "two stalls began");
        let held = disk.write_stall_seconds_total.get() - seconds;
        assert!((held - 0.3).abs() < 1e-9, "three checks found writes held back: {held} s");
    }

    #[test]
    fn history_keys_sort_by_key_then_newest_first() {
        let keys: Vec<(&[u8], i64)> =
            vec![(b"a", 9), (b"a", 3), (b"a\x00", 5), (b"a\x00\x00", 1), (b"a\x01", 2), (b"ab", 7), (b"b", 1)];
        let encoded: Vec<Vec<u8>> = keys.iter().map(|(k, r)| history_key(k, *r)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for (k, r) in keys {
            assert_eq!(decode_history_key(&history_key(k, r)), (k.to_vec(), r));
        }
    }

    #[test]
    fn event_keys_round_trip_in_order() {
        assert!(event_key(2, 0) < event_key(2, 1));
        assert!(event_key(2, 9) < event_key(3, 0));
        assert_eq!(decode_event_key(&event_key(77, 3)), (77, 3));
    }

    #[test]
    fn lease_keys_round_trip_and_prefix_their_attachments() {
        for id in [1, 0x7777_1234, i64::MAX, -5] {
            assert_eq!(decode_lease_key(&lease_key(id)), id);
            let attached = lease_attachment_key(id, b"k\x00ey");
            assert!(attached.starts_with(&lease_key(id)));
            assert_eq!(decode_lease_key(&attached), id);
        }
        assert!(lease_key(1) < lease_key(2));
    }
}
