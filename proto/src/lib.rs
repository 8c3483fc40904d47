//! Protocol definitions for Cairn: the etcd v3 client API and Cairn's own peer API,
//! and [`coalesce::CoalescedWrites`], the transport setting every side's h2 uses.
//!
//! The etcd packages keep etcd's protobuf package names (`mvccpb`, `authpb`,
//! `etcdserverpb`) as module names, at the crate root, so that the paths prost
//! generates between them (such as `super::mvccpb::KeyValue` inside
//! `etcdserverpb`) resolve.
#![warn(missing_docs)]

pub mod coalesce;

/// etcd's MVCC data types (protobuf package `mvccpb`): `KeyValue` and `Event`.
pub mod mvccpb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mvccpb");
}

/// etcd's authentication data types (protobuf package `authpb`): users, roles
/// and permissions.
pub mod authpb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API (protobuf package `etcdserverpb`): the KV, Watch,
/// Lease, Cluster, Maintenance and Auth services, with their clients, servers
/// and messages.
pub mod etcdserverpb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}

/// Cairn's member-to-member API (protobuf package `cairn.peer.v1`): the `Peer`
/// service and its `PeerMessage`.
pub mod peer {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cairn.peer.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::etcdserverpb::{compare, range_request, request_op, Compare, RangeRequest};

    #[test]
    fn range_request_field_numbers() {
        let req = RangeRequest { key: b"a".to_vec(), range_end: b"b".to_vec(), limit: 5, ..Default::default() };
        assert_eq!(req.encode_to_vec(), [0x0a, 0x01, b'a', 0x12, 0x01, b'b', 0x18, 0x05]);

        let req = RangeRequest {
            revision: 7,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 2,
            min_create_revision: 3,
            max_create_revision: 4,
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec(),
            [
                0x20, 0x07, // revision = 4
                0x28, 0x02, // sort_order = 5, DESCEND
                0x30, 0x03, // sort_target = 6, MOD
                0x38, 0x01, // serializable = 7
                0x40, 0x01, // keys_only = 8
                0x48, 0x01, // count_only = 9
                0x50, 0x01, // min_mod_revision = 10
                0x58, 0x02, // max_mod_revision = 11
                0x60, 0x03, // min_create_revision = 12
                0x68, 0x04, // max_create_revision = 13
            ]
        );
    }

    #[test]
    fn compare_field_numbers() {
        let cmp = Compare {
            result: compare::CompareResult::NotEqual as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"k".to_vec(),
            target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
            range_end: b"z".to_vec(),
        };
        assert_eq!(
            cmp.encode_to_vec(),
            [
                0x08, 0x03, // result = 1, NOT_EQUAL
                0x10, 0x03, // target = 2, VALUE
                0x1a, 0x01, b'k', // key = 3
                0x3a, 0x01, b'v', // value = 7
                0x82, 0x04, 0x01, b'z', // range_end = 64
            ]
        );

        let cmp = Compare {
            target: compare::CompareTarget::Lease as i32,
            target_union: Some(compare::TargetUnion::Lease(9)),
            ..Default::default()
        };
        assert_eq!(cmp.encode_to_vec(), [0x10, 0x04, 0x40, 0x09]);
    }

    #[test]
    fn request_op_field_numbers() {
        let op = request_op::Request::RequestPut(crate::etcdserverpb::PutRequest {
            key: b"a".to_vec(),
            prev_kv: true,
            ..Default::default()
        });
        let op = crate::etcdserverpb::RequestOp { request: Some(op) };
        // request_put = 2 { key = 1, prev_kv = 4 }
        assert_eq!(op.encode_to_vec(), [0x12, 0x05, 0x0a, 0x01, b'a', 0x20, 0x01]);
    }
}
