//! The `cairn` binary: one member of a Cairn cluster.

use std::process::ExitCode;

use cairn_server::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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
