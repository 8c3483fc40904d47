//! `snapshot save`: stream one member's database into a file, with a progress bar.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::errors::{CliError, CliResult};
use crate::output::{human_bytes, Printer, Render, Table};

pub async fn save(ctx: &Ctx, file: &Path) -> CliResult<()> {
    let eps = ctx.endpoints();
    if eps.len() != 1 {
        return Err(CliError::invalid(format!(
            "snapshot save needs exactly one endpoint, got {}: {}",
            eps.len(),
            eps.join(",")
        ))
        .with_hint("pick one member with --endpoints host:port"));
    }
    let client = ctx.connect_one(&eps[0]).await?;
    let part = file.with_extension(match file.extension() {
        Some(e) => format!("{}.part", e.to_string_lossy()),
        None => "part".into(),
    });
    let start = Instant::now();
    let mut stream = ctx.bounded(async { Ok(client.snapshot().await?) }).await?;
    let mut out = std::fs::File::create(&part).map_err(|e| CliError::io(format!("create {}", part.display()), e))?;
    let fail = |e: CliError| {
        let _ = std::fs::remove_file(&part);
        e
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("a valid progress template"),
    );
    let mut written: u64 = 0;
    let mut remaining: u64 = 0;
    // A snapshot can be large: each chunk gets the command timeout, not the whole stream.
    let idle = ctx.global.command_timeout;
    loop {
        let next = tokio::time::timeout(idle, stream.next()).await.map_err(|_| fail(CliError::timeout(idle)))?;
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                bar.abandon();
                return Err(fail(CliError::from(e).context("snapshot stream")));
            }
        };
        out.write_all(&chunk.blob).map_err(|e| fail(CliError::io(format!("write {}", part.display()), e)))?;
        written += chunk.blob.len() as u64;
        remaining = chunk.remaining_bytes;
        bar.set_length(written + chunk.remaining_bytes);
        bar.set_position(written);
    }
    bar.finish_and_clear();
    if remaining != 0 {
        return Err(fail(
            CliError::failed(format!("the snapshot stream ended {remaining} bytes early (after {written} bytes)"))
                .with_hint("the member may have restarted: run snapshot save again"),
        ));
    }
    out.sync_all().map_err(|e| fail(CliError::io(format!("sync {}", part.display()), e)))?;
    drop(out);
    std::fs::rename(&part, file)
        .map_err(|e| CliError::io(format!("rename {} to {}", part.display(), file.display()), e))?;
    ctx.printer.emit(&SnapshotOut { path: file.display().to_string(), size: written, took: start.elapsed() })
}

struct SnapshotOut {
    path: String,
    size: u64,
    took: Duration,
}

impl Render for SnapshotOut {
    fn simple(&self, _: &Printer) -> String {
        format!("Snapshot saved at {}\n", self.path)
    }
    fn json(&self) -> Value {
        json!({"path": self.path, "size": self.size, "took_ms": self.took.as_millis() as u64})
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["PATH", "SIZE", "TOOK"]);
        t.row(vec![self.path.clone(), human_bytes(self.size as i64), format!("{:?}", self.took)]);
        t
    }
}
