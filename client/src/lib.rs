//! `cairn-client`: the Rust client for Cairn (and any etcd v3 server).
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
