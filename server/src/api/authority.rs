//! Accepts the `:authority` values that etcd's own tools send.
//!
//! etcdctl 3.4 dials its per-endpoint commands (`endpoint status|health|hashkv`,
//! `defrag`, `snapshot save`, `move-leader`, and anything with `--cluster`) with the
//! endpoint URL itself as the gRPC target, so those requests carry
//! `:authority: http://host:port`. etcd's Go server ignores the value. h2, under
//! tonic, resets such a stream as malformed (PROTOCOL_ERROR) and has no setting to do
//! otherwise, and neither tonic nor hyper sees the request first.
//!
//! [`LenientAuthority`] therefore sits between a client connection and h2 and reads
//! the HTTP/2 frames the client sends, up to the end of the first header block.
//! gRPC clients send one `:authority` for every request of a connection (it belongs
//! to the channel), so that block decides:
//!
//! - its `:authority` is acceptable (every client but etcdctl's per-endpoint ones):
//!   it is handed on byte for byte and so is the rest of the connection, unexamined;
//! - it is not: the block is encoded afresh with the URL reduced to its `host:port`
//!   (or without `:authority` when nothing valid is left), and so is every later
//!   block of the connection, decoded with a mirror of the client's HPACK table.
//!   The first re-encoded block empties h2's table with a size update, and the
//!   encoder keeps it empty, so h2's table never disagrees with what it is sent.
//!
//! Only the reading direction is touched, and only header blocks; frame payloads
//! pass through as they arrive. Anything that is not HTTP/2 from a client (HTTP/1.1
//! for `/metrics`, or frames h2 will refuse anyway) is passed on unchanged and the
//! rest of the connection with it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: length (3 bytes), type, flags, stream id (4 bytes).
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Stream dependency (4 bytes) and weight (1 byte) of a HEADERS frame with PRIORITY.
const PRIORITY_BYTES: usize = 5;
/// The largest frame payload every HTTP/2 peer must accept (RFC 9113, 4.2); frames
/// this module writes stay within it whatever h2 advertises.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A header block larger than this is passed on unexamined, and the rest of the
/// connection with it; h2's own header list limit is far below.
const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;
/// How much is read from the socket at a time when bytes must be examined.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// An HPACK dynamic table size update to 0 (RFC 7541, 6.3): `001` and a 5-bit zero.
const TABLE_SIZE_ZERO: u8 = 0x20;

/// A client connection whose header blocks are corrected before h2 reads them; see
/// the module documentation.
pub struct LenientAuthority<IO> {
    io: IO,
    /// Bytes read from `io` and not yet examined.
    pending: BytesMut,
    /// Examined bytes, ready for h2.
    ready: BytesMut,
    state: State,
    /// Mirrors the client's HPACK encoder.
    decoder: loona_hpack::Decoder<'static>,
    /// Set once a block was re-encoded: encodes every later block for h2.
    encoder: Option<loona_hpack::Encoder<'static>>,
    eof: bool,
}

enum State {
    /// Within the connection preface, `matched` bytes into it.
    Preface { matched: usize },
    /// At the start of a frame.
    FrameHeader,
    /// Within a frame payload that passes through.
    Payload { remaining: usize },
    /// Within a header block, after its HEADERS frame and before END_HEADERS.
    Continuation(Block),
    /// Not examined any more: everything passes through.
    Raw,
}

/// A header block being collected from a HEADERS frame and its CONTINUATION frames.
struct Block {
    stream_id: u32,
    /// The frames as the client sent them.
    original: BytesMut,
    /// The header block fragments, joined.
    fragment: BytesMut,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_BYTES]>,
}

impl<IO> LenientAuthority<IO> {
    pub fn new(io: IO) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // h2 enforces its advertised table size on what it reads; this mirror only
        // has to follow whatever the client does.
        decoder.set_max_allowed_table_size(usize::MAX);
        LenientAuthority {
            io,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Preface { matched: 0 },
            decoder,
            encoder: None,
            eof: false,
        }
    }

    /// Moves what can be decided from `pending` to `ready`.
    fn examine(&mut self) {
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Raw) {
                State::Raw => {
                    let all = self.pending.split();
                    self.ready.unsplit(all);
                    false
                }
                State::Preface { matched } => {
                    let expected = &PREFACE[matched..];
                    let n = self.pending.len().min(expected.len());
                    if self.pending[..n] != expected[..n] {
                        // Not HTTP/2 with prior knowledge: HTTP/1.1 or garbage.
                        true
                    } else {
                        self.forward(n);
                        self.state = if matched + n == PREFACE.len() {
                            State::FrameHeader
                        } else {
                            State::Preface { matched: matched + n }
                        };
                        matched + n == PREFACE.len()
                    }
                }
                State::FrameHeader => self.frame_header(),
                State::Payload { remaining } => {
                    let n = self.pending.len().min(remaining);
                    self.forward(n);
                    self.state =
                        if n == remaining { State::FrameHeader } else { State::Payload { remaining: remaining - n } };
                    n == remaining
                }
                State::Continuation(block) => self.continuation(block),
            };
            if !progressed {
                return;
            }
        }
    }

    /// At a frame start; returns whether the frame was dealt with.
    fn frame_header(&mut self) -> bool {
        let Some(header) = FrameHeader::peek(&self.pending) else {
            self.state = State::FrameHeader;
            return false;
        };
        if header.kind != FRAME_HEADERS {
            // CONTINUATION out of place included: h2 will refuse it.
            self.forward(FRAME_HEADER_BYTES);
            self.state = State::Payload { remaining: header.length };
            return true;
        }
        if header.length > HEADER_BLOCK_BYTES_MAX {
            self.state = State::Raw;
            return true;
        }
        if self.pending.len() < FRAME_HEADER_BYTES + header.length {
            self.state = State::FrameHeader;
            return false;
        }
        let original = self.pending.split_to(FRAME_HEADER_BYTES + header.length);
        let Some((priority, fragment)) = headers_payload(&header, &original[FRAME_HEADER_BYTES..]) else {
            // Malformed padding: h2 will refuse it.
            self.ready.unsplit(original);
            self.state = State::Raw;
            return true;
        };
        let block = Block {
            stream_id: header.stream_id,
            fragment: BytesMut::from(fragment),
            end_stream: header.flags & FLAG_END_STREAM != 0,
            priority,
            original,
        };
        if header.flags & FLAG_END_HEADERS != 0 {
            self.finish(block);
        } else {
            self.state = State::Continuation(block);
        }
        true
    }

    /// Within a header block; returns whether a frame was added to it.
    fn continuation(&mut self, mut block: Block) -> bool {
        let Some(header) = FrameHeader::peek(&self.pending) else {
            self.state = State::Continuation(block);
            return false;
        };
        if header.kind != FRAME_CONTINUATION
            || header.stream_id != block.stream_id
            || block.original.len() + header.length > HEADER_BLOCK_BYTES_MAX
        {
            // A protocol error h2 will report, or a block too large to examine.
            self.ready.unsplit(block.original);
            self.state = State::Raw;
            return true;
        }
        if self.pending.len() < FRAME_HEADER_BYTES + header.length {
            self.state = State::Continuation(block);
            return false;
        }
        let frame = self.pending.split_to(FRAME_HEADER_BYTES + header.length);
        block.fragment.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
        block.original.unsplit(frame);
        if header.flags & FLAG_END_HEADERS != 0 {
            self.finish(block);
        } else {
            self.state = State::Continuation(block);
        }
        true
    }

    /// A whole header block: decoded, then handed on as it was or re-encoded.
    fn finish(&mut self, block: Block) {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if self.decoder.decode_with_cb(&block.fragment, |n, v| headers.push((n.into_owned(), v.into_owned()))).is_err()
        {
            // h2 fails the connection with COMPRESSION_ERROR; the mirror is lost.
            self.ready.unsplit(block.original);
            self.state = State::Raw;
            return;
        }
        let changed = fix_authority(&mut headers);
        if !changed && self.encoder.is_none() {
            // A gRPC client sends the same :authority on every request of a
            // connection (it is the channel's): once the first is acceptable, the
            // rest of the connection passes through unexamined, at no cost.
            self.ready.unsplit(block.original);
            self.state = State::Raw;
            return;
        }
        let mut encoded = Vec::new();
        let encoder = self.encoder.get_or_insert_with(|| {
            tracing::debug!("re-encoding this connection's header blocks to correct an :authority");
            encoded.push(TABLE_SIZE_ZERO);
            let mut encoder = loona_hpack::Encoder::new();
            encoder.set_max_table_size(0);
            encoder
        });
        encoder
            .encode_into(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())), &mut encoded)
            .expect("writing to a Vec cannot fail");
        write_header_frames(&mut self.ready, &block, &encoded);
        self.state = State::FrameHeader;
    }

    fn forward(&mut self, n: usize) {
        let bytes = self.pending.split_to(n);
        self.ready.unsplit(bytes);
    }
}

struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn peek(bytes: &[u8]) -> Option<FrameHeader> {
        let mut b = bytes.get(..FRAME_HEADER_BYTES)?;
        let length = b.get_uint(3) as usize;
        let kind = b.get_u8();
        let flags = b.get_u8();
        let stream_id = b.get_u32() & 0x7fff_ffff;
        Some(FrameHeader { length, kind, flags, stream_id })
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment;
/// `None` if the padding does not fit.
fn headers_payload<'a>(header: &FrameHeader, payload: &'a [u8]) -> Option<(Option<[u8; PRIORITY_BYTES]>, &'a [u8])> {
    let mut rest = payload;
    let mut padding = 0;
    if header.flags & FLAG_PADDED != 0 {
        padding = *rest.first()? as usize;
        rest = &rest[1..];
    }
    let mut priority = None;
    if header.flags & FLAG_PRIORITY != 0 {
        priority = Some(rest.get(..PRIORITY_BYTES)?.try_into().ok()?);
        rest = &rest[PRIORITY_BYTES..];
    }
    let fragment_len = rest.len().checked_sub(padding)?;
    Some((priority, &rest[..fragment_len]))
}

/// Writes a header block as a HEADERS frame and as many CONTINUATION frames as it
/// needs, without padding.
fn write_header_frames(dst: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let priority_len = if block.priority.is_some() { PRIORITY_BYTES } else { 0 };
    let first_len = encoded.len().min(FRAME_PAYLOAD_MAX - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = if block.end_stream { FLAG_END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    put_frame_header(dst, priority_len + first.len(), FRAME_HEADERS, flags, block.stream_id);
    if let Some(priority) = &block.priority {
        dst.put_slice(priority);
    }
    dst.put_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(dst, chunk.len(), FRAME_CONTINUATION, flags, block.stream_id);
        dst.put_slice(chunk);
        rest = tail;
    }
}

fn put_frame_header(dst: &mut BytesMut, length: usize, kind: u8, flags: u8, stream_id: u32) {
    dst.put_uint(length as u64, 3);
    dst.put_u8(kind);
    dst.put_u8(flags);
    dst.put_u32(stream_id);
}

/// Replaces an `:authority` h2 would refuse by the authority of the URL it holds,
/// or removes it when that is not valid either; returns whether anything changed.
fn fix_authority(headers: &mut Vec<(Vec<u8>, Vec<u8>)>) -> bool {
    let Some(index) = headers.iter().position(|(name, _)| name == b":authority") else {
        return false;
    };
    let value = &headers[index].1;
    if http::uri::Authority::try_from(value.as_slice()).is_ok() {
        return false;
    }
    let after_scheme = match value.windows(3).position(|w| w == b"://") {
        Some(at) => &value[at + 3..],
        None => &value[..],
    };
    let authority = after_scheme.split(|&b| b == b'/').next().unwrap_or_default();
    if !authority.is_empty() && http::uri::Authority::try_from(authority).is_ok() {
        headers[index].1 = authority.to_vec();
    } else {
        headers.remove(index);
    }
    true
}

impl<IO: AsyncRead + Unpin> AsyncRead for LenientAuthority<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Payload bytes that need no examination go straight into h2's buffer.
            let passthrough = match this.state {
                State::Raw => Some(buf.remaining()),
                State::Payload { remaining } => Some(remaining.min(buf.remaining())),
                _ => None,
            };
            if let Some(limit) = passthrough.filter(|&limit| limit > 0 && this.pending.is_empty()) {
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                buf.advance(n);
                if let State::Payload { remaining } = &mut this.state {
                    *remaining -= n;
                    if *remaining == 0 {
                        this.state = State::FrameHeader;
                    }
                }
                if n == 0 {
                    this.eof = true;
                }
                return Poll::Ready(Ok(()));
            }
            this.pending.reserve(READ_CHUNK_BYTES);
            let n = std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.pending))?;
            if n == 0 {
                // A partial frame at the end goes on as it is, for h2 to judge.
                this.eof = true;
                let rest = this.pending.split();
                this.ready.unsplit(rest);
                continue;
            }
            this.examine();
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for LenientAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A request as the client sends it: headers (after the pseudo-headers the test
    /// adds) and an optional body.
    struct Request {
        authority: Option<&'static str>,
        path: &'static str,
        body: &'static [u8],
    }

    /// What h2 made of a request.
    #[derive(Debug, PartialEq)]
    struct Seen {
        authority: Option<String>,
        path: String,
        tag: String,
        body: Vec<u8>,
    }

    /// Encodes requests the way a client would, on streams 1, 3, 5, …: one encoder
    /// for the connection (so later blocks refer to earlier ones), a tag header that
    /// repeats, and the odd-numbered requests' blocks split into a padded,
    /// prioritised HEADERS frame and CONTINUATION frames.
    fn client_bytes(requests: &[Request]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(PREFACE);
        put_frame_header(&mut out, 0, 0x4, 0, 0); // SETTINGS, empty
        let mut encoder = loona_hpack::Encoder::new();
        for (i, request) in requests.iter().enumerate() {
            let stream_id = 2 * i as u32 + 1;
            let mut headers: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":scheme", b"http")];
            if let Some(authority) = request.authority {
                headers.push((b":authority", authority.as_bytes()));
            }
            headers.push((b":path", request.path.as_bytes()));
            headers.push((b"x-tag", b"same-every-time"));
            let block = encoder.encode(headers);
            let end_stream = if request.body.is_empty() { FLAG_END_STREAM } else { 0 };
            if i % 2 == 0 {
                put_frame_header(&mut out, block.len(), FRAME_HEADERS, end_stream | FLAG_END_HEADERS, stream_id);
                out.put_slice(&block);
            } else {
                let (first, rest) = block.split_at(block.len() / 3);
                let padding = 4;
                let flags = end_stream | FLAG_PADDED | FLAG_PRIORITY;
                put_frame_header(&mut out, 1 + PRIORITY_BYTES + first.len() + padding, FRAME_HEADERS, flags, stream_id);
                out.put_u8(padding as u8);
                out.put_slice(&[0, 0, 0, 0, 16]);
                out.put_slice(first);
                out.put_slice(&[0; 4]);
                for (j, chunk) in rest.chunks(5).enumerate() {
                    let last = (j + 1) * 5 >= rest.len();
                    let flags = if last { FLAG_END_HEADERS } else { 0 };
                    put_frame_header(&mut out, chunk.len(), FRAME_CONTINUATION, flags, stream_id);
                    out.put_slice(chunk);
                }
            }
            if !request.body.is_empty() {
                put_frame_header(&mut out, request.body.len(), 0x0, FLAG_END_STREAM, stream_id);
                out.put_slice(request.body);
            }
        }
        out.to_vec()
    }

    /// Runs an h2 server over `server_io` until the client has sent everything, and
    /// returns the requests it accepted.
    async fn serve<IO>(server_io: IO, client: DuplexStream, bytes: Vec<u8>, expected: usize) -> Vec<Seen>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut from_server, mut to_server) = tokio::io::split(client);
        // Drain what the server sends while writing, or a small buffer deadlocks.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = from_server.read_to_end(&mut sink).await;
        });
        let writer = tokio::spawn(async move {
            to_server.write_all(&bytes).await.unwrap();
            to_server
        });
        let handshake = h2::server::handshake(server_io);
        let mut conn = tokio::time::timeout(std::time::Duration::from_secs(10), handshake)
            .await
            .expect("handshake in time")
            .expect("handshake");
        // The connection only makes progress while it is polled, so bodies are read
        // by tasks of their own.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let accept = async {
            while let Some(accepted) = conn.accept().await {
                let (request, mut respond) = accepted.expect("request");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (parts, mut body) = request.into_parts();
                    let mut data = Vec::new();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.expect("body");
                        body.flow_control().release_capacity(chunk.len()).unwrap();
                        data.extend_from_slice(&chunk);
                    }
                    let _ = tx.send(Seen {
                        authority: parts.uri.authority().map(|a| a.to_string()),
                        path: parts.uri.path().to_string(),
                        tag: parts.headers["x-tag"].to_str().unwrap().to_string(),
                        body: data,
                    });
                    let _ = respond.send_response(http::Response::new(()), true);
                });
            }
            std::future::pending::<()>().await
        };
        let collect = async {
            let mut seen = Vec::new();
            while seen.len() < expected {
                seen.push(rx.recv().await.expect("a request"));
            }
            seen
        };
        let mut seen = tokio::select! {
            _ = accept => unreachable!(),
            seen = collect => seen,
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => Vec::new(),
        };
        seen.sort_by(|a, b| a.path.cmp(&b.path));
        drop(conn);
        writer.abort();
        reader.abort();
        seen
    }

    /// The first request decides how the connection is treated: it has a URL here.
    fn requests() -> Vec<Request> {
        vec![
            Request { authority: Some("http://127.0.0.1:2379"), path: "/a", body: b"" },
            Request { authority: Some("127.0.0.1:2379"), path: "/b", body: b"payload-b" },
            Request { authority: Some("127.0.0.1:2379"), path: "/c", body: b"" },
            Request { authority: Some("https://[::1]:2379/"), path: "/d", body: b"payload-d" },
            Request { authority: Some("unix:///var/run/cairn.sock"), path: "/e", body: b"" },
            Request { authority: None, path: "/f", body: b"payload-f" },
            Request { authority: Some("example.com:2379"), path: "/g", body: b"" },
        ]
    }

    fn expected() -> Vec<Seen> {
        let seen = |authority: Option<&str>, path: &str, body: &[u8]| Seen {
            authority: authority.map(str::to_string),
            path: path.to_string(),
            tag: "same-every-time".to_string(),
            body: body.to_vec(),
        };
        vec![
            seen(Some("127.0.0.1:2379"), "/a", b""),
            seen(Some("127.0.0.1:2379"), "/b", b"payload-b"),
            seen(Some("127.0.0.1:2379"), "/c", b""),
            seen(Some("[::1]:2379"), "/d", b"payload-d"),
            seen(None, "/e", b""),
            seen(None, "/f", b"payload-f"),
            seen(Some("example.com:2379"), "/g", b""),
        ]
    }

    #[tokio::test]
    async fn url_authorities_reach_h2_as_host_and_port_in_reads_of_any_size() {
        // A small duplex buffer hands the wrapper frames in pieces of that size.
        for buffer in [1, 7, 64, 100_000] {
            let (client, server) = tokio::io::duplex(buffer);
            let bytes = client_bytes(&requests());
            let seen = serve(LenientAuthority::new(server), client, bytes, requests().len()).await;
            assert_eq!(seen, expected(), "reads of at most {buffer} bytes");
        }
    }

    #[tokio::test]
    async fn h2_alone_refuses_a_url_authority() {
        // Why this module exists: should h2 ever accept these, it can go.
        let (client, server) = tokio::io::duplex(100_000);
        let bytes = client_bytes(&requests()[..3]);
        let seen = serve(server, client, bytes, 2).await;
        let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["/b", "/c"]);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_acceptable_passes_through_unexamined() {
        // The same requests, but the first with host:port: from then on h2 reads the
        // client's bytes as they are, and refuses the later URL itself.
        let mut requests = requests();
        requests.swap(0, 1);
        let (client, server) = tokio::io::duplex(100_000);
        let bytes = client_bytes(&requests[..3]);
        let seen = serve(LenientAuthority::new(server), client, bytes, 2).await;
        let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["/b", "/c"]);
    }

    #[tokio::test]
    async fn http1_passes_through_unchanged() {
        let (mut client, server) = tokio::io::duplex(64);
        let request = b"GET /metrics HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        let sent = request.clone();
        tokio::spawn(async move { client.write_all(&sent).await.unwrap() });
        let mut wrapped = LenientAuthority::new(server);
        let mut got = vec![0; request.len()];
        wrapped.read_exact(&mut got).await.unwrap();
        assert_eq!(got, request);
    }

    #[test]
    fn header_blocks_larger_than_a_frame_are_split_into_continuations() {
        let block = Block {
            stream_id: 7,
            original: BytesMut::new(),
            fragment: BytesMut::new(),
            end_stream: true,
            priority: Some([0, 0, 0, 3, 9]),
        };
        let encoded: Vec<u8> = (0..2 * FRAME_PAYLOAD_MAX + 10).map(|i| i as u8).collect();
        let mut out = BytesMut::new();
        write_header_frames(&mut out, &block, &encoded);
        let mut joined = Vec::new();
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while let Some(header) = FrameHeader::peek(rest) {
            assert!(header.length <= FRAME_PAYLOAD_MAX);
            let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.length];
            let fragment = if header.kind == FRAME_HEADERS { &payload[PRIORITY_BYTES..] } else { payload };
            joined.extend_from_slice(fragment);
            frames.push((header.kind, header.flags, header.stream_id));
            rest = &rest[FRAME_HEADER_BYTES + header.length..];
        }
        assert_eq!(joined, encoded);
        assert_eq!(
            frames,
            [
                (FRAME_HEADERS, FLAG_END_STREAM | FLAG_PRIORITY, 7),
                (FRAME_CONTINUATION, 0, 7),
                (FRAME_CONTINUATION, FLAG_END_HEADERS, 7),
            ]
        );
    }

    #[test]
    fn authorities_h2_accepts_are_left_alone() {
        for value in ["127.0.0.1:2379", "example.com", "[::1]:1", "user@host:1"] {
            let mut headers = vec![(b":authority".to_vec(), value.as_bytes().to_vec())];
            assert!(!fix_authority(&mut headers), "{value}");
            assert_eq!(headers[0].1, value.as_bytes());
        }
    }
}
