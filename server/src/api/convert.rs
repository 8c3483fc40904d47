//! Conversion between etcd's wire messages and the key space's own requests.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::compare::{CompareResult as PbResult, CompareTarget as PbTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder as PbOrder, SortTarget as PbSortTarget};
use cairn_proto::etcdserverpb::{request_op, response_op};
use cairn_proto::mvccpb;
use tonic::Status;

use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

fn invalid_sort() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

pub fn range_request(r: pb::RangeRequest) -> Result<RangeRequest, Status> {
    let sort_order = match PbOrder::try_from(r.sort_order).map_err(|_| invalid_sort())? {
        PbOrder::None => SortOrder::None,
        PbOrder::Ascend => SortOrder::Ascend,
        PbOrder::Descend => SortOrder::Descend,
    };
    let sort_target = match PbSortTarget::try_from(r.sort_target).map_err(|_| invalid_sort())? {
        PbSortTarget::Key => SortTarget::Key,
        PbSortTarget::Version => SortTarget::Version,
        PbSortTarget::Create => SortTarget::Create,
        PbSortTarget::Mod => SortTarget::Mod,
        PbSortTarget::Value => SortTarget::Value,
    };
    Ok(RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_request(r: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest { key: r.key, range_end: r.range_end, prev_kv: r.prev_kv }
}

fn compare(c: pb::Compare) -> Result<Compare, Status> {
    let result = match PbResult::try_from(c.result)
        .map_err(|_| Status::invalid_argument(format!("cairn: unknown compare result {}", c.result)))?
    {
        PbResult::Equal => CompareResult::Equal,
        PbResult::Greater => CompareResult::Greater,
        PbResult::Less => CompareResult::Less,
        PbResult::NotEqual => CompareResult::NotEqual,
    };
    let target = PbTarget::try_from(c.target)
        .map_err(|_| Status::invalid_argument(format!("cairn: unknown compare target {}", c.target)))?;
    // As in etcd, an operand of another kind than the target compares as zero/empty.
    let int = |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match target {
        PbTarget::Version => CompareTarget::Version(int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Create => CompareTarget::Create(int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Mod => CompareTarget::Mod(int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Lease => CompareTarget::Lease(int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Value => CompareTarget::Value(match &c.target_union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    Ok(Compare { key: c.key, range_end: c.range_end, target, result })
}

pub fn txn_request(r: pb::TxnRequest) -> Result<TxnRequest, Status> {
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<RequestOp>, Status> {
        ops.into_iter()
            .map(|op| match op.request {
                Some(request_op::Request::RequestRange(r)) => Ok(RequestOp::Range(range_request(r)?)),
                Some(request_op::Request::RequestPut(r)) => Ok(RequestOp::Put(put_request(r))),
                Some(request_op::Request::RequestDeleteRange(r)) => Ok(RequestOp::DeleteRange(delete_request(r))),
                Some(request_op::Request::RequestTxn(r)) => Ok(RequestOp::Txn(txn_request(r)?)),
                None => Err(Status::invalid_argument("cairn: txn operation names no request")),
            })
            .collect()
    };
    Ok(TxnRequest {
        compare: r.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: ops(r.success)?,
        failure: ops(r.failure)?,
    })
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(r: RangeResponse, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse { header, kvs: r.kvs.into_iter().map(key_value).collect(), more: r.more, count: r.count }
}

pub fn put_response(r: PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse { header, prev_kv: r.prev_kv.map(key_value) }
}

pub fn delete_response(r: DeleteRangeResponse, header: Option<pb::ResponseHeader>) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse { header, deleted: r.deleted, prev_kvs: r.prev_kvs.into_iter().map(key_value).collect() }
}

/// Converts a Txn response. As in etcd, only the outer header is complete; nested
/// responses carry a header with just their revision.
pub fn txn_response(r: TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    let responses = r
        .responses
        .into_iter()
        .map(|op| {
            let inner = Some(pb::ResponseHeader { revision: op.revision, ..Default::default() });
            pb::ResponseOp {
                response: Some(match op.response {
                    ResponseOp::Range(r) => response_op::Response::ResponseRange(range_response(r, inner)),
                    ResponseOp::Put(r) => response_op::Response::ResponsePut(put_response(r, inner)),
                    ResponseOp::DeleteRange(r) => response_op::Response::ResponseDeleteRange(delete_response(r, inner)),
                    ResponseOp::Txn(r) => response_op::Response::ResponseTxn(txn_response(r, inner)),
                }),
            }
        })
        .collect();
    pb::TxnResponse { header, succeeded: r.succeeded, responses }
}
