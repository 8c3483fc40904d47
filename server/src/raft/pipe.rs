//! Small peer calls over one long-lived gRPC stream per peer (the `Pipe` RPC).
//!
//! A unary gRPC call opens an HTTP/2 stream and sends headers, data and trailers,
//! and hyper spawns a task per stream on both ends. ReadIndex rounds (a heartbeat to
//! every follower and a call from every follower), forwarded writes and replication
//! send thousands of small calls a second, so that overhead was much of what a
//! linearizable read cost. A pipe carries each call as one message and each reply
//! as one message on a stream that stays open; replies come back as calls finish,
//! matched by the caller's call number.
//!
//! Failures keep the meaning they have for unary calls: if the stream could not be
//! opened because the peer refused the connection, no call on it was delivered
//! ([`PipeError::NeverSent`]); once it was open, a broken stream leaves the calls
//! that were waiting undecided ([`PipeError::Broken`]). A closed pipe is replaced by
//! a new one on the next call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::{PeerMessage, PipeCall, PipeReply, PipeRpc};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::Status;

use super::network::PeerRpc;
use crate::limits::{PIPE_REPLIES_QUEUED_MAX, RESPONSE_BYTES_MAX};

/// Why a call on a pipe got no reply.
#[derive(Debug)]
pub(crate) enum PipeError {
    /// The call certainly did not reach the peer.
    NeverSent(Status),
    /// The stream broke (or the peer ended it) while the call waited: the peer may
    /// or may not have handled it.
    Broken(Status),
    /// The peer refused the call (as a unary call would have been refused).
    Refused(Status),
}

type Waiting = oneshot::Sender<Result<PeerMessage, PipeError>>;

#[derive(Default)]
struct State {
    next_id: u64,
    waiting: HashMap<u64, Waiting>,
    /// The stream has ended; calls must go to a new pipe.
    closed: bool,
}

/// The calling end of one pipe to one peer.
pub(crate) struct Pipe {
    calls: mpsc::UnboundedSender<PipeCall>,
    state: Arc<Mutex<State>>,
}

impl Pipe {
    /// Opens a pipe over `channel`. The stream ends when the pipe is dropped and
    /// every reply has come, or when the connection fails.
    pub fn open(channel: Channel) -> Pipe {
        let (calls, outbound) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(drive(channel, outbound, state.clone()));
        Pipe { calls, state }
    }

    /// Whether the stream has ended, so that calls must go to a new pipe.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("pipe state").closed
    }

    /// Calls `rpc` and waits for its reply. The caller bounds the wait (`timeout` is
    /// passed on, for the peer to give up too); a call given up is forgotten.
    pub async fn call(&self, rpc: PipeRpc, message: PeerMessage, timeout: Duration) -> Result<PeerMessage, PipeError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.state.lock().expect("pipe state");
            if state.closed {
                return Err(PipeError::NeverSent(Status::unavailable("the peer pipe is closed")));
            }
            state.next_id += 1;
            let id = state.next_id;
            state.waiting.insert(id, tx);
            id
        };
        let _forget = ForgetOnDrop { state: &self.state, id };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let call = PipeCall { id, rpc: rpc as i32, message: Some(message), timeout_ms };
        if self.calls.send(call).is_err() {
            return Err(PipeError::NeverSent(Status::unavailable("the peer pipe is closed")));
        }
        rx.await.unwrap_or_else(|_| Err(PipeError::Broken(Status::unavailable("the peer pipe closed"))))
    }
}

/// Removes a call that is given up (or answered) from the waiting calls.
struct ForgetOnDrop<'a> {
    state: &'a Mutex<State>,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.state.lock().expect("pipe state").waiting.remove(&self.id);
    }
}

/// Sends the pipe's calls and hands each reply to its caller until the stream ends;
/// then fails every call still waiting.
async fn drive(channel: Channel, outbound: mpsc::UnboundedReceiver<PipeCall>, state: Arc<Mutex<State>>) {
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let failed = match client.pipe(UnboundedReceiverStream::new(outbound)).await {
        Err(status) if super::network::never_sent(&status) => PipeError::NeverSent(status),
        Err(status) => PipeError::Broken(status),
        Ok(replies) => {
            let mut replies = replies.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
                        let waiting = state.lock().expect("pipe state").waiting.remove(&reply.id);
                        if let Some(waiting) = waiting {
                            let _ = waiting.send(settle(reply));
                        }
                    }
                    Ok(None) => break PipeError::Broken(Status::unavailable("the peer ended the pipe")),
                    Err(status) => break PipeError::Broken(status),
                }
            }
        }
    };
    let waiting = {
        let mut state = state.lock().expect("pipe state");
        state.closed = true;
        std::mem::take(&mut state.waiting)
    };
    for (_, waiting) in waiting {
        let _ = waiting.send(Err(match &failed {
            PipeError::NeverSent(s) => PipeError::NeverSent(s.clone()),
            PipeError::Broken(s) | PipeError::Refused(s) => PipeError::Broken(s.clone()),
        }));
    }
}

/// A reply as the caller sees it: the message, or the peer's refusal.
fn settle(reply: PipeReply) -> Result<PeerMessage, PipeError> {
    match reply.message {
        Some(message) => Ok(message),
        None => Err(PipeError::Refused(Status::new(tonic::Code::from(reply.code), reply.error))),
    }
}

/// Handles one call: the same work as the unary RPC of that kind.
pub(crate) type Handler = Arc<
    dyn Fn(PeerRpc, PeerMessage) -> Pin<Box<dyn Future<Output = Result<PeerMessage, Status>> + Send>> + Send + Sync,
>;

/// The reply stream of a served pipe.
pub(crate) type Replies = Pin<Box<dyn Stream<Item = Result<PipeReply, Status>> + Send>>;

/// The serving end of a pipe: handles each call in a task of its own, within the
/// caller's timeout, and streams the replies back as they are ready. The reply
/// stream ends once the caller has ended its calls and every reply is sent, or at
/// once when `stop` turns true: a member that is stopping must not wait for its
/// peers to end their pipes, as they would wait for it (each member's graceful
/// shutdown waits for the streams it serves).
pub(crate) fn serve(
    mut calls: tonic::Streaming<PipeCall>,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
) -> Replies {
    let (replies, stream) = mpsc::channel(PIPE_REPLIES_QUEUED_MAX);
    let mut stopping = stop.clone();
    tokio::spawn(async move {
        loop {
            let call = tokio::select! {
                call = calls.message() => call,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let Ok(Some(call)) = call else { return };
            let (replies, handler) = (replies.clone(), handler.clone());
            tokio::spawn(async move {
                let reply = answer(call, &handler).await;
                let _ = replies.send(Ok(reply)).await;
            });
        }
    });
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Box::pin(ReceiverStream::new(stream).take_until(stopped))
}

async fn answer(call: PipeCall, handler: &Handler) -> PipeReply {
    let refused = |status: Status| PipeReply {
        id: call.id,
        message: None,
        code: status.code() as i32,
        error: status.message().to_string(),
    };
    let Some(rpc) = PipeRpc::try_from(call.rpc).ok().and_then(PeerRpc::of_pipe) else {
        return refused(Status::unimplemented(format!("cairn: unknown pipe call {}", call.rpc)));
    };
    let Some(message) = call.message else {
        return refused(Status::invalid_argument("cairn: a pipe call without a message"));
    };
    let timeout = Duration::from_millis(call.timeout_ms);
    match tokio::time::timeout(timeout, handler(rpc, message)).await {
        Ok(Ok(message)) => PipeReply { id: call.id, message: Some(message), code: 0, error: String::new() },
        Ok(Err(status)) => refused(status),
        Err(_) => refused(Status::deadline_exceeded(format!("cairn: the call took longer than {timeout:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::peer::peer_server::{Peer, PeerServer};
    use std::net::SocketAddr;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::Endpoint;
    use tonic::{Request, Response, Streaming};

    use super::*;

    /// A peer that serves only pipes, with `handler`, until its stop signal.
    struct PipeOnly(Handler, watch::Receiver<bool>);

    fn unary() -> Result<Response<PeerMessage>, Status> {
        Err(Status::unimplemented("pipe only"))
    }

    #[tonic::async_trait]
    impl Peer for PipeOnly {
        async fn append_entries(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn vote(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn install_snapshot(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn forward(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn read_index(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn lease(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn admin(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }
        async fn members(&self, _: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
            unary()
        }

        type PipeStream = Replies;

        async fn pipe(&self, req: Request<Streaming<PipeCall>>) -> Result<Response<Self::PipeStream>, Status> {
            Ok(Response::new(serve(req.into_inner(), self.0.clone(), self.1.clone())))
        }
    }

    /// Serves `handler` on a loopback port: its address, and the server task.
    async fn start(handler: Handler) -> (SocketAddr, JoinHandle<()>) {
        let (addr, server, stop) = start_stoppable(handler).await;
        // Never stopped: the server task is aborted.
        std::mem::forget(stop);
        (addr, server)
    }

    /// Serves `handler` on a loopback port until `stop` is sent true, as a member
    /// does: its address, the server task (which ends after a graceful shutdown),
    /// and the stop signal.
    async fn start_stoppable(handler: Handler) -> (SocketAddr, JoinHandle<()>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let mut shutdown = stopped.clone();
            let _ = tonic::transport::Server::builder()
                .add_service(PeerServer::new(PipeOnly(handler, stopped)))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
        });
        (addr, server, stop)
    }

    fn channel_to(addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}")).expect("loopback URL").connect_lazy()
    }

    /// A proxy that carries one connection to `server`; aborting it breaks that
    /// connection.
    async fn proxy_to(server: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let proxy = tokio::spawn(async move {
            let (mut inbound, _) = listener.accept().await.expect("accept");
            let mut outbound = tokio::net::TcpStream::connect(server).await.expect("connect to the server");
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        (addr, proxy)
    }

    fn message(payload: &[u8]) -> PeerMessage {
        PeerMessage { cluster_id: 7, from: 1, payload: payload.to_vec() }
    }

    /// Answers each call with its payload reversed, after as many milliseconds as its
    /// first byte says; refuses an empty payload.
    fn reversing() -> Handler {
        Arc::new(|_, msg: PeerMessage| {
            Box::pin(async move {
                let Some(&delay) = msg.payload.first() else {
                    return Err(Status::failed_precondition("empty payload"));
                };
                tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                Ok(PeerMessage { payload: msg.payload.iter().rev().copied().collect(), ..msg })
            })
        })
    }

    const WAIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn each_caller_gets_its_own_reply_whatever_order_they_finish_in() {
        let (addr, server) = start(reversing()).await;
        let pipe = Pipe::open(channel_to(addr));
        // Later calls finish first.
        let calls = (0..20u8).map(|i| pipe.call(PipeRpc::ReadIndex, message(&[40 - 2 * i, i]), WAIT));
        let replies = futures::future::join_all(calls).await;
        for (i, reply) in replies.into_iter().enumerate() {
            let reply = reply.expect("answered");
            assert_eq!(reply.payload, vec![i as u8, 40 - 2 * i as u8], "call {i} got another call's reply");
        }
        assert!(!pipe.is_closed());
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_call_keeps_its_status_and_the_pipe_stays_open() {
        let (addr, server) = start(reversing()).await;
        let pipe = Pipe::open(channel_to(addr));
        match pipe.call(PipeRpc::Forward, message(&[]), WAIT).await {
            Err(PipeError::Refused(status)) => {
                assert_eq!(status.code(), tonic::Code::FailedPrecondition);
                assert_eq!(status.message(), "empty payload");
            }
            other => panic!("expected the peer's refusal, got {other:?}"),
        }
        let after = pipe.call(PipeRpc::Forward, message(&[0, 9]), WAIT).await.expect("the pipe still serves");
        assert_eq!(after.payload, vec![9, 0]);
        server.abort();
    }

    #[tokio::test]
    async fn the_callee_gives_up_after_the_callers_timeout() {
        let (addr, server) = start(reversing()).await;
        let pipe = Pipe::open(channel_to(addr));
        // 200 ms of work against 20 ms of patience: the peer answers DeadlineExceeded.
        match pipe.call(PipeRpc::AppendEntries, message(&[200]), Duration::from_millis(20)).await {
            Err(PipeError::Refused(status)) => assert_eq!(status.code(), tonic::Code::DeadlineExceeded),
            other => panic!("expected the peer to give up, got {other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn calls_to_a_port_nobody_listens_on_were_never_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        drop(listener);
        let pipe = Pipe::open(channel_to(addr));
        match pipe.call(PipeRpc::Vote, message(&[0]), WAIT).await {
            Err(PipeError::NeverSent(_)) => {}
            other => panic!("expected a call that was never sent, got {other:?}"),
        }
        assert!(pipe.is_closed(), "a pipe whose stream could not open is closed");
        match pipe.call(PipeRpc::Vote, message(&[0]), WAIT).await {
            Err(PipeError::NeverSent(_)) => {}
            other => panic!("a closed pipe sends nothing, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn calls_waiting_when_the_connection_breaks_are_undecided() {
        let (server_addr, server) = start(reversing()).await;
        let (addr, proxy) = proxy_to(server_addr).await;
        let pipe = Arc::new(Pipe::open(channel_to(addr)));
        pipe.call(PipeRpc::ReadIndex, message(&[0]), WAIT).await.expect("the pipe is open");
        let waiting = tokio::spawn({
            let pipe = pipe.clone();
            async move { pipe.call(PipeRpc::ReadIndex, message(&[250, 1]), WAIT).await }
        });
        // The call is on its way or being handled when the connection breaks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.abort();
        let outcome = tokio::time::timeout(WAIT, waiting).await.expect("the waiting call is failed, not left hanging");
        match outcome.expect("caller task") {
            Err(PipeError::Broken(_)) => {}
            other => panic!("expected an undecided call, got {other:?}"),
        }
        assert!(pipe.is_closed());
        server.abort();
    }

    #[tokio::test]
    async fn a_stopping_member_ends_the_pipes_it_serves_so_its_shutdown_completes() {
        let (addr, server, stop) = start_stoppable(reversing()).await;
        let pipe = Arc::new(Pipe::open(channel_to(addr)));
        pipe.call(PipeRpc::ReadIndex, message(&[0]), WAIT).await.expect("the pipe is open");
        let waiting = tokio::spawn({
            let pipe = pipe.clone();
            async move { pipe.call(PipeRpc::ReadIndex, message(&[250, 1]), WAIT).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send_replace(true);
        // The caller still holds its pipe open, yet the graceful shutdown ends.
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server's graceful shutdown does not wait for its peers' pipes")
            .expect("server task");
        let outcome = tokio::time::timeout(WAIT, waiting).await.expect("the waiting call is failed, not left hanging");
        match outcome.expect("caller task") {
            Err(PipeError::Broken(_)) => {}
            other => panic!("expected an undecided call, got {other:?}"),
        }
        assert!(pipe.is_closed(), "the caller opens a new pipe for its next call");
    }

    #[tokio::test]
    async fn malformed_calls_are_refused_and_reach_no_handler() {
        let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting: Handler = Arc::new({
            let handled = handled.clone();
            move |_, msg: PeerMessage| {
                handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move { Ok(msg) })
            }
        });
        let (addr, server) = start(counting).await;
        let calls = vec![
            PipeCall { id: 1, rpc: 99, message: Some(message(&[1])), timeout_ms: 1000 },
            PipeCall { id: 2, rpc: PipeRpc::Unspecified as i32, message: Some(message(&[1])), timeout_ms: 1000 },
            PipeCall { id: 3, rpc: PipeRpc::Vote as i32, message: None, timeout_ms: 1000 },
            PipeCall { id: 4, rpc: PipeRpc::Vote as i32, message: Some(message(&[4])), timeout_ms: 1000 },
        ];
        let mut client = PeerClient::new(channel_to(addr));
        let mut replies = client.pipe(tokio_stream::iter(calls)).await.expect("pipe opened").into_inner();
        let mut got = HashMap::new();
        while got.len() < 4 {
            let reply = replies.message().await.expect("stream healthy").expect("four replies");
            got.insert(reply.id, reply);
        }
        for (id, code) in
            [(1, tonic::Code::Unimplemented), (2, tonic::Code::Unimplemented), (3, tonic::Code::InvalidArgument)]
        {
            let reply = &got[&id];
            assert!(reply.message.is_none(), "call {id} was answered");
            assert_eq!(reply.code, code as i32, "call {id}: {}", reply.error);
            assert!(reply.error.starts_with("cairn: "), "call {id}: {}", reply.error);
        }
        assert_eq!(got[&4].message.as_ref().map(|m| m.payload.clone()), Some(vec![4]), "a good call still works");
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1, "only the good call reached the handler");
        server.abort();
    }
}
