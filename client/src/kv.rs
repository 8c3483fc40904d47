//! The raw key-value API: get/range, put, delete, compact, and their result types.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use cairn_proto::etcdserverpb::{
    kv_client::KvClient, range_request, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest,
    RangeResponse as PbRangeResponse, ResponseHeader,
};
use cairn_proto::mvccpb;

use crate::client::Client;
use crate::error::{Effect, Error, Result};

/// A boxed future, as the request builders of this crate return from
/// `IntoFuture`.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use std::future::IntoFuture;
/// let fut: cairn_client::BoxFuture<_> = client.get("k").into_future();
/// let resp = fut.await?;
/// # Ok(()) }
/// ```
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The header every response carries.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let h = client.put("k", "v").await?.header;
/// println!("applied at revision {} by member {:x}", h.revision, h.member_id);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The store's revision when the request was served: a read saw exactly the
    /// state at this revision; a write was applied at this revision.
    pub revision: i64,
    /// The Raft term of the answering member.
    pub raft_term: u64,
}

impl From<Option<ResponseHeader>> for Header {
    fn from(h: Option<ResponseHeader>) -> Self {
        let h = h.unwrap_or_default();
        Header { cluster_id: h.cluster_id, member_id: h.member_id, revision: h.revision, raft_term: h.raft_term }
    }
}

/// One key with its value and revisions.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// if let Some(kv) = client.get("k").await?.into_first() {
///     println!("{} = {} (created {}, modified {}, v{})", kv.key_str(), kv.value_str(),
///         kv.create_revision, kv.mod_revision, kv.version);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for `keys_only` reads).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    /// Unique per incarnation of a key: this is what a fencing token is.
    pub create_revision: i64,
    /// Revision of the last write to the key: the input of a compare-and-swap.
    pub mod_revision: i64,
    /// Number of writes since creation (1 after the creating write).
    pub version: i64,
    /// The lease attached to the key, 0 if none.
    pub lease: i64,
}

impl KeyValue {
    /// The key as UTF-8 (lossy).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }

    /// The value as UTF-8 (lossy).
    pub fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// The result of a get/range.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let page = client.get("jobs/").prefix().limit(100).await?;
/// println!("{} of {} jobs, more: {}", page.kvs.len(), page.count, page.more);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetResponse {
    /// Header; `header.revision` is the revision the read saw.
    pub header: Header,
    /// The keys found (at most `limit`), in the requested order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    /// Number of keys in the range (ignoring `limit`).
    pub count: i64,
}

impl GetResponse {
    /// The first key found, if any.
    pub fn first(&self) -> Option<&KeyValue> {
        self.kvs.first()
    }

    /// Consumes the response, keeping the first key found.
    pub fn into_first(self) -> Option<KeyValue> {
        self.kvs.into_iter().next()
    }
}

impl From<PbRangeResponse> for GetResponse {
    fn from(r: PbRangeResponse) -> Self {
        GetResponse {
            header: r.header.into(),
            kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
            more: r.more,
            count: r.count,
        }
    }
}

/// The result of a put.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let r = client.put("k", "new").prev_kv().await?;
/// println!("was {:?}", r.prev_kv.map(|kv| kv.value));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// Header; `header.revision` is the revision of this write.
    pub header: Header,
    /// The previous key-value, if requested with `prev_kv` and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// The result of a delete.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let r = client.delete("tmp/").prefix().prev_kv().await?;
/// assert_eq!(r.deleted as usize, r.prev_kvs.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteResponse {
    /// Header; `header.revision` is the revision of this delete (unchanged if
    /// nothing was deleted).
    pub header: Header,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, if requested with `prev_kv`.
    pub prev_kvs: Vec<KeyValue>,
}

/// The result of a compaction.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let rev = client.get("k").await?.header.revision;
/// client.compact(rev, false).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactResponse {
    /// Header.
    pub header: Header,
}

/// Which field a range is sorted by.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{SortOrder, SortTarget};
/// let newest = client.get("events/").prefix().sort(SortTarget::Create, SortOrder::Descend).limit(1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    /// The key (bytewise).
    Key,
    /// The version.
    Version,
    /// The creation revision.
    Create,
    /// The last modification revision.
    Mod,
    /// The value (bytewise).
    Value,
}

/// Sort direction of a range.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{SortOrder, SortTarget};
/// let last_key = client.get("a/").prefix().sort(SortTarget::Key, SortOrder::Descend).limit(1).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// The end of the range of all keys starting with `prefix` (etcd's convention:
/// `[0]` for an empty prefix means "every key").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Options of a get/range, usable on its own inside a transaction
/// ([`crate::TxnOp::get`]) or through [`Client::get`].
///
/// ```
/// use cairn_client::{TxnOp, TxnSpec};
/// let spec = TxnSpec::new().and_then([TxnOp::get("jobs/").prefix().keys_only()]);
/// # let _ = spec;
/// ```
#[derive(Clone, Debug, Default)]
pub struct GetOp {
    pub(crate) req: RangeRequest,
}

/// Options of a put, usable inside a transaction ([`crate::TxnOp::put`]) or
/// through [`Client::put`].
///
/// ```
/// use cairn_client::{Compare, TxnOp, TxnSpec};
/// let spec = TxnSpec::new().when([Compare::missing("k")]).and_then([TxnOp::put("k", "v").lease(7)]);
/// # let _ = spec;
/// ```
#[derive(Clone, Debug, Default)]
pub struct PutOp {
    pub(crate) req: PutRequest,
}

/// Options of a delete, usable inside a transaction ([`crate::TxnOp::delete`])
/// or through [`Client::delete`].
///
/// ```
/// use cairn_client::{TxnOp, TxnSpec};
/// let spec = TxnSpec::new().and_then([TxnOp::delete("tmp/").prefix().prev_kv()]);
/// # let _ = spec;
/// ```
#[derive(Clone, Debug, Default)]
pub struct DeleteOp {
    pub(crate) req: DeleteRangeRequest,
}

impl GetOp {
    /// A get of one key.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        GetOp { req: RangeRequest { key: key.into(), ..Default::default() } }
    }
}

impl PutOp {
    /// A put of `value` at `key`.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutOp { req: PutRequest { key: key.into(), value: value.into(), ..Default::default() } }
    }
}

impl DeleteOp {
    /// A delete of one key.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        DeleteOp { req: DeleteRangeRequest { key: key.into(), ..Default::default() } }
    }
}

/// The key-range selectors of the builders whose request (`self.req`) has `key`
/// and `range_end`: get, delete and watch.
macro_rules! key_range_options {
    () => {
        /// Every key starting with the given key (an empty key: every key).
        pub fn prefix(mut self) -> Self {
            if self.req.key.is_empty() {
                self.req.key = vec![0];
                self.req.range_end = vec![0];
            } else {
                self.req.range_end = $crate::kv::prefix_end(&self.req.key);
            }
            self
        }

        /// Every key in `[key, end)`.
        pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
            self.req.range_end = end.into();
            self
        }

        /// Every key greater than or equal to the given key.
        pub fn from_key(mut self) -> Self {
            self.req.range_end = vec![0];
            self
        }
    };
}
pub(crate) use key_range_options;

macro_rules! get_options {
    () => {
        $crate::kv::key_range_options!();

        /// At most `n` keys (0: no limit); `more` tells whether there were more.
        pub fn limit(mut self, n: i64) -> Self {
            self.req.limit = n;
            self
        }

        /// Read the state at revision `rev` (0: the current revision). Fails with
        /// [`Error::Compacted`] below the compaction point and
        /// [`Error::FutureRevision`] above the current revision.
        pub fn revision(mut self, rev: i64) -> Self {
            self.req.revision = rev;
            self
        }

        /// Serve from the member's local state without a consistency round: faster,
        /// possibly stale (but never older than what this member applied).
        pub fn serializable(mut self) -> Self {
            self.req.serializable = true;
            self
        }

        /// Return keys and revisions without values.
        pub fn keys_only(mut self) -> Self {
            self.req.keys_only = true;
            self
        }

        /// Return only the count of keys in the range.
        pub fn count_only(mut self) -> Self {
            self.req.count_only = true;
            self
        }

        /// Sort the result by `target` in `order` (default: by key, ascending).
        pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
            self.req.sort_target = match target {
                SortTarget::Key => range_request::SortTarget::Key,
                SortTarget::Version => range_request::SortTarget::Version,
                SortTarget::Create => range_request::SortTarget::Create,
                SortTarget::Mod => range_request::SortTarget::Mod,
                SortTarget::Value => range_request::SortTarget::Value,
            } as i32;
            self.req.sort_order = match order {
                SortOrder::Ascend => range_request::SortOrder::Ascend,
                SortOrder::Descend => range_request::SortOrder::Descend,
            } as i32;
            self
        }

        /// Only keys last modified at or after revision `rev`.
        pub fn min_mod_revision(mut self, rev: i64) -> Self {
            self.req.min_mod_revision = rev;
            self
        }

        /// Only keys last modified at or before revision `rev`.
        pub fn max_mod_revision(mut self, rev: i64) -> Self {
            self.req.max_mod_revision = rev;
            self
        }

        /// Only keys created at or after revision `rev`.
        pub fn min_create_revision(mut self, rev: i64) -> Self {
            self.req.min_create_revision = rev;
            self
        }

        /// Only keys created at or before revision `rev`.
        pub fn max_create_revision(mut self, rev: i64) -> Self {
            self.req.max_create_revision = rev;
            self
        }
    };
}

macro_rules! put_options {
    () => {
        /// Attach the key to lease `id` (it is deleted when the lease ends).
        pub fn lease(mut self, id: i64) -> Self {
            self.req.lease = id;
            self
        }

        /// Return the previous key-value in the response.
        pub fn prev_kv(mut self) -> Self {
            self.req.prev_kv = true;
            self
        }

        /// Keep the current value, updating only the lease (the key must exist).
        pub fn ignore_value(mut self) -> Self {
            self.req.ignore_value = true;
            self.req.value.clear();
            self
        }

        /// Keep the current lease, updating only the value (the key must exist).
        pub fn ignore_lease(mut self) -> Self {
            self.req.ignore_lease = true;
            self
        }
    };
}

macro_rules! delete_options {
    () => {
        $crate::kv::key_range_options!();

        /// Return the deleted key-values in the response.
        pub fn prev_kv(mut self) -> Self {
            self.req.prev_kv = true;
            self
        }
    };
}

impl GetOp {
    get_options!();
}

impl PutOp {
    put_options!();
}

impl DeleteOp {
    delete_options!();
}

/// A get/range request being built; `.await` it to send it.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{SortOrder, SortTarget};
///
/// let page = client.get("jobs/").prefix().limit(10).sort(SortTarget::Mod, SortOrder::Descend).await?;
/// for kv in &page.kvs {
///     println!("{} = {} (rev {})", kv.key_str(), kv.value_str(), kv.mod_revision);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct Get {
    client: Client,
    req: RangeRequest,
}

impl Get {
    get_options!();

    /// Sends the request (same as `.await`).
    pub async fn send(self) -> Result<GetResponse> {
        self.client.range(self.req).await
    }
}

impl IntoFuture for Get {
    type Output = Result<GetResponse>;
    type IntoFuture = BoxFuture<Result<GetResponse>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A put request being built; `.await` it to send it.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let lease = client.lease_grant(10).await?;
/// let resp = client.put("workers/w1", "alive").lease(lease.id).prev_kv().await?;
/// println!("written at revision {}", resp.header.revision);
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct Put {
    client: Client,
    req: PutRequest,
}

impl Put {
    put_options!();

    /// Sends the request (same as `.await`).
    pub async fn send(self) -> Result<PutResponse> {
        let lease = (self.req.lease != 0).then_some(self.req.lease);
        let req = self.req;
        let resp = self
            .client
            .call(Effect::Write, |ch| {
                let req = req.clone();
                let max = self.client.response_bytes_max();
                async move { Ok(KvClient::new(ch).max_decoding_message_size(max).put(req).await?.into_inner()) }
            })
            .await
            .map_err(|e| with_lease(e, lease))?;
        Ok(PutResponse { header: resp.header.into(), prev_kv: resp.prev_kv.map(KeyValue::from) })
    }
}

impl IntoFuture for Put {
    type Output = Result<PutResponse>;
    type IntoFuture = BoxFuture<Result<PutResponse>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A delete request being built; `.await` it to send it.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let resp = client.delete("tmp/").prefix().await?;
/// println!("deleted {} keys", resp.deleted);
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct Delete {
    client: Client,
    req: DeleteRangeRequest,
}

impl Delete {
    delete_options!();

    /// Sends the request (same as `.await`).
    pub async fn send(self) -> Result<DeleteResponse> {
        let req = self.req;
        let resp = self
            .client
            .call(Effect::Write, |ch| {
                let req = req.clone();
                let max = self.client.response_bytes_max();
                async move { Ok(KvClient::new(ch).max_decoding_message_size(max).delete_range(req).await?.into_inner()) }
            })
            .await?;
        Ok(DeleteResponse {
            header: resp.header.into(),
            deleted: resp.deleted,
            prev_kvs: resp.prev_kvs.into_iter().map(KeyValue::from).collect(),
        })
    }
}

impl IntoFuture for Delete {
    type Output = Result<DeleteResponse>;
    type IntoFuture = BoxFuture<Result<DeleteResponse>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// Fills in the lease ID of a `LeaseNotFound` when the request named one.
pub(crate) fn with_lease(e: Error, lease: Option<i64>) -> Error {
    match e {
        Error::LeaseNotFound { lease: None } => Error::LeaseNotFound { lease },
        other => other,
    }
}

impl Client {
    /// Starts a get of `key`; add options (`prefix()`, `limit(n)`, `revision(r)`,
    /// `serializable()`, ...) and `.await` it.
    ///
    /// Reads are linearizable unless `serializable()`: the result reflects every
    /// write acknowledged before the read was sent.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// if let Some(kv) = client.get("config/limit").await?.into_first() {
    ///     println!("{} at revision {}", kv.value_str(), kv.mod_revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get(&self, key: impl Into<Vec<u8>>) -> Get {
        Get { client: self.clone(), req: GetOp::new(key).req }
    }

    /// Starts a put of `value` at `key`; add options and `.await` it.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let rev = client.put("config/limit", "10").await?.header.revision;
    /// # Ok(()) }
    /// ```
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Put {
        Put { client: self.clone(), req: PutOp::new(key, value).req }
    }

    /// Starts a delete of `key`; add options (`prefix()`, `prev_kv()`, ...) and
    /// `.await` it.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.delete("config/limit").await?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Delete {
        Delete { client: self.clone(), req: DeleteOp::new(key).req }
    }

    /// Discards the history before revision `revision`: reads and watches below it
    /// fail with [`Error::Compacted`] afterwards. `physical` waits until the
    /// space is reclaimed.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let now = client.get("any").await?.header.revision;
    /// client.compact(now, false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactResponse> {
        let req = CompactionRequest { revision, physical };
        let resp = self
            .call(Effect::Write, |ch| async move { Ok(KvClient::new(ch).compact(req).await?.into_inner()) })
            .await?;
        Ok(CompactResponse { header: resp.header.into() })
    }

    pub(crate) async fn range(&self, req: RangeRequest) -> Result<GetResponse> {
        let max = self.response_bytes_max();
        let resp = self
            .call(Effect::Read, |ch| {
                let req = req.clone();
                async move { Ok(KvClient::new(ch).max_decoding_message_size(max).range(req).await?.into_inner()) }
            })
            .await;
        match resp {
            Ok(resp) => Ok(resp.into()),
            Err(Error::Compacted { compact_revision: None }) if req.revision > 0 => {
                Err(Error::Compacted { compact_revision: self.compact_revision_at(req.key, req.revision).await })
            }
            Err(e) => Err(e),
        }
    }

    /// The store's compaction revision, learnt the one way the etcd API tells
    /// it: a watch from a compacted revision is cancelled with it. `None` if the
    /// probe does not say (it is only used to enrich an error).
    async fn compact_revision_at(&self, key: Vec<u8>, revision: i64) -> Option<i64> {
        let probe = async {
            let mut w = match self.watch(key).start_revision(revision).send().await {
                Err(Error::Compacted { compact_revision }) => return compact_revision,
                Err(_) => return None,
                Ok(w) => w,
            };
            match futures::StreamExt::next(&mut w).await {
                Some(Err(Error::Compacted { compact_revision })) => compact_revision,
                _ => None,
            }
        };
        tokio::time::timeout(self.request_timeout(), probe).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn prefix_of_empty_key_is_every_key() {
        let op = GetOp::new("").prefix();
        assert_eq!((op.req.key, op.req.range_end), (vec![0], vec![0]));
    }
}
