//! Resource usage of server processes, read from `/proc` (Linux): peak resident
//! memory and CPU time, so that a run can report memory and CPU per operation; and,
//! for Cairn members, their write stalls (see [`crate::stalls`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stalls::{self, WriteStalls};

/// A server process whose usage a run records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerProc {
    pub name: String,
    pub pid: u32,
    /// Client URL of a Cairn member, whose `/metrics` count its write stalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Current resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory in KiB since the process started or since the last
/// [`reset_peak_rss`].
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resets the peak RSS of `pid` to its current RSS (writes 5 to `clear_refs`);
/// false when not permitted, in which case the peak covers the whole process life.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Usage of one server process over one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerUsage {
    pub name: String,
    pub pid: u32,
    /// Peak RSS during the run (or over the process life when `peak_reset` is false).
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub peak_reset: bool,
    /// CPU seconds (user + system) spent during the run.
    pub cpu_seconds: f64,
    /// Write stalls during the run (Cairn members that answered on `/metrics`
    /// before and after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_stalls: Option<WriteStalls>,
}

/// Usage snapshot taken when a run starts.
pub struct UsageStart {
    procs: Vec<Start>,
}

struct Start {
    proc: ServerProc,
    cpu_seconds: f64,
    peak_reset: bool,
    write_stalls: Option<WriteStalls>,
}

impl UsageStart {
    /// For every process: notes its write stalls, then its CPU time, then resets its
    /// peak RSS (the scrape comes first, so that it is not counted in the run's CPU).
    pub async fn take(procs: &[ServerProc]) -> UsageStart {
        let mut starts = Vec::with_capacity(procs.len());
        for p in procs {
            let write_stalls = write_stalls(p).await;
            starts.push(Start {
                proc: p.clone(),
                cpu_seconds: cpu_seconds(p.pid).unwrap_or(0.0),
                peak_reset: reset_peak_rss(p.pid),
                write_stalls,
            });
        }
        UsageStart { procs: starts }
    }

    /// Usage of every process since [`UsageStart::take`] (processes that exited are
    /// skipped). CPU and memory are read before the write stalls are scraped.
    pub async fn finish(&self) -> Vec<ServerUsage> {
        let ended: Vec<_> = self
            .procs
            .iter()
            .filter_map(|s| Some((s, peak_rss_kib(s.proc.pid)?, rss_kib(s.proc.pid)?, cpu_seconds(s.proc.pid)?)))
            .collect();
        let mut usage = Vec::with_capacity(ended.len());
        for (s, rss_peak_kib, rss_end_kib, cpu) in ended {
            let stalls_now = write_stalls(&s.proc).await;
            usage.push(ServerUsage {
                name: s.proc.name.clone(),
                pid: s.proc.pid,
                rss_peak_kib,
                rss_end_kib,
                peak_reset: s.peak_reset,
                cpu_seconds: cpu - s.cpu_seconds,
                write_stalls: stalls_now.zip(s.write_stalls).map(|(now, then)| now.since(then)),
            });
        }
        usage
    }
}

async fn write_stalls(p: &ServerProc) -> Option<WriteStalls> {
    stalls::read(p.metrics.as_deref()?).await
}

/// Bytes used by the files under `path` (recursively; symlinks not followed).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(peak_rss_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
    }
}
