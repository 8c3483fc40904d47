//! Leader election and locks with fencing tokens, and [`Fence`], the guarded
//! write that makes them safe.
//!
//! A contender creates `<name>/<lease id>` attached to its lease; the contender
//! whose key has the lowest creation revision leads. That creation revision is
//! the **fencing token**: it only grows from one holder to the next, and a write
//! guarded by a [`Fence`] (a transaction comparing the key's creation revision
//! with the token) is applied only while the token's holder still holds the key.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::client::{backoff, Client};
use crate::error::{Error, Result};
use crate::kv::{DeleteResponse, PutResponse, SortOrder, SortTarget};
use crate::lease_handle::LeaseHandle;
use crate::txn::{Compare, CompareOp, TxnOp, TxnOpResponse, TxnResponse, TxnSpec};
use crate::typed_watch::AbortOnDrop;

/// Capacity of the channel between an [`Election::observe`] task and its stream.
const OBSERVE_PENDING_MAX: usize = 16;

/// A write guard: the key of an election or lock and the fencing token
/// (its creation revision) of the holder that may write.
///
/// Every write through a fence is a transaction that first checks that
/// `key` still exists with creation revision `token`; if another holder has
/// taken over (or the lease expired), it fails with [`Error::Fenced`] and
/// changes nothing. A fence can be passed to other processes (key + token) and
/// rebuilt there with [`Fence::new`].
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client, leadership: cairn_client::Leadership) -> cairn_client::Result<()> {
/// let fence = leadership.fence();
/// match fence.put("partitions/7", "owner=a").await {
///     Ok(_) => println!("written as leader with token {}", fence.token()),
///     Err(cairn_client::Error::Fenced { .. }) => println!("deposed: stop"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Fence {
    client: Client,
    key: String,
    token: i64,
}

impl Fence {
    /// A fence on `key` held with creation revision `token`.
    pub fn new(client: &Client, key: impl Into<String>, token: i64) -> Fence {
        Fence { client: client.clone(), key: key.into(), token }
    }

    /// The fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The election or lock key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The condition every guarded write carries.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.token)
    }

    fn fenced(&self) -> Error {
        Error::Fenced { key: self.key.clone(), token: self.token }
    }

    /// Runs `spec` only if the token still holds; its own conditions then decide
    /// its branch as usual. Fails with [`Error::Fenced`] otherwise.
    ///
    /// ```no_run
    /// # async fn demo(fence: cairn_client::Fence) -> cairn_client::Result<()> {
    /// use cairn_client::{Compare, TxnOp, TxnSpec};
    /// let spec = TxnSpec::new().when([Compare::missing("jobs/9")]).and_then([TxnOp::put("jobs/9", "queued")]);
    /// let resp = fence.txn(spec).await?;
    /// # Ok(()) }
    /// ```
    pub async fn txn(&self, spec: TxnSpec) -> Result<TxnResponse> {
        if spec.is_unconditional() {
            let resp = self.client.txn().when([self.compare()]).and_then(spec.into_ops()).send().await?;
            return if resp.succeeded { Ok(resp) } else { Err(self.fenced()) };
        }
        let resp = self.client.txn().when([self.compare()]).and_then([TxnOp::Txn(spec)]).send().await?;
        if !resp.succeeded {
            return Err(self.fenced());
        }
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Txn(inner)) => Ok(inner),
            other => Err(Error::Server {
                code: tonic::Code::Internal,
                message: format!("a nested transaction answered {other:?}"),
            }),
        }
    }

    /// Puts `value` at `key` only if the token still holds.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse> {
        let resp = self.txn(TxnSpec::new().and_then([TxnOp::put(key, value)])).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            _ => Ok(PutResponse { header: resp.header, prev_kv: None }),
        }
    }

    /// Deletes `key` only if the token still holds.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse> {
        let resp = self.txn(TxnSpec::new().and_then([TxnOp::delete(key)])).await?;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            _ => Ok(DeleteResponse { header: resp.header, deleted: 0, prev_kvs: Vec::new() }),
        }
    }

    /// Whether the token still holds right now (linearizable).
    pub async fn is_current(&self) -> Result<bool> {
        let kv = self.client.get(self.key.clone()).keys_only().send().await?.into_first();
        Ok(kv.is_some_and(|kv| kv.create_revision == self.token))
    }
}

/// The current leader of an election.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::Election;
/// if let Some(l) = Election::new(&client, "scheduler").leader().await? {
///     println!("{} leads with token {}", String::from_utf8_lossy(&l.value), l.token);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's election key.
    pub key: String,
    /// The value it proclaimed.
    pub value: Vec<u8>,
    /// Its fencing token (the key's creation revision).
    pub token: i64,
    /// Its lease.
    pub lease: i64,
}

/// A named leader election.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Election, LeaseHandle};
///
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// let election = Election::new(&client, "scheduler");
/// let leadership = election.campaign(&lease, "worker-a").await?; // waits for its turn
/// println!("leading with fencing token {}", leadership.fencing_token());
/// leadership.fence().put("scheduler/state", "epoch data").await?;
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    client: Client,
    prefix: String,
}

impl Election {
    /// The election called `name` (its keys live under `name/`).
    pub fn new(client: &Client, name: &str) -> Election {
        Election { client: client.clone(), prefix: format!("{}/", name.trim_end_matches('/')) }
    }

    /// Becomes a contender with `lease` and waits until it leads. If the lease is
    /// lost while waiting, fails with [`Error::LeaseLost`]. If the returned
    /// future is dropped before it completes, the candidacy is withdrawn.
    /// Campaigning again with the same lease resumes the same candidacy (so one
    /// lease stands for one contender: give concurrent contenders their own).
    pub async fn campaign(&self, lease: &LeaseHandle, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let key = format!("{}{:x}", self.prefix, lease.id());
        let value = value.into();
        let token = tokio::select! {
            r = self.register(&key, &value, lease.id()) => r?,
            e = lease.lost() => return Err(e),
        };
        let mut guard = CandidacyGuard { client: self.client.clone(), key: key.clone(), token, armed: true };
        let fence = Fence::new(&self.client, key, token);
        tokio::select! {
            r = self.wait_for_turn(&fence) => r?,
            e = lease.lost() => return Err(e),
        }
        guard.armed = false;
        Ok(Leadership { fence, lease: lease.id(), resigned: false })
    }

    /// Creates the candidacy key (or finds it, with `value` proclaimed) and
    /// answers its creation revision. The key is named after the lease, so
    /// repeating this after an ambiguous failure is safe: it is retried until
    /// it succeeds or fails for good.
    async fn register(&self, key: &str, value: &[u8], lease: i64) -> Result<i64> {
        let mut failures = 0;
        loop {
            let attempt = async {
                let resp = self
                    .client
                    .txn()
                    .when([Compare::missing(key)])
                    .and_then([TxnOp::put(key, value).lease(lease)])
                    .or_else([TxnOp::get(key)])
                    .send()
                    .await?;
                if resp.succeeded {
                    return Ok(resp.header.revision);
                }
                let existing = resp.responses.first().and_then(TxnOpResponse::as_get).and_then(|g| g.first().cloned());
                let existing = existing.ok_or_else(|| Error::NotFound { key: key.to_string() })?;
                if existing.value != value {
                    let fence = Fence::new(&self.client, key, existing.create_revision);
                    fence.txn(TxnSpec::new().and_then([TxnOp::put(key, value).ignore_lease()])).await?;
                }
                Ok(existing.create_revision)
            };
            match attempt.await {
                Ok(token) => return Ok(token),
                Err(e @ (Error::Unavailable { .. } | Error::Timeout { .. } | Error::OutcomeUnknown { .. })) => {
                    failures += 1;
                    tracing::debug!(error = %e, "campaign: registering again");
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until no key created before `fence.token` is left, then checks
    /// that our own key is still there. Transient failures (member down,
    /// election in progress) are waited out; the caller's lease bounds the wait.
    async fn wait_for_turn(&self, fence: &Fence) -> Result<()> {
        let mut failures = 0;
        loop {
            match self.turn_step(fence).await {
                Ok(true) => return Ok(()),
                Ok(false) => failures = 0,
                Err(e @ (Error::Unavailable { .. } | Error::Timeout { .. })) => {
                    failures += 1;
                    tracing::debug!(error = %e, "campaign: waiting out a transient failure");
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One round: `true` if it is our turn, `false` after waiting for the
    /// closest predecessor to go.
    async fn turn_step(&self, fence: &Fence) -> Result<bool> {
        let before = self
            .client
            .get(self.prefix.clone())
            .prefix()
            .max_create_revision(fence.token - 1)
            .sort(SortTarget::Create, SortOrder::Descend)
            .limit(1)
            .keys_only()
            .send()
            .await?;
        let Some(pred) = before.kvs.into_iter().next() else {
            return if fence.is_current().await? { Ok(true) } else { Err(fence.fenced()) };
        };
        let mut w =
            self.client.watch(pred.key.clone()).no_put().start_revision(before.header.revision + 1).send().await?;
        while let Some(batch) = w.next().await {
            if !batch?.events.is_empty() {
                break;
            }
        }
        if !fence.is_current().await? {
            return Err(fence.fenced());
        }
        Ok(false)
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        Ok(self.leader_at().await?.1)
    }

    async fn leader_at(&self) -> Result<(i64, Option<LeaderInfo>)> {
        let r = self
            .client
            .get(self.prefix.clone())
            .prefix()
            .sort(SortTarget::Create, SortOrder::Ascend)
            .limit(1)
            .send()
            .await?;
        let rev = r.header.revision;
        let info = r.into_first().map(|kv| LeaderInfo {
            key: kv.key_str().into_owned(),
            value: kv.value,
            token: kv.create_revision,
            lease: kv.lease,
        });
        Ok((rev, info))
    }

    /// A stream of leadership changes: the current leader first (`None` if
    /// there is none), then every change of leader or of its proclaimed value.
    /// It reconnects by itself; dropping it stops it.
    ///
    /// ```no_run
    /// # async fn demo(election: cairn_client::Election) -> cairn_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut leaders = election.observe();
    /// while let Some(leader) = leaders.next().await {
    ///     println!("leader now: {:?}", leader?.map(|l| l.token));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn observe(&self) -> Observe {
        let (tx, rx) = mpsc::channel(OBSERVE_PENDING_MAX);
        let task = tokio::spawn(observe(self.clone(), tx));
        Observe { rx, _task: AbortOnDrop(task) }
    }
}

/// The stream returned by [`Election::observe`].
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// let mut changes = cairn_client::Election::new(&client, "scheduler").observe();
/// if let Some(leader) = changes.next().await {
///     println!("current leader: {:?}", leader?);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Observe {
    rx: mpsc::Receiver<Result<Option<LeaderInfo>>>,
    _task: AbortOnDrop,
}

impl Stream for Observe {
    type Item = Result<Option<LeaderInfo>>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

async fn observe(election: Election, tx: mpsc::Sender<Result<Option<LeaderInfo>>>) {
    let mut last: Option<Option<LeaderInfo>> = None;
    let mut failures = 0;
    loop {
        let (rev, leader) = match election.leader_at().await {
            Ok(v) => v,
            Err(e) => {
                failures += 1;
                if matches!(e, Error::Unavailable { .. } | Error::Timeout { .. }) {
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        failures = 0;
        if last.as_ref() != Some(&leader) {
            if tx.send(Ok(leader.clone())).await.is_err() {
                return;
            }
            last = Some(leader);
        }
        // Wait for any change under the prefix after `rev`, then look again.
        let watch = election.client.watch(election.prefix.clone()).prefix().start_revision(rev + 1).send().await;
        if let Ok(mut w) = watch {
            tokio::select! {
                _ = tx.closed() => return,
                _ = async {
                    while let Some(b) = w.next().await {
                        if !matches!(b, Ok(ref b) if b.events.is_empty()) {
                            break;
                        }
                    }
                } => {}
            }
        } else {
            tokio::time::sleep(backoff(1)).await;
        }
    }
}

/// Withdraws a candidacy whose campaign was abandoned.
struct CandidacyGuard {
    client: Client,
    key: String,
    token: i64,
    armed: bool,
}

impl Drop for CandidacyGuard {
    fn drop(&mut self) {
        if self.armed {
            delete_if_held(&self.client, &self.key, self.token);
        }
    }
}

fn delete_if_held(client: &Client, key: &str, token: i64) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let fence = Fence::new(client, key, token);
        let key = key.to_string();
        rt.spawn(async move {
            let _ = fence.delete(key).await;
        });
    }
}

/// Leadership won by [`Election::campaign`]. Dropping it resigns (best effort);
/// so does the end of its lease.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{Election, LeaseHandle};
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// let leadership = Election::new(&client, "scheduler").campaign(&lease, "me").await?;
/// leadership.proclaim("me, busy").await?;
/// assert!(leadership.is_leader().await?);
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Leadership {
    fence: Fence,
    lease: i64,
    resigned: bool,
}

impl Leadership {
    /// The fencing token: the election key's creation revision. Larger for every
    /// later leader.
    pub fn fencing_token(&self) -> i64 {
        self.fence.token
    }

    /// The election key this leadership holds.
    pub fn key(&self) -> &str {
        &self.fence.key
    }

    /// The lease the leadership is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// A fence for guarded writes as this leader.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Whether this is still the leader (linearizable check).
    pub async fn is_leader(&self) -> Result<bool> {
        self.fence.is_current().await
    }

    /// Changes the value observers see, only while still leading.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        self.fence.txn(TxnSpec::new().and_then([TxnOp::put(self.fence.key.clone(), value).ignore_lease()])).await?;
        Ok(())
    }

    /// Gives up leadership (deletes the election key if still held).
    pub async fn resign(mut self) -> Result<()> {
        self.resigned = true;
        match self.fence.delete(self.fence.key.clone()).await {
            Ok(_) | Err(Error::Fenced { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if !self.resigned {
            delete_if_held(&self.fence.client, &self.fence.key, self.fence.token);
        }
    }
}

/// A named mutual-exclusion lock with fencing tokens (an election without
/// values).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{LeaseHandle, Lock};
///
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// let guard = Lock::new(&client, "locks/reindex").acquire(&lease).await?;
/// // Writes through the fence fail once someone else holds the lock.
/// guard.fence().put("reindex/progress", "42%").await?;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lock {
    election: Election,
}

impl Lock {
    /// The lock called `name`.
    pub fn new(client: &Client, name: &str) -> Lock {
        Lock { election: Election::new(client, name) }
    }

    /// Waits until the lock is held with `lease`.
    pub async fn acquire(&self, lease: &LeaseHandle) -> Result<LockGuard> {
        Ok(LockGuard(self.election.campaign(lease, Vec::new()).await?))
    }

    /// The current holder's key and fencing token, if the lock is held.
    pub async fn holder(&self) -> Result<Option<LeaderInfo>> {
        self.election.leader().await
    }
}

/// A held [`Lock`]; dropping it unlocks (best effort).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{LeaseHandle, Lock};
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// let guard = Lock::new(&client, "locks/migrate").acquire(&lease).await?;
/// println!("holding with token {}", guard.fencing_token());
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockGuard(Leadership);

impl LockGuard {
    /// The fencing token (the lock key's creation revision).
    pub fn fencing_token(&self) -> i64 {
        self.0.fencing_token()
    }

    /// The lock key.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// A fence for guarded writes as the holder.
    pub fn fence(&self) -> Fence {
        self.0.fence()
    }

    /// Whether the lock is still held (linearizable check).
    pub async fn is_held(&self) -> Result<bool> {
        self.0.is_leader().await
    }

    /// Releases the lock.
    pub async fn unlock(self) -> Result<()> {
        self.0.resign().await
    }
}
