//! The etcd v3 Cluster service: MemberAdd, MemberRemove, MemberUpdate, MemberList,
//! MemberPromote. Changes run on the leader ([`crate::raft::RaftNode::admin`]).

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::error::{admin_status, raft_status};
use super::Api;
use crate::raft::{AdminRequest, AdminResponse, MemberInfo};

pub struct ClusterService {
    api: Arc<Api>,
}

impl ClusterService {
    pub fn new(api: Arc<Api>) -> Self {
        ClusterService { api }
    }

    async fn run(&self, req: AdminRequest) -> Result<AdminResponse, Status> {
        self.api.node.admin(req).await.map_err(admin_status)
    }

    /// The members after a change. The leader answered once the change committed;
    /// this member may not have applied it yet, so it waits for that first.
    async fn members_now(&self) -> Result<Vec<pb::Member>, Status> {
        self.api.node.linearizable_barrier().await.map_err(raft_status)?;
        Ok(self.api.node.members().into_iter().map(member).collect())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.api.header(self.api.store.status().revision)
    }
}

/// etcd's view of a member.
pub fn member(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.member.name,
        peer_ur_ls: m.member.peer_urls,
        client_ur_ls: m.member.client_urls,
        is_learner: m.is_learner,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = request.into_inner();
        let added = self.run(AdminRequest::Add { peer_urls: req.peer_ur_ls, is_learner: req.is_learner }).await?;
        let AdminResponse::Added { member: new, .. } = added else {
            return Err(Status::internal(format!("cairn: MemberAdd produced {added:?}; this is a bug")));
        };
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member(new)),
            members: self.members_now().await?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.run(AdminRequest::Remove { id: request.into_inner().id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: self.header(), members: self.members_now().await? }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        self.run(AdminRequest::Update { id: req.id, peer_urls: req.peer_ur_ls }).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members_now().await? }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        // etcd 3.4's etcdctl does not send `linearizable`; a list is linearizable
        // unless the member cannot reach a quorum, when it answers what it knows.
        let members = if request.into_inner().linearizable {
            self.members_now().await?
        } else {
            match self.members_now().await {
                Ok(members) => members,
                Err(_) => self.api.node.members().into_iter().map(member).collect(),
            }
        };
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.run(AdminRequest::Promote { id: request.into_inner().id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: self.header(), members: self.members_now().await? }))
    }
}
