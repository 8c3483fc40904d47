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
//!
//! A server's answers are not ready together, though, even when they complete
//! together. A batch of puts commits at once, and the task that applies it wakes
//! each put's handler in turn. Each handler runs as a task of its own; it hands
//! its answer to the connection's task and wakes it. tokio runs the task woken
//! last first (its "LIFO slot"), so the connection's task ran next and wrote that
//! one answer, before the other handlers of the batch had run: about one `sendto`
//! per put. [`CoalescedWrites::server`] therefore holds back the first write of a
//! flush for one pass through the worker's run queue: the connection's task wakes
//! itself and returns, tokio puts a task that woke itself at the back of the
//! queue, and the handlers queued before it add their answers to h2's buffer in
//! the meantime. On an idle worker the queue is empty and the write waits for one
//! more poll (and, if the other worker is parked, its wake-up). A flush of a full
//! buffer ([`HOLD_BACK_AFTER_FLUSH_BYTES_MAX`]) means a bulk transfer or a large
//! batch is under way, and the write after it is not held back. Both the client
//! and the peer listeners' connections do this: a follower's acknowledgements and
//! a leader's answers to forwarded writes complete in batches too.
//!
//! With three members and 64 clients on two cores, that took the system's `sendto`
//! calls from 2.19 to 1.48 per put, puts/s up by 2.5% on average (−0.5 to +5.6%
//! in six pairs of runs) and single-key reads by 12–17%: a ReadIndex round
//! completes many linearizable reads at once, and serializable reads that arrive
//! together complete together (benches/RESULTS.md, ninth session).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A flush that wrote at least this many bytes lets the next write go at once
/// ([`CoalescedWrites::server`]). h2's write buffer holds 16 KiB, so such a flush
/// was part of a bulk transfer (a large range, a snapshot, a watch catching up)
/// or of a large batch, and the writes that follow it have no answers to wait
/// for. Without this, a 4 MiB answer would wait once per 16 KiB, 256 times.
pub const HOLD_BACK_AFTER_FLUSH_BYTES_MAX: usize = 16 * 1024;

/// A connection that hides its vectored writes from h2 and, on a server, holds
/// back the first write of a flush by one pass through the run queue (see the
/// module docs).
///
/// A held-back write returns `Pending` after waking the task: the caller must
/// retry that write before it flushes, as h2 and hyper do.
#[derive(Debug)]
pub struct CoalescedWrites<IO> {
    io: IO,
    /// Whether writes are ever held back (servers).
    server: bool,
    /// Whether the next write waits one pass; set again by a small flush.
    hold_next_write: bool,
    /// Bytes written since the last flush.
    flush_bytes: usize,
}

impl<IO> CoalescedWrites<IO> {
    /// For a client: frames are copied into one buffer, writes are not held back.
    pub fn new(io: IO) -> Self {
        Self { io, server: false, hold_next_write: false, flush_bytes: 0 }
    }

    /// For a server's accepted connection: as [`CoalescedWrites::new`], and the
    /// first write after a flush of less than [`HOLD_BACK_AFTER_FLUSH_BYTES_MAX`]
    /// (or the first write of all) waits until the tasks already queued on this
    /// worker have run, so that the answers they complete leave with it.
    pub fn server(io: IO) -> Self {
        Self { io, server: true, hold_next_write: true, flush_bytes: 0 }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CoalescedWrites<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hold_next_write && !buf.is_empty() {
            this.hold_next_write = false;
            // A task that wakes itself while it runs goes to the back of the
            // worker's queue, behind the handlers woken before it.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let written = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.flush_bytes += written;
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.hold_next_write = this.server && this.flush_bytes < HOLD_BACK_AFTER_FLUSH_BYTES_MAX;
        this.flush_bytes = 0;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for CoalescedWrites<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
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

    /// Sends `streams` requests over `io` and reads each answer: a 300-byte body
    /// and trailers, then lets the connection close.
    async fn ask_and_read_answers(io: DuplexStream, streams: usize) {
        let (client, connection) = h2::client::handshake(io).await.unwrap();
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
    }

    /// Answers as a unary gRPC call is answered: headers, a 300-byte body, trailers.
    fn answer(respond: &mut h2::server::SendResponse<Bytes>) {
        let mut body = respond.send_response(http::Response::new(()), false).unwrap();
        body.send_data(Bytes::from(vec![7u8; 300]), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        body.send_trailers(trailers).unwrap();
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
                h2::server::handshake(Box::new(CoalescedWrites::new(counted)) as Box<dyn Io>).await.unwrap()
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
                answer(&mut respond);
            }
            // Drive the connection until the client has read every answer.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.accept()).await;
            writes.load(Ordering::SeqCst) - before
        });
        ask_and_read_answers(client_io, streams).await;
        server.await.unwrap()
    }

    /// Writes an h2 server makes to answer 20 concurrent requests when each answer
    /// is sent by a task of its own and one other task wakes them all, as the task
    /// applying a batch of puts wakes the puts' handlers.
    async fn server_writes_from_tasks(wrap: fn(VectoredCounting) -> CoalescedWrites<VectoredCounting>) -> usize {
        let streams = 20;
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = VectoredCounting { io: server_io, writes: writes.clone() };
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(wrap(counted)).await.unwrap();
            let mut wake_ups = Vec::new();
            while wake_ups.len() < streams {
                let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
                let (wake, woken) = tokio::sync::oneshot::channel::<()>();
                wake_ups.push(wake);
                tokio::spawn(async move {
                    woken.await.unwrap();
                    answer(&mut respond);
                });
            }
            let before = writes.load(Ordering::SeqCst);
            tokio::spawn(async move {
                // Start from the back of the queue, as a task woken by a channel does,
                // not from the LIFO slot of the task that spawned this one: tokio
                // runs at most three tasks in a row from that slot, and it is the
                // answers' tasks that should take it.
                tokio::task::yield_now().await;
                for wake in wake_ups {
                    wake.send(()).unwrap();
                }
            });
            // Drive the connection until the client has read every answer.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.accept()).await;
            writes.load(Ordering::SeqCst) - before
        });
        ask_and_read_answers(client_io, streams).await;
        server.await.unwrap()
    }

    // One worker thread: the tasks run in the order tokio's scheduler picks, and no
    // second worker steals any of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_servers_answers_completed_by_separate_tasks_leave_together() {
        let plain = server_writes_from_tasks(CoalescedWrites::new).await;
        let server = server_writes_from_tasks(CoalescedWrites::server).await;
        // Without holding back, the connection's task runs after each handler
        // (tokio's LIFO slot) and writes that handler's answer alone. This first
        // assertion checks tokio's behaviour, which the hold-back answers: should
        // a tokio release change it, the hold-back needs measuring again.
        assert!(plain >= 10, "answers written one by one took {plain} writes for 20");
        assert!(server <= 3, "{server} writes for 20 answers completed together");
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
        for wrap in [CoalescedWrites::new, CoalescedWrites::server] {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut wrapped = wrap(a);
            assert!(!wrapped.is_write_vectored());
            let exchange = async {
                tokio::io::AsyncWriteExt::write_all(&mut wrapped, b"cairn").await.unwrap();
                tokio::io::AsyncWriteExt::flush(&mut wrapped).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut wrapped, b"!").await.unwrap();
                let mut got = [0u8; 6];
                b.read_exact(&mut got).await.unwrap();
                got
            };
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
            assert_eq!(&got.expect("a held-back write goes through when retried"), b"cairn!");
        }
    }

    /// Counts the wake-ups of a task.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_server_holds_back_the_first_write_after_a_small_flush_only() {
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (a, _b) = tokio::io::duplex(1 << 20);
        let mut server = CoalescedWrites::server(a);
        let mut write = |w: &mut CoalescedWrites<DuplexStream>, bytes: &[u8]| Pin::new(w).poll_write(&mut cx, bytes);

        // The first write waits one poll, having woken its task; the retry goes.
        assert!(write(&mut server, b"answer").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(write(&mut server, b"answer"), Poll::Ready(Ok(6))));
        assert!(matches!(write(&mut server, b"more"), Poll::Ready(Ok(4))), "only a flush's first write waits");

        // After a small flush the next write waits again.
        let flush = |w: &mut CoalescedWrites<DuplexStream>| {
            let waker = std::task::Waker::noop();
            Pin::new(w).poll_flush(&mut Context::from_waker(waker))
        };
        assert!(matches!(flush(&mut server), Poll::Ready(Ok(()))));
        assert!(write(&mut server, b"next").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);

        // After a flush of a full buffer (a bulk transfer) it does not.
        let bulk = vec![0u8; HOLD_BACK_AFTER_FLUSH_BYTES_MAX];
        assert!(matches!(write(&mut server, &bulk), Poll::Ready(Ok(n)) if n == bulk.len()));
        assert!(matches!(flush(&mut server), Poll::Ready(Ok(()))));
        assert!(matches!(write(&mut server, b"next"), Poll::Ready(Ok(4))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);

        // A client's writes never wait.
        let (a, _b) = tokio::io::duplex(1024);
        let mut client = CoalescedWrites::new(a);
        assert!(matches!(write(&mut client, b"request"), Poll::Ready(Ok(7))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }
}
