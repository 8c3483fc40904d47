//! Lease commands: grant, revoke, timetolive, list, keep-alive.
//!
//! JSON follows etcdctl's (header fields inline, `ID`/`TTL` for grant and
//! keep-alive, `id`/`ttl`/`granted-ttl`/`keys` for timetolive).

use std::time::Duration;

use cairn_client::{Client, Error as ClientError, Header, LeaseKeepAlive};
use serde_json::{json, Map, Value};

use crate::cli::LeaseCommand;
use crate::ctx::{parse_hex_id, Ctx};
use crate::errors::{CliError, CliResult};
use crate::limits;
use crate::output::{b64, header_json, Printer, Render, Table};

pub async fn run(ctx: &Ctx, cmd: &LeaseCommand) -> CliResult<()> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            if *ttl <= 0 {
                return Err(CliError::invalid(format!("bad TTL {ttl}: a lease TTL is a positive number of seconds")));
            }
            let client = ctx.connect().await?;
            let g = ctx.bounded(async { Ok(client.lease_grant(*ttl).await?) }).await?;
            ctx.printer.emit(&LeaseLine { header: g.header, id: g.id, ttl: g.ttl, kind: LineKind::Granted })
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_hex_id("lease", id)? as i64;
            let client = ctx.connect().await?;
            let header = ctx.bounded(async { Ok(client.lease_revoke(id).await?) }).await?;
            ctx.printer.emit(&LeaseLine { header, id, ttl: 0, kind: LineKind::Revoked })
        }
        LeaseCommand::Timetolive { id, keys } => {
            let id = parse_hex_id("lease", id)? as i64;
            let client = ctx.connect().await?;
            let out = ctx
                .bounded(async {
                    match client.lease_time_to_live(id, *keys).await {
                        Ok(t) => Ok(TimeToLive {
                            header: t.header,
                            id,
                            ttl: t.ttl,
                            granted_ttl: t.granted_ttl,
                            keys: keys.then_some(t.keys),
                        }),
                        // etcdctl reports an expired lease as an answer, not as an error.
                        Err(ClientError::LeaseNotFound { .. }) => {
                            Ok(TimeToLive { header: Header::default(), id, ttl: -1, granted_ttl: 0, keys: None })
                        }
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
            ctx.printer.emit(&out)
        }
        LeaseCommand::List => {
            let client = ctx.connect().await?;
            let ids = ctx.bounded(async { Ok(client.lease_leases().await?) }).await?;
            ctx.printer.emit(&LeaseList { ids })
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(ctx, parse_hex_id("lease", id)? as i64, *once).await,
    }
}

async fn keep_alive(ctx: &Ctx, id: i64, once: bool) -> CliResult<()> {
    let client = ctx.connect().await?;
    let limit = ctx.global.command_timeout;
    let expired = || {
        CliError::failed(format!("lease {id:016x} expired or revoked"))
            .with_hint("grant a new lease with `cairnctl lease grant TTL`")
    };
    // Opening the stream renews the lease once: an expired lease shows up here already.
    let mut keeper = match tokio::time::timeout(limit, client.lease_keep_alive(id)).await {
        Ok(Ok(k)) => k,
        Ok(Err(ClientError::LeaseNotFound { .. })) => return Err(expired()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(CliError::timeout(limit)),
    };
    // The TTL of a renewal already made (opening a stream renews once).
    let mut renewed = Some(keeper.ttl());
    loop {
        let next = match renewed.take() {
            Some(ttl) => Ok(Ok(ttl)),
            None => tokio::time::timeout(limit, keeper.keep_alive()).await,
        };
        let ttl = match next {
            Ok(Ok(ttl)) => ttl,
            Ok(Err(ClientError::LeaseNotFound { .. })) => return Err(expired()),
            // A broken stream (member died): open a new one, on another member if need be.
            Ok(Err(ClientError::Unavailable { reason })) if !once => {
                eprintln!("keep-alive stream lost ({reason}); reopening");
                keeper = reopen(ctx, &client, id).await?;
                renewed = Some(keeper.ttl());
                continue;
            }
            // A member that stopped answering: the same, after the command timeout.
            Err(_) if !once => {
                eprintln!("keep-alive got no answer within {limit:?}; reopening");
                keeper = reopen(ctx, &client, id).await?;
                renewed = Some(keeper.ttl());
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(CliError::timeout(limit)),
        };
        ctx.printer.emit(&LeaseLine { header: Header::default(), id, ttl, kind: LineKind::KeptAlive })?;
        if once {
            return Ok(());
        }
        // Renew at a third of the TTL, as etcd's clients do.
        let pause = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Opens a new keep-alive stream; every failed attempt moves the client to the next member.
async fn reopen(ctx: &Ctx, client: &Client, id: i64) -> CliResult<LeaseKeepAlive> {
    let mut last = None;
    for attempt in 0..limits::STREAM_REOPEN_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match ctx.bounded(async { Ok(client.lease_keep_alive(id).await?) }).await {
            Ok(k) => return Ok(k),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| CliError::failed("no attempt made")).context("reopen the keep-alive stream"))
}

fn inline_header(h: &Header) -> Map<String, Value> {
    match header_json(h) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[derive(Clone, Copy)]
enum LineKind {
    Granted,
    Revoked,
    KeptAlive,
}

struct LeaseLine {
    header: Header,
    id: i64,
    ttl: i64,
    kind: LineKind,
}

impl Render for LeaseLine {
    fn simple(&self, _: &Printer) -> String {
        match self.kind {
            LineKind::Granted => format!("lease {:016x} granted with TTL({}s)\n", self.id, self.ttl),
            LineKind::Revoked => format!("lease {:016x} revoked\n", self.id),
            LineKind::KeptAlive => format!("lease {:016x} keepalived with TTL({})\n", self.id, self.ttl),
        }
    }
    fn json(&self) -> Value {
        match self.kind {
            LineKind::Revoked => json!({"header": header_json(&self.header)}),
            // The keep-alive stream carries no header worth printing: just the lease.
            LineKind::KeptAlive => json!({"ID": self.id, "TTL": self.ttl}),
            LineKind::Granted => {
                let mut m = inline_header(&self.header);
                m.insert("ID".into(), json!(self.id));
                m.insert("TTL".into(), json!(self.ttl));
                Value::Object(m)
            }
        }
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["LEASE", "TTL", "STATE"]);
        let state = match self.kind {
            LineKind::Granted => "granted",
            LineKind::Revoked => "revoked",
            LineKind::KeptAlive => "kept alive",
        };
        let ttl = if matches!(self.kind, LineKind::Revoked) { String::new() } else { format!("{}s", self.ttl) };
        t.row(vec![format!("{:016x}", self.id), ttl, state.into()]);
        t
    }
}

struct TimeToLive {
    header: Header,
    id: i64,
    ttl: i64,
    granted_ttl: i64,
    keys: Option<Vec<Vec<u8>>>,
}

impl Render for TimeToLive {
    fn simple(&self, p: &Printer) -> String {
        if self.ttl < 0 {
            return format!("lease {:016x} already expired\n", self.id);
        }
        let mut s = format!("lease {:016x} granted with TTL({}s), remaining({}s)", self.id, self.granted_ttl, self.ttl);
        if let Some(keys) = &self.keys {
            let keys: Vec<String> = keys.iter().map(|k| p.bytes(k)).collect();
            s += &format!(", attached keys([{}])", keys.join(" "));
        }
        s + "\n"
    }
    fn json(&self) -> Value {
        let mut m = inline_header(&self.header);
        m.insert("id".into(), json!(self.id));
        m.insert("ttl".into(), json!(self.ttl));
        m.insert("granted-ttl".into(), json!(self.granted_ttl));
        m.insert("keys".into(), Value::Array(self.keys.iter().flatten().map(|k| b64(k)).collect()));
        Value::Object(m)
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&["LEASE", "GRANTED TTL", "REMAINING TTL", "KEYS"]);
        let keys: Vec<String> = self.keys.iter().flatten().map(|k| p.bytes(k)).collect();
        let remaining = if self.ttl < 0 { "expired".to_string() } else { format!("{}s", self.ttl) };
        t.row(vec![format!("{:016x}", self.id), format!("{}s", self.granted_ttl), remaining, keys.join(" ")]);
        t
    }
}

struct LeaseList {
    ids: Vec<i64>,
}

impl Render for LeaseList {
    fn simple(&self, _: &Printer) -> String {
        let mut s = format!("found {} leases\n", self.ids.len());
        for id in &self.ids {
            s += &format!("{id:016x}\n");
        }
        s
    }
    fn json(&self) -> Value {
        json!({"leases": self.ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()})
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["LEASE"]);
        for id in &self.ids {
            t.row(vec![format!("{id:016x}")]);
        }
        t
    }
}
