//! `watch`: print every event of a key or range, optionally running a command per event.

use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::time::Duration;

use cairn_client::{Error as ClientError, Event, EventKind, WatchBatch, WatchStream};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::cli::WatchArgs;
use crate::ctx::Ctx;
use crate::errors::{CliError, CliResult};
use crate::limits;
use crate::output::{header_json, kv_json, Printer, Render, Table};

pub async fn run(ctx: &Ctx, a: &WatchArgs) -> CliResult<()> {
    let client = ctx.connect().await?;
    let open = |start: i64| {
        let mut w = client.watch(a.key.as_bytes().to_vec());
        if a.prefix {
            w = w.prefix();
        } else if let Some(end) = &a.range_end {
            w = w.range_end(end.as_bytes().to_vec());
        }
        if start > 0 {
            w = w.start_revision(start);
        }
        if a.prev_kv {
            w = w.prev_kv();
        }
        if a.progress_notify {
            w = w.progress_notify();
        }
        w
    };
    let mut stream: WatchStream = ctx.bounded(async { Ok(open(a.rev).await?) }).await?;
    // The revision to resume from if the stream breaks: no gap, no duplicate.
    let mut next_rev = if a.rev > 0 { a.rev } else { stream.created_revision() + 1 };
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match item {
            Some(Ok(batch)) => {
                next_rev = next_rev.max(resume_point(&batch));
                if batch.is_progress_notify() && !a.progress_notify {
                    continue;
                }
                ctx.printer.emit(&BatchOut(&batch))?;
                if !a.command.is_empty() {
                    for ev in &batch.events {
                        run_command(&a.command, ev).await?;
                    }
                }
            }
            Some(Err(e @ (ClientError::Unavailable { .. } | ClientError::Timeout { .. }))) => {
                eprintln!("watch stream lost ({e}); resuming from revision {next_rev}");
                stream = reopen(ctx, &open, next_rev).await?;
            }
            Some(Err(e)) => {
                let hint = match &e {
                    ClientError::Compacted { .. } => "the start revision was compacted: watch from a later --rev",
                    _ => "the server cancelled the watch",
                };
                return Err(CliError::from(e).context("watch cancelled").with_hint(hint));
            }
            None => return Err(CliError::failed("watch stream ended")),
        }
    }
}

/// The revision after the last one this batch covers.
fn resume_point(batch: &WatchBatch) -> i64 {
    match batch.events.last() {
        Some(ev) => ev.kv.mod_revision + 1,
        None => batch.header.revision + 1,
    }
}

async fn reopen<F, W>(ctx: &Ctx, open: &F, from: i64) -> CliResult<WatchStream>
where
    F: Fn(i64) -> W,
    W: std::future::IntoFuture<Output = cairn_client::Result<WatchStream>>,
{
    let mut last = None;
    for attempt in 0..limits::STREAM_REOPEN_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match tokio::time::timeout(ctx.global.command_timeout, open(from).into_future()).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e @ ClientError::Compacted { .. })) => return Err(e.into()),
            Ok(Err(e)) => last = Some(CliError::from(e)),
            Err(_) => last = Some(CliError::timeout(ctx.global.command_timeout)),
        }
    }
    Err(last.unwrap_or_else(|| CliError::failed("watch could not be reopened")).context("resume watch"))
}

/// Runs the `-- command` for one event, with the event in its environment.
async fn run_command(command: &[String], ev: &Event) -> CliResult<()> {
    let kind = match ev.kind {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    };
    // Keys and values reach the command as stored, also when they are not UTF-8.
    let key = std::ffi::OsStr::from_bytes(&ev.kv.key);
    let value = std::ffi::OsStr::from_bytes(&ev.kv.value);
    let rev = ev.kv.mod_revision.to_string();
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).stdin(Stdio::null()).kill_on_drop(true);
    for prefix in ["CAIRNCTL_WATCH_", "ETCD_WATCH_"] {
        cmd.env(format!("{prefix}REVISION"), &rev)
            .env(format!("{prefix}KEY"), key)
            .env(format!("{prefix}EVENT_TYPE"), kind)
            .env(format!("{prefix}VALUE"), value);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CliError::failed(format!("run {:?}: {e}", command[0])).with_hint("the command after `--` must be an executable")
    })?;
    let limit = Duration::from_secs(limits::WATCH_COMMAND_SECONDS_MAX);
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            eprintln!("watch command {:?} exited with {status}", command[0]);
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(CliError::failed(format!("wait for {:?}: {e}", command[0]))),
        Err(_) => {
            let _ = child.kill().await;
            eprintln!("watch command {:?} ran longer than {limit:?}; killed", command[0]);
            Ok(())
        }
    }
}

struct BatchOut<'a>(&'a WatchBatch);

fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    }
}

impl Render for BatchOut<'_> {
    fn simple(&self, p: &Printer) -> String {
        String::from_utf8_lossy(&self.simple_bytes(p)).into_owned()
    }
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        if self.0.is_progress_notify() {
            return format!("progress notify: {}\n", self.0.header.revision).into_bytes();
        }
        let mut s = Vec::new();
        for ev in &self.0.events {
            s.extend_from_slice(kind_name(ev.kind).as_bytes());
            s.push(b'\n');
            if let Some(prev) = &ev.prev_kv {
                s.extend(p.kv_lines(prev, false));
            }
            s.extend(p.kv_lines(&ev.kv, false));
        }
        s
    }
    fn json(&self) -> Value {
        let events: Vec<Value> = self
            .0
            .events
            .iter()
            .map(|ev| {
                json!({
                    "type": match ev.kind { EventKind::Put => 0, EventKind::Delete => 1 },
                    "kv": kv_json(&ev.kv),
                    "prev_kv": ev.prev_kv.as_ref().map(kv_json),
                })
            })
            .collect();
        json!({
            "Header": header_json(&self.0.header),
            "Events": events,
            "CompactRevision": 0,
            "Canceled": false,
            "Created": false,
            "IsProgressNotify": self.0.is_progress_notify(),
        })
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&["EVENT", "KEY", "VALUE", "MOD REV", "PREV VALUE"]);
        if self.0.is_progress_notify() {
            t.row(vec![
                "PROGRESS".into(),
                String::new(),
                String::new(),
                self.0.header.revision.to_string(),
                String::new(),
            ]);
        }
        for ev in &self.0.events {
            t.row(vec![
                kind_name(ev.kind).into(),
                p.bytes(&ev.kv.key),
                p.bytes(&ev.kv.value),
                ev.kv.mod_revision.to_string(),
                ev.prev_kv.as_ref().map(|kv| p.bytes(&kv.value)).unwrap_or_default(),
            ]);
        }
        t
    }
}
