//! Transactions: `client.txn().when([...]).and_then([...]).or_else([...])`.

use std::future::IntoFuture;

use cairn_proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, Compare as PbCompare, RequestOp, TxnRequest,
    TxnResponse as PbTxnResponse,
};

use crate::client::Client;
use crate::error::{Effect, Result};
use crate::kv::{
    prefix_end, BoxFuture, DeleteOp, DeleteResponse, GetOp, GetResponse, Header, KeyValue, PutOp, PutResponse,
};

/// How a [`Compare`] relates the key's field to the given value.
///
/// ```
/// use cairn_client::{Compare, CompareOp};
/// let newer = Compare::version("k", CompareOp::Greater, 3);
/// # let _ = newer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Field == value.
    Equal,
    /// Field != value.
    NotEqual,
    /// Field > value.
    Greater,
    /// Field < value.
    Less,
}

impl CompareOp {
    fn pb(self) -> i32 {
        (match self {
            CompareOp::Equal => compare::CompareResult::Equal,
            CompareOp::NotEqual => compare::CompareResult::NotEqual,
            CompareOp::Greater => compare::CompareResult::Greater,
            CompareOp::Less => compare::CompareResult::Less,
        }) as i32
    }
}

/// One condition of a transaction. A missing key has version, create and mod
/// revision 0, an empty value and lease 0.
///
/// ```
/// use cairn_client::{Compare, CompareOp};
///
/// let absent = Compare::create_revision("jobs/1", CompareOp::Equal, 0);
/// let unchanged = Compare::mod_revision("jobs/1", CompareOp::Equal, 42);
/// let all_old = Compare::mod_revision("jobs/", CompareOp::Less, 100).with_prefix();
/// # let _ = (absent, unchanged, all_old);
/// ```
#[derive(Clone, Debug)]
pub struct Compare(pub(crate) PbCompare);

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: compare::CompareTarget, v: compare::TargetUnion) -> Self {
        Compare(PbCompare {
            result: op.pb(),
            target: target as i32,
            key: key.into(),
            target_union: Some(v),
            range_end: Vec::new(),
        })
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, op, compare::CompareTarget::Value, compare::TargetUnion::Value(value.into()))
    }

    /// Compares the key's version (number of writes since creation).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Compare::new(key, op, compare::CompareTarget::Version, compare::TargetUnion::Version(version))
    }

    /// Compares the key's creation revision.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Compare::new(key, op, compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(rev))
    }

    /// Compares the key's last modification revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Compare::new(key, op, compare::CompareTarget::Mod, compare::TargetUnion::ModRevision(rev))
    }

    /// Compares the key's lease.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Compare::new(key, op, compare::CompareTarget::Lease, compare::TargetUnion::Lease(lease))
    }

    /// True if the key does not exist.
    pub fn missing(key: impl Into<Vec<u8>>) -> Self {
        Compare::create_revision(key, CompareOp::Equal, 0)
    }

    /// True if the key exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare::create_revision(key, CompareOp::Greater, 0)
    }

    /// Applies the comparison to every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }

    /// Applies the comparison to every key in `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }
}

/// One operation of a transaction branch.
///
/// ```
/// use cairn_client::TxnOp;
///
/// let ops: Vec<TxnOp> = vec![TxnOp::put("a", "1").into(), TxnOp::delete("b").prefix().into()];
/// # let _ = ops;
/// ```
#[derive(Clone, Debug)]
pub enum TxnOp {
    /// A get/range.
    Get(GetOp),
    /// A put.
    Put(PutOp),
    /// A delete.
    Delete(DeleteOp),
    /// A nested transaction (no `when` or branch may write a key twice).
    Txn(TxnSpec),
}

impl TxnOp {
    /// A get of `key` (add options such as `.prefix()`).
    pub fn get(key: impl Into<Vec<u8>>) -> GetOp {
        GetOp::new(key)
    }

    /// A put of `value` at `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutOp {
        PutOp::new(key, value)
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> DeleteOp {
        DeleteOp::new(key)
    }

    fn writes(&self) -> bool {
        match self {
            TxnOp::Get(_) => false,
            TxnOp::Put(_) | TxnOp::Delete(_) => true,
            TxnOp::Txn(t) => t.writes(),
        }
    }

    fn pb(self) -> RequestOp {
        let request = match self {
            TxnOp::Get(op) => request_op::Request::RequestRange(op.req),
            TxnOp::Put(op) => request_op::Request::RequestPut(op.req),
            TxnOp::Delete(op) => request_op::Request::RequestDeleteRange(op.req),
            TxnOp::Txn(t) => request_op::Request::RequestTxn(t.into_pb()),
        };
        RequestOp { request: Some(request) }
    }
}

impl From<GetOp> for TxnOp {
    fn from(op: GetOp) -> Self {
        TxnOp::Get(op)
    }
}

impl From<PutOp> for TxnOp {
    fn from(op: PutOp) -> Self {
        TxnOp::Put(op)
    }
}

impl From<DeleteOp> for TxnOp {
    fn from(op: DeleteOp) -> Self {
        TxnOp::Delete(op)
    }
}

impl From<TxnSpec> for TxnOp {
    fn from(t: TxnSpec) -> Self {
        TxnOp::Txn(t)
    }
}

/// A transaction's content without a client: what a nested transaction is
/// made of, and what [`Txn`] sends.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Compare, TxnOp, TxnSpec};
/// let spec = TxnSpec::new().when([Compare::missing("a")]).and_then([TxnOp::put("a", "1")]);
/// let resp = client.txn_spec(spec).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TxnSpec {
    when: Vec<Compare>,
    then: Vec<TxnOp>,
    otherwise: Vec<TxnOp>,
}

impl TxnSpec {
    /// An empty transaction (no conditions: `and_then` runs).
    pub fn new() -> Self {
        TxnSpec::default()
    }

    /// Adds conditions; all of them must hold for `and_then` to run.
    pub fn when(mut self, cmps: impl IntoIterator<Item = Compare>) -> Self {
        self.when.extend(cmps);
        self
    }

    /// Adds operations run if every condition holds.
    pub fn and_then<O: Into<TxnOp>>(mut self, ops: impl IntoIterator<Item = O>) -> Self {
        self.then.extend(ops.into_iter().map(Into::into));
        self
    }

    /// Adds operations run if some condition fails.
    pub fn or_else<O: Into<TxnOp>>(mut self, ops: impl IntoIterator<Item = O>) -> Self {
        self.otherwise.extend(ops.into_iter().map(Into::into));
        self
    }

    /// True without conditions and without an `or_else` branch.
    pub(crate) fn is_unconditional(&self) -> bool {
        self.when.is_empty() && self.otherwise.is_empty()
    }

    /// The `and_then` operations.
    pub(crate) fn into_ops(self) -> Vec<TxnOp> {
        self.then
    }

    fn writes(&self) -> bool {
        self.then.iter().chain(&self.otherwise).any(TxnOp::writes)
    }

    fn into_pb(self) -> TxnRequest {
        TxnRequest {
            compare: self.when.into_iter().map(|c| c.0).collect(),
            success: self.then.into_iter().map(TxnOp::pb).collect(),
            failure: self.otherwise.into_iter().map(TxnOp::pb).collect(),
        }
    }
}

/// A transaction being built; `.await` it to send it. It is applied atomically
/// at one revision.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Compare, CompareOp, TxnOp};
///
/// // Move a job from "queued" to "running" only if nobody else did. Operations
/// // of different kinds: one `and_then` per kind (they add up, in order), or an
/// // array of `TxnOp`s built with `.into()`.
/// let resp = client
///     .txn()
///     .when([Compare::exists("queued/7")])
///     .and_then([TxnOp::delete("queued/7")])
///     .and_then([TxnOp::put("running/7", "worker-a")])
///     .or_else([TxnOp::get("running/7")])
///     .await?;
/// if !resp.succeeded {
///     println!("already taken");
/// }
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct Txn {
    client: Client,
    spec: TxnSpec,
}

impl Txn {
    /// Adds conditions; all of them must hold for `and_then` to run.
    pub fn when(mut self, cmps: impl IntoIterator<Item = Compare>) -> Self {
        self.spec = self.spec.when(cmps);
        self
    }

    /// Adds operations run if every condition holds (after those added before).
    pub fn and_then<O: Into<TxnOp>>(mut self, ops: impl IntoIterator<Item = O>) -> Self {
        self.spec = self.spec.and_then(ops);
        self
    }

    /// Adds operations run if some condition fails (after those added before).
    pub fn or_else<O: Into<TxnOp>>(mut self, ops: impl IntoIterator<Item = O>) -> Self {
        self.spec = self.spec.or_else(ops);
        self
    }

    /// Sends the transaction (same as `.await`). A transaction that writes is a
    /// write for the retry policy; one that only reads is retried like a read.
    pub async fn send(self) -> Result<TxnResponse> {
        let effect = if self.spec.writes() { Effect::Write } else { Effect::Read };
        let req = self.spec.into_pb();
        let max = self.client.response_bytes_max();
        let resp = self
            .client
            .call(effect, |ch| {
                let req = req.clone();
                async move { Ok(KvClient::new(ch).max_decoding_message_size(max).txn(req).await?.into_inner()) }
            })
            .await?;
        Ok(resp.into())
    }
}

impl IntoFuture for Txn {
    type Output = Result<TxnResponse>;
    type IntoFuture = BoxFuture<Result<TxnResponse>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The result of a transaction.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Compare, TxnOp};
/// let r = client.txn().when([Compare::exists("k")]).and_then([TxnOp::get("k")]).await?;
/// if r.succeeded {
///     let kv = &r.responses[0].as_get().expect("a get").kvs[0];
///     println!("{} at revision {}", kv.value_str(), r.header.revision);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Header; `header.revision` is the transaction's revision if it wrote.
    pub header: Header,
    /// Whether every condition held (`and_then` ran) or not (`or_else` ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// The result of one operation of a transaction.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{TxnOp, TxnOpResponse};
/// let r = client.txn().and_then([TxnOp::delete("k").prev_kv()]).await?;
/// if let Some(TxnOpResponse::Delete(d)) = r.responses.first() {
///     println!("deleted {}", d.deleted);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Result of a get.
    Get(GetResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    Delete(DeleteResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

impl TxnOpResponse {
    /// The get result, if this was a get.
    pub fn as_get(&self) -> Option<&GetResponse> {
        match self {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        }
    }
}

impl From<PbTxnResponse> for TxnResponse {
    fn from(r: PbTxnResponse) -> Self {
        let mut resp = TxnResponse::from_pb(r);
        let header = resp.header;
        resp.fill_headers(header);
        resp
    }
}

impl TxnResponse {
    /// The results of the operations inside a transaction may come with empty
    /// headers (etcd fills only the outer one); the whole transaction has one
    /// revision, so they get the outer header.
    fn fill_headers(&mut self, outer: Header) {
        for op in &mut self.responses {
            match op {
                TxnOpResponse::Get(g) if g.header.revision == 0 => g.header = outer,
                TxnOpResponse::Put(p) if p.header.revision == 0 => p.header = outer,
                TxnOpResponse::Delete(d) if d.header.revision == 0 => d.header = outer,
                TxnOpResponse::Txn(t) => {
                    if t.header.revision == 0 {
                        t.header = outer;
                    }
                    t.fill_headers(outer);
                }
                _ => {}
            }
        }
    }

    fn from_pb(r: PbTxnResponse) -> Self {
        let responses = r
            .responses
            .into_iter()
            .filter_map(|op| op.response)
            .map(|op| match op {
                response_op::Response::ResponseRange(g) => TxnOpResponse::Get(g.into()),
                response_op::Response::ResponsePut(p) => {
                    TxnOpResponse::Put(PutResponse { header: p.header.into(), prev_kv: p.prev_kv.map(KeyValue::from) })
                }
                response_op::Response::ResponseDeleteRange(d) => TxnOpResponse::Delete(DeleteResponse {
                    header: d.header.into(),
                    deleted: d.deleted,
                    prev_kvs: d.prev_kvs.into_iter().map(KeyValue::from).collect(),
                }),
                response_op::Response::ResponseTxn(t) => TxnOpResponse::Txn(TxnResponse::from_pb(t)),
            })
            .collect();
        TxnResponse { header: r.header.into(), succeeded: r.succeeded, responses }
    }
}

impl Client {
    /// Starts a transaction: `.when([...]).and_then([...]).or_else([...])`, then
    /// `.await`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// use cairn_client::{Compare, TxnOp};
    /// let created = client.txn().when([Compare::missing("k")]).and_then([TxnOp::put("k", "v")]).await?.succeeded;
    /// # Ok(()) }
    /// ```
    pub fn txn(&self) -> Txn {
        Txn { client: self.clone(), spec: TxnSpec::new() }
    }

    /// Sends a prepared [`TxnSpec`].
    pub fn txn_spec(&self, spec: TxnSpec) -> Txn {
        Txn { client: self.clone(), spec }
    }
}
