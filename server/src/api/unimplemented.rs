//! Answers calls to services Cairn does not serve yet with UNIMPLEMENTED and a
//! message naming the method, instead of tonic's bare status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

/// gRPC services this member serves; every other path gets UNIMPLEMENTED.
const SERVED_PREFIXES: [&str; 6] = [
    "/etcdserverpb.KV/",
    "/etcdserverpb.Cluster/",
    "/etcdserverpb.Watch/",
    "/etcdserverpb.Lease/",
    "/etcdserverpb.Maintenance/",
    "/cairn.peer.v1.Peer/",
];

#[derive(Clone, Copy, Debug, Default)]
pub struct UnimplementedLayer;

impl<S> Layer<S> for UnimplementedLayer {
    type Service = Unimplemented<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Unimplemented { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Unimplemented<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Unimplemented<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if SERVED_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(req));
        }
        let method = path.trim_start_matches('/');
        let status = Status::unimplemented(format!("cairn: {method} is not implemented yet"));
        let response = status.into_http();
        Box::pin(async move { Ok(response) })
    }
}
