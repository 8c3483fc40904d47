//! Fewer, larger writes on gRPC connections, for the server's listeners and for
//! clients that speak h2 directly (the load generator).
//!
//! h2 (under tonic) encodes frames into a write buffer and writes it out when it has
//! nothing more to send. On a transport with vectored writes, as a TCP stream is,
//! it does not copy a DATA frame of 256 bytes or more into that buffer: it writes
//! the buffer and the frame's payload as one `writev` and cannot take another frame
//! until that write is done. A unary response of a 256-byte value is such a frame,
//! so every response cost a `writev` of its own, and its trailers a second one:
//! about 2.1 `writev` calls per serializable read on a busy connection.
//!
//! [`CoalescedWrites`] tells h2 that the transport has no vectored writes. h2 then
//! copies frames of up to 1 KiB into its buffer, so the responses (and trailers) of
//! every stream that is ready leave in one `write`. Larger frames are still written
//! from where they are, in two `write` calls instead of one `writev`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection that hides its vectored writes from h2 (see the module docs).
#[derive(Debug)]
pub struct CoalescedWrites<IO>(pub IO);

impl<IO: AsyncRead + Unpin> AsyncRead for CoalescedWrites<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for CoalescedWrites<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A transport with vectored writes, as a TCP stream has, that counts its writes.
    struct VectoredCounting {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for VectoredCounting {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for VectoredCounting {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = ready(Pin::new(&mut this.io).poll_write(cx, buf))?;
            this.writes.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    }

    fn ready<T>(p: Poll<T>) -> T {
        match p {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("the duplex buffer is large enough for the test's writes"),
        }
    }

    /// Writes an h2 server makes to answer `streams` concurrent requests with
    /// 300-byte bodies and trailers, as a unary gRPC call is answered, all ready at
    /// once.
    async fn server_writes(coalesce: bool, streams: usize) -> usize {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = VectoredCounting { io: server_io, writes: writes.clone() };
        let server = tokio::spawn(async move {
            let mut conn = if coalesce {
                h2::server::handshake(Box::new(CoalescedWrites(counted)) as Box<dyn Io>).await.unwrap()
            } else {
                h2::server::handshake(Box::new(counted) as Box<dyn Io>).await.unwrap()
            };
            let mut pending = Vec::new();
            while pending.len() < streams {
                let (request, respond) = conn.accept().await.unwrap().unwrap();
                pending.push((request, respond));
            }
            let before = writes.load(Ordering::SeqCst);
            for (_, mut respond) in pending {
                let mut body = respond.send_response(http::Response::new(()), false).unwrap();
                body.send_data(Bytes::from(vec![7u8; 300]), false).unwrap();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                body.send_trailers(trailers).unwrap();
            }
            // Drive the connection until the client has read every answer.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.accept()).await;
            writes.load(Ordering::SeqCst) - before
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for _ in 0..streams {
            let mut client = client.clone().ready().await.unwrap();
            let request = http::Request::post("http://test/x").body(()).unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            answers.push(response);
        }
        for response in answers {
            let mut body = response.await.unwrap().into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                got += chunk.unwrap().len();
            }
            assert_eq!(got, 300);
            assert!(body.trailers().await.unwrap().is_some());
        }
        drop(client);
        server.await.unwrap()
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    #[tokio::test]
    async fn answers_ready_together_leave_in_fewer_writes_than_answers() {
        let streams = 20;
        let plain = server_writes(false, streams).await;
        let coalesced = server_writes(true, streams).await;
        // Without the wrapper h2 writes each 300-byte body on its own.
        assert!(plain >= streams, "a vectored transport took {plain} writes for {streams} answers");
        assert!(coalesced < streams / 2, "{coalesced} writes for {streams} answers ready together");
    }

    #[tokio::test]
    async fn bytes_pass_through_unchanged() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut wrapped = CoalescedWrites(a);
        assert!(!wrapped.is_write_vectored());
        tokio::io::AsyncWriteExt::write_all(&mut wrapped, b"cairn").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"cairn");
    }
}
