//! Per-endpoint commands: endpoint status/health/hashkv, and running a call on each endpoint.

use std::time::{Duration, Instant};

use cairn_client::{Error as ClientError, HashKv, Member, MemberStatus};
use serde_json::{json, Value};

use crate::cli::EndpointCommand;
use crate::cmd::maintenance::alarm_name;
use crate::ctx::{display_endpoint, Ctx};
use crate::errors::{CliError, CliResult, ExitKind};
use crate::output::{header_json, human_bytes, Printer, Render, Table};

/// The endpoints a per-endpoint command runs on: --endpoints, or with
/// `--cluster` the client URLs of every member.
pub async fn targets(ctx: &Ctx, cluster: bool) -> CliResult<Vec<String>> {
    if !cluster {
        return Ok(ctx.endpoints());
    }
    let client = ctx.connect().await?;
    let list = match ctx.bounded(async { Ok(client.member_list(true).await?) }).await {
        Ok(list) => list,
        // A server without the Cluster API: --endpoints is the best list there is.
        Err(e) if e.message.starts_with("not supported") => {
            eprintln!("note: no member list ({}); using --endpoints", e.message);
            return Ok(ctx.endpoints());
        }
        Err(e) => return Err(e),
    };
    let mut members = list.members;
    fill_client_urls(ctx, &mut members).await;
    let mut urls: Vec<String> = Vec::new();
    for m in &members {
        for u in &m.client_urls {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
    }
    if urls.is_empty() {
        return Err(CliError::failed("no member advertises a client URL").with_hint("check `cairnctl member list`"));
    }
    Ok(urls)
}

/// Members that advertise no client URL (not started yet, or a member list that
/// only knows the answering member's URLs) get the --endpoints entry whose status
/// names them, so that they can still be asked.
pub async fn fill_client_urls(ctx: &Ctx, members: &mut [Member]) {
    if members.iter().all(|m| !m.client_urls.is_empty()) {
        return;
    }
    let known: Vec<String> = members.iter().flat_map(|m| m.client_urls.clone()).collect();
    let unknown: Vec<String> = ctx.endpoints().into_iter().filter(|ep| !known.contains(ep)).collect();
    for (ep, status) in unknown.iter().zip(each(ctx, &unknown, |c| async move { c.status().await }).await) {
        if let (_, Ok(s)) = status {
            if let Some(m) = members.iter_mut().find(|m| m.id == s.header.member_id && m.client_urls.is_empty()) {
                m.client_urls.push(ep.clone());
            }
        }
    }
}

/// Runs `f` on every endpoint concurrently (each with its own connection),
/// keeping the order of `endpoints`.
pub async fn each<T, F, Fut>(ctx: &Ctx, endpoints: &[String], f: F) -> Vec<(String, CliResult<T>)>
where
    F: Fn(cairn_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let f = &f;
    let jobs = endpoints.iter().map(|ep| async move {
        let res = async {
            let c = ctx.connect_one(ep).await?;
            ctx.bounded(async { Ok(f(c).await?) }).await
        }
        .await;
        (display_endpoint(ep), res)
    });
    futures::future::join_all(jobs).await
}

/// Prints each failure on stderr and turns them into one error (or none).
pub fn report_failures<T>(what: &str, results: &[(String, CliResult<T>)]) -> CliResult<()> {
    let failed: Vec<&(String, CliResult<T>)> = results.iter().filter(|(_, r)| r.is_err()).collect();
    for (ep, r) in &failed {
        if let Err(e) = r {
            eprintln!("{what} failed on {ep}: {}", e.message);
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let all_unreachable = results.iter().all(|(_, r)| matches!(r, Err(e) if e.kind == ExitKind::Unreachable));
    let kind = if all_unreachable { ExitKind::Unreachable } else { ExitKind::Failed };
    // When every failure has the same advice (e.g. an unsupported call), give that.
    let hints: Vec<Option<&String>> =
        failed.iter().map(|(_, r)| r.as_ref().err().and_then(|e| e.hint.as_ref())).collect();
    let hint = match hints.first() {
        Some(Some(h)) if hints.iter().all(|x| x == &Some(*h)) && failed.len() == results.len() => (*h).clone(),
        _ => "check those members (`cairnctl cluster health`) and that --endpoints is right".to_string(),
    };
    Err(CliError::new(kind, format!("{what} failed on {} of {} endpoints", failed.len(), results.len()))
        .with_hint(hint))
}

pub async fn run(ctx: &Ctx, cmd: &EndpointCommand) -> CliResult<()> {
    match cmd {
        EndpointCommand::Status(c) => {
            let eps = targets(ctx, c.cluster).await?;
            let results = each(ctx, &eps, |c| async move { c.status().await }).await;
            let rows = results.iter().filter_map(|(ep, r)| r.as_ref().ok().map(|s| (ep.clone(), s.clone()))).collect();
            ctx.printer.emit(&StatusOut(rows))?;
            report_failures("status", &results)
        }
        EndpointCommand::Health(c) => {
            let eps = targets(ctx, c.cluster).await?;
            let rows = health(ctx, &eps).await;
            ctx.printer.emit(&HealthOut(rows.clone()))?;
            let bad = rows.iter().filter(|r| !r.healthy).count();
            if bad > 0 {
                let unreachable = rows.iter().all(|r| !r.reachable);
                let kind = if unreachable { ExitKind::Unreachable } else { ExitKind::CheckFailed };
                return Err(CliError::new(kind, format!("{bad} of {} endpoints unhealthy", rows.len()))
                    .with_hint("`cairnctl cluster health` shows why (leader, lag, alarms)"));
            }
            Ok(())
        }
        EndpointCommand::Hashkv { cluster, rev } => {
            let eps = targets(ctx, cluster.cluster).await?;
            let rev = *rev;
            let results = each(ctx, &eps, |c| async move { c.hash_kv(rev).await }).await;
            let rows: Vec<(String, HashKv)> =
                results.iter().filter_map(|(ep, r)| r.as_ref().ok().map(|h| (ep.clone(), *h))).collect();
            ctx.printer.emit(&HashOut(rows.clone()))?;
            warn_if_hashes_differ(&rows, rev);
            report_failures("hashkv", &results)
        }
    }
}

/// Members that hashed the same revision must agree; say so loudly if not.
fn warn_if_hashes_differ(rows: &[(String, HashKv)], rev: i64) {
    // Servers that do not say which revision they hashed (etcd 3.4) are only
    // comparable when the revision was given.
    if rev == 0 && rows.iter().any(|(_, h)| h.hash_revision == 0) {
        return;
    }
    for (i, (ep_a, a)) in rows.iter().enumerate() {
        for (ep_b, b) in &rows[i + 1..] {
            if a.hash_revision == b.hash_revision && a.compact_revision == b.compact_revision && a.hash != b.hash {
                eprintln!(
                    "warning: {ep_a} and {ep_b} hash revision {} differently ({} vs {}): their data diverged",
                    a.hash_revision, a.hash, b.hash
                );
            }
        }
    }
}

/// One endpoint's health.
#[derive(Debug, Clone)]
pub struct Health {
    pub endpoint: String,
    pub healthy: bool,
    /// Whether the endpoint answered at all.
    pub reachable: bool,
    pub took: Duration,
    pub error: String,
}

/// etcd's definition: a linearizable read is served (and no alarm is raised).
pub async fn health(ctx: &Ctx, endpoints: &[String]) -> Vec<Health> {
    let results = each(ctx, endpoints, |c| async move {
        let start = Instant::now();
        c.get("health").await?;
        let took = start.elapsed();
        let alarms = match c.alarm_list().await {
            Ok(a) => a,
            // A server without the alarm call has no alarms to report.
            Err(ClientError::Unsupported(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok((took, alarms))
    })
    .await;
    results
        .into_iter()
        .map(|(endpoint, r)| match r {
            Ok((took, alarms)) if alarms.is_empty() => {
                Health { endpoint, healthy: true, reachable: true, took, error: String::new() }
            }
            Ok((took, alarms)) => {
                let names: Vec<&str> = alarms.iter().map(|a| alarm_name(a.kind)).collect();
                let error = format!("Active Alarm(s): {}", names.join(","));
                Health { endpoint, healthy: false, reachable: true, took, error }
            }
            Err(e) => {
                let reachable = e.kind != ExitKind::Unreachable;
                Health { endpoint, healthy: false, reachable, took: Duration::ZERO, error: e.message }
            }
        })
        .collect()
}

struct StatusOut(Vec<(String, MemberStatus)>);

fn status_row(ep: &str, s: &MemberStatus) -> Vec<String> {
    vec![
        ep.to_string(),
        format!("{:x}", s.header.member_id),
        s.version.clone(),
        human_bytes(s.db_size),
        (s.leader == s.header.member_id).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
        s.errors.join(", "),
    ]
}

impl Render for StatusOut {
    fn simple(&self, _: &Printer) -> String {
        self.0.iter().map(|(ep, s)| status_row(ep, s).join(", ") + "\n").collect()
    }
    fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(ep, s)| {
                    json!({"Endpoint": ep, "Status": {
                        "header": header_json(&s.header),
                        "version": s.version,
                        "dbSize": s.db_size,
                        "leader": s.leader,
                        "raftIndex": s.raft_index,
                        "raftTerm": s.raft_term,
                        "raftAppliedIndex": s.raft_applied_index,
                        "errors": s.errors,
                        "dbSizeInUse": s.db_size_in_use,
                        "isLearner": s.is_learner,
                    }})
                })
                .collect(),
        )
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&[
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
        ]);
        for (ep, s) in &self.0 {
            t.row(status_row(ep, s));
        }
        t
    }
}

struct HealthOut(Vec<Health>);

fn took(d: Duration) -> String {
    format!("{d:?}")
}

impl Render for HealthOut {
    fn simple(&self, _: &Printer) -> String {
        self.0
            .iter()
            .map(|h| {
                if h.healthy {
                    format!("{} is healthy: successfully committed proposal: took = {}\n", h.endpoint, took(h.took))
                } else {
                    format!("{} is unhealthy: failed to commit proposal: {}\n", h.endpoint, h.error)
                }
            })
            .collect()
    }
    fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|h| json!({"endpoint": h.endpoint, "health": h.healthy, "took": took(h.took), "error": h.error}))
                .collect(),
        )
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
        for h in &self.0 {
            t.row(vec![h.endpoint.clone(), h.healthy.to_string(), took(h.took), h.error.clone()]);
        }
        t
    }
}

struct HashOut(Vec<(String, HashKv)>);

impl Render for HashOut {
    fn simple(&self, _: &Printer) -> String {
        self.0.iter().map(|(ep, h)| format!("{ep}, {}\n", h.hash)).collect()
    }
    fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(ep, h)| {
                    json!({"Endpoint": ep, "HashKV": {
                        "header": header_json(&h.header),
                        "hash": h.hash,
                        "compact_revision": h.compact_revision,
                        "hash_revision": h.hash_revision,
                    }})
                })
                .collect(),
        )
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["ENDPOINT", "HASH", "HASH REVISION", "COMPACT REVISION"]);
        for (ep, h) in &self.0 {
            t.row(vec![ep.clone(), h.hash.to_string(), h.hash_revision.to_string(), h.compact_revision.to_string()]);
        }
        t
    }
}
