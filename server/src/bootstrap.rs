//! A member's identity (cluster ID, member ID, name) and the checks that keep a data
//! directory with the cluster it was created for.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ClusterState, Config};
use crate::mvcc::decode_meta;
use crate::raft::{ClusterView, Member, NodeId, StoredMembership};
use crate::schema::{self, identity_keys, meta_keys, CF_IDENTITY};

/// Who this member is, written once when its data directory is created.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: NodeId,
    pub name: String,
    pub cluster_token: String,
}

#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum BootstrapError {
    #[error("bootstrap: data directory {dir} belongs to member {stored:?}, but this member is named {configured:?}; use that member's name or another data directory")]
    NameMismatch { dir: String, stored: String, configured: String },
    #[error("bootstrap: data directory {dir} belongs to cluster {stored:x} (token {token:?}), but --initial-cluster and --initial-cluster-token describe cluster {configured:x}; refusing to mix clusters")]
    ClusterMismatch { dir: String, stored: u64, token: String, configured: u64 },
    #[error("bootstrap: the cluster knows member {name} at {stored}, but this member is configured to be reached at {configured}; start it with its known peer URLs (changing them needs the Cluster API's MemberUpdate)")]
    PeerUrlsMismatch { name: String, stored: String, configured: String },
    #[error("bootstrap: data directory {dir} has no member identity; it was not created by Cairn or its creation was interrupted. Move it away to start a new member")]
    NotCairn { dir: String },
    #[error("bootstrap: cannot join the cluster: no member listed in --initial-cluster ({peers}) answered: {reason}")]
    NoPeerAnswered { peers: String, reason: String },
    #[error("bootstrap: the cluster has no member with this member's peer URLs ({urls}); add it first (etcdctl member add <name> --peer-urls={urls}), then start it with --initial-cluster-state existing")]
    NotAdded { urls: String },
    #[error("bootstrap: member {id:x} (peer URLs {urls}) was removed from the cluster; a removed member cannot rejoin: add a new member and start it with an empty data directory")]
    Removed { id: u64, urls: String },
    #[error("bootstrap: storage: {0}")]
    Storage(#[from] rocksdb::Error),
}

fn hash_u64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let id = u64::from_be_bytes(digest[..8].try_into().expect("sha256 is 32 bytes"));
    id.max(1) // zero means "none" on the wire
}

/// A member's ID, from its peer URLs and the cluster token (like etcd's).
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    hash_u64(&[b"cairn-member", urls.join(",").as_bytes(), token.as_bytes()])
}

/// The cluster's ID, from its initial members and token.
pub fn cluster_id(member_ids: impl IntoIterator<Item = NodeId>, token: &str) -> u64 {
    let mut ids: Vec<NodeId> = member_ids.into_iter().collect();
    ids.sort();
    let ids: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    hash_u64(&[b"cairn-cluster", &ids, token.as_bytes()])
}

/// The initial members as Raft sees them.
pub fn initial_members(config: &Config) -> BTreeMap<NodeId, Member> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let id = member_id(urls, &config.initial_cluster_token);
            let client_urls = if *name == config.name { config.advertise_client_urls.clone() } else { Vec::new() };
            (id, Member { name: name.clone(), peer_urls: urls.clone(), client_urls, pending_voter: false })
        })
        .collect()
}

/// The ID of a cluster restored from a backup with SHA-256 `digest`.
pub fn restored_cluster_id(member_ids: impl IntoIterator<Item = NodeId>, token: &str, digest: &[u8]) -> u64 {
    let mut ids: Vec<NodeId> = member_ids.into_iter().collect();
    ids.sort();
    let ids: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    hash_u64(&[b"cairn-restored-cluster", &ids, token.as_bytes(), digest])
}

/// Creates the identity of a member restored from a backup (see [`crate::restore`]).
pub fn create_restored(db: &DB, config: &Config, digest: [u8; 32]) -> Result<Identity, BootstrapError> {
    let identity = configured_identity(config, Some(&digest));
    let mut batch = WriteBatch::default();
    let cf = schema::cf(db, CF_IDENTITY);
    batch.put_cf(
        cf,
        identity_keys::IDENTITY,
        bincode::serialize(&identity).expect("bincode encoding of an in-memory value cannot fail"),
    );
    batch.put_cf(cf, identity_keys::RESTORED_FROM, digest);
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    Ok(identity)
}

/// What the configuration says this member's identity is (`restored_from`: the
/// digest of the backup the member was restored from).
fn configured_identity(config: &Config, restored_from: Option<&[u8]>) -> Identity {
    let members = initial_members(config);
    let ids = members.keys().copied();
    Identity {
        cluster_id: match restored_from {
            Some(digest) => restored_cluster_id(ids, &config.initial_cluster_token, digest),
            None => cluster_id(ids, &config.initial_cluster_token),
        },
        member_id: member_id(&config.initial_advertise_peer_urls, &config.initial_cluster_token),
        name: config.name.clone(),
        cluster_token: config.initial_cluster_token.clone(),
    }
}

/// Whether this member must learn its identity from a running cluster: it joins one
/// (`--initial-cluster-state existing`) and has no identity yet.
pub fn must_join(db: &DB, config: &Config) -> Result<bool, BootstrapError> {
    Ok(config.initial_cluster_state == ClusterState::Existing
        && db.get_cf(schema::cf(db, CF_IDENTITY), identity_keys::IDENTITY)?.is_none())
}

/// Asks the members named in `--initial-cluster` for the cluster's membership and
/// finds this member in it by its peer URLs (as etcd does); returns the cluster ID
/// and this member's ID, assigned by MemberAdd.
pub async fn discover(config: &Config) -> Result<(u64, NodeId), BootstrapError> {
    use cairn_proto::peer::peer_client::PeerClient;
    use cairn_proto::peer::PeerMessage;

    let mine = {
        let mut urls = config.initial_advertise_peer_urls.clone();
        urls.sort();
        urls
    };
    let peers: Vec<&String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls.iter())
        .collect();
    let mut last_error = "no other member is listed".to_string();
    for url in &peers {
        let attempt = async {
            let mut client = PeerClient::connect((*url).clone()).await.map_err(|e| e.to_string())?;
            let reply = client
                .members(PeerMessage { cluster_id: 0, from: 0, payload: Vec::new() })
                .await
                .map_err(|e| e.message().to_string())?;
            bincode::deserialize::<ClusterView>(&reply.into_inner().payload).map_err(|e| e.to_string())
        };
        let view = match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
            Ok(Ok(view)) => view,
            Ok(Err(e)) => {
                last_error = format!("{url}: {e}");
                continue;
            }
            Err(_) => {
                last_error = format!("{url}: no answer within 5 s");
                continue;
            }
        };
        let found = view.members.iter().find(|m| {
            let mut urls = m.member.peer_urls.clone();
            urls.sort();
            urls == mine
        });
        return match found {
            Some(m) if view.removed.contains(&m.id) => Err(BootstrapError::Removed { id: m.id, urls: mine.join(",") }),
            Some(m) => Ok((view.cluster_id, m.id)),
            None => Err(BootstrapError::NotAdded { urls: mine.join(",") }),
        };
    }
    Err(BootstrapError::NoPeerAnswered {
        peers: peers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
        reason: last_error,
    })
}

/// Reads this member's identity from its database, or creates it for a new member
/// (`joined`: the cluster and member IDs [`discover`] found for a joining member).
/// Returns the identity and whether the member is new.
pub fn load_or_create(
    db: &DB,
    dir: &Path,
    config: &Config,
    joined: Option<(u64, NodeId)>,
) -> Result<(Identity, bool), BootstrapError> {
    let dir_name = dir.display().to_string();
    let stored = db.get_cf(schema::cf(db, CF_IDENTITY), identity_keys::IDENTITY)?;
    let restored_from = db.get_cf(schema::cf(db, CF_IDENTITY), identity_keys::RESTORED_FROM)?;
    let configured = configured_identity(config, restored_from.as_deref());
    if let Some(bytes) = stored {
        let stored: Identity =
            bincode::deserialize(&bytes).unwrap_or_else(|e| panic!("corrupt member identity in {dir_name}: {e}"));
        if stored.name != config.name {
            return Err(BootstrapError::NameMismatch {
                dir: dir_name,
                stored: stored.name,
                configured: config.name.clone(),
            });
        }
        // Checked before the cluster ID, which derives from the peer URLs, for the
        // more precise message.
        if config.peer_urls_explicit {
            check_peer_urls(db, &stored, config)?;
        }
        let described = config.initial_cluster_explicit || config.initial_cluster_token_explicit;
        if described && config.initial_cluster_state == ClusterState::New && configured.cluster_id != stored.cluster_id
        {
            return Err(BootstrapError::ClusterMismatch {
                dir: dir_name,
                stored: stored.cluster_id,
                token: stored.cluster_token,
                configured: configured.cluster_id,
            });
        }
        return Ok((stored, false));
    }
    if has_raft_state(db)? {
        return Err(BootstrapError::NotCairn { dir: dir_name });
    }
    let configured = match joined {
        Some((cluster_id, member_id)) => Identity { cluster_id, member_id, ..configured },
        None => configured,
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(
        schema::cf(db, CF_IDENTITY),
        identity_keys::IDENTITY,
        bincode::serialize(&configured).expect("bincode encoding of an in-memory value cannot fail"),
    );
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)?;
    Ok((configured, true))
}

/// The peer URLs this member is configured with must be those the cluster's
/// (applied) membership knows it by, or the others could not reach it.
fn check_peer_urls(db: &DB, identity: &Identity, config: &Config) -> Result<(), BootstrapError> {
    let Some(bytes) = db.get_cf(schema::cf(db, schema::CF_META), meta_keys::MEMBERSHIP)? else {
        return Ok(());
    };
    let membership: StoredMembership = decode_meta(&bytes);
    let Some(known) = membership.membership().get_node(&identity.member_id) else {
        return Ok(());
    };
    let (mut stored, mut configured) = (known.peer_urls.clone(), config.initial_advertise_peer_urls.clone());
    stored.sort();
    configured.sort();
    if stored != configured {
        return Err(BootstrapError::PeerUrlsMismatch {
            name: identity.name.clone(),
            stored: stored.join(","),
            configured: configured.join(","),
        });
    }
    Ok(())
}

fn has_raft_state(db: &DB) -> Result<bool, rocksdb::Error> {
    for cf in [schema::CF_RAFT_LOG, schema::CF_RAFT_STATE] {
        let mut it = db.raw_iterator_cf(schema::cf(db, cf));
        it.seek_to_first();
        it.status()?;
        if it.valid() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_urls_and_token_only() {
        let a = member_id(&["http://a:1".into(), "http://b:2".into()], "t");
        let b = member_id(&["http://b:2".into(), "http://a:1".into()], "t");
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://a:1".into()], "t"));
        assert_ne!(a, member_id(&["http://a:1".into(), "http://b:2".into()], "u"));
        assert_eq!(cluster_id([1, 2, 3], "t"), cluster_id([3, 1, 2], "t"));
        assert_ne!(cluster_id([1, 2, 3], "t"), cluster_id([1, 2, 3], "u"));
    }
}
