//! The raw watch API: one gRPC watch stream per [`WatchStream`], as a `Stream` of
//! [`WatchBatch`]es.

use std::future::IntoFuture;
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_proto::etcdserverpb::{
    watch_client::WatchClient, watch_create_request::FilterType, watch_request, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use cairn_proto::mvccpb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::client::{backoff, Client};
use crate::error::{classify, Effect, Error, Result, Verdict};
use crate::kv::{BoxFuture, Header, KeyValue};
use crate::options::{WATCH_FRAGMENT_EVENTS_MAX, WATCH_REQUESTS_PENDING_MAX};

/// What happened to a key.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::EventKind;
/// use futures::StreamExt;
/// let mut w = client.watch("k").await?;
/// for e in w.next().await.expect("open")?.events {
///     if e.kind == EventKind::Delete {
///         println!("{} deleted at {}", e.kv.key_str(), e.kv.mod_revision);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (or its lease ended).
    Delete,
}

/// One change of one key.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// let mut w = client.watch("k").prev_kv().await?;
/// for e in w.next().await.expect("open")?.events {
///     println!("{:?}: {:?} -> {}", e.kind, e.prev_kv.map(|p| p.value), e.kv.value_str());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, with `mod_revision` the
    /// revision of the delete and an empty value).
    pub kv: KeyValue,
    /// The key before the change, if the watch asked for `prev_kv` and it existed.
    pub prev_kv: Option<KeyValue>,
}

impl From<mvccpb::Event> for Event {
    fn from(e: mvccpb::Event) -> Self {
        let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put };
        Event { kind, kv: e.kv.map(KeyValue::from).unwrap_or_default(), prev_kv: e.prev_kv.map(KeyValue::from) }
    }
}

/// One message of a watch stream: the events of one or more whole revisions,
/// in revision order, or (with no events) a progress notification saying that
/// every change up to `header.revision` has been delivered.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// let mut w = client.watch("jobs/").prefix().progress_notify().await?;
/// while let Some(batch) = w.next().await {
///     let batch = batch?;
///     if batch.is_progress_notify() {
///         println!("up to date at {}", batch.header.revision);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// Header; for a progress notification, the revision the stream has reached.
    pub header: Header,
    /// The events, in revision order; never split inside a revision.
    pub events: Vec<Event>,
}

impl WatchBatch {
    /// True for a progress notification (no events).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// A watch request being built; `.await` it to open the stream.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
///
/// let mut watch = client.watch("config/").prefix().prev_kv().start_revision(1).await?;
/// while let Some(batch) = watch.next().await {
///     for event in batch?.events {
///         println!("{:?} {} at {}", event.kind, event.kv.key_str(), event.kv.mod_revision);
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is awaited"]
pub struct Watch {
    client: Client,
    req: WatchCreateRequest,
}

impl Watch {
    crate::kv::key_range_options!();

    /// Deliver every change from revision `rev` on (inclusive). Without it the
    /// stream starts after the revision current when the watch is created,
    /// which is at or after every write acknowledged before this call.
    pub fn start_revision(mut self, rev: i64) -> Self {
        self.req.start_revision = rev;
        self
    }

    /// Ask the server to send periodic progress notifications while idle.
    pub fn progress_notify(mut self) -> Self {
        self.req.progress_notify = true;
        self
    }

    /// Include each key's previous value in its events.
    pub fn prev_kv(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }

    /// Let the server split very large revisions into several messages; the
    /// client reassembles them, so batches stay whole.
    pub fn fragment(mut self) -> Self {
        self.req.fragment = true;
        self
    }

    /// Leave out put events.
    pub fn no_put(mut self) -> Self {
        self.req.filters.push(FilterType::Noput as i32);
        self
    }

    /// Leave out delete events.
    pub fn no_delete(mut self) -> Self {
        self.req.filters.push(FilterType::Nodelete as i32);
        self
    }

    /// Opens the stream (same as `.await`).
    pub async fn send(self) -> Result<WatchStream> {
        open(&self.client, self.req).await
    }
}

impl IntoFuture for Watch {
    type Output = Result<WatchStream>;
    type IntoFuture = BoxFuture<Result<WatchStream>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

impl Client {
    /// Starts a watch of `key`; add options and `.await` it to get a
    /// [`WatchStream`].
    ///
    /// A raw watch stream ends at the first error (member lost, compaction) and
    /// reports it; the typed [`crate::Keyspace::watch`] resumes by itself.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let watch = client.watch("leader").await?;
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, key: impl Into<Vec<u8>>) -> Watch {
        Watch { client: self.clone(), req: WatchCreateRequest { key: key.into(), ..Default::default() } }
    }
}

/// An open watch: a `Stream` of [`WatchBatch`]es that ends after the first
/// error. Dropping it cancels the watch on the server.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// let mut w = client.watch("k").await?;
/// w.request_progress().await?;
/// let first = w.next().await;
/// w.cancel().await?;
/// # Ok(()) }
/// ```
pub struct WatchStream {
    watch_id: i64,
    created_revision: i64,
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
    fragments: Vec<Event>,
    done: bool,
    endpoint: String,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").field("watch_id", &self.watch_id).field("endpoint", &self.endpoint).finish()
    }
}

async fn open(client: &Client, create: WatchCreateRequest) -> Result<WatchStream> {
    let attempts = client.options().request_attempts_max;
    let mut last = Error::Unavailable { reason: "no attempt made".into() };
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let (i, channel) = client.channel();
        match tokio::time::timeout(client.request_timeout(), open_on(client, channel, create.clone(), i)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(Verdict::Fail(e))) => return Err(e),
            Ok(Err(Verdict::Retry(e))) => {
                tracing::debug!(endpoint = %client.url_of(i), error = %e, "opening a watch failed; retrying");
                last = e;
                client.fail_over(i);
            }
            Err(_) => {
                last = Error::Timeout { after: client.request_timeout() };
                client.fail_over(i);
            }
        }
    }
    Err(last)
}

async fn open_on(
    client: &Client,
    channel: tonic::transport::Channel,
    create: WatchCreateRequest,
    i: usize,
) -> Result<WatchStream, Verdict> {
    let (tx, rx) = mpsc::channel(WATCH_REQUESTS_PENDING_MAX);
    let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    tx.send(first).await.expect("the receiver is alive: it is owned here");
    let mut responses = WatchClient::new(channel)
        .max_decoding_message_size(client.response_bytes_max())
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|s| classify(s, Effect::Read))?
        .into_inner();
    let created = match responses.next().await {
        Some(Ok(r)) => r,
        Some(Err(s)) => return Err(classify(s, Effect::Read)),
        None => {
            return Err(Verdict::Retry(Error::Unavailable { reason: "watch stream closed before creation".into() }))
        }
    };
    if created.canceled {
        return Err(Verdict::Fail(cancel_error(&created)));
    }
    if !created.created {
        return Err(Verdict::Fail(Error::Server {
            code: tonic::Code::Internal,
            message: format!("the first watch response is not a creation: {created:?}"),
        }));
    }
    Ok(WatchStream {
        watch_id: created.watch_id,
        created_revision: created.header.map(|h| h.revision).unwrap_or(0),
        requests: tx,
        responses,
        fragments: Vec::new(),
        done: false,
        endpoint: client.url_of(i),
    })
}

fn cancel_error(r: &WatchResponse) -> Error {
    if r.compact_revision > 0 {
        Error::Compacted { compact_revision: Some(r.compact_revision) }
    } else if r.cancel_reason.contains("permission denied") {
        Error::PermissionDenied(r.cancel_reason.clone())
    } else {
        Error::WatchCanceled { reason: r.cancel_reason.clone() }
    }
}

impl WatchStream {
    /// The server's ID of this watch.
    pub fn watch_id(&self) -> i64 {
        self.watch_id
    }

    /// The store's revision when the watch was created: without a start
    /// revision, the stream delivers every change after it.
    pub fn created_revision(&self) -> i64 {
        self.created_revision
    }

    /// The member serving this stream.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Asks for a progress notification: a batch without events whose revision
    /// is at or after every write acknowledged before this call. Never waits: if
    /// the queue of requests towards the server is full, the progress requests
    /// already in it answer this one too.
    pub async fn request_progress(&self) -> Result<()> {
        let req =
            WatchRequest { request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})) };
        match self.requests.try_send(req) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Stopped("the watch stream has ended".into())),
        }
    }

    /// Cancels the watch on the server (dropping the stream does too).
    pub async fn cancel(mut self) -> Result<()> {
        let req = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: self.watch_id,
            })),
        };
        if self.requests.send(req).await.is_err() {
            return Ok(());
        }
        // Drain until the server confirms (or the stream ends).
        while let Some(item) = self.responses.next().await {
            match item {
                Ok(r) if r.canceled => return Ok(()),
                Ok(_) => continue,
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn handle(&mut self, r: WatchResponse) -> Option<Result<WatchBatch>> {
        if r.canceled {
            self.done = true;
            return Some(Err(cancel_error(&r)));
        }
        if r.created {
            return None;
        }
        let events = r.events.into_iter().map(Event::from);
        if r.fragment {
            self.fragments.extend(events);
            if self.fragments.len() > WATCH_FRAGMENT_EVENTS_MAX {
                self.done = true;
                return Some(Err(Error::Server {
                    code: tonic::Code::ResourceExhausted,
                    message: format!("a fragmented watch response exceeds {WATCH_FRAGMENT_EVENTS_MAX} events"),
                }));
            }
            return None;
        }
        let mut all = std::mem::take(&mut self.fragments);
        all.extend(events);
        Some(Ok(WatchBatch { header: r.header.into(), events: all }))
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.responses).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    let reason = format!("watch stream from {} closed", self.endpoint);
                    return Poll::Ready(Some(Err(Error::Unavailable { reason })));
                }
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    let e = match classify(status, Effect::Read) {
                        Verdict::Retry(e) | Verdict::Fail(e) => e,
                    };
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(r))) => {
                    if let Some(item) = self.handle(r) {
                        return Poll::Ready(Some(item));
                    }
                }
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        // Dropping the response stream resets the HTTP/2 stream, which ends the
        // watch on the server; the explicit cancel is a courtesy.
        let req = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: self.watch_id,
            })),
        };
        let _ = self.requests.try_send(req);
    }
}
