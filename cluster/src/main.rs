//! `cairnctl`: the operator CLI for Cairn (and etcd) clusters, built on `cairn-client`.

mod cli;
mod cmd;
mod ctx;
mod errors;
mod limits;
mod output;
mod txn_grammar;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{CheckCommand, Cli, ClusterCommand, Command, SnapshotCommand};
use crate::ctx::Ctx;
use crate::errors::CliResult;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: start the async runtime: {e}");
            return ExitCode::from(errors::ExitKind::Failed as u8);
        }
    };
    let ctx = Ctx::new(cli.global.clone());
    match runtime.block_on(run(&ctx, &cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(e.kind as u8)
        }
    }
}

async fn run(ctx: &Ctx, command: &Command) -> CliResult<()> {
    match command {
        Command::Get(a) => cmd::kv::get(ctx, a).await,
        Command::Put(a) => cmd::kv::put(ctx, a).await,
        Command::Del(a) => cmd::kv::del(ctx, a).await,
        Command::Txn(a) => cmd::kv::txn(ctx, a).await,
        Command::Compaction(a) => cmd::kv::compaction(ctx, a).await,
        Command::Watch(a) => cmd::watch::run(ctx, a).await,
        Command::Lease(c) => cmd::lease::run(ctx, c).await,
        Command::Member(c) => cmd::member::run(ctx, c).await,
        Command::MoveLeader(a) => cmd::member::move_leader(ctx, a).await,
        Command::Endpoint(c) => cmd::endpoint::run(ctx, c).await,
        Command::Alarm(c) => cmd::maintenance::alarm(ctx, c).await,
        Command::Defrag(c) => cmd::maintenance::defrag(ctx, c.cluster).await,
        Command::Snapshot(SnapshotCommand::Save { file }) => cmd::snapshot::save(ctx, file).await,
        Command::Cluster(ClusterCommand::Health(a)) => cmd::health::run(ctx, a).await,
        Command::Check(CheckCommand::Perf(a)) => cmd::perf::run(ctx, a).await,
        Command::Completion(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "cairnctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Version => ctx.printer.emit(&VersionOut),
    }
}

/// `cairnctl version`.
struct VersionOut;

impl output::Render for VersionOut {
    fn simple(&self, _: &output::Printer) -> String {
        format!("cairnctl version: {}\n", env!("CARGO_PKG_VERSION"))
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "cairnctl": env!("CARGO_PKG_VERSION") })
    }
    fn table(&self, _: &output::Printer) -> output::Table {
        let mut t = output::Table::new(&["CAIRNCTL VERSION"]);
        t.row(vec![env!("CARGO_PKG_VERSION").to_string()]);
        t
    }
}
