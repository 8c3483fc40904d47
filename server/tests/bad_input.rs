//! Bad input gets etcd's gRPC code and message, and leaves the store exactly
//! as it was (same revision, same data). Requests go to a follower, so errors
//! must also survive forwarding.

mod common;

use std::marker::PhantomData;

use common::{assert_grpc_error, is_etcd, ok, within, Cluster};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// (key, value, create_revision, mod_revision, version, lease)
type KvFields = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Everything a client can observe of the store: header revision and every
/// key with all its fields.
#[derive(Debug, PartialEq)]
struct Snapshot {
    revision: i64,
    kvs: Vec<KvFields>,
}

async fn snapshot(c: &mut Client) -> Snapshot {
    let g = ok("snapshot", c.get("", Some(GetOptions::new().with_all_keys()))).await;
    Snapshot {
        revision: g.header().expect("header").revision(),
        kvs: g
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect(),
    }
}

/// A cluster with some data and a compaction, and a client on a follower.
async fn setup() -> (Cluster, Client, i64) {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut c = cluster.client(follower).await;
    for (k, v) in [("a", "1"), ("b", "2"), ("b", "2b"), ("c", "3"), ("d", "4")] {
        ok("put", c.put(k, v, None)).await;
    }
    let g = ok("get", c.get("a", None)).await;
    let compacted = g.kvs()[0].mod_revision() + 1;
    ok("compact", c.compact(compacted, None)).await;
    (cluster, c, compacted)
}

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const TOO_LARGE: &str = "etcdserver: request is too large";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_validation_errors() {
    let (_cluster, mut c, _) = setup().await;
    let before = snapshot(&mut c).await;

    // Empty key.
    let r = within("put empty key", c.put("", "v", None)).await;
    assert_grpc_error("put with an empty key", r, Code::InvalidArgument, EMPTY_KEY);
    let r = within("get empty key", c.get("", None)).await;
    assert_grpc_error("range with an empty key", r, Code::InvalidArgument, EMPTY_KEY);
    let r = within("get empty key", c.get("", Some(GetOptions::new().with_range("z")))).await;
    assert_grpc_error("range with an empty key and a range end", r, Code::InvalidArgument, EMPTY_KEY);
    let r = within("delete empty key", c.delete("", None)).await;
    assert_grpc_error("delete with an empty key", r, Code::InvalidArgument, EMPTY_KEY);
    let txn = Txn::new().when(vec![Compare::version("", CompareOp::Equal, 0)]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn compare with an empty key", r, Code::InvalidArgument, EMPTY_KEY);
    let txn = Txn::new().and_then(vec![TxnOp::put("x", "1", None), TxnOp::put("", "1", None)]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn put with an empty key", r, Code::InvalidArgument, EMPTY_KEY);
    let txn = Txn::new().and_then(vec![]).or_else(vec![TxnOp::delete("", None)]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn delete with an empty key (failure branch)", r, Code::InvalidArgument, EMPTY_KEY);

    // Too many operations: 129 in one branch (the limit is 128).
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("many/{i:03}"), "v", None)).collect();
    let r = within("txn", c.txn(Txn::new().and_then(ops))).await;
    assert_grpc_error("txn with 129 success ops", r, Code::InvalidArgument, TOO_MANY_OPS);
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::get(format!("many/{i:03}"), None)).collect();
    let r = within("txn", c.txn(Txn::new().and_then(vec![]).or_else(ops))).await;
    assert_grpc_error("txn with 129 failure ops", r, Code::InvalidArgument, TOO_MANY_OPS);
    let cmps: Vec<Compare> = (0..129).map(|i| Compare::version(format!("many/{i:03}"), CompareOp::Equal, 0)).collect();
    let r = within("txn", c.txn(Txn::new().when(cmps))).await;
    assert_grpc_error("txn with 129 compares", r, Code::InvalidArgument, TOO_MANY_OPS);

    // Duplicate keys in one branch.
    let dups: Vec<(&str, Txn)> = vec![
        ("two puts", Txn::new().and_then(vec![TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)])),
        (
            "put and delete of the same key",
            Txn::new().and_then(vec![TxnOp::put("a", "1", None), TxnOp::delete("a", None)]),
        ),
        (
            "delete then put of the same key",
            Txn::new().and_then(vec![TxnOp::delete("a", None), TxnOp::put("a", "1", None)]),
        ),
        (
            "put inside a deleted range",
            Txn::new().and_then(vec![
                TxnOp::put("b", "1", None),
                TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
            ]),
        ),
        (
            "put inside a deleted prefix, failure branch",
            Txn::new().and_then(vec![]).or_else(vec![
                TxnOp::delete("a", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("ab", "1", None),
            ]),
        ),
        (
            "put in the outer txn and in a nested txn",
            Txn::new().and_then(vec![
                TxnOp::put("a", "1", None),
                TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("a", "2", None)])),
            ]),
        ),
    ];
    for (what, txn) in dups {
        let r = within("txn", c.txn(txn)).await;
        assert_grpc_error(what, r, Code::InvalidArgument, DUPLICATE_KEY);
    }

    // ignore_value / ignore_lease with a value / lease.
    let r = within("put", c.put("a", "v", Some(PutOptions::new().with_ignore_value()))).await;
    assert_grpc_error("ignore_value with a value", r, Code::InvalidArgument, VALUE_PROVIDED);
    let opts = PutOptions::new().with_ignore_lease().with_lease(7);
    let r = within("put", c.put("a", "", Some(opts))).await;
    assert_grpc_error("ignore_lease with a lease", r, Code::InvalidArgument, LEASE_PROVIDED);
    let txn =
        Txn::new().and_then(vec![]).or_else(vec![TxnOp::put("a", "v", Some(PutOptions::new().with_ignore_value()))]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("ignore_value with a value in the branch not taken", r, Code::InvalidArgument, VALUE_PROVIDED);

    // Larger than --max-request-bytes (1.5 MiB) but below the gRPC limit.
    let big = vec![b'x'; 1024 * 1024 * 16 / 10];
    let r = within("put big", c.put("big", big.clone(), None)).await;
    assert_grpc_error("put of 1.6 MiB", r, Code::InvalidArgument, TOO_LARGE);
    let txn = Txn::new().and_then(vec![TxnOp::put("big", big, None)]);
    let r = within("txn big", c.txn(txn)).await;
    assert_grpc_error("txn of 1.6 MiB", r, Code::InvalidArgument, TOO_LARGE);

    assert_eq!(snapshot(&mut c).await, before, "the store changed");

    // The limits are inclusive: 128 ops are accepted.
    let ops: Vec<TxnOp> = (0..128).map(|i| TxnOp::put(format!("many/{i:03}"), "v", None)).collect();
    let t = ok("txn with 128 ops", c.txn(Txn::new().and_then(ops))).await;
    assert_eq!(t.header().unwrap().revision(), before.revision + 1);
    // And a put and a delete of the same key in different branches are fine.
    let txn = Txn::new()
        .when(vec![Compare::version("a", CompareOp::Equal, 1)])
        .and_then(vec![TxnOp::put("a", "then", None)])
        .or_else(vec![TxnOp::delete("a", None)]);
    let t = ok("txn with put/delete in different branches", c.txn(txn)).await;
    assert!(t.succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_decided_against_the_store() {
    let (_cluster, mut c, compacted) = setup().await;
    let before = snapshot(&mut c).await;
    let current = before.revision;

    // ignore_value / ignore_lease on a key that does not exist.
    let r = within("put", c.put("missing", "", Some(PutOptions::new().with_ignore_value()))).await;
    assert_grpc_error("ignore_value on a missing key", r, Code::InvalidArgument, KEY_NOT_FOUND);
    let r = within("put", c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))).await;
    assert_grpc_error("ignore_lease on a missing key", r, Code::InvalidArgument, KEY_NOT_FOUND);
    let txn = Txn::new().and_then(vec![TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value()))]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("ignore_value on a missing key in a txn", r, Code::InvalidArgument, KEY_NOT_FOUND);

    // A lease that does not exist.
    let r = within("put", c.put("a", "v", Some(PutOptions::new().with_lease(0x7777_1234)))).await;
    assert_grpc_error("put with an unknown lease", r, Code::NotFound, LEASE_NOT_FOUND);

    // Ranges at compacted and future revisions, alone and in a txn.
    let r = within("get", c.get("a", Some(GetOptions::new().with_revision(compacted - 1)))).await;
    assert_grpc_error("range at a compacted revision", r, Code::OutOfRange, COMPACTED);
    let r = within("get", c.get("a", Some(GetOptions::new().with_revision(current + 1)))).await;
    assert_grpc_error("range at a future revision", r, Code::OutOfRange, FUTURE_REV);
    let txn = Txn::new().and_then(vec![TxnOp::get("a", Some(GetOptions::new().with_revision(1)))]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn range at a compacted revision", r, Code::OutOfRange, COMPACTED);
    let txn = Txn::new().and_then(vec![
        TxnOp::put("a", "changed", None),
        TxnOp::get("a", Some(GetOptions::new().with_revision(current + 5))),
    ]);
    let r = within("txn", c.txn(txn)).await;
    assert_grpc_error("txn with a put and a range at a future revision", r, Code::OutOfRange, FUTURE_REV);

    // Compactions at a future and at an already compacted revision.
    let r = within("compact", c.compact(current + 1, None)).await;
    assert_grpc_error("compact at a future revision", r, Code::OutOfRange, FUTURE_REV);
    let r = within("compact", c.compact(compacted, None)).await;
    assert_grpc_error("compact at the compacted revision", r, Code::OutOfRange, COMPACTED);
    let r = within("compact", c.compact(compacted - 1, None)).await;
    assert_grpc_error("compact below the compacted revision", r, Code::OutOfRange, COMPACTED);

    assert_eq!(snapshot(&mut c).await, before, "the store changed");

    // Still fine: the compaction revision itself and the current one.
    let g = ok("get", c.get("b", Some(GetOptions::new().with_revision(compacted)))).await;
    assert_eq!(g.kvs()[0].value(), b"2", "b as of the compaction revision");
    let g = ok("get", c.get("b", Some(GetOptions::new().with_revision(current)))).await;
    assert_eq!(g.kvs()[0].value(), b"2b");
}

/// range_end non-empty, not "\0" and not greater than the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_end_not_after_key() {
    let (_cluster, mut c, _) = setup().await;
    let before = snapshot(&mut c).await;
    for (key, end) in [("c", "a"), ("c", "c"), ("b", "ab")] {
        let r = within("get", c.get(key, Some(GetOptions::new().with_range(end)))).await;
        if is_etcd() {
            // etcd answers an empty result.
            let g = r.unwrap_or_else(|e| panic!("etcd: range [{key}, {end}) failed: {e:?}"));
            assert_eq!((g.kvs().len(), g.count(), g.more()), (0, 0, false));
        } else {
            // Cairn deliberately deviates from etcd here: such a range is
            // almost always a client bug, so it is rejected.
            let e = r.expect_err("Cairn rejects a range whose end is not after its key");
            let (code, message) = common::grpc_status(&e);
            assert_eq!(code, Code::InvalidArgument, "range [{key}, {end}): {message}");
            assert!(message.contains("range_end"), "range [{key}, {end}): {message}");
        }
    }
    assert_eq!(snapshot(&mut c).await, before, "the store changed");
}

// A raw gRPC call, for RPCs the etcd-client crate does not expose.

#[derive(Clone, PartialEq, prost::Message)]
struct AuthStatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthStatusResponse {
    #[prost(bool, tag = "2")]
    enabled: bool,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

struct ProstCodec<E, D>(PhantomData<fn(E) -> D>);
struct ProstEncoder<E>(PhantomData<fn(E)>);
struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for ProstCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

impl<E: prost::Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = tonic::Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
    }
}

impl<D: prost::Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, tonic::Status> {
        D::decode(src).map(Some).map_err(|e| tonic::Status::internal(format!("decode: {e}")))
    }
}

async fn auth_status(endpoint: &str) -> Result<AuthStatusResponse, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("endpoint URI")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Auth/AuthStatus");
    let codec: ProstCodec<AuthStatusRequest, AuthStatusResponse> = ProstCodec(PhantomData);
    grpc.unary(tonic::Request::new(AuthStatusRequest {}), path, codec).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_service_answers_unimplemented() {
    let (cluster, mut c, _) = setup().await;
    let before = snapshot(&mut c).await;
    for i in 0..cluster.size() {
        let r = within("AuthStatus", auth_status(&cluster.endpoint(i))).await;
        if is_etcd() {
            // etcd 3.4 has no AuthStatus (added in 3.5) and answers
            // Unimplemented "unknown method AuthStatus for service
            // etcdserverpb.Auth"; a later etcd answers it.
            if let Err(e) = r {
                assert_eq!(e.code(), Code::Unimplemented, "AuthStatus on member {i}: {e:?}");
            }
        } else {
            let e = r.expect_err("Cairn does not implement the Auth service yet");
            assert_eq!(e.code(), Code::Unimplemented, "AuthStatus on member {i}: {e:?}");
        }
    }
    // The member is still fine afterwards.
    assert_eq!(snapshot(&mut c).await, before);
    ok("put after an unimplemented call", c.put("after", "ok", None)).await;
}
