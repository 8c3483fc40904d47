//! Key commands: get, put, del, txn, compaction.

use std::io::{BufRead, IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;

use cairn_client::{
    CompactResponse, Compare as ClientCompare, CompareOp as ClientCompareOp, DeleteOp, DeleteResponse, GetOp,
    GetResponse, PutOp, PutResponse, SortOrder as ClientSortOrder, SortTarget as ClientSortTarget,
    TxnOp as ClientTxnOp, TxnOpResponse, TxnResponse,
};
use serde_json::{json, Value};

use crate::cli::{CompactionArgs, Consistency, DelArgs, GetArgs, PutArgs, SortOrder, SortTarget, TxnArgs};
use crate::ctx::{parse_hex_id, Ctx};
use crate::errors::{CliError, CliResult};
use crate::limits;
use crate::output::{header_json, kv_json, kv_row, Printer, Render, Table, KV_COLUMNS};
use crate::txn_grammar::{self, Compare, CompareOp, CompareTarget, TxnOp};

/// Applies `get`'s flags to a client get builder or a `GetOp` (same method names).
macro_rules! apply_get_args {
    ($b:expr, $a:expr) => {{
        let a: &GetArgs = $a;
        let mut b = $b;
        if a.prefix {
            b = b.prefix();
        } else if a.from_key {
            b = b.from_key();
        } else if let Some(end) = &a.range_end {
            b = b.range_end(end.as_bytes().to_vec());
        }
        if a.rev != 0 {
            b = b.revision(a.rev);
        }
        if a.limit != 0 {
            b = b.limit(a.limit);
        }
        if let Some((target, order)) = sort_of(a) {
            b = b.sort(target, order);
        }
        if a.keys_only {
            b = b.keys_only();
        }
        if a.count_only {
            b = b.count_only();
        }
        if a.consistency == Consistency::Serializable {
            b = b.serializable();
        }
        b
    }};
}

macro_rules! apply_put_args {
    ($b:expr, $a:expr, $lease:expr) => {{
        let a: &PutArgs = $a;
        let mut b = $b;
        if $lease != 0 {
            b = b.lease($lease);
        }
        if a.prev_kv {
            b = b.prev_kv();
        }
        if a.ignore_value {
            b = b.ignore_value();
        }
        if a.ignore_lease {
            b = b.ignore_lease();
        }
        b
    }};
}

macro_rules! apply_del_args {
    ($b:expr, $a:expr) => {{
        let a: &DelArgs = $a;
        let mut b = $b;
        if a.prefix {
            b = b.prefix();
        } else if a.from_key {
            b = b.from_key();
        } else if let Some(end) = &a.range_end {
            b = b.range_end(end.as_bytes().to_vec());
        }
        if a.prev_kv {
            b = b.prev_kv();
        }
        b
    }};
}

/// etcdctl's rules: --order alone sorts by key; --sort-by alone sorts ascending.
fn sort_of(a: &GetArgs) -> Option<(ClientSortTarget, ClientSortOrder)> {
    if a.order.is_none() && a.sort_by.is_none() {
        return None;
    }
    let target = match a.sort_by.unwrap_or(SortTarget::Key) {
        SortTarget::Create => ClientSortTarget::Create,
        SortTarget::Key => ClientSortTarget::Key,
        SortTarget::Modify => ClientSortTarget::Mod,
        SortTarget::Value => ClientSortTarget::Value,
        SortTarget::Version => ClientSortTarget::Version,
    };
    let order = match a.order.unwrap_or(SortOrder::Ascend) {
        SortOrder::Ascend => ClientSortOrder::Ascend,
        SortOrder::Descend => ClientSortOrder::Descend,
    };
    Some((target, order))
}

fn key_bytes(k: &std::ffi::OsStr) -> Vec<u8> {
    k.as_bytes().to_vec()
}

/// etcdctl's rule: `--from-key ""` means from the smallest key, `\0`.
fn range_key(k: &std::ffi::OsStr, from_key: bool) -> Vec<u8> {
    if from_key && k.is_empty() {
        vec![0]
    } else {
        key_bytes(k)
    }
}

fn lease_of(a: &PutArgs) -> CliResult<i64> {
    Ok(parse_hex_id("lease", &a.lease)? as i64)
}

/// The value of a put: the argument, stdin, or nothing with --ignore-value.
fn put_value(a: &PutArgs) -> CliResult<Vec<u8>> {
    if a.ignore_value {
        return Ok(Vec::new());
    }
    if let Some(v) = &a.value {
        return Ok(v.as_bytes().to_vec());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::invalid("put needs a value: give it as the second argument or pipe it on stdin"));
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(limits::STDIN_VALUE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::io("read the value from stdin", e))?;
    if buf.len() as u64 > limits::STDIN_VALUE_BYTES_MAX {
        return Err(CliError::invalid(format!(
            "the value on stdin is larger than {} bytes",
            limits::STDIN_VALUE_BYTES_MAX
        )));
    }
    Ok(buf)
}

pub async fn get(ctx: &Ctx, a: &GetArgs) -> CliResult<()> {
    let client = ctx.connect().await?;
    let resp = ctx.bounded(async { Ok(apply_get_args!(client.get(range_key(&a.key, a.from_key)), a).await?) }).await?;
    ctx.printer.emit(&GetOut { resp, value_only: a.print_value_only, count_only: a.count_only })
}

pub async fn put(ctx: &Ctx, a: &PutArgs) -> CliResult<()> {
    let lease = lease_of(a)?;
    let value = put_value(a)?;
    let client = ctx.connect().await?;
    let resp =
        ctx.bounded(async { Ok(apply_put_args!(client.put(key_bytes(&a.key), value), a, lease).await?) }).await?;
    ctx.printer.emit(&PutOut(resp))
}

pub async fn del(ctx: &Ctx, a: &DelArgs) -> CliResult<()> {
    let client = ctx.connect().await?;
    let resp =
        ctx.bounded(async { Ok(apply_del_args!(client.delete(range_key(&a.key, a.from_key)), a).await?) }).await?;
    ctx.printer.emit(&DelOut(resp))
}

pub async fn compaction(ctx: &Ctx, a: &CompactionArgs) -> CliResult<()> {
    let client = ctx.connect().await?;
    let resp = ctx.bounded(async { Ok(client.compact(a.revision, a.physical).await?) }).await?;
    ctx.printer.emit(&CompactOut { resp, revision: a.revision })
}

pub async fn txn(ctx: &Ctx, a: &TxnArgs) -> CliResult<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let spec = if a.interactive {
        let mut out = std::io::stdout();
        txn_grammar::read_txn(&mut input as &mut dyn BufRead, Some(&mut out))
    } else {
        txn_grammar::read_txn(&mut input as &mut dyn BufRead, None)
    }
    .map_err(|e| CliError::invalid(e.to_string()).with_hint("see `cairnctl txn --help` for the grammar"))?;
    let compares: Vec<ClientCompare> = spec.compares.iter().map(to_compare).collect();
    let success = spec.success.iter().map(to_op).collect::<CliResult<Vec<_>>>()?;
    let failure = spec.failure.iter().map(to_op).collect::<CliResult<Vec<_>>>()?;
    let client = ctx.connect().await?;
    let resp = ctx.bounded(async { Ok(client.txn().when(compares).and_then(success).or_else(failure).await?) }).await?;
    ctx.printer.emit(&TxnOut(resp))
}

fn to_compare(c: &Compare) -> ClientCompare {
    let op = match c.op {
        CompareOp::Equal => ClientCompareOp::Equal,
        CompareOp::NotEqual => ClientCompareOp::NotEqual,
        CompareOp::Less => ClientCompareOp::Less,
        CompareOp::Greater => ClientCompareOp::Greater,
    };
    let key = c.key.clone();
    match &c.target {
        CompareTarget::Version(v) => ClientCompare::version(key, op, *v),
        CompareTarget::Create(r) => ClientCompare::create_revision(key, op, *r),
        CompareTarget::Mod(r) => ClientCompare::mod_revision(key, op, *r),
        CompareTarget::Value(v) => ClientCompare::value(key, op, v.clone()),
        CompareTarget::Lease(l) => ClientCompare::lease(key, op, *l),
    }
}

fn to_op(op: &TxnOp) -> CliResult<ClientTxnOp> {
    Ok(match op {
        TxnOp::Get(a) => apply_get_args!(GetOp::new(range_key(&a.key, a.from_key)), a).into(),
        TxnOp::Put(a) => {
            let lease = lease_of(a)?;
            let value = a.value.as_ref().map(|v| v.as_bytes().to_vec()).unwrap_or_default();
            apply_put_args!(PutOp::new(key_bytes(&a.key), value), a, lease).into()
        }
        TxnOp::Del(a) => apply_del_args!(DeleteOp::new(range_key(&a.key, a.from_key)), a).into(),
    })
}

/// `get`'s result with the flags that change its simple rendering.
pub struct GetOut {
    pub resp: GetResponse,
    pub value_only: bool,
    pub count_only: bool,
}

impl Render for GetOut {
    fn simple(&self, p: &Printer) -> String {
        String::from_utf8_lossy(&self.simple_bytes(p)).into_owned()
    }
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        if self.count_only {
            return format!("{}\n", self.resp.count).into_bytes();
        }
        self.resp.kvs.iter().flat_map(|kv| p.kv_lines(kv, self.value_only)).collect()
    }
    fn json(&self) -> Value {
        get_json(&self.resp)
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&KV_COLUMNS);
        for kv in &self.resp.kvs {
            t.row(kv_row(p, kv));
        }
        t
    }
}

fn get_json(r: &GetResponse) -> Value {
    json!({
        "header": header_json(&r.header),
        "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "more": r.more,
        "count": r.count,
    })
}

pub struct PutOut(pub PutResponse);

impl Render for PutOut {
    fn simple(&self, p: &Printer) -> String {
        String::from_utf8_lossy(&self.simple_bytes(p)).into_owned()
    }
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        let mut s = b"OK\n".to_vec();
        if let Some(kv) = &self.0.prev_kv {
            s.extend(p.kv_lines(kv, false));
        }
        s
    }
    fn json(&self) -> Value {
        put_json(&self.0)
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&["REVISION", "PREV KEY", "PREV VALUE"]);
        let (k, v) = self.0.prev_kv.as_ref().map(|kv| (p.bytes(&kv.key), p.bytes(&kv.value))).unwrap_or_default();
        t.row(vec![self.0.header.revision.to_string(), k, v]);
        t
    }
}

fn put_json(r: &PutResponse) -> Value {
    json!({"header": header_json(&r.header), "prev_kv": r.prev_kv.as_ref().map(kv_json)})
}

pub struct DelOut(pub DeleteResponse);

impl Render for DelOut {
    fn simple(&self, p: &Printer) -> String {
        String::from_utf8_lossy(&self.simple_bytes(p)).into_owned()
    }
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        let mut s = format!("{}\n", self.0.deleted).into_bytes();
        for kv in &self.0.prev_kvs {
            s.extend(p.kv_lines(kv, false));
        }
        s
    }
    fn json(&self) -> Value {
        del_json(&self.0)
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&["DELETED", "REVISION", "PREV KEY", "PREV VALUE"]);
        let mut rows = self.0.prev_kvs.iter().map(|kv| (p.bytes(&kv.key), p.bytes(&kv.value))).peekable();
        if rows.peek().is_none() {
            t.row(vec![self.0.deleted.to_string(), self.0.header.revision.to_string(), String::new(), String::new()]);
        }
        for (k, v) in rows {
            t.row(vec![self.0.deleted.to_string(), self.0.header.revision.to_string(), k, v]);
        }
        t
    }
}

fn del_json(r: &DeleteResponse) -> Value {
    json!({
        "header": header_json(&r.header),
        "deleted": r.deleted,
        "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

pub struct TxnOut(pub TxnResponse);

impl Render for TxnOut {
    fn simple(&self, p: &Printer) -> String {
        String::from_utf8_lossy(&self.simple_bytes(p)).into_owned()
    }
    fn simple_bytes(&self, p: &Printer) -> Vec<u8> {
        let mut s = if self.0.succeeded { b"SUCCESS\n".to_vec() } else { b"FAILURE\n".to_vec() };
        for r in &self.0.responses {
            s.push(b'\n');
            s.extend(match r {
                TxnOpResponse::Get(g) => {
                    GetOut { resp: g.clone(), value_only: false, count_only: false }.simple_bytes(p)
                }
                TxnOpResponse::Put(x) => PutOut(x.clone()).simple_bytes(p),
                TxnOpResponse::Delete(x) => DelOut(x.clone()).simple_bytes(p),
                TxnOpResponse::Txn(t) => TxnOut(t.clone()).simple_bytes(p),
            });
        }
        s
    }
    fn json(&self) -> Value {
        txn_json(&self.0)
    }
    fn table(&self, p: &Printer) -> Table {
        let mut t = Table::new(&["#", "RESULT", "KEY", "VALUE", "REVISION"]);
        t.row(vec![
            String::new(),
            if self.0.succeeded { "SUCCESS" } else { "FAILURE" }.into(),
            String::new(),
            String::new(),
            self.0.header.revision.to_string(),
        ]);
        for (i, r) in self.0.responses.iter().enumerate() {
            let n = (i + 1).to_string();
            match r {
                TxnOpResponse::Get(g) => {
                    if g.kvs.is_empty() {
                        t.row(vec![n.clone(), "get: 0 keys".into(), String::new(), String::new(), String::new()]);
                    }
                    for kv in &g.kvs {
                        t.row(vec![
                            n.clone(),
                            "get".into(),
                            p.bytes(&kv.key),
                            p.bytes(&kv.value),
                            kv.mod_revision.to_string(),
                        ]);
                    }
                }
                TxnOpResponse::Put(_) => t.row(vec![n, "put: OK".into(), String::new(), String::new(), String::new()]),
                TxnOpResponse::Delete(d) => {
                    t.row(vec![n, format!("del: {} deleted", d.deleted), String::new(), String::new(), String::new()])
                }
                TxnOpResponse::Txn(x) => t.row(vec![
                    n,
                    format!("txn: {}", if x.succeeded { "SUCCESS" } else { "FAILURE" }),
                    String::new(),
                    String::new(),
                    String::new(),
                ]),
            }
        }
        t
    }
}

/// A txn in JSON: etcd's `responses[i].response_range|response_put|response_delete_range`.
fn txn_json(r: &TxnResponse) -> Value {
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|op| match op {
            TxnOpResponse::Get(g) => json!({"response_range": get_json(g)}),
            TxnOpResponse::Put(x) => json!({"response_put": put_json(x)}),
            TxnOpResponse::Delete(x) => json!({"response_delete_range": del_json(x)}),
            TxnOpResponse::Txn(t) => json!({"response_txn": txn_json(t)}),
        })
        .collect();
    json!({"header": header_json(&r.header), "succeeded": r.succeeded, "responses": responses})
}

pub struct CompactOut {
    pub resp: CompactResponse,
    pub revision: i64,
}

impl Render for CompactOut {
    fn simple(&self, _: &Printer) -> String {
        format!("compacted revision {}\n", self.revision)
    }
    fn json(&self) -> Value {
        json!({"header": header_json(&self.resp.header), "compact_revision": self.revision})
    }
    fn table(&self, _: &Printer) -> Table {
        let mut t = Table::new(&["COMPACTED REVISION"]);
        t.row(vec![self.revision.to_string()]);
        t
    }
}
