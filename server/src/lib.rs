//! Cairn: a Raft-replicated key-value store for metadata that speaks the etcd v3 API.
//!
//! Layers, each depending only on those below it:
//! - [`schema`]: every RocksDB column family and key encoding;
//! - [`mvcc`]: the revisioned key space;
//! - [`watch`]: watchers fed from the store's change feed and history;
//! - [`raft`]: replication with openraft, the log store and peer network;
//! - [`lease`]: lease expiry, decided by the leader and committed through Raft;
//! - [`api`]: the etcd v3 gRPC services;
//! - [`observability`]: metrics and slow-request traces, fed by every layer;
//! - [`server`]: wires a member together from its [`config`].

pub mod api;
mod background;
pub mod bootstrap;
pub mod config;
pub mod lease;
pub mod limits;
pub mod mvcc;
pub mod observability;
pub mod raft;
pub mod restore;
pub mod schema;
pub mod server;
pub mod watch;

/// What `cairn --version` prints after the name: the package version and the Git
/// commit the binary was built from ("unknown" when built outside a checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CAIRN_GIT_COMMIT"), ")");

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_commit_checked_out() {
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or("unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(super::VERSION, format!("{} (commit {head})", env!("CARGO_PKG_VERSION")));
    }
}
