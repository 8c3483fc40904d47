//! The command tree: etcdctl's commands and flags (clap derive), plus Cairn's own.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::limits;

const AFTER_HELP: &str = "\
Every flag under 'Global options' can also be set in the environment:
CAIRNCTL_ENDPOINTS, CAIRNCTL_DIAL_TIMEOUT, CAIRNCTL_COMMAND_TIMEOUT, CAIRNCTL_WRITE_OUT,
CAIRNCTL_HEX. A flag on the command line wins over the environment.

Exit codes: 0 success; 1 the cluster refused or failed the request; 2 bad command-line
usage; 3 invalid input (for example txn grammar); 4 no endpoint reachable or the
command timed out; 5 a check found a problem (cluster health, endpoint health,
check perf).";

/// cairnctl: see and fix a Cairn (or etcd) cluster from one tool.
///
/// The commands and flags follow etcdctl v3, so that `etcdctl get --prefix /a` becomes
/// `cairnctl get --prefix /a`. cairnctl also talks to etcd itself.
#[derive(Debug, Parser)]
// A repeated flag takes its last value, as with etcdctl.
#[command(name = "cairnctl", version, after_help = AFTER_HELP, propagate_version = true, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that every command accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Comma-separated client URLs of the cluster (`host:port` means `http://host:port`)
    #[arg(long, global = true, env = "CAIRNCTL_ENDPOINTS", default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// How long to wait for a connection to an endpoint (e.g. 2s, 500ms)
    #[arg(long, global = true, env = "CAIRNCTL_DIAL_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
    /// Time limit for a short command, excluding the dial timeout (e.g. 5s, 1m)
    #[arg(long, global = true, env = "CAIRNCTL_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub command_timeout: Duration,
    /// Output format
    #[arg(short = 'w', long = "write-out", global = true, env = "CAIRNCTL_WRITE_OUT", value_enum, default_value_t = OutputFormat::Simple)]
    pub write_out: OutputFormat,
    /// Print keys and values as hex-escaped bytes (\x61\x62) in simple and table output
    #[arg(long, global = true, env = "CAIRNCTL_HEX")]
    pub hex: bool,
}

/// `-w`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines, as etcdctl prints them
    Simple,
    /// One JSON document per result; field names follow etcdctl's JSON output; stable for scripts
    Json,
    /// An aligned table
    Table,
}

/// Parses `2s`, `500ms`, `1m30s`; a bare number means seconds (as etcdctl's TTLs).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected a duration such as 2s, 500ms or 1m)"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a key or a range of keys [key, range_end)
    Get(GetArgs),
    /// Put a key; the value comes from the argument or, if absent, from stdin
    Put(PutArgs),
    /// Delete a key or a range of keys [key, range_end)
    Del(DelArgs),
    /// Run a transaction read from stdin in etcdctl's txn grammar
    #[command(long_about = TXN_HELP)]
    Txn(TxnArgs),
    /// Watch a key or a range and print every event; optionally run a command per event
    #[command(long_about = WATCH_HELP)]
    Watch(WatchArgs),
    /// Compact the key history up to a revision
    Compaction(CompactionArgs),
    /// Lease commands: grant, revoke, timetolive, list, keep-alive
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Membership commands: add, promote, remove, update, list
    #[command(subcommand)]
    Member(MemberCommand),
    /// Transfer leadership to another member (given by hex member ID)
    MoveLeader(MoveLeaderArgs),
    /// Per-endpoint commands: status, health, hashkv
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Alarm commands: list, disarm
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Defragment the storage of the given endpoints (or of every member with --cluster)
    Defrag(ClusterFlag),
    /// Snapshot commands: save
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Cluster-wide views: health (one screen: leader, terms, lag, db sizes, alarms)
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Checks: perf (a short load run with pass/fail thresholds)
    #[command(subcommand)]
    Check(CheckCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(long_about = COMPLETION_HELP)]
    Completion(CompletionArgs),
    /// Print cairnctl's version
    Version,
}

const TXN_HELP: &str = "\
Run a transaction read from stdin in etcdctl's txn grammar: compares, a blank line,
the requests run if all compares hold, a blank line, the requests run otherwise, a
blank line (end of input also ends the last section).

  compare  := TARGET(\"KEY\") OP \"VALUE\"
  TARGET   := c | create | m | mod | ver | version | val | value | lease
  OP       := = | != | < | >
  request  := get ... | put ... | del ...   (the flags of the get, put and del commands)

Revisions, versions and lease IDs (hex) are given as quoted numbers. Example:

  mod(\"config\") = \"7\"

  put config \"new value\"

  get config

Prints SUCCESS or FAILURE, then each response. With -i the sections are prompted for.";

const WATCH_HELP: &str = "\
Watch a key, a prefix (--prefix) or a range [key, range_end) and print every event. With
`-- COMMAND ARGS...` the command is run once per event with CAIRNCTL_WATCH_REVISION,
CAIRNCTL_WATCH_KEY, CAIRNCTL_WATCH_EVENT_TYPE and CAIRNCTL_WATCH_VALUE set (and the
same values as ETCD_WATCH_* for scripts written for etcdctl). Stops on Ctrl-C, or when
the server cancels the watch (for example because --rev is compacted: exit code 1).";

const COMPLETION_HELP: &str = "\
Print a shell completion script. For example:

  bash:  source <(cairnctl completion bash)
  zsh:   cairnctl completion zsh > \"${fpath[1]}/_cairnctl\"
  fish:  cairnctl completion fish > ~/.config/fish/completions/cairnctl.fish";

/// Sort order for `get --order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortOrder {
    Ascend,
    Descend,
}

/// Sort target for `get --sort-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortTarget {
    Create,
    Key,
    Modify,
    Value,
    Version,
}

/// Read consistency for `get --consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: sees every write acknowledged before the read started
    #[value(name = "l")]
    Linearizable,
    /// Serializable: served locally by the contacted member, possibly stale
    #[value(name = "s")]
    Serializable,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The key (or the start of the range)
    pub key: OsString,
    /// End of the range [key, range_end), exclusive
    pub range_end: Option<OsString>,
    /// Get every key with the prefix KEY
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Get every key >= KEY (byte order)
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Read at this revision (0 = latest)
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Maximum number of keys returned (0 = no limit)
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Order of results (ASCEND by default when --sort-by is given)
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<SortOrder>,
    /// Sort target
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortTarget>,
    /// Return keys only, no values
    #[arg(long)]
    pub keys_only: bool,
    /// Return only the number of keys
    #[arg(long, conflicts_with = "keys_only")]
    pub count_only: bool,
    /// Print only the values (simple output)
    #[arg(long)]
    pub print_value_only: bool,
    /// Linearizable (l) or serializable (s)
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// The key
    pub key: OsString,
    /// The value; read from stdin when omitted (and --ignore-value is not given)
    pub value: Option<OsString>,
    /// Attach the key to this lease (hex lease ID, as printed by `lease grant`)
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Print the previous key-value pair
    #[arg(long)]
    pub prev_kv: bool,
    /// Keep the key's current value (update only its lease)
    #[arg(long, conflicts_with = "value")]
    pub ignore_value: bool,
    /// Keep the key's current lease (update only its value)
    #[arg(long)]
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DelArgs {
    /// The key (or the start of the range)
    pub key: OsString,
    /// End of the range [key, range_end), exclusive
    pub range_end: Option<OsString>,
    /// Delete every key with the prefix KEY
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Delete every key >= KEY (byte order)
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Print the deleted key-value pairs
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TxnArgs {
    /// Prompt for each section of the transaction
    #[arg(short, long)]
    pub interactive: bool,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The key (or the start of the range)
    pub key: OsString,
    /// End of the range [key, range_end), exclusive
    pub range_end: Option<OsString>,
    /// Watch every key with the prefix KEY
    #[arg(long, conflicts_with = "range_end")]
    pub prefix: bool,
    /// Start at this revision (0 = from now); older events are replayed first
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Print the previous key-value pair of each event
    #[arg(long)]
    pub prev_kv: bool,
    /// Print progress notifications (the revision the watch has reached) while idle
    #[arg(long)]
    pub progress_notify: bool,
    /// Command (and its arguments) to run for every event, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CompactionArgs {
    /// Compact every revision older than this one
    pub revision: i64,
    /// Wait until the compaction is physically applied on the contacted member
    #[arg(long)]
    pub physical: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds
    Grant {
        /// Time to live in seconds
        ttl: i64,
    },
    /// Revoke a lease: every key attached to it is deleted
    Revoke {
        /// Lease ID (hex)
        id: String,
    },
    /// Show a lease's granted and remaining TTL
    Timetolive {
        /// Lease ID (hex)
        id: String,
        /// Also list the keys attached to the lease
        #[arg(long)]
        keys: bool,
    },
    /// List every active lease
    List,
    /// Keep a lease alive until interrupted (or once with --once)
    KeepAlive {
        /// Lease ID (hex)
        id: String,
        /// Renew once and exit
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a member (as a non-voting learner with --learner)
    Add {
        /// Name of the new member (its --name)
        name: String,
        /// Comma-separated peer URLs of the new member
        #[arg(long, required = true, value_delimiter = ',')]
        peer_urls: Vec<String>,
        /// Add the member as a learner (no vote until `member promote`)
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to a voting member
    Promote {
        /// Member ID (hex)
        id: String,
    },
    /// Remove a member
    Remove {
        /// Member ID (hex)
        id: String,
    },
    /// Change a member's peer URLs
    Update {
        /// Member ID (hex)
        id: String,
        /// Comma-separated new peer URLs
        #[arg(long, required = true, value_delimiter = ',')]
        peer_urls: Vec<String>,
    },
    /// List every member
    List,
}

#[derive(Debug, Clone, Args)]
pub struct MoveLeaderArgs {
    /// Member ID (hex) of the new leader
    pub target: String,
}

/// `--cluster`: use every member's client URLs instead of --endpoints.
#[derive(Debug, Clone, Args)]
pub struct ClusterFlag {
    /// Use the client URLs of every cluster member (from the member list) instead of --endpoints
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Status of each endpoint: member ID, version, db size, leader, raft term and indexes
    Status(ClusterFlag),
    /// Whether each endpoint serves a linearizable read, and how long it took
    Health(ClusterFlag),
    /// Hash of each endpoint's key history, to compare members
    Hashkv {
        #[command(flatten)]
        cluster: ClusterFlag,
        /// Hash the history up to this revision (0 = latest)
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// List every raised alarm
    List,
    /// Disarm every raised alarm
    Disarm,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot of one member's database into a file (one endpoint only)
    Save {
        /// Where to write the snapshot; written to FILE.part first, renamed when complete
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// One screen: is the cluster OK, and if not, why (exit code 5 when not OK)
    #[command(long_about = HEALTH_HELP)]
    Health(HealthArgs),
}

const HEALTH_HELP: &str = "\
One screen that answers \"is this cluster OK and if not, why\". Asks every member (from
the member list reached through --endpoints) for its status, then prints the leader,
each member's term, applied-index lag behind the leader, db size, round-trip time and
errors, the raised alarms, and the slowest member. The verdict is OK when every member
answers, all agree on one leader and term, no member lags more than --max-lag entries,
and no alarm is raised; otherwise each problem is listed and the exit code is 5.";

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Applied-index lag behind the leader above which a member is reported as lagging
    #[arg(long, default_value_t = limits::HEALTH_LAG_ENTRIES_MAX)]
    pub max_lag: u64,
}

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// A short write load run: throughput and latency percentiles, pass/fail
    #[command(long_about = PERF_HELP)]
    Perf(PerfArgs),
}

const PERF_HELP: &str = "\
Runs a short write load (puts of fixed-size values under --prefix from several
concurrent clients for --duration), then reports throughput and latency percentiles and
PASS or FAIL against the load's thresholds (shown in the output). The keys written are
deleted afterwards. Exit code 5 on FAIL.

  load  clients  target puts/s  value size  pass: throughput >=   p99 <=
  s          50          150        256 B   90% of target          500 ms
  m         200         1000        256 B   90% of target          500 ms
  l         500         8000        256 B   90% of target          500 ms
  xl       1000        15000        256 B   90% of target          500 ms";

/// `check perf --load`: the workload models of etcdctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PerfLoad {
    /// small: 50 clients, 150 puts/s
    S,
    /// medium: 200 clients, 1000 puts/s
    M,
    /// large: 500 clients, 8000 puts/s
    L,
    /// extra large: 1000 clients, 15000 puts/s
    Xl,
}

#[derive(Debug, Clone, Args)]
pub struct PerfArgs {
    /// Workload model
    #[arg(long, value_enum, default_value = "s")]
    pub load: PerfLoad,
    /// Key prefix of the keys written (deleted afterwards)
    #[arg(long, default_value = "/cairnctl-check-perf/")]
    pub prefix: String,
    /// How long to run the load
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Compact the history up to the last revision after the run
    #[arg(long)]
    pub auto_compact: bool,
    /// Defragment every endpoint after the run
    #[arg(long)]
    pub auto_defrag: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "cairnctl",
            "get",
            "k",
            "--endpoints",
            "a:1,b:2",
            "-w",
            "json",
            "--dial-timeout",
            "500ms",
            "--hex",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoints, "a:1,b:2");
        assert_eq!(cli.global.write_out, OutputFormat::Json);
        assert_eq!(cli.global.dial_timeout, Duration::from_millis(500));
        assert!(cli.global.hex);
    }

    #[test]
    fn the_last_endpoints_flag_wins() {
        let cli =
            Cli::try_parse_from(["cairnctl", "--endpoints", "a:1,b:2", "get", "k", "--endpoints", "c:3"]).unwrap();
        assert_eq!(cli.global.endpoints, "c:3");
        let cli =
            Cli::try_parse_from(["cairnctl", "--endpoints", "a:1", "--endpoints", "c:3,d:4", "get", "k"]).unwrap();
        assert_eq!(cli.global.endpoints, "c:3,d:4");
        let cli = Cli::try_parse_from(["cairnctl", "-w", "json", "get", "k", "-w", "table"]).unwrap();
        assert_eq!(cli.global.write_out, OutputFormat::Table);
    }

    #[test]
    fn watch_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["cairnctl", "watch", "k", "--prefix", "--", "echo", "-n", "x"]).unwrap();
        let Command::Watch(w) = cli.command else { panic!("not watch") };
        assert_eq!(w.command, vec!["echo", "-n", "x"]);
        assert!(w.prefix);
    }

    #[test]
    fn get_sort_flags_are_case_insensitive_like_etcdctl() {
        let cli = Cli::try_parse_from(["cairnctl", "get", "k", "--sort-by", "modify", "--order", "DESCEND"]).unwrap();
        let Command::Get(g) = cli.command else { panic!("not get") };
        assert_eq!(g.sort_by, Some(SortTarget::Modify));
        assert_eq!(g.order, Some(SortOrder::Descend));
    }

    #[test]
    fn durations_accept_bare_seconds_and_units() {
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("expected a duration"));
    }
}
