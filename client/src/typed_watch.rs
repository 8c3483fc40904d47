//! Typed, self-resuming watches of a [`Keyspace`]: a `Stream` of [`Event<T>`] with
//! no gap and no duplicate across reconnections.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;

use futures::Stream;
use tokio::sync::{mpsc, Notify};
use tokio_stream::StreamExt;

use crate::client::backoff;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::keyspace::{Keyspace, Value, Versioned};
use crate::options::WATCH_EVENTS_PENDING_MAX;
use crate::watch::{self, EventKind};

/// One change of a typed keyspace (exported as `cairn_client::TypedEvent`).
///
/// ```no_run
/// # async fn demo(ks: cairn_client::Keyspace<u64>) -> cairn_client::Result<()> {
/// use cairn_client::TypedEvent;
/// use futures::StreamExt;
/// let mut w = ks.watch(None);
/// if let Some(TypedEvent::Put { item, prev }) = w.next().await.transpose()? {
///     println!("{}: {:?} -> {}", item.key, prev.map(|p| p.value), item.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// The key was created or updated.
    Put {
        /// The new value and its revisions (`item.mod_revision` is the event's
        /// revision).
        item: Versioned<T>,
        /// The previous value, if the key existed.
        prev: Option<Versioned<T>>,
    },
    /// The key was deleted (or its lease ended).
    Delete {
        /// The key, relative to the keyspace's prefix.
        key: String,
        /// The revision of the delete.
        revision: i64,
        /// The value before the delete.
        prev: Option<Versioned<T>>,
    },
}

impl<T> Event<T> {
    /// The key, relative to the keyspace's prefix.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { item, .. } => &item.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put { item, .. } => item.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// What the background task of a typed watch hands over.
pub(crate) enum Item<T> {
    /// Every event of one or more whole revisions, the last being `revision`.
    Batch { revision: i64, events: Vec<Result<Event<T>>> },
    /// Every change up to this revision has been delivered.
    Progress(i64),
    /// The watch cannot continue (compaction, or a permanent error).
    Failed(Error),
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A typed watch: a `Stream` of [`Event<T>`] in revision order.
///
/// It survives member failures and leader changes: after a broken stream it
/// reconnects (to another member if needed) and resumes from the revision after
/// the last one it delivered, skipping anything already delivered, so the
/// sequence has no gap and no duplicate. A member that keeps the connection
/// open but stops answering (frozen, or cut off from its cluster) is detected
/// by a progress probe after an idle period and left the same way (see
/// [`crate::ClientOptions::watch_probe`]). If the history it needs has been
/// compacted, it yields [`Error::Compacted`] with the compact revision and
/// ends; list the keyspace again and watch from the listing's revision + 1 (or
/// use a [`crate::Mirror`], which does that for you). A value the codec cannot
/// decode is yielded as [`Error::Codec`] and the stream goes on. Dropping the
/// stream stops the watch.
///
/// ```no_run
/// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
/// use cairn_client::TypedEvent;
/// use futures::StreamExt;
///
/// let mut events = ks.watch(None);
/// while let Some(event) = events.next().await {
///     match event? {
///         TypedEvent::Put { item, .. } => println!("{} = {}", item.key, item.value),
///         TypedEvent::Delete { key, .. } => println!("{key} deleted"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct TypedWatch<T> {
    rx: mpsc::Receiver<Item<T>>,
    pending: VecDeque<Result<Event<T>>>,
    progress: Arc<Notify>,
    next_revision: Option<i64>,
    done: bool,
    _task: AbortOnDrop,
}

impl<T> std::fmt::Debug for TypedWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedWatch").field("next_revision", &self.next_revision).finish()
    }
}

impl<T: Value, C: Codec> Keyspace<T, C> {
    /// Watches every change of the keyspace from revision `start` on (inclusive),
    /// or, with `None`, every change after the current revision.
    ///
    /// To see every value exactly once, [`Keyspace::list`] and then watch from
    /// `listing.revision + 1`.
    ///
    /// ```no_run
    /// # async fn demo(ks: cairn_client::Keyspace<String>) -> cairn_client::Result<()> {
    /// let listing = ks.list().await?;
    /// let events = ks.watch(Some(listing.revision + 1));
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, start: Option<i64>) -> TypedWatch<T> {
        let (tx, rx) = mpsc::channel(WATCH_EVENTS_PENDING_MAX);
        let progress = Arc::new(Notify::new());
        let task = tokio::spawn(run(self.clone(), start, tx, progress.clone()));
        TypedWatch {
            rx,
            pending: VecDeque::new(),
            progress,
            next_revision: start,
            done: false,
            _task: AbortOnDrop(task),
        }
    }

    pub(crate) fn watch_items(&self, start: i64, progress: Arc<Notify>) -> (mpsc::Receiver<Item<T>>, AbortOnDrop) {
        let (tx, rx) = mpsc::channel(WATCH_EVENTS_PENDING_MAX);
        let task = tokio::spawn(run(self.clone(), Some(start), tx, progress));
        (rx, AbortOnDrop(task))
    }

    fn decode_event(&self, e: watch::Event) -> Result<Event<T>> {
        let prev = e.prev_kv.map(|kv| self.decode_kv(kv)).transpose()?;
        match e.kind {
            EventKind::Put => Ok(Event::Put { item: self.decode_kv(e.kv)?, prev }),
            EventKind::Delete => Ok(Event::Delete { key: self.relative(&e.kv.key), revision: e.kv.mod_revision, prev }),
        }
    }
}

impl<T> TypedWatch<T> {
    /// The revision the stream resumes from if it reconnects now: one past the
    /// last revision delivered (or confirmed by a progress notification). Save it
    /// to continue later with `watch(Some(rev))`. `None` until the stream knows.
    pub fn next_revision(&self) -> Option<i64> {
        self.next_revision
    }

    /// Asks the server to confirm progress; [`TypedWatch::next_revision`] then
    /// advances to at least every write acknowledged before the call.
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }
}

// No field is ever pinned: the stream only moves values in and out.
impl<T> Unpin for TypedWatch<T> {}

impl<T> Stream for TypedWatch<T> {
    type Item = Result<Event<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if let Ok(ev) = &e {
                    let rev = ev.revision() + 1;
                    self.next_revision = Some(self.next_revision.map_or(rev, |n| n.max(rev)));
                }
                return Poll::Ready(Some(e));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Item::Batch { events, .. })) => self.pending.extend(events),
                Poll::Ready(Some(Item::Progress(rev))) => {
                    self.next_revision = Some(self.next_revision.map_or(rev + 1, |n| n.max(rev + 1)));
                }
                Poll::Ready(Some(Item::Failed(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Whether a broken watch may be resumed from where it stopped.
fn resumable(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::OutcomeUnknown { .. } | Error::WatchCanceled { .. }
    )
}

/// The background task of a typed watch: (re)opens raw watches and forwards
/// whole revisions, each exactly once, until the receiver is dropped.
async fn run<T: Value, C: Codec>(
    ks: Keyspace<T, C>,
    mut next: Option<i64>,
    tx: mpsc::Sender<Item<T>>,
    progress: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        if tx.is_closed() {
            return;
        }
        let mut req =
            ks.client().watch(ks.prefix().as_bytes().to_vec()).prefix().prev_kv().progress_notify().fragment();
        if let Some(n) = next {
            req = req.start_revision(n);
        }
        let mut stream = match req.send().await {
            Ok(s) => s,
            Err(e) if resumable(&e) => {
                failures += 1;
                tracing::debug!(error = %e, "typed watch: reconnecting");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(e) => {
                let _ = tx.send(Item::Failed(e)).await;
                return;
            }
        };
        let mut from = *next.get_or_insert(stream.created_revision() + 1);
        let (idle, probe_timeout) = (ks.client().options().watch_idle_probe, ks.client().options().watch_probe_timeout);
        let mut last_heard = Instant::now();
        let mut probe_sent: Option<Instant> = None;
        loop {
            let check_at = match probe_sent {
                None => last_heard + idle,
                Some(sent) => sent + probe_timeout,
            };
            let item = tokio::select! {
                biased;
                item = stream.next() => item,
                _ = tx.closed() => return,
                _ = progress.notified() => {
                    if stream.request_progress().await.is_err() {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(check_at) => {
                    if probe_sent.is_none() {
                        probe_sent = Some(Instant::now());
                        if stream.request_progress().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    tracing::debug!(endpoint = stream.endpoint(), "typed watch: member does not answer; resuming at {from} elsewhere");
                    ks.client().fail_over_from(stream.endpoint());
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    break;
                }
            };
            last_heard = Instant::now();
            probe_sent = None;
            let batch = match item {
                None => break,
                Some(Err(e)) if resumable(&e) => {
                    tracing::debug!(endpoint = stream.endpoint(), error = %e, "typed watch: stream broke; resuming at {from}");
                    ks.client().fail_over_from(stream.endpoint());
                    // A member that accepts watches and breaks them at once must
                    // not make this loop spin.
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    break;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Item::Failed(e)).await;
                    return;
                }
                Some(Ok(batch)) => {
                    failures = 0;
                    batch
                }
            };
            if batch.is_progress_notify() {
                let rev = batch.header.revision;
                if rev >= from {
                    from = rev + 1;
                    next = Some(from);
                }
                if tx.send(Item::Progress(rev)).await.is_err() {
                    return;
                }
                continue;
            }
            // Drop what an earlier stream already delivered (a resumed stream
            // starts at `from`, so this only guards against a misbehaving server).
            let events: Vec<_> = batch.events.into_iter().filter(|e| e.kv.mod_revision >= from).collect();
            let Some(last) = events.last().map(|e| e.kv.mod_revision) else { continue };
            let events = events.into_iter().map(|e| ks.decode_event(e)).collect();
            if tx.send(Item::Batch { revision: last, events }).await.is_err() {
                return;
            }
            from = last + 1;
            next = Some(from);
        }
    }
}
