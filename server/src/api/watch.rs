//! The etcd v3 Watch service: one bidirectional stream carries many watches.
//!
//! Beyond etcd, a watch created without a start revision, and a progress request,
//! are linearizable: this member first confirms with the leader (ReadIndex) that it
//! has applied every write acknowledged before the request, so the created or
//! progress revision is at or after all of them, on any member.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::mvccpb;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::key_value;
use super::Api;
use crate::mvcc::{Event, EventKind, Revision};
use crate::watch::{StreamGuard, StreamId, StreamMessage, WatchHub, WatchSpec};

pub struct WatchService {
    api: Arc<Api>,
    hub: Arc<WatchHub>,
}

impl WatchService {
    pub fn new(api: Arc<Api>, hub: Arc<WatchHub>) -> Self {
        WatchService { api, hub }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<pb::WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        let inbound = request.into_inner();
        let (guard, rx) = self.hub.open_stream();
        tokio::spawn(serve_requests(self.api.clone(), self.hub.clone(), guard, inbound));
        let api = self.api.clone();
        let fragment_bytes = self.api.limits.request_bytes_max;
        let out = ReceiverStream::new(rx)
            .flat_map(move |msg| futures::stream::iter(responses(&api, msg, fragment_bytes).into_iter().map(Ok)));
        Ok(Response::new(Box::pin(out)))
    }
}

/// Reads the client's requests until it goes away; the guard then closes the stream.
async fn serve_requests(
    api: Arc<Api>,
    hub: Arc<WatchHub>,
    guard: StreamGuard,
    mut inbound: Streaming<pb::WatchRequest>,
) {
    let stream = guard.id;
    while let Ok(Some(req)) = inbound.message().await {
        let outcome = match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                create(&api, &hub, stream, c).await;
                Ok(())
            }
            Some(RequestUnion::CancelRequest(c)) => hub.cancel(stream, c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answered in the background, so that later requests are not held up.
                let (api, hub) = (api.clone(), hub.clone());
                tokio::spawn(async move {
                    if let Ok(revision) = linearizable_revision(&api).await {
                        let _ = hub.progress(stream, revision).await;
                    }
                });
                Ok(())
            }
            None => Ok(()),
        };
        if outcome.is_err() {
            break;
        }
    }
    drop(guard);
}

/// The store revision after confirming with the leader that this member has
/// applied every acknowledged write.
async fn linearizable_revision(api: &Api) -> Result<Revision, Status> {
    api.node.linearizable_barrier().await.map_err(super::error::raft_status)?;
    Ok(api.store.status().revision)
}

async fn create(api: &Arc<Api>, hub: &WatchHub, stream: StreamId, c: pb::WatchCreateRequest) {
    // Every create is linearizable: "now" is at or after every acknowledged write,
    // and a start revision is judged (compacted or not) against an up-to-date store.
    let now = match linearizable_revision(api).await {
        Ok(rev) => rev,
        Err(status) => {
            let _ = hub.refuse(stream, c.watch_id, status.message().to_string()).await;
            return;
        }
    };
    let start_revision = if c.start_revision > 0 { c.start_revision } else { now + 1 };
    let created_revision = now;
    let spec = WatchSpec {
        // etcd treats 0 as "assign one" (and assigns from 0 upwards).
        watch_id: (c.watch_id != 0).then_some(c.watch_id),
        key: c.key,
        range_end: c.range_end,
        start_revision,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: c.prev_kv,
        progress_notify: c.progress_notify,
        fragment: c.fragment,
    };
    // A duplicate ID is answered on the stream; nothing else to do here.
    let _ = hub.create(stream, spec, created_revision).await;
}

fn event(e: Event) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event { r#type: kind as i32, kv: Some(key_value(e.kv)), prev_kv: e.prev_kv.map(key_value) }
}

/// The wire responses for one message: one, or several fragments of a revision set
/// too large for one response.
fn responses(api: &Api, msg: StreamMessage, fragment_bytes: usize) -> Vec<pb::WatchResponse> {
    let base = |watch_id, revision| pb::WatchResponse { header: api.header(revision), watch_id, ..Default::default() };
    match msg {
        StreamMessage::Created { watch_id, revision } => {
            vec![pb::WatchResponse { created: true, ..base(watch_id, revision) }]
        }
        StreamMessage::Refused { watch_id, reason } => {
            let rev = api.store.status().revision;
            vec![pb::WatchResponse { created: true, canceled: true, cancel_reason: reason, ..base(watch_id, rev) }]
        }
        StreamMessage::Canceled { watch_id, reason, compact_revision } => {
            let rev = api.store.status().revision;
            vec![pb::WatchResponse { canceled: true, cancel_reason: reason, compact_revision, ..base(watch_id, rev) }]
        }
        StreamMessage::Progress { watch_id, revision } => vec![base(watch_id, revision)],
        StreamMessage::Events { watch_id, revision, events, fragment } => {
            event_responses(base(watch_id, revision), events, fragment, fragment_bytes)
        }
        StreamMessage::Revision { revision, watches } => watches
            .into_iter()
            .flat_map(|w| event_responses(base(w.watch_id, revision), w.events, w.fragment, fragment_bytes))
            .collect(),
    }
}

/// One watch's events as a response, or as fragments when it is too large for one
/// and the client accepts fragments.
fn event_responses(
    base: pb::WatchResponse,
    events: Vec<Event>,
    fragment: bool,
    fragment_bytes: usize,
) -> Vec<pb::WatchResponse> {
    crate::observability::metrics().watch.events_sent_total.inc_by(events.len() as u64);
    let events: Vec<mvccpb::Event> = events.into_iter().map(event).collect();
    let whole = pb::WatchResponse { events, ..base };
    if !fragment || whole.encoded_len() <= fragment_bytes || whole.events.len() < 2 {
        return vec![whole];
    }
    fragments(whole, fragment_bytes)
}

/// Splits an oversized response into fragments, each marked `fragment` but the last.
fn fragments(whole: pb::WatchResponse, bytes_max: usize) -> Vec<pb::WatchResponse> {
    let template = pb::WatchResponse { events: Vec::new(), ..whole.clone() };
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in whole.events {
        let len = e.encoded_len();
        if !current.is_empty() && size + len > bytes_max {
            out.push(pb::WatchResponse { events: std::mem::take(&mut current), fragment: true, ..template.clone() });
            size = 0;
        }
        size += len;
        current.push(e);
    }
    out.push(pb::WatchResponse { events: current, ..template });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_responses_split_into_fragments_marked_all_but_last() {
        let event = |i: u8| mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue { key: vec![i], value: vec![i; 400], mod_revision: 9, ..Default::default() }),
            prev_kv: None,
        };
        let whole = pb::WatchResponse { watch_id: 3, events: (0..10).map(event).collect(), ..Default::default() };
        let parts = fragments(whole.clone(), 1_000);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.encoded_len() <= 1_000 + 450), "a fragment overshoots by at most one event");
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment) && !parts.last().unwrap().fragment);
        let rejoined: Vec<mvccpb::Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(rejoined, whole.events);
        assert!(parts.iter().all(|p| p.watch_id == 3));
    }
}
