//! The `cairn` binary: one member of a Cairn cluster.

use std::process::ExitCode;

use std::path::PathBuf;

use cairn_server::config::{Config, Flags, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc serves every allocation of the process: it replaces the C library's
/// `malloc` too, so RocksDB's (C++) memtables and block cache come from it. With it,
/// 64-client puts took 4–7% less CPU per put than with glibc's allocator in
/// alternating runs (benches/RESULTS.md, sixth session).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at its first allocation; `MALLOC_CONF` in the
/// environment adds to them). A background thread returns freed memory to the
/// system on a timer: without it jemalloc does so only while allocating, and an
/// idle member would keep the memory of its last burst of writes.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8; 23] = b"background_thread:true\0";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("restore") {
        return restore();
    }
    let config = match Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    // Every line carries the member's name: the span is entered on the main thread
    // and, for good, on every runtime thread (an error-level span, so that no log
    // level disables it).
    let member = tracing::error_span!("cairn", member = %config.name);
    let _main = member.clone().entered();
    let on_thread = move || std::mem::forget(member.clone().entered());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().on_thread_start(on_thread).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cairn_server::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cairn restore BACKUP [member flags]`.
#[derive(Parser, Debug)]
#[command(
    name = "cairn restore",
    about = "Turns a backup (etcdctl snapshot save, or Maintenance.Snapshot) into the data directory of one member of a NEW cluster.\n\nRun it once per member, each with its own --name, --initial-advertise-peer-urls and --data-dir, and the same --initial-cluster and --initial-cluster-token; then start each member with the same flags. Every key, value, revision and lease of the backup is kept; the old cluster's membership, alarms and Raft log are not, and the new cluster gets a new cluster ID."
)]
struct RestoreArgs {
    /// The backup file.
    backup: PathBuf,
    #[command(flatten)]
    flags: Flags,
}

fn restore() -> ExitCode {
    let args = RestoreArgs::parse_from(std::env::args().skip(1));
    let config = match Config::from_flags(args.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn restore: {e}");
            return ExitCode::from(2);
        }
    };
    match cairn_server::restore::restore(&args.backup, &config) {
        Ok(r) => {
            println!(
                "restored {} ({} bytes) at revision {} into {}: member {:x} of new cluster {:x}",
                args.backup.display(),
                r.bytes,
                r.revision,
                config.data_dir.display(),
                r.member_id,
                r.cluster_id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn restore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    // Quiet by default: openraft and the transport log at warn unless asked.
    let filter = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("warn,openraft=error,cairn_server={0},cairn={0}", config.log_level))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
