//! `cairn-client`: the Rust client for Cairn (and any etcd v3 server).
#![deny(missing_docs)]

mod admin;
mod client;
mod error;
mod kv;
mod lease;
mod options;
mod txn;
mod watch;

pub use admin::{Alarm, AlarmKind, HashKv, Member, MemberStatus, MembershipResponse, SnapshotChunk};
pub use client::Client;
pub use error::{Error, Result};
pub use kv::{
    prefix_end, BoxFuture, CompactResponse, Delete, DeleteOp, DeleteResponse, Get, GetOp, GetResponse, Header,
    KeyValue, Put, PutOp, PutResponse, SortOrder, SortTarget,
};
pub use lease::{LeaseGrant, LeaseKeepAlive, LeaseTimeToLive};
pub use options::*;
pub use txn::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse, TxnSpec};
pub use watch::{Event, EventKind, Watch, WatchBatch, WatchStream};
