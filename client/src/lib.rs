//! `cairn-client`: the Rust client for Cairn — and for any etcd v3 server, since
//! it speaks only the etcd v3 gRPC API.
//!
//! Two layers:
//!
//! * **Raw API** on [`Client`]: [`Client::get`] (every range option, builder
//!   style), [`Client::put`], [`Client::delete`], [`Client::compact`],
//!   transactions ([`Client::txn`]`.when([..]).and_then([..]).or_else([..])`),
//!   [`Client::watch`] returning a `Stream`, leases, and the member and
//!   maintenance calls an admin tool needs. Requests are builders you `.await`.
//! * **Typed API**: [`Keyspace<T>`] (a prefix with serde values, JSON or bincode,
//!   with compare-and-swap [`Keyspace::update`]), self-resuming typed watches
//!   ([`TypedWatch`]), [`Mirror<T>`] (a local, always-consistent copy of a
//!   keyspace), [`LeaseHandle`] (automatic keep-alive, loss notification), and
//!   [`Election`] / [`Lock`] with fencing tokens and [`Fence`]d writes.
//!
//! ```no_run
//! # async fn demo() -> cairn_client::Result<()> {
//! use cairn_client::{Client, ClientOptions, Keyspace};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Shard { owner: String, epoch: u64 }
//!
//! let client = Client::connect(["http://127.0.0.1:2379"], ClientOptions::default()).await?;
//! let shards: Keyspace<Shard> = Keyspace::new(client, "shards/");
//! shards.create("0", Shard { owner: "a".into(), epoch: 1 }).await?;
//! let moved = shards.update("0", |s| Shard { owner: "b".into(), epoch: s.epoch + 1 }).await?;
//! println!("shard 0 now at {} (revision {})", moved.value.owner, moved.mod_revision);
//! # Ok(()) }
//! ```
//!
//! # Revisions
//!
//! The store has one revision counter. Every write (a put, a delete, a whole
//! transaction) increments it once and is applied at that revision; every
//! response carries the revision the member had reached ([`Header::revision`]).
//! Each key records the revision that created it (`create_revision`, reset when
//! the key is deleted and created again), the revision of its last write
//! (`mod_revision`) and its `version` (writes since creation). So:
//!
//! * compare-and-swap compares `mod_revision` ([`Keyspace::put_if_revision`]);
//! * a fencing token is a `create_revision` ([`Fence`]);
//! * a consistent listing at revision `R` plus a watch from `R + 1` sees every
//!   change exactly once ([`Keyspace::list`], [`Keyspace::watch`], [`Mirror`]);
//! * old revisions can be read ([`Get::revision`]) until they are compacted
//!   ([`Client::compact`]); below the compaction point reads and watches fail
//!   with [`Error::Compacted`].
//!
//! # Consistency
//!
//! Reads are **linearizable** by default: a read reflects every write
//! acknowledged before it was sent, whichever member serves it.
//! [`Get::serializable`] reads a member's local state instead: faster, but
//! possibly behind. A watch without a start revision starts at or after every
//! write acknowledged before it was created; events arrive in revision order,
//! each revision whole, with no gap and no duplicate. [`Mirror::wait_for_revision`]
//! gives read-your-writes on a mirror.
//!
//! # Failure modes a caller must handle
//!
//! The client is built from several endpoints and moves to the next one when a
//! member fails. What it does with a failed request depends on whether the
//! request may have taken effect:
//!
//! * **Reads** (and watches, and lease keep-alives) are retried on another member,
//!   up to [`ClientOptions::request_attempts_max`] attempts with a short backoff;
//!   if all fail: [`Error::Unavailable`] or [`Error::Timeout`].
//! * **Writes that provably were not applied** (connection refused, "no leader")
//!   are retried the same way.
//! * **Writes whose outcome is unknown** (the member died or leadership changed
//!   while the write was in flight, or no answer came in time) fail with
//!   [`Error::OutcomeUnknown`] and are **never** retried by the client: the write
//!   may or may not be applied. Read back to find out, or make the write
//!   conditional (a transaction on `mod_revision` or `create_revision`) so that
//!   repeating it is harmless. [`Keyspace::update`] and [`Election::campaign`]
//!   are built that way.
//! * [`Error::Compacted`]: the history needed is gone; list again at the current
//!   revision. Typed watches report it explicitly (never as a silent gap);
//!   [`Mirror`] recovers from it by itself.
//! * [`Error::ConditionFailed`] / [`Error::Fenced`]: someone else changed the key,
//!   or someone else now holds the lock or leadership. Do not retry blindly.
//! * [`Error::LeaseLost`]: a [`LeaseHandle`]'s lease is gone (or could not be
//!   confirmed for a whole TTL); every key attached to it must be assumed deleted.
//!
//! A lease alone does not give mutual exclusion: a process paused past its TTL
//! still believes it holds it. Guard every write made as a leader or lock holder
//! with its [`Fence`]: the server then refuses writes from a deposed holder.
//!
//! # TLS
//!
//! [`TlsOptions`] exists so that configuration can carry certificates, but this
//! build has no TLS stack (Cairn does not serve TLS yet): connecting with TLS
//! options or an `https://` endpoint fails with [`Error::Config`] rather than
//! falling back to plain text.
#![deny(missing_docs)]

mod admin;
mod client;
mod codec;
mod election;
mod error;
mod keyspace;
mod kv;
mod lease;
mod lease_handle;
mod mirror;
mod options;
mod txn;
mod typed_watch;
mod watch;

pub use admin::{Alarm, AlarmKind, HashKv, Member, MemberStatus, MembershipResponse, SnapshotChunk};
pub use client::Client;
pub use codec::{Bincode, Codec, Json};
pub use election::{Election, Fence, LeaderInfo, Leadership, Lock, LockGuard, Observe};
pub use error::{Error, Result};
pub use keyspace::{Deleted, Keyspace, Listing, Value, Versioned};
pub use kv::{
    prefix_end, BoxFuture, CompactResponse, Delete, DeleteOp, DeleteResponse, Get, GetOp, GetResponse, Header,
    KeyValue, Put, PutOp, PutResponse, SortOrder, SortTarget,
};
pub use lease::{LeaseGrant, LeaseKeepAlive, LeaseTimeToLive};
pub use lease_handle::{LeaseHandle, LeaseState, LEASE_TTL_SECONDS_MIN};
pub use mirror::{Mirror, MirrorChanges, MirrorSnapshot, MIRROR_PROGRESS_POLL_MS};
pub use options::*;
pub use txn::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse, TxnSpec};
pub use typed_watch::{Event as TypedEvent, TypedWatch};
pub use watch::{Event, EventKind, Watch, WatchBatch, WatchStream};
