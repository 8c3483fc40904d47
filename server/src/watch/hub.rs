//! The watch hub: registers watchers, feeds synced ones from the change feed, and
//! brings unsynced ones forward from stored history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};

use super::index::WatchIndex;
use super::WatchId;
use crate::limits::{
    WATCH_CATCHUP_EVENTS_MAX, WATCH_CATCHUP_INTERVAL_MS, WATCH_CATCHUP_WATCHERS_PER_ROUND_MAX,
    WATCH_STREAM_BUFFER_MESSAGES,
};
use crate::mvcc::{Change, Event, EventKind, KvStore, MvccError, RangeEnd, Revision, RevisionEvents};

/// What a watch stream's client is sent, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamMessage {
    /// The watch exists; `revision` is the store revision it was created at.
    Created { watch_id: WatchId, revision: Revision },
    /// The watch could not be created.
    Refused { watch_id: WatchId, reason: String },
    /// Events of one or more whole revisions; `revision` is the last one's.
    /// `fragment`: the client accepts this split across several responses.
    Events { watch_id: WatchId, revision: Revision, events: Vec<Event>, fragment: bool },
    /// The events of one revision for every watch of the stream it concerns, as the
    /// dispatcher sends them: one message per stream and revision, so that a
    /// stream's buffer holds revisions, however many of its watches match.
    Revision { revision: Revision, watches: Vec<WatchEvents> },
    /// The watch ended: cancelled by the client, or its start was compacted
    /// (`compact_revision` non-zero).
    Canceled { watch_id: WatchId, reason: String, compact_revision: Revision },
    /// Every event up to `revision` has been sent (for `watch_id`, or for every
    /// watch of the stream when it is -1).
    Progress { watch_id: WatchId, revision: Revision },
}

/// One watch's share of a [`StreamMessage::Revision`].
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvents {
    pub watch_id: WatchId,
    pub events: Vec<Event>,
    /// The client accepts these split across several responses.
    pub fragment: bool,
}

/// What a watch selects and how.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// Client-chosen ID, or `None` to have one assigned.
    pub watch_id: Option<WatchId>,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// The first revision to send; always positive (the API layer resolves "now").
    pub start_revision: Revision,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchError {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("watch: the stream is closed")]
    StreamClosed,
}

/// A watch stream's ID within its member.
pub type StreamId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WatcherKey {
    pub stream: StreamId,
    pub watch: WatchId,
}

struct Watcher {
    key: Vec<u8>,
    end: RangeEnd,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The next revision this watcher needs; every earlier one has been sent.
    next: Revision,
    synced: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let key = event.kv.key.as_slice();
        let in_range = match &self.end {
            RangeEnd::Single => key == self.key.as_slice(),
            RangeEnd::Unbounded => key >= self.key.as_slice(),
            RangeEnd::Before(end) => key >= self.key.as_slice() && key < end.as_slice(),
        };
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        in_range && !filtered
    }

    fn shape(&self, event: &Event) -> Event {
        let mut e = event.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        e
    }
}

struct StreamSlot {
    tx: mpsc::Sender<StreamMessage>,
    next_auto_id: WatchId,
    /// The revision a pending progress request waits for; later requests raise it
    /// instead of waiting on their own.
    progress_wanted: Option<Revision>,
}

#[derive(Default)]
struct HubState {
    /// Every revision up to this one has reached every synced watcher.
    dispatched: Revision,
    /// Ordered so that one stream's watchers are a contiguous range.
    watchers: BTreeMap<WatcherKey, Watcher>,
    index: WatchIndex,
    unsynced: BTreeSet<WatcherKey>,
    streams: HashMap<StreamId, StreamSlot>,
    next_stream: StreamId,
    /// Where the last catch-up round started, so that rounds take turns.
    catch_up_cursor: Option<WatcherKey>,
}

impl HubState {
    fn sync(&mut self, key: WatcherKey) {
        if let Some(w) = self.watchers.get_mut(&key) {
            if !w.synced {
                w.synced = true;
                self.unsynced.remove(&key);
                self.index.insert(key, &w.key, &w.end);
            }
        }
    }

    fn unsync(&mut self, key: WatcherKey) {
        if let Some(w) = self.watchers.get_mut(&key) {
            if w.synced {
                w.synced = false;
                self.index.remove(key, &w.key, &w.end);
                self.unsynced.insert(key);
            }
        }
    }

    fn remove(&mut self, key: WatcherKey) -> bool {
        let Some(w) = self.watchers.remove(&key) else { return false };
        if w.synced {
            self.index.remove(key, &w.key, &w.end);
        }
        self.unsynced.remove(&key);
        true
    }

    fn stream_watchers(&self, stream: StreamId) -> impl Iterator<Item = (&WatcherKey, &Watcher)> {
        let first = WatcherKey { stream, watch: WatchId::MIN };
        let last = WatcherKey { stream, watch: WatchId::MAX };
        self.watchers.range(first..=last)
    }

    fn close_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
        let doomed: Vec<WatcherKey> = self.stream_watchers(stream).map(|(k, _)| *k).collect();
        for key in doomed {
            self.remove(key);
        }
    }

    /// The next revision a watcher needs, counting what the dispatcher has passed
    /// for a synced watcher that nothing matched.
    fn next_of(&self, w: &Watcher) -> Revision {
        if w.synced {
            w.next.max(self.dispatched + 1)
        } else {
            w.next
        }
    }
}

/// The watchers of one member.
pub struct WatchHub {
    store: Arc<KvStore>,
    state: Mutex<HubState>,
    catch_up: Notify,
}

/// Closes its stream (cancelling every watch on it) when dropped.
pub struct StreamGuard {
    hub: Weak<WatchHub>,
    pub id: StreamId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lock().close_stream(self.id);
        }
    }
}

impl WatchHub {
    /// Starts the dispatcher, the catch-up loop and progress notifications.
    pub fn start(store: Arc<KvStore>, progress_notify_interval: Duration) -> Arc<Self> {
        let feed = store.subscribe();
        let dispatched = store.status().revision;
        let hub = Arc::new(WatchHub {
            store,
            state: Mutex::new(HubState { dispatched, ..Default::default() }),
            catch_up: Notify::new(),
        });
        tokio::spawn(dispatch(Arc::downgrade(&hub), feed));
        tokio::spawn(catch_up_loop(Arc::downgrade(&hub)));
        tokio::spawn(progress_loop(Arc::downgrade(&hub), progress_notify_interval));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().expect("watch hub lock")
    }

    /// Counts for metrics: (streams, watchers, watchers catching up, messages queued
    /// for clients).
    pub fn stats(&self) -> (usize, usize, usize, usize) {
        let state = self.lock();
        let queued = state.streams.values().map(|s| s.tx.max_capacity() - s.tx.capacity()).sum();
        (state.streams.len(), state.watchers.len(), state.unsynced.len(), queued)
    }

    /// Opens a stream: what its client is to be sent arrives on the receiver.
    pub fn open_stream(self: &Arc<Self>) -> (StreamGuard, mpsc::Receiver<StreamMessage>) {
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER_MESSAGES);
        let mut state = self.lock();
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(id, StreamSlot { tx, next_auto_id: 0, progress_wanted: None });
        (StreamGuard { hub: Arc::downgrade(self), id }, rx)
    }

    fn sender(&self, stream: StreamId) -> Result<mpsc::Sender<StreamMessage>, WatchError> {
        self.lock().streams.get(&stream).map(|s| s.tx.clone()).ok_or(WatchError::StreamClosed)
    }

    /// Creates a watch; its `Created` (or `Refused`) message precedes its events.
    pub async fn create(
        &self,
        stream: StreamId,
        spec: WatchSpec,
        created_revision: Revision,
    ) -> Result<WatchId, WatchError> {
        // Reserve room first, so the reply is queued at the moment the watcher is
        // registered, ahead of anything the dispatcher sends it.
        let tx = self.sender(stream)?;
        let permit = tx.reserve().await.map_err(|_| WatchError::StreamClosed)?;
        let mut state = self.lock();
        let HubState { streams, watchers, .. } = &mut *state;
        let slot = streams.get_mut(&stream).ok_or(WatchError::StreamClosed)?;
        let id = match spec.watch_id {
            Some(id) => id,
            None => {
                while watchers.contains_key(&WatcherKey { stream, watch: slot.next_auto_id }) {
                    slot.next_auto_id += 1;
                }
                slot.next_auto_id += 1;
                slot.next_auto_id - 1
            }
        };
        let key = WatcherKey { stream, watch: id };
        if state.watchers.contains_key(&key) {
            permit.send(StreamMessage::Refused { watch_id: -1, reason: WatchError::DuplicateId.to_string() });
            return Err(WatchError::DuplicateId);
        }
        permit.send(StreamMessage::Created { watch_id: id, revision: created_revision });
        let watcher = Watcher {
            end: RangeEnd::from_request(&spec.range_end),
            key: spec.key,
            no_put: spec.no_put,
            no_delete: spec.no_delete,
            prev_kv: spec.prev_kv,
            progress_notify: spec.progress_notify,
            fragment: spec.fragment,
            next: spec.start_revision.max(1),
            synced: false,
        };
        let live = watcher.next > state.dispatched;
        state.watchers.insert(key, watcher);
        state.unsynced.insert(key);
        if live {
            state.sync(key);
        } else {
            self.catch_up.notify_one();
        }
        Ok(id)
    }

    /// Tells the client a watch was not created.
    pub async fn refuse(&self, stream: StreamId, watch_id: WatchId, reason: String) -> Result<(), WatchError> {
        let tx = self.sender(stream)?;
        tx.send(StreamMessage::Refused { watch_id, reason }).await.map_err(|_| WatchError::StreamClosed)
    }

    /// Cancels a watch; unknown IDs are ignored, as etcd does.
    pub async fn cancel(&self, stream: StreamId, watch_id: WatchId) -> Result<(), WatchError> {
        let tx = self.sender(stream)?;
        let permit = tx.reserve().await.map_err(|_| WatchError::StreamClosed)?;
        if self.lock().remove(WatcherKey { stream, watch: watch_id }) {
            permit.send(StreamMessage::Canceled { watch_id, reason: String::new(), compact_revision: 0 });
        }
        Ok(())
    }

    /// Sends a stream-wide progress message at `revision` (or later) once every watch
    /// of the stream has been sent every event up to it. One waiter per stream: a
    /// request that finds one pending raises its revision and returns.
    pub async fn progress(&self, stream: StreamId, revision: Revision) -> Result<(), WatchError> {
        {
            let mut state = self.lock();
            let slot = state.streams.get_mut(&stream).ok_or(WatchError::StreamClosed)?;
            if let Some(wanted) = slot.progress_wanted.as_mut() {
                *wanted = (*wanted).max(revision);
                return Ok(());
            }
            slot.progress_wanted = Some(revision);
        }
        loop {
            let ready = {
                let mut state = self.lock();
                let wanted =
                    state.streams.get(&stream).and_then(|s| s.progress_wanted).ok_or(WatchError::StreamClosed)?;
                let passed = state.stream_watchers(stream).all(|(_, w)| state.next_of(w) > wanted);
                if passed {
                    let slot = state.streams.get_mut(&stream).expect("checked above");
                    slot.progress_wanted = None;
                    Some((wanted, slot.tx.clone()))
                } else {
                    None
                }
            };
            if let Some((wanted, tx)) = ready {
                return tx
                    .send(StreamMessage::Progress { watch_id: -1, revision: wanted })
                    .await
                    .map_err(|_| WatchError::StreamClosed);
            }
            tokio::time::sleep(Duration::from_millis(WATCH_CATCHUP_INTERVAL_MS)).await;
        }
    }

    /// Feeds one committed revision to the synced watchers it concerns.
    fn dispatch_revision(&self, rev: &RevisionEvents) {
        let mut state = self.lock();
        if rev.revision <= state.dispatched {
            return; // announced again after a lag; already covered
        }
        // Ordered, so that each stream's watchers are contiguous.
        let mut per_watcher: BTreeMap<WatcherKey, WatchEvents> = BTreeMap::new();
        let mut hits = Vec::new();
        for event in &rev.events {
            hits.clear();
            state.index.matching(&event.kv.key, &mut hits);
            // Read from history at most once per event, and only if a watcher wants it.
            let mut with_prev = None;
            for key in &hits {
                let w = &state.watchers[key];
                if w.next <= rev.revision && w.wants(event) {
                    let shaped = if w.prev_kv && event.prev_elided() {
                        with_prev.get_or_insert_with(|| self.with_stored_prev(event)).clone()
                    } else {
                        w.shape(event)
                    };
                    per_watcher
                        .entry(*key)
                        .or_insert_with(|| WatchEvents {
                            watch_id: key.watch,
                            events: Vec::new(),
                            fragment: w.fragment,
                        })
                        .events
                        .push(shaped);
                }
            }
        }
        let mut fell_behind = false;
        let mut matched = per_watcher.into_iter().peekable();
        while let Some((first, events)) = matched.next() {
            let stream = first.stream;
            let mut watches = vec![events];
            while let Some((_, events)) = matched.next_if(|(k, _)| k.stream == stream) {
                watches.push(events);
            }
            let Some(slot) = state.streams.get(&stream) else { continue };
            let ids: Vec<WatchId> = watches.iter().map(|w| w.watch_id).collect();
            match slot.tx.try_send(StreamMessage::Revision { revision: rev.revision, watches }) {
                Ok(()) => {
                    for watch in ids {
                        if let Some(w) = state.watchers.get_mut(&WatcherKey { stream, watch }) {
                            w.next = rev.revision + 1;
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // A slow client: its watchers read this revision from history.
                    for watch in ids {
                        let key = WatcherKey { stream, watch };
                        if let Some(w) = state.watchers.get_mut(&key) {
                            w.next = rev.revision;
                        }
                        state.unsync(key);
                    }
                    fell_behind = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => state.close_stream(stream),
            }
        }
        state.dispatched = rev.revision;
        if fell_behind {
            self.catch_up.notify_one();
        }
    }

    /// Moves every synced watcher to catch-up, as of the dispatched revision (the
    /// dispatcher lagged, or the store jumped to a snapshot).
    fn unsync_all(&self, now_at: Revision) {
        let mut state = self.lock();
        let dispatched = state.dispatched;
        let synced: Vec<WatcherKey> = state.watchers.iter().filter(|(_, w)| w.synced).map(|(k, _)| *k).collect();
        for key in synced {
            if let Some(w) = state.watchers.get_mut(&key) {
                w.next = w.next.max(dispatched + 1);
            }
            state.unsync(key);
        }
        state.dispatched = state.dispatched.max(now_at);
        self.catch_up.notify_one();
    }

    /// One round of catch-up; returns whether watchers remain behind. Rounds take
    /// turns: each starts at the watcher after the previous round's first, reads
    /// history from that watcher's next revision, and serves every watcher in the
    /// round that needs exactly that stretch, so no watcher far behind holds the
    /// others back and none waits forever.
    fn catch_up_round(&self) -> bool {
        let (behind, from) = {
            let mut state = self.lock();
            let after = state.catch_up_cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let upto = state.catch_up_cursor.map_or(Bound::Unbounded, Bound::Included);
            let has_room = |k: &WatcherKey| state.streams.get(&k.stream).is_some_and(|s| s.tx.capacity() > 0);
            let behind: Vec<(WatcherKey, Revision)> = state
                .unsynced
                .range((after, Bound::Unbounded))
                .chain(state.unsynced.range((Bound::Unbounded, upto)))
                .filter(|k| has_room(k))
                .take(WATCH_CATCHUP_WATCHERS_PER_ROUND_MAX)
                .filter_map(|k| state.watchers.get(k).map(|w| (*k, w.next)))
                .collect();
            let Some(&(first, from)) = behind.first() else { return !state.unsynced.is_empty() };
            state.catch_up_cursor = Some(first);
            (behind, from)
        };
        let view = self.store.read_view();
        let history = match view.history(from, WATCH_CATCHUP_EVENTS_MAX) {
            Ok(h) => h,
            Err(MvccError::Compacted { compact_revision }) => {
                self.cancel_compacted(&behind, compact_revision);
                return true;
            }
            Err(e) => unreachable!("reading history fails only on compaction: {e}"),
        };
        // Whole revisions were read up to here.
        let read_to = match history.last() {
            Some(last) if history.iter().map(|r| r.events.len()).sum::<usize>() >= WATCH_CATCHUP_EVENTS_MAX => {
                last.revision
            }
            _ => view.revision,
        };
        drop(view);
        let mut state = self.lock();
        for (key, next) in behind {
            // Watchers behind `from` wait for their own turn; one past `read_to` needs
            // none of this.
            if next >= from && next <= read_to {
                self.bring_forward(&mut state, key, next, &history, read_to);
            }
        }
        !state.unsynced.is_empty()
    }

    /// `event` with the previous version the change feed left out, read from history
    /// (left out still if compaction removed it, as etcd does).
    fn with_stored_prev(&self, event: &Event) -> Event {
        let prev_kv = self.store.read_view().version_before(&event.kv.key, event.kv.mod_revision);
        Event { prev_kv, ..event.clone() }
    }

    /// Sends `key` what it needs of `history`, if it is still the watcher that
    /// needed revision `next` (not cancelled and recreated under the same ID).
    fn bring_forward(
        &self,
        state: &mut HubState,
        key: WatcherKey,
        next: Revision,
        history: &[RevisionEvents],
        read_to: Revision,
    ) {
        let Some(w) = state.watchers.get(&key) else { return };
        if w.synced || w.next != next {
            return;
        }
        let mut events = Vec::new();
        let mut last = 0;
        for rev in history.iter().filter(|r| r.revision >= w.next) {
            events.extend(rev.events.iter().filter(|e| w.wants(e)).map(|e| w.shape(e)));
            last = rev.revision;
        }
        let Some(slot) = state.streams.get(&key.stream) else { return };
        if !events.is_empty() {
            let msg = StreamMessage::Events { watch_id: key.watch, revision: last, events, fragment: w.fragment };
            match slot.tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return, // still slow; try next round
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    state.close_stream(key.stream);
                    return;
                }
            }
        }
        let dispatched = state.dispatched;
        let w = state.watchers.get_mut(&key).expect("checked above");
        w.next = read_to + 1;
        // Live from here if the dispatcher has not passed it by.
        if w.next > dispatched {
            state.sync(key);
        }
    }

    fn cancel_compacted(&self, behind: &[(WatcherKey, Revision)], compact_revision: Revision) {
        let mut state = self.lock();
        for (key, next) in behind {
            let still = state.watchers.get(key).is_some_and(|w| !w.synced && w.next == *next);
            if *next >= compact_revision || !still {
                continue;
            }
            let Some(slot) = state.streams.get(&key.stream) else { continue };
            let msg = StreamMessage::Canceled {
                watch_id: key.watch,
                reason: MvccError::Compacted { compact_revision }.to_string(),
                compact_revision,
            };
            // If the buffer is full, try again next round.
            if slot.tx.try_send(msg).is_ok() {
                state.remove(*key);
            }
        }
    }

    fn notify_progress(&self) {
        let state = self.lock();
        for (key, w) in &state.watchers {
            if w.progress_notify && w.synced {
                if let Some(slot) = state.streams.get(&key.stream) {
                    let msg = StreamMessage::Progress { watch_id: key.watch, revision: state.next_of(w) - 1 };
                    // A full buffer already holds newer news for this client.
                    let _ = slot.tx.try_send(msg);
                }
            }
        }
    }
}

async fn dispatch(hub: Weak<WatchHub>, mut feed: broadcast::Receiver<Change>) {
    loop {
        let change = feed.recv().await;
        let Some(hub) = hub.upgrade() else { return };
        match change {
            Ok(Change::Committed(rev)) => hub.dispatch_revision(&rev),
            Ok(Change::Jumped { revision }) => hub.unsync_all(revision),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "watch dispatcher fell behind the change feed; watchers catch up from history");
                let now = hub.store.status().revision;
                hub.unsync_all(now);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn catch_up_loop(hub: Weak<WatchHub>) {
    loop {
        let Some(strong) = hub.upgrade() else { return };
        let more = strong.catch_up_round();
        if more {
            drop(strong);
            tokio::time::sleep(Duration::from_millis(WATCH_CATCHUP_INTERVAL_MS)).await;
        } else {
            let woken = async { strong.catch_up.notified().await };
            // Re-check now and then, in case a wake-up raced with the round.
            let _ = tokio::time::timeout(Duration::from_millis(WATCH_CATCHUP_INTERVAL_MS * 20), woken).await;
        }
    }
}

async fn progress_loop(hub: Weak<WatchHub>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match hub.upgrade() {
            Some(hub) => hub.notify_progress(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Command, PutRequest};

    fn prefix_watch(start_revision: Revision) -> WatchSpec {
        WatchSpec {
            watch_id: None,
            key: b"/p/".to_vec(),
            range_end: b"/p0".to_vec(),
            start_revision,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
        }
    }

    #[tokio::test]
    async fn more_matching_watches_than_a_stream_buffers_stay_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(crate::schema::open_db(&dir.path().join("db")).unwrap());
        let hub = WatchHub::start(store.clone(), Duration::from_secs(600));
        let (guard, mut rx) = hub.open_stream();
        let watches = 3 * WATCH_STREAM_BUFFER_MESSAGES;
        let rev = store.status().revision;
        for _ in 0..watches {
            hub.create(guard.id, prefix_watch(rev + 1), rev).await.unwrap();
            assert!(matches!(rx.recv().await, Some(StreamMessage::Created { .. })));
        }
        let put = Command::Put(PutRequest { key: b"/p/k".to_vec(), value: b"v".to_vec(), ..Default::default() });
        store.apply(&put, &[]).unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        let StreamMessage::Revision { revision, watches: got } = msg else {
            panic!("one message per revision: {msg:?}")
        };
        assert_eq!(revision, rev + 1);
        assert_eq!(got.len(), watches);
        assert!(got.iter().all(|w| w.events.len() == 1 && w.events[0].kv.key == b"/p/k"));
        assert_eq!(hub.stats().2, 0, "no watch fell back to catching up from history");
    }

    #[tokio::test]
    async fn a_prev_kv_watcher_gets_the_previous_version_the_change_feed_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(crate::schema::open_db(&dir.path().join("db")).unwrap());
        let hub = WatchHub::start(store.clone(), Duration::from_secs(600));
        let put = |value: &str| {
            let cmd = Command::Put(PutRequest { key: b"/p/k".to_vec(), value: value.into(), ..Default::default() });
            store.apply(&cmd, &[]).unwrap().revision
        };
        put("first");
        let (guard, mut rx) = hub.open_stream();
        let rev = store.status().revision;
        for prev_kv in [true, false] {
            hub.create(guard.id, WatchSpec { prev_kv, ..prefix_watch(rev + 1) }, rev).await.unwrap();
            assert!(matches!(rx.recv().await, Some(StreamMessage::Created { .. })));
        }
        let second = put("second");
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        let StreamMessage::Revision { revision, watches } = msg else { panic!("one message per revision: {msg:?}") };
        assert_eq!((revision, watches.len()), (second, 2));
        let prevs: Vec<Option<Vec<u8>>> =
            watches.iter().map(|w| w.events[0].prev_kv.as_ref().map(|p| p.value.clone())).collect();
        // Watch IDs are assigned in order: the prev_kv watcher is the first.
        assert_eq!(prevs, vec![Some(b"first".to_vec()), None]);
        assert_eq!(watches[0].events[0].prev_kv.as_ref().unwrap().version, 1);
    }
}
