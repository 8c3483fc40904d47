//! Cairn: a Raft-replicated key-value store for metadata that speaks the etcd v3 API.
//!
//! Layers, each depending only on those below it:
//! - [`schema`]: every RocksDB column family and key encoding;
//! - [`mvcc`]: the revisioned key space;
//! - [`watch`]: watchers fed from the store's change feed and history;
//! - [`raft`]: replication with openraft, the log store and peer network;
//! - [`lease`]: lease expiry, decided by the leader and committed through Raft;
//! - [`api`]: the etcd v3 gRPC services;
//! - [`server`]: wires a member together from its [`config`].

pub mod api;
mod background;
pub mod bootstrap;
pub mod config;
pub mod lease;
pub mod limits;
pub mod mvcc;
pub mod raft;
pub mod restore;
pub mod schema;
pub mod server;
pub mod watch;
