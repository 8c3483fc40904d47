//! Settings of a member: etcd-like flags, each also settable from `CAIRN_*`
//! environment variables and a TOML config file. A flag beats the environment,
//! which beats the file, which beats the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::limits::{
    CORRUPT_CHECK_INTERVAL_MS_DEFAULT, ELECTION_TIMEOUT_MS_DEFAULT, HEARTBEAT_INTERVAL_MS_DEFAULT,
    LEASE_CHECKPOINT_INTERVAL_MS_DEFAULT, QUOTA_BACKEND_BYTES_DEFAULT, REQUEST_BYTES_MAX_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT, SNAPSHOT_CATCHUP_ENTRIES_DEFAULT, SNAPSHOT_ENTRIES_DEFAULT, TXN_OPS_MAX_DEFAULT,
    WARNING_APPLY_DURATION_MS_DEFAULT, WARNING_UNARY_REQUEST_DURATION_MS_DEFAULT,
    WATCH_PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT,
};
use crate::raft::RaftSettings;

/// Errors in the settings. Each says which setting and why.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config: cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config: malformed config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("config: {setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, $env:literal, $value_name:literal; )*) => {
        /// Command-line flags (each also read from its environment variable).
        #[derive(Parser, Debug, Default, Clone)]
        #[command(name = "cairn", version = crate::VERSION, about = "Cairn: a Raft-replicated metadata store that speaks the etcd v3 API.\n\nWith no arguments, starts a single-member cluster with its data in ./cairn.data, serving clients on 127.0.0.1:2379.")]
        pub struct Flags {
            /// Path to a TOML config file whose keys are the long flag names (e.g. `data-dir = "/var/lib/cairn"`).
            #[arg(long, env = "CAIRN_CONFIG_FILE", value_name = "PATH")]
            pub config_file: Option<PathBuf>,
            $( $(#[doc = $doc])* #[arg(long, env = $env, value_name = $value_name)] pub $field: Option<$ty>, )*
        }

        /// The same settings, as read from the TOML config file.
        #[derive(Deserialize, Debug, Default)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        struct FileSettings {
            $( $field: Option<$ty>, )*
        }

        /// Settings after merging flags, environment, file and defaults; `None` only
        /// where the default depends on other settings.
        #[derive(Debug, Clone)]
        struct Merged {
            $( $field: Option<$ty>, )*
        }

        fn merge(flags: Flags, file: FileSettings) -> Merged {
            Merged { $( $field: flags.$field.or(file.$field).or($default), )* }
        }
    };
}

settings! {
    /// Human-readable name of this member [default: default]
    name: String = Some("default".into()), "CAIRN_NAME", "NAME";
    /// Directory for the member's data [default: ./cairn.data]
    data_dir: PathBuf = Some(PathBuf::from("cairn.data")), "CAIRN_DATA_DIR", "PATH";
    /// URLs to serve clients on, comma-separated [default: http://127.0.0.1:2379]
    listen_client_urls: String = Some("http://127.0.0.1:2379".into()), "CAIRN_LISTEN_CLIENT_URLS", "URLS";
    /// Client URLs to advertise to the cluster [default: --listen-client-urls]
    advertise_client_urls: String = None, "CAIRN_ADVERTISE_CLIENT_URLS", "URLS";
    /// URLs to serve other members on, comma-separated [default: http://127.0.0.1:2380]
    listen_peer_urls: String = Some("http://127.0.0.1:2380".into()), "CAIRN_LISTEN_PEER_URLS", "URLS";
    /// Peer URLs to advertise to the cluster [default: --listen-peer-urls]
    initial_advertise_peer_urls: String = None, "CAIRN_INITIAL_ADVERTISE_PEER_URLS", "URLS";
    /// Initial members, as name=peer-url,... [default: <name>=<initial-advertise-peer-urls>]
    initial_cluster: String = None, "CAIRN_INITIAL_CLUSTER", "MEMBERS";
    /// `new` to form a cluster, `existing` to join one [default: new]
    initial_cluster_state: String = Some("new".into()), "CAIRN_INITIAL_CLUSTER_STATE", "new|existing";
    /// Token that makes this cluster's IDs unique [default: cairn-cluster]
    initial_cluster_token: String = None, "CAIRN_INITIAL_CLUSTER_TOKEN", "TOKEN";
    /// Largest client request in bytes [default: 1572864]
    max_request_bytes: usize = Some(REQUEST_BYTES_MAX_DEFAULT), "CAIRN_MAX_REQUEST_BYTES", "BYTES";
    /// Most compares, and most operations per branch, in a Txn [default: 128]
    max_txn_ops: usize = Some(TXN_OPS_MAX_DEFAULT), "CAIRN_MAX_TXN_OPS", "N";
    /// Raft heartbeat interval in milliseconds [default: 100]
    heartbeat_interval: u64 = Some(HEARTBEAT_INTERVAL_MS_DEFAULT), "CAIRN_HEARTBEAT_INTERVAL", "MS";
    /// Raft election timeout in milliseconds [default: 1000]
    election_timeout: u64 = Some(ELECTION_TIMEOUT_MS_DEFAULT), "CAIRN_ELECTION_TIMEOUT", "MS";
    /// Applied entries between Raft snapshots [default: 100000]
    snapshot_count: u64 = Some(SNAPSHOT_ENTRIES_DEFAULT), "CAIRN_SNAPSHOT_COUNT", "N";
    /// Log entries kept behind a snapshot for slow followers [default: 5000]
    snapshot_catchup_entries: u64 = Some(SNAPSHOT_CATCHUP_ENTRIES_DEFAULT), "CAIRN_SNAPSHOT_CATCHUP_ENTRIES", "N";
    /// How long a request may wait for Raft, in milliseconds [default: 7000]
    request_timeout: u64 = Some(REQUEST_TIMEOUT_MS_DEFAULT), "CAIRN_REQUEST_TIMEOUT", "MS";
    /// Serve linearizable reads from the leader's lease instead of a ReadIndex round;
    /// assumes member clocks run at rates within 30% of each other [default: false]
    lease_reads: bool = Some(false), "CAIRN_LEASE_READS", "true|false";
    /// Refuse membership changes that could cost quorum (adding a voter while a voter
    /// is down, removing one when the rest would lack quorum) [default: true]
    strict_reconfig_check: bool = Some(true), "CAIRN_STRICT_RECONFIG_CHECK", "true|false";
    /// Database size in bytes above which the NOSPACE alarm is raised and writes are
    /// refused until space is freed and the alarm disarmed [default: 8589934592]
    quota_backend_bytes: u64 = Some(QUOTA_BACKEND_BYTES_DEFAULT), "CAIRN_QUOTA_BACKEND_BYTES", "BYTES";
    /// How often the leader compares the members' HashKV and raises the CORRUPT alarm
    /// on a mismatch, in milliseconds; 0 turns the check off [default: 300000]
    corrupt_check_interval: u64 = Some(CORRUPT_CHECK_INTERVAL_MS_DEFAULT), "CAIRN_CORRUPT_CHECK_INTERVAL", "MS";
    /// Interval of progress notifications to watchers that ask for them, in milliseconds [default: 600000]
    watch_progress_notify_interval: u64 = Some(WATCH_PROGRESS_NOTIFY_INTERVAL_MS_DEFAULT), "CAIRN_WATCH_PROGRESS_NOTIFY_INTERVAL", "MS";
    /// How often the leader commits every lease's remaining TTL through Raft, so that a
    /// leader change does not start TTLs over, in milliseconds [default: 5000]
    lease_checkpoint_interval: u64 = Some(LEASE_CHECKPOINT_INTERVAL_MS_DEFAULT), "CAIRN_LEASE_CHECKPOINT_INTERVAL", "MS";
    /// Log level: error, warn, info, debug or trace [default: info]
    log_level: String = Some("info".into()), "CAIRN_LOG_LEVEL", "LEVEL";
    /// Log format: text or json [default: text]
    log_format: String = Some("text".into()), "CAIRN_LOG_FORMAT", "text|json";
    /// Extra URLs to serve /metrics, /health, /livez and /readyz on, comma-separated
    /// (the client URLs always serve them too) [default: none]
    listen_metrics_urls: String = None, "CAIRN_LISTEN_METRICS_URLS", "URLS";
    /// Applying one entry for longer than this logs it, in milliseconds [default: 100]
    warning_apply_duration: u64 = Some(WARNING_APPLY_DURATION_MS_DEFAULT), "CAIRN_WARNING_APPLY_DURATION", "MS";
    /// A client request taking longer than this logs its steps, in milliseconds [default: 1000]
    warning_unary_request_duration: u64 = Some(WARNING_UNARY_REQUEST_DURATION_MS_DEFAULT), "CAIRN_WARNING_UNARY_REQUEST_DURATION", "MS";
}

/// Default cluster token, as etcd's `etcd-cluster`.
const CLUSTER_TOKEN_DEFAULT: &str = "cairn-cluster";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings of a member.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial members: name → peer URLs.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    /// Whether `initial_cluster` was given rather than defaulted.
    pub initial_cluster_explicit: bool,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub initial_cluster_token_explicit: bool,
    /// Whether this member's peer URLs were given rather than defaulted.
    pub peer_urls_explicit: bool,
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    pub raft: RaftSettings,
    pub watch_progress_notify_interval: Duration,
    /// How often the leader checkpoints remaining lease TTLs through Raft.
    pub lease_checkpoint_interval: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Database size above which NOSPACE is raised.
    pub quota_backend_bytes: u64,
    /// How often the leader compares members' hashes; `None` when off.
    pub corrupt_check_interval: Option<Duration>,
    /// Where to serve the operator endpoints besides the client URLs.
    pub listen_metrics_urls: Vec<String>,
    /// Thresholds of slow-apply and slow-request logs.
    pub warning_apply_duration: Duration,
    pub warning_unary_request_duration: Duration,
}

impl Config {
    /// Parses the process's arguments and environment (and config file, if named).
    pub fn from_args() -> Result<Config, ConfigError> {
        Config::from_flags(Flags::parse())
    }

    /// Builds the settings from parsed flags, reading the config file they name.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config_file {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let explicit_cluster = flags.initial_cluster.is_some() || file.initial_cluster.is_some();
        let explicit_token = flags.initial_cluster_token.is_some() || file.initial_cluster_token.is_some();
        let explicit_peer_urls = [
            &flags.listen_peer_urls,
            &flags.initial_advertise_peer_urls,
            &file.listen_peer_urls,
            &file.initial_advertise_peer_urls,
        ]
        .iter()
        .any(|s| s.is_some());
        let m = merge(flags, file);
        let name = m.name.expect("defaulted");
        if name.is_empty() || name.contains(['=', ',']) {
            return Err(invalid("name", format!("{name:?} must be non-empty and contain neither '=' nor ','")));
        }
        let listen_client_urls = parse_urls("listen-client-urls", &m.listen_client_urls.expect("defaulted"))?;
        let advertise_client_urls = match m.advertise_client_urls {
            Some(s) => parse_urls("advertise-client-urls", &s)?,
            None => listen_client_urls.clone(),
        };
        let listen_peer_urls = parse_urls("listen-peer-urls", &m.listen_peer_urls.expect("defaulted"))?;
        let initial_advertise_peer_urls = match m.initial_advertise_peer_urls {
            Some(s) => parse_urls("initial-advertise-peer-urls", &s)?,
            None => listen_peer_urls.clone(),
        };
        let initial_cluster = match &m.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => BTreeMap::from([(name.clone(), initial_advertise_peer_urls.clone())]),
        };
        match initial_cluster.get(&name) {
            None => {
                return Err(invalid(
                    "initial-cluster",
                    format!("does not name this member ({name}); it must list every initial member as name=peer-url"),
                ));
            }
            Some(urls) if sorted(urls) != sorted(&initial_advertise_peer_urls) => {
                return Err(invalid(
                    "initial-cluster",
                    format!(
                        "gives {name} the peer URLs {}, but --initial-advertise-peer-urls is {}",
                        urls.join(","),
                        initial_advertise_peer_urls.join(",")
                    ),
                ));
            }
            Some(_) => {}
        }
        let initial_cluster_state = match m.initial_cluster_state.as_deref().expect("defaulted") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(invalid("initial-cluster-state", format!("{other:?} is neither \"new\" nor \"existing\"")))
            }
        };
        let initial_cluster_token = m.initial_cluster_token.unwrap_or_else(|| CLUSTER_TOKEN_DEFAULT.into());
        if initial_cluster_token.is_empty() {
            return Err(invalid("initial-cluster-token", "must not be empty"));
        }
        let request_bytes_max = positive("max-request-bytes", m.max_request_bytes.expect("defaulted"))?;
        let txn_ops_max = positive("max-txn-ops", m.max_txn_ops.expect("defaulted"))?;
        let heartbeat_interval_ms = positive("heartbeat-interval", m.heartbeat_interval.expect("defaulted"))?;
        let election_timeout_ms = positive("election-timeout", m.election_timeout.expect("defaulted"))?;
        if election_timeout_ms < 5 * heartbeat_interval_ms {
            return Err(invalid(
                "election-timeout",
                format!("{election_timeout_ms} ms must be at least 5 times --heartbeat-interval ({heartbeat_interval_ms} ms)"),
            ));
        }
        let log_level = m.log_level.expect("defaulted");
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(invalid("log-level", format!("{log_level:?} is not one of error, warn, info, debug, trace")));
        }
        let log_format = match m.log_format.as_deref().expect("defaulted") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log-format", format!("{other:?} is neither \"text\" nor \"json\""))),
        };
        Ok(Config {
            name,
            data_dir: m.data_dir.expect("defaulted"),
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_explicit: explicit_cluster,
            initial_cluster_state,
            initial_cluster_token,
            initial_cluster_token_explicit: explicit_token,
            peer_urls_explicit: explicit_peer_urls,
            request_bytes_max,
            txn_ops_max,
            raft: RaftSettings {
                heartbeat_interval_ms,
                election_timeout_ms,
                snapshot_entries: positive("snapshot-count", m.snapshot_count.expect("defaulted"))?,
                snapshot_catchup_entries: m.snapshot_catchup_entries.expect("defaulted"),
                request_timeout: Duration::from_millis(positive(
                    "request-timeout",
                    m.request_timeout.expect("defaulted"),
                )?),
                lease_reads: m.lease_reads.expect("defaulted"),
                strict_reconfig_check: m.strict_reconfig_check.expect("defaulted"),
            },
            watch_progress_notify_interval: Duration::from_millis(positive(
                "watch-progress-notify-interval",
                m.watch_progress_notify_interval.expect("defaulted"),
            )?),
            lease_checkpoint_interval: Duration::from_millis(positive(
                "lease-checkpoint-interval",
                m.lease_checkpoint_interval.expect("defaulted"),
            )?),
            log_level,
            log_format,
            quota_backend_bytes: positive("quota-backend-bytes", m.quota_backend_bytes.expect("defaulted"))?,
            corrupt_check_interval: match m.corrupt_check_interval.expect("defaulted") {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            listen_metrics_urls: match m.listen_metrics_urls {
                Some(s) => parse_urls("listen-metrics-urls", &s)?,
                None => Vec::new(),
            },
            warning_apply_duration: Duration::from_millis(positive(
                "warning-apply-duration",
                m.warning_apply_duration.expect("defaulted"),
            )?),
            warning_unary_request_duration: Duration::from_millis(positive(
                "warning-unary-request-duration",
                m.warning_unary_request_duration.expect("defaulted"),
            )?),
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile { path: path.into(), message: e.to_string() })
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(setting: &'static str, value: T) -> Result<T, ConfigError> {
    if value <= T::default() {
        return Err(invalid(setting, format!("{value} must be greater than zero")));
    }
    Ok(value)
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

/// Parses a comma-separated list of `http://host:port` URLs.
pub fn parse_urls(setting: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if urls.is_empty() {
        return Err(invalid(setting, "needs at least one URL"));
    }
    for url in &urls {
        check_url(setting, url)?;
    }
    Ok(urls)
}

fn check_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(invalid(setting, format!("{url}: TLS is not supported yet; use http://")));
    } else {
        return Err(invalid(setting, format!("{url}: expected http://host:port")));
    };
    let authority = rest.trim_end_matches('/');
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(invalid(setting, format!("{url}: missing port")));
    };
    if host.is_empty() || port.parse::<u16>().is_err() || authority.contains('/') {
        return Err(invalid(setting, format!("{url}: expected http://host:port")));
    }
    Ok(())
}

/// Parses `name=url,name=url2,other=url3` (a name may repeat to give several URLs).
fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(invalid("initial-cluster", format!("{part:?} is not name=peer-url")));
        };
        if name.is_empty() {
            return Err(invalid("initial-cluster", format!("{part:?} has an empty name")));
        }
        check_url("initial-cluster", url)?;
        members.entry(name.to_string()).or_default().push(url.to_string());
    }
    if members.is_empty() {
        return Err(invalid("initial-cluster", "names no member"));
    }
    let mut seen = BTreeMap::new();
    for (name, urls) in &members {
        for url in urls {
            if let Some(other) = seen.insert(url.clone(), name.clone()) {
                return Err(invalid("initial-cluster", format!("{url} is given to both {other} and {name}")));
            }
        }
    }
    Ok(members)
}

/// Host and port of an `http://host:port` URL, for binding.
pub fn url_authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("cairn").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn no_arguments_is_a_single_local_member() {
        let c = Config::from_flags(Flags::default()).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("cairn.data"));
        assert_eq!(c.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.initial_cluster_state, ClusterState::New);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "name = \"from-file\"\ndata-dir = \"/tmp/x\"\nmax-txn-ops = 7\n").unwrap();
        let c = Config::from_flags(flags(&["--config-file", path.to_str().unwrap(), "--name", "from-flag"])).unwrap();
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.txn_ops_max, 7);
    }

    #[test]
    fn malformed_settings_are_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nmae = \"typo\"\n").unwrap();
        let err = Config::from_flags(flags(&["--config-file", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("malformed config file"), "{err}");
        for (args, setting) in [
            (vec!["--initial-cluster", "a=http://h:1"], "initial-cluster"),
            (vec!["--initial-cluster", "default"], "initial-cluster"),
            (vec!["--initial-cluster-state", "old"], "initial-cluster-state"),
            (vec!["--listen-client-urls", "localhost:2379"], "listen-client-urls"),
            (vec!["--max-request-bytes", "0"], "max-request-bytes"),
            (vec!["--election-timeout", "200"], "election-timeout"),
            (vec!["--lease-checkpoint-interval", "0"], "lease-checkpoint-interval"),
            (vec!["--log-level", "loud"], "log-level"),
            (vec!["--listen-metrics-urls", "localhost:2381"], "listen-metrics-urls"),
            (vec!["--warning-apply-duration", "0"], "warning-apply-duration"),
        ] {
            let err = Config::from_flags(flags(&args)).unwrap_err();
            assert!(err.to_string().contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn initial_cluster_lists_members_and_their_urls() {
        let c = Config::from_flags(flags(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://10.0.0.2:2380",
            "--initial-cluster",
            "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380",
        ]))
        .unwrap();
        assert_eq!(c.initial_cluster.len(), 3);
        assert!(c.initial_cluster_explicit);
        assert!(!c.initial_cluster_token_explicit);
    }
}
