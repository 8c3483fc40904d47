//! A lean gRPC client for the unary calls of the request loop (Put, Range, Txn),
//! written on `h2` directly.
//!
//! The load generator shares the machine's cores with the servers it measures, so
//! every microsecond it spends per request is taken from them, and a heavy client
//! flattens the difference between a fast server and a slow one. tonic's `Channel`
//! hands each request through a buffer task and the hyper dispatcher before h2
//! sees it; here a client task hands it to h2's connection task directly, and the
//! connection copies small frames into one write buffer, so requests queued
//! together leave in one `write`. Streams (watch, lease keep-alive) and the
//! preload stay on tonic: they are not what the loop times.
//!
//! The wire format is gRPC's over HTTP/2: a POST to `/<service>/<method>` with
//! `content-type: application/grpc` and `te: trailers`; the body is one message,
//! a 1-byte compressed flag (always 0 here) and a 4-byte big-endian length before
//! the protobuf bytes; the status comes in the trailers (`grpc-status`,
//! `grpc-message`), or in the headers of a response without a body.

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_proto::coalesce::CoalescedWrites;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};
use tokio::net::TcpStream;

/// gRPC's message prefix: compressed flag and length.
const MESSAGE_PREFIX_BYTES: usize = 5;
/// HTTP/2 stream and connection windows the client advertises (as tonic's defaults).
const WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Largest response message accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// KV methods the request loop calls.
pub const KV_PUT: &str = "/etcdserverpb.KV/Put";
pub const KV_RANGE: &str = "/etcdserverpb.KV/Range";
pub const KV_TXN: &str = "/etcdserverpb.KV/Txn";

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct UnaryConn {
    send: SendRequest<Bytes>,
    /// `scheme://host:port`, the prefix of every request URI.
    origin: String,
}

impl UnaryConn {
    /// Connects to `url` (`http://host:port`) and starts the connection's task.
    pub async fn connect(url: &str) -> Result<UnaryConn> {
        let uri: http::Uri = url.parse().with_context(|| format!("endpoint {url:?}"))?;
        let host = uri.host().with_context(|| format!("endpoint {url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let tcp = TcpStream::connect((host, port)).await.with_context(|| format!("connect to {url}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .handshake::<_, Bytes>(CoalescedWrites::new(tcp))
            .await
            .with_context(|| format!("HTTP/2 handshake with {url}"))?;
        tokio::spawn(async move {
            // Ends when every clone is dropped or the server goes away; calls in
            // flight then fail with the error.
            let _ = connection.await;
        });
        let origin =
            format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map_or(host, |a| a.as_str()));
        Ok(UnaryConn { send, origin })
    }

    /// One unary call: `request` to `path`, the decoded answer, or the gRPC status
    /// (`"<code>: <message>"`) or transport error as text.
    pub async fn call<Q: prost::Message, A: prost::Message + Default>(
        &mut self,
        path: &str,
        request: &Q,
    ) -> Result<A, String> {
        let len = request.encoded_len();
        let mut body = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + len);
        body.put_u8(0);
        body.put_u32(u32::try_from(len).map_err(|_| format!("request of {len} bytes is too large"))?);
        request.encode(&mut body).map_err(|e| format!("encode: {e}"))?;
        let head = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.origin))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| format!("request head: {e}"))?;
        let send = std::future::poll_fn(|cx| self.send.poll_ready(cx)).await;
        send.map_err(|e| format!("connection: {e}"))?;
        let (response, mut stream) = self.send.send_request(head, false).map_err(|e| format!("send: {e}"))?;
        stream.send_data(body.freeze(), true).map_err(|e| format!("send: {e}"))?;
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        // A response without a body carries its status in the headers.
        grpc_status(response.headers())?;
        let mut recv = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
            if message.len() > MESSAGE_PREFIX_BYTES + RESPONSE_BYTES_MAX {
                return Err(format!("response larger than {RESPONSE_BYTES_MAX} bytes"));
            }
        }
        let trailers = recv.trailers().await.map_err(|e| format!("response trailers: {e}"))?;
        match trailers {
            Some(t) => grpc_status(&t)?,
            None => return Err("response without a gRPC status".into()),
        }
        decode_message(message.freeze())
    }
}

/// `Err("<code>: <message>")` if `headers` carry a grpc-status other than 0.
fn grpc_status(headers: &HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").map(|v| v.to_str().unwrap_or("?")) {
        None | Some("0") => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
            Err(format!("{:?}: {}", tonic::Code::from_bytes(code.as_bytes()), percent_decode(message)))
        }
    }
}

/// The one message of a unary response body.
fn decode_message<A: prost::Message + Default>(mut body: Bytes) -> Result<A, String> {
    if body.len() < MESSAGE_PREFIX_BYTES {
        return Err(format!("response body of {} bytes has no message", body.len()));
    }
    if body.get_u8() != 0 {
        return Err("compressed response (none was asked for)".into());
    }
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Err(format!("response message says {len} bytes, body has {}", body.len()));
    }
    A::decode(body).map_err(|e| format!("decode response: {e}"))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::RangeResponse;

    #[test]
    fn a_unary_body_decodes_and_a_bad_one_is_refused() {
        let msg = RangeResponse { count: 7, ..Default::default() };
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(prost::Message::encoded_len(&msg) as u32);
        prost::Message::encode(&msg, &mut body).unwrap();
        let body = body.freeze();
        assert_eq!(decode_message::<RangeResponse>(body.clone()).unwrap().count, 7);
        assert!(decode_message::<RangeResponse>(body.slice(..body.len() - 1)).unwrap_err().contains("says"));
        assert!(decode_message::<RangeResponse>(Bytes::from_static(&[0, 0])).unwrap_err().contains("no message"));
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        assert!(decode_message::<RangeResponse>(Bytes::from(compressed)).unwrap_err().contains("compressed"));
    }

    #[test]
    fn a_non_zero_grpc_status_becomes_an_error_with_its_message() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_ok());
        h.insert("grpc-status", "0".parse().unwrap());
        assert!(grpc_status(&h).is_ok());
        h.insert("grpc-status", "9".parse().unwrap());
        h.insert("grpc-message", "etcdserver:%20no%20space".parse().unwrap());
        let e = grpc_status(&h).unwrap_err();
        assert!(e.contains("etcdserver: no space"), "{e}");
        assert!(e.starts_with("FailedPrecondition: "), "{e}");
    }
}
