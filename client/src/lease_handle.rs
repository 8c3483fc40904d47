//! [`LeaseHandle`]: a lease kept alive in the background for as long as the
//! handle lives, with immediate notice of its loss.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::{backoff, Client};
use crate::error::{Error, Result};
use crate::typed_watch::AbortOnDrop;

/// Shortest TTL a [`LeaseHandle`] accepts, in seconds: keep-alives are sent every
/// third of the TTL and must have room for a round trip.
pub const LEASE_TTL_SECONDS_MIN: i64 = 2;

/// The state of a [`LeaseHandle`]'s lease.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::{LeaseHandle, LeaseState};
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// if let LeaseState::Lost { reason } = lease.state() {
///     eprintln!("lost: {reason}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Kept alive; the server has confirmed the lease until at least this
    /// local instant.
    Alive {
        /// Local instant before which the lease cannot have expired.
        until: Instant,
    },
    /// Expired, revoked, or not confirmed in time: keys attached to it are (or
    /// must be assumed to be) gone.
    Lost {
        /// Why.
        reason: String,
    },
}

/// A granted lease that a background task keeps alive until the handle is
/// dropped (which revokes it) or [`LeaseHandle::revoke`] is called.
///
/// The keeper renews every third of the TTL, failing over to other members as
/// needed. The lease is reported lost — at once, through [`LeaseHandle::lost`]
/// and [`LeaseHandle::state`] — when the server says it no longer exists, or
/// when no renewal has been confirmed for a whole TTL (measured from the moment
/// the last confirmed renewal was *sent*, so the client never believes in a
/// lease the server may already have expired). Once lost, a handle stays lost.
///
/// Holding a lease does not by itself give mutual exclusion (a paused process
/// may still think it holds it): use the fencing tokens of
/// [`crate::Election`] and [`crate::Lock`] for that.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::LeaseHandle;
///
/// let lease = LeaseHandle::grant(&client, 10).await?;
/// client.put("workers/me", "alive").lease(lease.id()).await?;
/// tokio::select! {
///     e = lease.lost() => eprintln!("stop working: {e}"),
///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
/// }
/// # Ok(()) }
/// ```
pub struct LeaseHandle {
    client: Client,
    id: i64,
    ttl: i64,
    state: watch::Receiver<LeaseState>,
    task: Option<AbortOnDrop>,
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("state", &self.state())
            .finish()
    }
}

impl LeaseHandle {
    /// Grants a lease of `ttl_seconds` (at least [`LEASE_TTL_SECONDS_MIN`]) and
    /// starts keeping it alive.
    pub async fn grant(client: &Client, ttl_seconds: i64) -> Result<LeaseHandle> {
        if ttl_seconds < LEASE_TTL_SECONDS_MIN {
            return Err(Error::InvalidArgument(format!(
                "lease TTL {ttl_seconds}s is below the minimum of {LEASE_TTL_SECONDS_MIN}s"
            )));
        }
        let sent = Instant::now();
        let grant = client.lease_grant(ttl_seconds).await?;
        Ok(LeaseHandle::keep(client, grant.id, grant.ttl, sent))
    }

    /// Starts keeping alive an existing lease `id` of `ttl_seconds`, confirmed
    /// alive at local instant `confirmed_at`.
    pub fn keep(client: &Client, id: i64, ttl_seconds: i64, confirmed_at: Instant) -> LeaseHandle {
        let ttl = ttl_seconds.max(1);
        let until = confirmed_at + Duration::from_secs(ttl as u64);
        let (tx, rx) = watch::channel(LeaseState::Alive { until });
        let task = tokio::spawn(keep_alive(client.clone(), id, ttl, until, tx));
        LeaseHandle { client: client.clone(), id, ttl, state: rx, task: Some(AbortOnDrop(task)) }
    }

    /// The lease's ID (attach keys to it with `put(..).lease(id)`).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The granted TTL in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Whether the lease is still known to be alive.
    pub fn is_alive(&self) -> bool {
        matches!(*self.state.borrow(), LeaseState::Alive { .. })
    }

    /// Resolves when the lease is lost, with [`Error::LeaseLost`] saying why.
    /// Returns at once if it is already lost.
    pub async fn lost(&self) -> Error {
        let mut rx = self.state.clone();
        let reason = match rx.wait_for(|s| matches!(s, LeaseState::Lost { .. })).await {
            Ok(s) => match &*s {
                LeaseState::Lost { reason } => reason.clone(),
                LeaseState::Alive { .. } => unreachable!("wait_for returned a state it did not wait for"),
            },
            Err(_) => "the keep-alive task ended".to_string(),
        };
        Error::LeaseLost { lease: self.id, reason }
    }

    /// A receiver of state changes, for `select!` loops.
    pub fn watch_state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Stops the keep-alive and revokes the lease (deleting its keys).
    pub async fn revoke(mut self) -> Result<()> {
        self.task.take();
        match self.client.lease_revoke(self.id).await {
            Ok(_) | Err(Error::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        if self.task.take().is_some() {
            // Best effort: without a runtime (or if it fails) the lease simply
            // expires after its TTL.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (client, id) = (self.client.clone(), self.id);
                rt.spawn(async move {
                    let _ = client.lease_revoke(id).await;
                });
            }
        }
    }
}

async fn keep_alive(client: Client, id: i64, ttl: i64, mut until: Instant, tx: watch::Sender<LeaseState>) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    let mut failures = 0u32;
    let lose = |reason: String| {
        tracing::warn!(lease = format_args!("{id:x}"), %reason, "lease lost");
        tx.send_replace(LeaseState::Lost { reason });
    };
    loop {
        if Instant::now() >= until {
            return lose(format!("no renewal confirmed within the {ttl}s TTL"));
        }
        let opened_at = Instant::now();
        let stream = tokio::time::timeout(until - opened_at, client.lease_keep_alive(id)).await;
        let mut stream = match stream {
            Ok(Ok(s)) => {
                // Opening renewed the lease once.
                until = opened_at + Duration::from_secs(s.ttl().max(0) as u64);
                tx.send_replace(LeaseState::Alive { until });
                failures = 0;
                s
            }
            Ok(Err(Error::LeaseNotFound { .. })) => return lose("the server no longer has the lease".into()),
            Ok(Err(e)) => {
                failures += 1;
                tracing::debug!(lease = format_args!("{id:x}"), error = %e, "keep-alive stream failed; retrying");
                tokio::time::sleep(backoff(failures).min(until.saturating_duration_since(Instant::now()))).await;
                continue;
            }
            Err(_) => continue,
        };
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            if sent >= until {
                break;
            }
            match tokio::time::timeout(until - sent, stream.keep_alive()).await {
                Ok(Ok(new_ttl)) => {
                    failures = 0;
                    until = sent + Duration::from_secs(new_ttl.max(0) as u64);
                    tx.send_replace(LeaseState::Alive { until });
                }
                Ok(Err(Error::LeaseNotFound { .. })) => return lose("expired or revoked on the server".into()),
                Ok(Err(e)) => {
                    tracing::debug!(lease = format_args!("{id:x}"), error = %e, "keep-alive failed; reconnecting");
                    client.fail_over(stream.member);
                    break;
                }
                Err(_) => {
                    client.fail_over(stream.member);
                    break;
                }
            }
        }
    }
}
