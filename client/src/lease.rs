//! The raw lease API: grant, revoke, keep-alive, time-to-live, list.
//!
//! For a lease kept alive automatically for as long as a handle lives, see
//! [`crate::LeaseHandle`].

use cairn_proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::client::{backoff, Client};
use crate::error::{classify, Effect, Error, Result, Verdict};
use crate::kv::{with_lease, Header};

/// A granted lease.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let g = client.lease_grant(10).await?;
/// println!("lease {:x} for {}s", g.id, g.ttl);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Header.
    pub header: Header,
    /// The lease's ID.
    pub id: i64,
    /// The TTL the server granted, in seconds (it may raise a too short TTL).
    pub ttl: i64,
}

/// The state of a lease.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client, id: i64) -> cairn_client::Result<()> {
/// let t = client.lease_time_to_live(id, true).await?;
/// println!("{}s of {}s left; keys: {:?}", t.ttl, t.granted_ttl, t.keys);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Header.
    pub header: Header,
    /// The lease's ID.
    pub id: i64,
    /// Seconds left before it expires.
    pub ttl: i64,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// The keys attached to it (if asked for).
    pub keys: Vec<Vec<u8>>,
}

impl Client {
    /// Grants a lease of `ttl_seconds`; the server picks the ID.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let lease = client.lease_grant(30).await?;
    /// client.put("sessions/me", "here").lease(lease.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseGrant> {
        self.lease_grant_with_id(ttl_seconds, 0).await
    }

    /// Grants a lease of `ttl_seconds` with the given ID (0: the server picks).
    /// Because the ID is fixed, an ambiguous failure can be resolved by
    /// [`Client::lease_time_to_live`].
    pub async fn lease_grant_with_id(&self, ttl_seconds: i64, id: i64) -> Result<LeaseGrant> {
        let req = LeaseGrantRequest { ttl: ttl_seconds, id };
        let resp = self
            .call(Effect::Write, |ch| async move { Ok(LeaseClient::new(ch).lease_grant(req).await?.into_inner()) })
            .await?;
        if !resp.error.is_empty() {
            return Err(Error::Server { code: tonic::Code::Unknown, message: resp.error });
        }
        Ok(LeaseGrant { header: resp.header.into(), id: resp.id, ttl: resp.ttl })
    }

    /// Revokes a lease: every key attached to it is deleted.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client, id: i64) -> cairn_client::Result<()> {
    /// client.lease_revoke(id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_revoke(&self, id: i64) -> Result<Header> {
        let req = LeaseRevokeRequest { id };
        let resp = self
            .call(Effect::Write, |ch| async move { Ok(LeaseClient::new(ch).lease_revoke(req).await?.into_inner()) })
            .await
            .map_err(|e| with_lease(e, Some(id)))?;
        Ok(resp.header.into())
    }

    /// The remaining time of a lease, and with `keys` its attached keys. Fails
    /// with [`Error::LeaseNotFound`] if the lease does not exist (any more).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client, id: i64) -> cairn_client::Result<()> {
    /// let ttl = client.lease_time_to_live(id, true).await?;
    /// println!("{}s left of {}s, {} keys", ttl.ttl, ttl.granted_ttl, ttl.keys.len());
    /// # Ok(()) }
    /// ```
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLive> {
        let req = LeaseTimeToLiveRequest { id, keys };
        let resp =
            self.call(Effect::Read, |ch| async move {
                Ok(LeaseClient::new(ch).lease_time_to_live(req).await?.into_inner())
            })
            .await
            .map_err(|e| with_lease(e, Some(id)))?;
        if resp.ttl < 0 {
            return Err(Error::LeaseNotFound { lease: Some(id) });
        }
        Ok(LeaseTimeToLive {
            header: resp.header.into(),
            id: resp.id,
            ttl: resp.ttl,
            granted_ttl: resp.granted_ttl,
            keys: resp.keys,
        })
    }

    /// The IDs of every live lease.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// for id in client.lease_leases().await? {
    ///     println!("{id:x}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lease_leases(&self) -> Result<Vec<i64>> {
        let resp = self
            .call(Effect::Read, |ch| async move {
                Ok(LeaseClient::new(ch).lease_leases(LeaseLeasesRequest {}).await?.into_inner())
            })
            .await?;
        Ok(resp.leases.into_iter().map(|l| l.id).collect())
    }

    /// Opens a keep-alive stream for lease `id` and renews the lease once (its
    /// TTL is then [`LeaseKeepAlive::ttl`]). Call [`LeaseKeepAlive::keep_alive`]
    /// at least once per TTL; or use [`crate::LeaseHandle`], which does it for
    /// you. Opening is retried on other members like a read; fails with
    /// [`Error::LeaseNotFound`] if the lease does not exist.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let lease = client.lease_grant(10).await?;
    /// let mut keeper = client.lease_keep_alive(lease.id).await?;
    /// let ttl = keeper.keep_alive().await?; // renewed to `ttl` seconds
    /// # Ok(()) }
    /// ```
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAlive> {
        let attempts = self.options().request_attempts_max;
        let mut last = Error::Unavailable { reason: "no attempt made".into() };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let (i, channel) = self.channel();
            match tokio::time::timeout(self.request_timeout(), open_keep_alive(channel, id, i)).await {
                Ok(Ok(k)) => return Ok(k),
                Ok(Err(Verdict::Fail(e))) => return Err(e),
                Ok(Err(Verdict::Retry(e))) => {
                    last = e;
                    self.fail_over(i);
                }
                Err(_) => {
                    last = Error::Timeout { after: self.request_timeout() };
                    self.fail_over(i);
                }
            }
        }
        Err(last)
    }
}

/// Opens the stream with a first renewal in it: servers may send the response
/// headers only with the first response, so the call cannot be opened empty.
async fn open_keep_alive(channel: Channel, id: i64, member: usize) -> Result<LeaseKeepAlive, Verdict> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id }).await.expect("the receiver is alive: it is owned here");
    let mut responses = LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|s| lease_verdict(s, id))?
        .into_inner();
    match responses.next().await {
        Some(Ok(r)) if r.ttl <= 0 => Err(Verdict::Fail(Error::LeaseNotFound { lease: Some(id) })),
        Some(Ok(r)) => Ok(LeaseKeepAlive { id, ttl: r.ttl, member, requests: tx, responses }),
        Some(Err(s)) => Err(lease_verdict(s, id)),
        None => Err(Verdict::Retry(Error::Unavailable { reason: "keep-alive stream closed by the server".into() })),
    }
}

fn lease_verdict(s: tonic::Status, id: i64) -> Verdict {
    match classify(s, Effect::Read) {
        Verdict::Retry(e) => Verdict::Retry(with_lease(e, Some(id))),
        Verdict::Fail(e) => Verdict::Fail(with_lease(e, Some(id))),
    }
}

/// A keep-alive stream for one lease (see [`Client::lease_keep_alive`]).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client, id: i64) -> cairn_client::Result<()> {
/// let mut k = client.lease_keep_alive(id).await?;
/// loop {
///     tokio::time::sleep(std::time::Duration::from_secs(k.ttl() as u64 / 3)).await;
///     k.keep_alive().await?;
/// }
/// # }
/// ```
pub struct LeaseKeepAlive {
    id: i64,
    ttl: i64,
    pub(crate) member: usize,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl std::fmt::Debug for LeaseKeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeepAlive").field("id", &self.id).finish()
    }
}

impl LeaseKeepAlive {
    /// The lease this stream keeps alive.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL in seconds the last renewal granted.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Renews the lease once; answers its new TTL in seconds. Fails with
    /// [`Error::LeaseNotFound`] if the lease has expired or was revoked, and with
    /// [`Error::Unavailable`] if the stream broke (open a new one, possibly on
    /// another member).
    pub async fn keep_alive(&mut self) -> Result<i64> {
        let broken = |reason: String| Error::Unavailable { reason };
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| broken("keep-alive stream closed".into()))?;
        match self.responses.next().await {
            Some(Ok(r)) if r.ttl <= 0 => Err(Error::LeaseNotFound { lease: Some(self.id) }),
            Some(Ok(r)) => {
                self.ttl = r.ttl;
                Ok(r.ttl)
            }
            Some(Err(s)) => Err(match classify(s, Effect::Read) {
                Verdict::Retry(e) | Verdict::Fail(e) => with_lease(e, Some(self.id)),
            }),
            None => Err(broken("keep-alive stream closed by the server".into())),
        }
    }
}
