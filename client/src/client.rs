//! [`Client`]: connections to the members, endpoint failover and the retry policy.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::error::{classify, Effect, Error, Result, Verdict};
use crate::options::{ClientOptions, RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN};

/// A connection to a Cairn (or etcd) cluster.
///
/// Cheap to clone: clones share the connections. Every call goes to the
/// *current* member; when a member fails in a way that proves a request was not
/// applied (connection refused, "no leader", or any failure of a read), the client
/// moves on to the next member and tries again, up to
/// [`ClientOptions::request_attempts_max`] attempts with a short backoff. A write
/// that may have been applied is never retried: it fails with
/// [`Error::OutcomeUnknown`].
///
/// ```no_run
/// # async fn demo() -> cairn_client::Result<()> {
/// use cairn_client::{Client, ClientOptions};
///
/// let client = Client::connect(
///     ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"],
///     ClientOptions::default(),
/// )
/// .await?;
/// client.put("greeting", "hello").await?;
/// let kv = client.get("greeting").await?.into_first().expect("just written");
/// assert_eq!(kv.value, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Replaced as a whole by [`Client::sync_endpoints`]; indices into it are
    /// taken modulo its length, so a stale index is harmless.
    members: RwLock<Arc<Vec<MemberChannel>>>,
    current: AtomicUsize,
    pub(crate) opts: ClientOptions,
}

#[derive(Clone)]
struct MemberChannel {
    url: String,
    channel: Channel,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("current", &self.current_endpoint())
            .finish()
    }
}

impl Client {
    /// Connects to a cluster given the client URLs of some or all of its members
    /// (`http://host:port`).
    ///
    /// Succeeds as soon as one member accepts a connection, which becomes the
    /// current member; the others are connected to lazily when failover needs
    /// them. Fails with [`Error::Config`] for an empty list, a malformed URL or TLS
    /// options (not supported yet, see [`ClientOptions::tls`]), and with
    /// [`Error::Unavailable`] if no member accepts a connection within the
    /// connect timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> cairn_client::Result<()> {
    /// let client = cairn_client::Client::connect(["http://127.0.0.1:2379"], Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<I, S>(endpoints: I, opts: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if opts.tls.is_some() {
            return Err(Error::Config(
                "TLS was requested, but this build of cairn-client has no TLS support yet (Cairn does not serve TLS)"
                    .into(),
            ));
        }
        let urls: Vec<String> = endpoints.into_iter().map(|s| s.as_ref().trim().to_string()).collect();
        if urls.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let mut configured = Vec::with_capacity(urls.len());
        for url in &urls {
            configured.push(endpoint(url, &opts)?);
        }
        let mut members = Vec::with_capacity(urls.len());
        let mut first_up = None;
        let mut failures = Vec::new();
        for (i, (url, ep)) in urls.iter().zip(&configured).enumerate() {
            let channel = if first_up.is_none() {
                match ep.connect().await {
                    Ok(ch) => {
                        first_up = Some(i);
                        ch
                    }
                    Err(e) => {
                        failures.push(format!("{url}: {}", error_chain(&e)));
                        ep.connect_lazy()
                    }
                }
            } else {
                ep.connect_lazy()
            };
            members.push(MemberChannel { url: url.clone(), channel });
        }
        let Some(current) = first_up else {
            return Err(Error::Unavailable {
                reason: format!("no endpoint accepts connections: {}", failures.join("; ")),
            });
        };
        Ok(Client::from_members(members, current, opts))
    }

    fn from_members(members: Vec<MemberChannel>, current: usize, opts: ClientOptions) -> Client {
        let members = RwLock::new(Arc::new(members));
        Client { inner: Arc::new(Inner { members, current: AtomicUsize::new(current), opts }) }
    }

    fn members(&self) -> Arc<Vec<MemberChannel>> {
        self.inner.members.read().expect("endpoint list lock").clone()
    }

    /// Replaces the endpoints with the client URLs of the cluster's voting
    /// members, as the cluster lists them now (etcd's `Sync`), and answers them.
    /// Call it after membership changes, or periodically, so that failover
    /// knows every member. Connections to endpoints that stay are kept.
    ///
    /// ```no_run
    /// # async fn demo() -> cairn_client::Result<()> {
    /// let client = cairn_client::Client::connect(["http://10.0.0.1:2379"], Default::default()).await?;
    /// let all = client.sync_endpoints().await?; // now fails over to every member
    /// # Ok(()) }
    /// ```
    pub async fn sync_endpoints(&self) -> Result<Vec<String>> {
        let list = self.member_list(false).await?;
        let old = self.members();
        let mut new: Vec<MemberChannel> = Vec::new();
        for url in list.members.iter().filter(|m| !m.is_learner).flat_map(|m| m.client_urls.iter()) {
            let url = url.trim().trim_end_matches('/');
            if new.iter().any(|m| m.url == url) {
                continue;
            }
            if let Some(m) = old.iter().find(|m| m.url == url) {
                new.push(m.clone());
                continue;
            }
            match endpoint(url, &self.inner.opts) {
                Ok(ep) => new.push(MemberChannel { url: url.to_string(), channel: ep.connect_lazy() }),
                Err(e) => tracing::warn!(%url, error = %e, "sync_endpoints: member URL left out"),
            }
        }
        if new.is_empty() {
            return Err(Error::Unavailable { reason: "the member list names no usable client URL".into() });
        }
        let current = self.current_endpoint();
        let index = new.iter().position(|m| m.url == current).unwrap_or(0);
        let urls = new.iter().map(|m| m.url.clone()).collect();
        *self.inner.members.write().expect("endpoint list lock") = Arc::new(new);
        self.inner.current.store(index, Ordering::Relaxed);
        Ok(urls)
    }

    /// The endpoints this client was built with, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members().iter().map(|m| m.url.clone()).collect()
    }

    /// The endpoint requests currently go to (it changes on failover).
    pub fn current_endpoint(&self) -> String {
        let members = self.members();
        let i = self.inner.current.load(Ordering::Relaxed) % members.len();
        members[i].url.clone()
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The current member's index and channel.
    pub(crate) fn channel(&self) -> (usize, Channel) {
        let members = self.members();
        let i = self.inner.current.load(Ordering::Relaxed) % members.len();
        (i, members[i].channel.clone())
    }

    pub(crate) fn url_of(&self, i: usize) -> String {
        let members = self.members();
        members[i % members.len()].url.clone()
    }

    /// Moves to the member after `failed`, unless another task already moved on.
    pub(crate) fn fail_over(&self, failed: usize) {
        let members = self.members();
        let failed = failed % members.len();
        let next = (failed + 1) % members.len();
        if self.inner.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            && members.len() > 1
        {
            tracing::debug!(from = %members[failed].url, to = %members[next].url, "failing over");
        }
    }

    /// Moves on from the member at `url` if it is the current one.
    pub(crate) fn fail_over_from(&self, url: &str) {
        if let Some(i) = self.members().iter().position(|m| m.url == url) {
            self.fail_over(i);
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.opts.request_timeout
    }

    pub(crate) fn response_bytes_max(&self) -> usize {
        self.inner.opts.response_bytes_max
    }

    /// Runs one unary request with the retry policy of `effect`: `f` is called
    /// once per attempt with the channel of the member to try.
    pub(crate) async fn call<T, F, Fut>(&self, effect: Effect, mut f: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.request_timeout();
        let attempts = self.inner.opts.request_attempts_max;
        let mut last = Error::Unavailable { reason: "no attempt made".into() };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let (i, channel) = self.channel();
            match tokio::time::timeout(timeout, f(channel)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => match classify(status, effect) {
                    Verdict::Retry(e) => {
                        tracing::debug!(endpoint = %self.url_of(i), error = %e, attempt, "request failed; retrying");
                        last = e;
                        self.fail_over(i);
                    }
                    Verdict::Fail(e) => return Err(e),
                },
                Err(_) => match effect {
                    Effect::Read => {
                        last = Error::Timeout { after: timeout };
                        self.fail_over(i);
                    }
                    Effect::Write => {
                        self.fail_over(i);
                        return Err(Error::OutcomeUnknown {
                            reason: format!("no answer from {} within {timeout:?}", self.url_of(i)),
                        });
                    }
                },
            }
        }
        Err(last)
    }
}

impl Client {
    pub(crate) fn pinned_client(&self, endpoint: &str) -> Result<Client> {
        let url = endpoint.trim();
        let channel = match self.members().iter().find(|m| m.url == url) {
            Some(m) => m.channel.clone(),
            None => self::endpoint(url, &self.inner.opts)?.connect_lazy(),
        };
        let members = vec![MemberChannel { url: url.to_string(), channel }];
        Ok(Client::from_members(members, 0, self.inner.opts.clone()))
    }
}

/// Pause before attempt number `attempt` (1-based for the first retry).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = RETRY_BACKOFF_MS_MIN.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(RETRY_BACKOFF_MS_MAX))
}

fn endpoint(url: &str, opts: &ClientOptions) -> Result<Endpoint> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Config(format!("endpoint {url:?} must start with http:// (or https://)")));
    }
    if url.starts_with("https://") {
        return Err(Error::Config(format!(
            "endpoint {url:?}: https is not supported yet by this build of cairn-client"
        )));
    }
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| Error::Config(format!("endpoint {url:?}: {e}")))?;
    Ok(ep
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keep_alive_interval)
        .keep_alive_timeout(opts.keep_alive_timeout)
        .keep_alive_while_idle(opts.keep_alive_while_idle)
        .tcp_nodelay(true))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
