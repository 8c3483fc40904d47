//! [`Keyspace<T>`]: a typed view of a key prefix, with compare-and-swap updates.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;
use crate::codec::{Codec, Json};
use crate::error::{Error, Result};
use crate::kv::{prefix_end, KeyValue};
use crate::options::{CAS_ATTEMPTS_MAX_DEFAULT, LIST_PAGE_KEYS_MAX};
use crate::txn::{Compare, CompareOp, TxnOp, TxnOpResponse};

/// The values a [`Keyspace`] can hold.
///
/// ```
/// fn takes<T: cairn_client::Value>() {}
/// takes::<Vec<String>>(); // any owned serde type
/// ```
pub trait Value: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Value for T {}

/// A value with the revisions of the key that holds it.
///
/// ```no_run
/// # async fn demo(ks: cairn_client::Keyspace<u64>) -> cairn_client::Result<()> {
/// let v = ks.get("n").await?.expect("exists");
/// // Compare-and-swap on the revision read.
/// ks.put_if_revision("n", v.value * 2, v.mod_revision).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The key, relative to the keyspace's prefix.
    pub key: String,
    /// The decoded value.
    pub value: T,
    /// Revision that created the key: changes only if the key is deleted and
    /// created again (a fencing token).
    pub create_revision: i64,
    /// Revision of the last write: pass it to [`Keyspace::put_if_revision`] for a
    /// compare-and-swap.
    pub mod_revision: i64,
    /// Number of writes since creation.
    pub version: i64,
    /// Attached lease, 0 if none.
    pub lease: i64,
}

/// Every value of a keyspace at one revision.
///
/// ```no_run
/// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
/// let listing = ks.list().await?;
/// for v in &listing.items {
///     println!("{} = {}", v.key, v.value);
/// }
/// let later_changes = ks.watch(Some(listing.revision + 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    /// The revision the listing is consistent at: watch from `revision + 1` to
    /// see every later change.
    pub revision: i64,
    /// The values, ordered by key.
    pub items: Vec<Versioned<T>>,
}

/// The result of a delete.
///
/// ```no_run
/// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
/// let d = ks.delete("a").await?;
/// if d.prev.is_none() {
///     println!("nothing to delete");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted<T> {
    /// Revision of the delete (the store's revision if nothing was deleted).
    pub revision: i64,
    /// The value that was deleted, if the key existed.
    pub prev: Option<Versioned<T>>,
}

/// A typed view of every key under a prefix: keys are strings relative to the
/// prefix, values are `T` encoded with codec `C` ([`Json`] by default,
/// [`crate::Bincode`] as an option).
///
/// Every read is linearizable; every write returns the revision it was applied
/// at. Concurrent writers are reconciled with compare-and-swap on
/// `mod_revision` ([`Keyspace::update`], [`Keyspace::put_if_revision`]).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::Keyspace;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// struct Quota { limit: u64 }
///
/// let quotas: Keyspace<Quota> = Keyspace::new(client, "quotas/");
/// quotas.create("team-a", Quota { limit: 10 }).await?;
/// let v = quotas.update("team-a", |q| Quota { limit: q.limit + 5 }).await?;
/// assert_eq!(v.value.limit, 15);
/// # Ok(()) }
/// ```
pub struct Keyspace<T, C = Json> {
    client: Client,
    prefix: String,
    codec: C,
    cas_attempts_max: u32,
    _values: PhantomData<fn() -> T>,
}

impl<T, C: Clone> Clone for Keyspace<T, C> {
    fn clone(&self) -> Self {
        Keyspace {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            codec: self.codec.clone(),
            cas_attempts_max: self.cas_attempts_max,
            _values: PhantomData,
        }
    }
}

impl<T, C> std::fmt::Debug for Keyspace<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace").field("prefix", &self.prefix).finish()
    }
}

impl<T: Value> Keyspace<T, Json> {
    /// A JSON keyspace over every key starting with `prefix` (conventionally
    /// ending in `/`).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Keyspace {
            client,
            prefix: prefix.into(),
            codec: Json,
            cas_attempts_max: CAS_ATTEMPTS_MAX_DEFAULT,
            _values: PhantomData,
        }
    }
}

impl<T: Value, C: Codec> Keyspace<T, C> {
    /// The same keyspace with another codec.
    ///
    /// ```no_run
    /// # fn demo(client: cairn_client::Client) {
    /// use cairn_client::{Bincode, Keyspace};
    /// let ks: Keyspace<u64, Bincode> = Keyspace::new(client, "counters/").with_codec(Bincode);
    /// # }
    /// ```
    pub fn with_codec<C2: Codec>(self, codec: C2) -> Keyspace<T, C2> {
        Keyspace {
            client: self.client,
            prefix: self.prefix,
            codec,
            cas_attempts_max: self.cas_attempts_max,
            _values: PhantomData,
        }
    }

    /// How many compare-and-swap rounds [`Keyspace::update`] tries before failing
    /// with [`Error::ConditionFailed`] (default [`CAS_ATTEMPTS_MAX_DEFAULT`]).
    pub fn cas_attempts_max(mut self, n: u32) -> Self {
        self.cas_attempts_max = n.max(1);
        self
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The full key of `key`.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn encode(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        self.codec.encode(value).map_err(|message| Error::Codec { key: key.to_string(), message })
    }

    pub(crate) fn decode_kv(&self, kv: KeyValue) -> Result<Versioned<T>> {
        let key = self.relative(&kv.key);
        let value = self.codec.decode(&kv.value).map_err(|message| Error::Codec { key: key.clone(), message })?;
        Ok(Versioned {
            key,
            value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        })
    }

    pub(crate) fn relative(&self, full: &[u8]) -> String {
        let s = String::from_utf8_lossy(full);
        s.strip_prefix(self.prefix.as_str()).unwrap_or(&s).to_string()
    }

    /// The value of `key`, if it exists.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// if let Some(v) = ks.get("a").await? {
    ///     println!("{} (rev {})", v.value, v.mod_revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<T>>> {
        let kv = self.client.get(self.full_key(key)).send().await?.into_first();
        kv.map(|kv| self.decode_kv(kv)).transpose()
    }

    /// The value of `key` as it was at revision `revision` (fails with
    /// [`Error::Compacted`] below the compaction point).
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let listing = ks.list().await?;
    /// // Later: the same key as of the listing, whatever happened since.
    /// let then = ks.get_at("a", listing.revision).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_at(&self, key: &str, revision: i64) -> Result<Option<Versioned<T>>> {
        let kv = self.client.get(self.full_key(key)).revision(revision).send().await?.into_first();
        kv.map(|kv| self.decode_kv(kv)).transpose()
    }

    /// Every value of the keyspace, consistent at one revision (read page by
    /// page, every page at the revision of the first).
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let all = ks.list().await?;
    /// println!("{} values at revision {}", all.items.len(), all.revision);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self) -> Result<Listing<T>> {
        let (revision, kvs) = self.list_raw().await?;
        let items = kvs.into_iter().map(|kv| self.decode_kv(kv)).collect::<Result<_>>()?;
        Ok(Listing { revision, items })
    }

    /// Every key-value under the prefix at one revision, undecoded.
    pub(crate) async fn list_raw(&self) -> Result<(i64, Vec<KeyValue>)> {
        let end = prefix_end(self.prefix.as_bytes());
        let mut from = self.prefix.clone().into_bytes();
        if from.is_empty() {
            from = vec![0];
        }
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let page = self
                .client
                .get(from.clone())
                .range_end(end.clone())
                .revision(revision)
                .limit(LIST_PAGE_KEYS_MAX)
                .send()
                .await?;
            if revision == 0 {
                revision = page.header.revision;
            }
            let more = page.more;
            let last = page.kvs.last().map(|kv| kv.key.clone());
            kvs.extend(page.kvs);
            match (more, last) {
                (true, Some(mut last)) => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok((revision, kvs)),
            }
        }
    }

    /// Creates `key`; fails with [`Error::ConditionFailed`] if it exists.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let v = ks.create("a", "first".to_string()).await?;
    /// assert_eq!(v.version, 1);
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, key: &str, value: T) -> Result<Versioned<T>> {
        self.create_with_lease(key, value, 0).await
    }

    /// Creates `key` attached to lease `lease` (0: none); fails with
    /// [`Error::ConditionFailed`] if it exists.
    pub async fn create_with_lease(&self, key: &str, value: T, lease: i64) -> Result<Versioned<T>> {
        let full = self.full_key(key);
        let bytes = self.encode(key, &value)?;
        let resp = self
            .client
            .txn()
            .when([Compare::missing(full.clone())])
            .and_then([TxnOp::put(full.clone(), bytes).lease(lease)])
            .or_else([TxnOp::get(full.clone()).keys_only()])
            .send()
            .await?;
        if !resp.succeeded {
            let found = existing_mod_revision(&resp.responses);
            return Err(Error::ConditionFailed {
                key: key.to_string(),
                detail: format!("expected no key, found one last modified at revision {found}"),
            });
        }
        let rev = resp.header.revision;
        Ok(Versioned { key: key.to_string(), value, create_revision: rev, mod_revision: rev, version: 1, lease })
    }

    /// Writes `key` unconditionally (like etcd's put, this detaches any lease).
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let v = ks.put("a", "x".to_string()).await?;
    /// println!("written at {}", v.mod_revision);
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: &str, value: T) -> Result<Versioned<T>> {
        let bytes = self.encode(key, &value)?;
        let resp = self.client.put(self.full_key(key), bytes).prev_kv().send().await?;
        let rev = resp.header.revision;
        let (create_revision, version) = match &resp.prev_kv {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        Ok(Versioned { key: key.to_string(), value, create_revision, mod_revision: rev, version, lease: 0 })
    }

    /// Writes `key` only if its last modification is still `mod_revision` (0:
    /// only if it does not exist), detaching any lease like a put. Fails with
    /// [`Error::ConditionFailed`] otherwise.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<u64>) -> cairn_client::Result<()> {
    /// let cur = ks.get("n").await?.expect("exists");
    /// ks.put_if_revision("n", cur.value + 1, cur.mod_revision).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_if_revision(&self, key: &str, value: T, mod_revision: i64) -> Result<Versioned<T>> {
        let full = self.full_key(key);
        let bytes = self.encode(key, &value)?;
        let resp = self
            .client
            .txn()
            .when([Compare::mod_revision(full.clone(), CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::put(full.clone(), bytes).prev_kv()])
            .or_else([TxnOp::get(full.clone()).keys_only()])
            .send()
            .await?;
        if !resp.succeeded {
            let found = existing_mod_revision(&resp.responses);
            return Err(Error::ConditionFailed {
                key: key.to_string(),
                detail: format!("expected mod revision {mod_revision}, found {found}"),
            });
        }
        let rev = resp.header.revision;
        let prev = match resp.responses.first() {
            Some(TxnOpResponse::Put(p)) => p.prev_kv.clone(),
            _ => None,
        };
        let (create_revision, version, lease) = match prev {
            Some(p) => (p.create_revision, p.version + 1, 0),
            None => (rev, 1, 0),
        };
        Ok(Versioned { key: key.to_string(), value, create_revision, mod_revision: rev, version, lease })
    }

    /// Deletes `key`, answering the deleted value if it existed.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let d = ks.delete("a").await?;
    /// println!("deleted at {}: {:?}", d.revision, d.prev.map(|p| p.value));
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<Deleted<T>> {
        let resp = self.client.delete(self.full_key(key)).prev_kv().send().await?;
        let prev = resp.prev_kvs.into_iter().next().map(|kv| self.decode_kv(kv)).transpose()?;
        Ok(Deleted { revision: resp.header.revision, prev })
    }

    /// Deletes `key` only if its last modification is still `mod_revision`.
    /// Fails with [`Error::ConditionFailed`] otherwise (also if it is gone).
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let v = ks.get("a").await?.expect("exists");
    /// ks.delete_if_revision("a", v.mod_revision).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_if_revision(&self, key: &str, mod_revision: i64) -> Result<Deleted<T>> {
        let full = self.full_key(key);
        let resp = self
            .client
            .txn()
            .when([Compare::mod_revision(full.clone(), CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::delete(full.clone()).prev_kv()])
            .or_else([TxnOp::get(full).keys_only()])
            .send()
            .await?;
        if !resp.succeeded {
            let found = existing_mod_revision(&resp.responses);
            return Err(Error::ConditionFailed {
                key: key.to_string(),
                detail: format!("expected mod revision {mod_revision}, found {found}"),
            });
        }
        let prev = match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => d.prev_kvs.into_iter().next().map(|kv| self.decode_kv(kv)).transpose()?,
            _ => None,
        };
        Ok(Deleted { revision: resp.header.revision, prev })
    }

    /// Replaces the value of an existing `key` with `f(old)`, atomically: reads
    /// the value, computes the new one and writes it only if nobody wrote in
    /// between (compare on `mod_revision`); otherwise reads again and retries, at
    /// most [`Keyspace::cas_attempts_max`] times. `f` may run several times, so
    /// it should have no side effects. Fails with [`Error::NotFound`] if the key
    /// does not exist. The key keeps its lease. If a round fails with
    /// [`Error::OutcomeUnknown`], the loop stops there: that write may have been
    /// applied, and running `f` again could apply the change twice.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<u64>) -> cairn_client::Result<()> {
    /// let v = ks.update("counter", |n| n + 1).await?;
    /// println!("now {} at revision {}", v.value, v.mod_revision);
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, key: &str, mut f: impl FnMut(&T) -> T) -> Result<Versioned<T>> {
        self.upsert_inner(key, |old| match old {
            Some(v) => Ok(f(v)),
            None => Err(Error::NotFound { key: key.to_string() }),
        })
        .await
    }

    /// Like [`Keyspace::update`], but also creates the key: `f` gets `None` if it
    /// does not exist.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<u64>) -> cairn_client::Result<()> {
    /// ks.upsert("counter", |n| n.copied().unwrap_or(0) + 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upsert(&self, key: &str, mut f: impl FnMut(Option<&T>) -> T) -> Result<Versioned<T>> {
        self.upsert_inner(key, |old| Ok(f(old))).await
    }

    async fn upsert_inner(&self, key: &str, mut f: impl FnMut(Option<&T>) -> Result<T>) -> Result<Versioned<T>> {
        let full = self.full_key(key);
        let mut current = self.get(key).await?;
        for _ in 0..self.cas_attempts_max {
            let expected = current.as_ref().map(|v| v.mod_revision).unwrap_or(0);
            let new = f(current.as_ref().map(|v| &v.value))?;
            let bytes = self.encode(key, &new)?;
            // An update keeps the key's lease (the compare guarantees the key
            // still exists when `current` says it does).
            let put = match current {
                Some(_) => TxnOp::put(full.clone(), bytes).ignore_lease(),
                None => TxnOp::put(full.clone(), bytes),
            };
            let resp = self
                .client
                .txn()
                .when([Compare::mod_revision(full.clone(), CompareOp::Equal, expected)])
                .and_then([put])
                .or_else([TxnOp::get(full.clone())])
                .send()
                .await?;
            let rev = resp.header.revision;
            if resp.succeeded {
                let (create_revision, version) = match &current {
                    Some(c) => (c.create_revision, c.version + 1),
                    None => (rev, 1),
                };
                let lease = current.as_ref().map(|c| c.lease).unwrap_or(0);
                return Ok(Versioned {
                    key: key.to_string(),
                    value: new,
                    create_revision,
                    mod_revision: rev,
                    version,
                    lease,
                });
            }
            // Someone wrote in between: the failure branch read the new state.
            current = match resp.responses.into_iter().next() {
                Some(TxnOpResponse::Get(g)) => g.kvs.into_iter().next().map(|kv| self.decode_kv(kv)).transpose()?,
                _ => self.get(key).await?,
            };
        }
        Err(Error::ConditionFailed {
            key: key.to_string(),
            detail: format!("still contended after {} compare-and-swap attempts", self.cas_attempts_max),
        })
    }
}

fn existing_mod_revision(responses: &[TxnOpResponse]) -> i64 {
    responses.first().and_then(TxnOpResponse::as_get).and_then(|g| g.kvs.first()).map(|kv| kv.mod_revision).unwrap_or(0)
}
