//! Cluster membership and maintenance calls (what `cairnctl` is made of).

use cairn_proto::etcdserverpb::{
    alarm_request::AlarmAction, cluster_client::ClusterClient, maintenance_client::MaintenanceClient, AlarmRequest,
    AlarmType, DefragmentRequest, HashKvRequest, HashRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, MoveLeaderRequest, SnapshotRequest,
    SnapshotResponse, StatusRequest,
};
use futures::Stream;

use crate::client::Client;
use crate::error::{classify, Effect, Result, Verdict};
use crate::kv::Header;

/// A member of the cluster.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// for m in client.member_list(false).await?.members {
///     println!("{:x} {} learner={}", m.id, m.name, m.is_learner);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The member's ID.
    pub id: u64,
    /// Its name (empty until a newly added member has started).
    pub name: String,
    /// URLs its peers reach it at.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it at.
    pub client_urls: Vec<String>,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

impl From<cairn_proto::etcdserverpb::Member> for Member {
    fn from(m: cairn_proto::etcdserverpb::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_ur_ls,
            client_urls: m.client_ur_ls,
            is_learner: m.is_learner,
        }
    }
}

/// The membership after a change (and, for an add, the new member).
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let r = client.member_add(vec!["http://10.0.0.4:2380".into()], true).await?;
/// println!("added {:x}; {} members now", r.member.unwrap().id, r.members.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipResponse {
    /// Header.
    pub header: Header,
    /// The member that was added (only for [`Client::member_add`]).
    pub member: Option<Member>,
    /// Every member after the change.
    pub members: Vec<Member>,
}

/// The status of the member that answered.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let s = client.status().await?;
/// let leads = s.leader == s.header.member_id;
/// println!("{} bytes, leader: {leads}, errors: {:?}", s.db_size, s.errors);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// Header (`header.member_id` is the answering member).
    pub header: Header,
    /// Server version.
    pub version: String,
    /// Size of the database on disk, in bytes.
    pub db_size: i64,
    /// Bytes of the database in use.
    pub db_size_in_use: i64,
    /// The leader's member ID as this member knows it (0: none).
    pub leader: u64,
    /// Last Raft log index.
    pub raft_index: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Last applied Raft index.
    pub raft_applied_index: u64,
    /// Errors the member reports (such as "etcdserver: no leader").
    pub errors: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// An alarm raised on a member.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::AlarmKind;
/// if client.alarm_list().await?.iter().any(|a| a.kind == AlarmKind::NoSpace) {
///     println!("out of space: writes are refused");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alarm {
    /// The member the alarm is raised on.
    pub member_id: u64,
    /// Which alarm.
    pub kind: AlarmKind,
}

/// Kinds of alarm.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use cairn_client::AlarmKind;
/// client.alarm_disarm(0, AlarmKind::None).await?; // every alarm on every member
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmKind {
    /// No alarm (as a filter: every alarm).
    None,
    /// The database is out of space: writes are refused.
    NoSpace,
    /// Members' data diverged.
    Corrupt,
}

impl AlarmKind {
    fn pb(self) -> i32 {
        (match self {
            AlarmKind::None => AlarmType::None,
            AlarmKind::NoSpace => AlarmType::Nospace,
            AlarmKind::Corrupt => AlarmType::Corrupt,
        }) as i32
    }

    fn from_pb(v: i32) -> Self {
        match AlarmType::try_from(v) {
            Ok(AlarmType::Nospace) => AlarmKind::NoSpace,
            Ok(AlarmType::Corrupt) => AlarmKind::Corrupt,
            _ => AlarmKind::None,
        }
    }
}

/// The hash of the key-value history up to a revision, to compare members.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// let rev = client.get("any").await?.header.revision;
/// let mut hashes = Vec::new();
/// for ep in client.endpoints() {
///     hashes.push(client.pinned(&ep)?.hash_kv(rev).await?.hash);
/// }
/// assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members diverged");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKv {
    /// Header (`header.member_id` is the answering member).
    pub header: Header,
    /// The hash.
    pub hash: u32,
    /// The compaction revision the hash starts from.
    pub compact_revision: i64,
    /// The revision the hash covers up to (0 from servers that do not report it,
    /// such as etcd 3.4).
    pub hash_revision: i64,
}

/// One chunk of a snapshot stream.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
/// use futures::StreamExt;
/// let mut snap = Box::pin(client.snapshot().await?);
/// while let Some(chunk) = snap.next().await {
///     let chunk = chunk?;
///     println!("{} bytes, {} to go", chunk.blob.len(), chunk.remaining_bytes);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Bytes still to come after this chunk.
    pub remaining_bytes: u64,
    /// The chunk's bytes.
    pub blob: Vec<u8>,
}

fn members(v: Vec<cairn_proto::etcdserverpb::Member>) -> Vec<Member> {
    v.into_iter().map(Member::from).collect()
}

impl Client {
    /// Lists the members. `linearizable` asks the leader (etcd 3.5+; an older
    /// server ignores it and answers from the member's local view).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// for m in client.member_list(true).await?.members {
    ///     println!("{:x} {} {:?}", m.id, m.name, m.client_urls);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn member_list(&self, linearizable: bool) -> Result<MembershipResponse> {
        let req = MemberListRequest { linearizable };
        let r = self
            .call(Effect::Read, |ch| async move { Ok(ClusterClient::new(ch).member_list(req).await?.into_inner()) })
            .await?;
        Ok(MembershipResponse { header: r.header.into(), member: None, members: members(r.members) })
    }

    /// Adds a member reachable at `peer_urls`, as a learner if `is_learner`. Start
    /// the new member afterwards with `--initial-cluster-state existing`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let added = client.member_add(vec!["http://10.0.0.4:2380".into()], true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<MembershipResponse> {
        let req = MemberAddRequest { peer_ur_ls: peer_urls, is_learner };
        let r = self
            .call(Effect::Write, |ch| {
                let req = req.clone();
                async move { Ok(ClusterClient::new(ch).member_add(req).await?.into_inner()) }
            })
            .await?;
        Ok(MembershipResponse {
            header: r.header.into(),
            member: r.member.map(Member::from),
            members: members(r.members),
        })
    }

    /// Removes member `id`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.member_remove(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_remove(&self, id: u64) -> Result<MembershipResponse> {
        let req = MemberRemoveRequest { id };
        let r = self
            .call(Effect::Write, |ch| async move { Ok(ClusterClient::new(ch).member_remove(req).await?.into_inner()) })
            .await?;
        Ok(MembershipResponse { header: r.header.into(), member: None, members: members(r.members) })
    }

    /// Changes the peer URLs of member `id`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.member_update(0x8e9e05c52164694d, vec!["http://10.0.0.9:2380".into()]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<MembershipResponse> {
        let req = MemberUpdateRequest { id, peer_ur_ls: peer_urls };
        let r = self
            .call(Effect::Write, |ch| {
                let req = req.clone();
                async move { Ok(ClusterClient::new(ch).member_update(req).await?.into_inner()) }
            })
            .await?;
        Ok(MembershipResponse { header: r.header.into(), member: None, members: members(r.members) })
    }

    /// Promotes learner `id` to a voting member (it must have caught up).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.member_promote(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_promote(&self, id: u64) -> Result<MembershipResponse> {
        let req = MemberPromoteRequest { id };
        let r = self
            .call(Effect::Write, |ch| async move { Ok(ClusterClient::new(ch).member_promote(req).await?.into_inner()) })
            .await?;
        Ok(MembershipResponse { header: r.header.into(), member: None, members: members(r.members) })
    }

    /// The status of the current member. To ask one member in particular, use a
    /// client made with [`Client::pinned`].
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let s = client.status().await?;
    /// println!("member {:x}, leader {:x}, term {}", s.header.member_id, s.leader, s.raft_term);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<MemberStatus> {
        let r = self
            .call(Effect::Read, |ch| async move {
                Ok(MaintenanceClient::new(ch).status(StatusRequest {}).await?.into_inner())
            })
            .await?;
        Ok(MemberStatus {
            header: r.header.into(),
            version: r.version,
            db_size: r.db_size,
            db_size_in_use: r.db_size_in_use,
            leader: r.leader,
            raft_index: r.raft_index,
            raft_term: r.raft_term,
            raft_applied_index: r.raft_applied_index,
            errors: r.errors,
            is_learner: r.is_learner,
        })
    }

    /// Lists alarms (`AlarmKind::None`: every kind) on every member.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// for a in client.alarm_list().await? {
    ///     println!("{:x}: {:?}", a.member_id, a.kind);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn alarm_list(&self) -> Result<Vec<Alarm>> {
        self.alarm(AlarmAction::Get, 0, AlarmKind::None).await
    }

    /// Clears alarm `kind` on member `member_id` (0 and `AlarmKind::None`: every
    /// alarm on every member, as `etcdctl alarm disarm` does).
    pub async fn alarm_disarm(&self, member_id: u64, kind: AlarmKind) -> Result<Vec<Alarm>> {
        if member_id == 0 && kind == AlarmKind::None {
            let mut out = Vec::new();
            for a in self.alarm_list().await? {
                out.extend(self.alarm(AlarmAction::Deactivate, a.member_id, a.kind).await?);
            }
            return Ok(out);
        }
        self.alarm(AlarmAction::Deactivate, member_id, kind).await
    }

    /// Raises alarm `kind` on member `member_id`.
    pub async fn alarm_activate(&self, member_id: u64, kind: AlarmKind) -> Result<Vec<Alarm>> {
        self.alarm(AlarmAction::Activate, member_id, kind).await
    }

    async fn alarm(&self, action: AlarmAction, member_id: u64, kind: AlarmKind) -> Result<Vec<Alarm>> {
        let req = AlarmRequest { action: action as i32, member_id, alarm: kind.pb() };
        let effect = if action == AlarmAction::Get { Effect::Read } else { Effect::Write };
        let r = self
            .call(effect, |ch| async move { Ok(MaintenanceClient::new(ch).alarm(req).await?.into_inner()) })
            .await?;
        Ok(r.alarms.into_iter().map(|a| Alarm { member_id: a.member_id, kind: AlarmKind::from_pb(a.alarm) }).collect())
    }

    /// Defragments the current member's storage (Cairn compacts RocksDB in the
    /// background; the call still answers as etcd's does).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.defragment().await?;
    /// # Ok(()) }
    /// ```
    pub async fn defragment(&self) -> Result<Header> {
        let r = self
            .call(Effect::Read, |ch| async move {
                Ok(MaintenanceClient::new(ch).defragment(DefragmentRequest {}).await?.into_inner())
            })
            .await?;
        Ok(r.header.into())
    }

    /// The hash of the current member's key-value history up to `revision` (0:
    /// the current revision). Equal hashes at equal revisions mean equal data.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// let h = client.hash_kv(0).await?;
    /// println!("{:x} at {}", h.hash, h.hash_revision);
    /// # Ok(()) }
    /// ```
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKv> {
        let req = HashKvRequest { revision };
        let r = self
            .call(Effect::Read, |ch| async move { Ok(MaintenanceClient::new(ch).hash_kv(req).await?.into_inner()) })
            .await?;
        Ok(HashKv {
            header: r.header.into(),
            hash: r.hash,
            compact_revision: r.compact_revision,
            hash_revision: r.hash_revision,
        })
    }

    /// The hash of the current member's whole backend (etcd's `Hash`).
    pub async fn hash(&self) -> Result<u32> {
        let r =
            self.call(Effect::Read, |ch| async move {
                Ok(MaintenanceClient::new(ch).hash(HashRequest {}).await?.into_inner())
            })
            .await?;
        Ok(r.hash)
    }

    /// Asks the leader to hand leadership to member `target_id`. Must reach the
    /// leader: send it through a client [`Client::pinned`] to the leader's endpoint.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// client.move_leader(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn move_leader(&self, target_id: u64) -> Result<Header> {
        let req = MoveLeaderRequest { target_id };
        let r =
            self.call(Effect::Write, |ch| async move {
                Ok(MaintenanceClient::new(ch).move_leader(req).await?.into_inner())
            })
            .await?;
        Ok(r.header.into())
    }

    /// Streams a snapshot of the current member's database. Write the chunks to a
    /// file in order; the stream ends after the chunk with `remaining_bytes == 0`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut snap = Box::pin(client.snapshot().await?);
    /// let mut bytes = Vec::new();
    /// while let Some(chunk) = snap.next().await {
    ///     bytes.extend(chunk?.blob);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn snapshot(&self) -> Result<impl Stream<Item = Result<SnapshotChunk>> + Send + 'static> {
        let max = self.response_bytes_max();
        let stream = self
            .call(Effect::Read, |ch| async move {
                Ok(MaintenanceClient::new(ch)
                    .max_decoding_message_size(max)
                    .snapshot(SnapshotRequest {})
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(futures::StreamExt::map(stream, |item: Result<SnapshotResponse, tonic::Status>| match item {
            Ok(r) => Ok(SnapshotChunk { remaining_bytes: r.remaining_bytes, blob: r.blob }),
            Err(s) => Err(match classify(s, Effect::Read) {
                Verdict::Retry(e) | Verdict::Fail(e) => e,
            }),
        }))
    }

    /// A client that sends every request to `endpoint` only (no failover), for
    /// per-member calls such as [`Client::status`], [`Client::hash_kv`] or
    /// [`Client::move_leader`]. Reuses this client's connection if `endpoint` is
    /// one of its endpoints.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
    /// for ep in client.endpoints() {
    ///     let s = client.pinned(&ep)?.status().await?;
    ///     println!("{ep}: leader {:x}", s.leader);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn pinned(&self, endpoint: &str) -> Result<Client> {
        self.pinned_client(endpoint)
    }
}
