//! Watchers of the key space: ordered, gap-free, per-revision-atomic event streams
//! that never hold up writes or each other.
//!
//! A watcher is *synced* while the dispatcher feeds it live from the store's change
//! feed, and *unsynced* while it reads stored history: when it starts in the past,
//! when its stream's bounded buffer is full (a slow client), or when the dispatcher
//! itself lagged. It rejoins the live feed once it has caught up. Each watcher
//! records the next revision it needs, so no revision is sent twice or skipped at
//! the seam. This module knows the store, not gRPC or Raft: linearizable start and
//! progress revisions are obtained by the API layer and passed in.

mod hub;
mod index;

pub use hub::{StreamGuard, StreamId, StreamMessage, WatchError, WatchEvents, WatchHub, WatchSpec};

/// A watch's ID within its stream, as in etcd (`-1` addresses the whole stream).
pub type WatchId = i64;
