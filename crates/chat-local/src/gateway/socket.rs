//! One WebSocket connection after the handshake: a reader task and a writer task.
//!
//! The reader applies API Gateway's rules (idle timeout, lifetime, frame and message limits)
//! and hands each frame to the backend; the writer drains the connection's bounded queue.
//! Both are written over `Stream`/`Sink`, so any socket type works.

use std::sync::Arc;
use std::time::Duration;

use axum::Error as AxumError;
use axum::extract::ws::{CloseFrame, Message};
use chat_core::protocol::Inbound;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, sleep_until, timeout};

use super::registry::{ConnectionHandle, Frames, Outbound, close_code};
use super::{AppState, Closed};

/// Frames the writer sends before it flushes; batching writes saves syscalls under load.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs the connection until it ends, then runs `$disconnect`.
pub async fn run<S>(socket: S, state: AppState, handle: Arc<ConnectionHandle>, queue: Frames)
where
    S: Stream<Item = Result<Message, AxumError>>
        + Sink<Message, Error = AxumError>
        + Send
        + 'static,
{
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        handle.clone(),
        state.settings.write_timeout,
    ));
    read_loop(stream, &state, &handle).await;
    // Whatever ended the reader, the writer must end too.
    handle.close(close_code::NORMAL, "");
    // `$disconnect` before leaving the registry: until then, frames for this connection are
    // dropped quietly rather than reported gone, so that its rooms hear its `leave`.
    let (status_code, reason) = handle.close_frame().unwrap_or((1006, "connection lost"));
    let closed = Closed {
        status_code,
        reason: reason.into(),
    };
    state.backend.disconnect(&handle.facts, &closed).await;
    state.registry.remove(handle.id());
    let _ = writer.await;
    tracing::debug!(connection = %handle.id(), "connection closed");
}

async fn read_loop<S>(mut stream: S, state: &AppState, handle: &Arc<ConnectionHandle>)
where
    S: Stream<Item = Result<Message, AxumError>> + Unpin,
{
    let settings = &state.settings;
    // Frames handled at once; past it, the reader waits before it reads the next.
    let frames_at_once = state.backend.frames_at_once().max(1);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(frames_at_once));
    // Created once and polled again on each frame: a timer or a cancellation future made per
    // frame costs a registration and a removal each time.
    let closing = handle.closed_for_reader();
    let shutdown = state.shutdown.cancelled();
    let lifetime = sleep_until(Instant::now() + settings.max_lifetime);
    // The idle deadline moves with every frame; the timer is only reset when it fires early.
    let mut last_frame = Instant::now();
    let idle = sleep_until(last_frame + settings.idle_timeout);
    tokio::pin!(closing, shutdown, lifetime, idle);
    loop {
        let next = tokio::select! {
            () = &mut closing => return,
            () = &mut shutdown => {
                handle.close(close_code::GOING_AWAY, "server shutting down");
                return;
            }
            () = &mut lifetime => {
                handle.close(close_code::GOING_AWAY, "connection lifetime exceeded");
                return;
            }
            () = &mut idle => {
                let deadline = last_frame + settings.idle_timeout;
                if deadline <= Instant::now() {
                    handle.close(close_code::GOING_AWAY, "idle timeout");
                    return;
                }
                idle.as_mut().reset(deadline);
                continue;
            }
            next = stream.next() => next,
        };
        let message = match next {
            None => return,
            Some(Err(e)) => {
                close_for_read_error(handle, e);
                return;
            }
            Some(Ok(message)) => message,
        };
        last_frame = Instant::now();
        handle.touch();
        let inbound = match &message {
            Message::Text(text) => Inbound::Text(text.as_str()),
            // "API Gateway WebSocket APIs don't currently support binary frames in incoming
            // message payloads. If a client app sends a binary frame, API Gateway rejects it and
            // disconnects the client with code 1003." (API Gateway developer guide, "Binary media
            // types for WebSocket APIs in API Gateway".) The integration never sees it.
            Message::Binary(_) => {
                handle.close(
                    close_code::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                );
                return;
            }
            // tungstenite answers pings itself; a ping or pong only keeps the connection alive.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return,
        };
        if frames_at_once == 1 {
            let reply = state.backend.message(&handle.facts, inbound).await;
            send_reply(handle, reply);
            continue;
        }
        let Message::Text(text) = message else {
            continue;
        };
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut closing => return,
            () = &mut shutdown => {
                handle.close(close_code::GOING_AWAY, "server shutting down");
                return;
            }
        };
        // Its own task, as its own invocation: it runs to its end even if the connection
        // closes meanwhile (its reply then goes nowhere), and the server's shutdown waits for it.
        let (backend, handle) = (state.backend.clone(), handle.clone());
        state.connections.spawn(async move {
            let reply = backend
                .message(&handle.facts, Inbound::Text(text.as_str()))
                .await;
            send_reply(&handle, reply);
            drop(permit);
        });
    }
}

/// Queues the integration's reply (the route response) for the client.
fn send_reply(handle: &ConnectionHandle, reply: Option<chat_core::protocol::Payload>) {
    let Some(reply) = reply else { return };
    match axum::extract::ws::Utf8Bytes::try_from(reply.bytes().clone()) {
        Ok(text) => {
            handle.push(Outbound::Text(text));
        }
        Err(e) => tracing::error!(error = %e, "a reply is not UTF-8"),
    }
}

/// A read error ends the connection; the close code says why, as API Gateway and RFC 6455 do.
fn close_for_read_error(handle: &ConnectionHandle, error: AxumError) {
    use tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            handle.close(close_code::TOO_BIG, "frame or message too big")
        }
        Ok(Error::Utf8(_)) => {
            handle.close(close_code::INVALID_PAYLOAD, "invalid UTF-8 in a text frame")
        }
        Ok(Error::Protocol(e)) => {
            tracing::debug!(connection = %handle.id(), error = %e, "protocol error");
            handle.close(1002, "protocol error")
        }
        Ok(e) => tracing::debug!(connection = %handle.id(), error = %e, "read error"),
        Err(e) => tracing::debug!(connection = %handle.id(), error = %e, "read error"),
    }
}

async fn write_loop<S>(
    mut sink: S,
    mut queue: Frames,
    handle: Arc<ConnectionHandle>,
    write_timeout: Duration,
) where
    S: Sink<Message, Error = AxumError> + Unpin,
{
    // One lock-free wait for the whole connection, polled again on each wake-up.
    let closed = handle.closed_for_writer();
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            biased;
            () = &mut closed => break,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let write = async {
            sink.feed(to_message(first)).await?;
            for _ in 1..WRITE_BATCH {
                match queue.try_recv() {
                    Some(frame) => sink.feed(to_message(frame)).await?,
                    None => break,
                }
            }
            sink.flush().await
        };
        // A client that stops reading blocks the write; closing must not wait for it, and a
        // write that makes no headway for `write_timeout` is a slow consumer's.
        let written = tokio::select! {
            biased;
            () = &mut closed => break,
            written = timeout(write_timeout, write) => written,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The socket is broken: make the reader stop too.
                handle.close(close_code::GOING_AWAY, "");
                return;
            }
            Err(_elapsed) => {
                tracing::warn!(connection = %handle.id(), "slow consumer: socket blocked, closing");
                // The close frame cannot go out through a full socket; it is tried, briefly.
                handle.close(close_code::POLICY, "slow consumer: not reading");
                break;
            }
        }
    }
    if let Some((code, reason)) = handle.close_frame() {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = timeout(CLOSE_GRACE, sink.send(frame)).await;
    }
    let _ = timeout(CLOSE_GRACE, sink.close()).await;
}

fn to_message(frame: Outbound) -> Message {
    match frame {
        Outbound::Text(text) => Message::Text(text),
        Outbound::Binary(bytes) => Message::Binary(bytes),
    }
}

/// The socket logic over channels, as axum's testing-websockets example does: no TCP, no
/// handshake, a fake back end.
#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use async_trait::async_trait;
    use chat_core::clock::now_ms;
    use chat_core::domain::ConnectionId;
    use chat_core::protocol::Payload;
    use serde_json::{Map, Value};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::Settings;
    use crate::gateway::admission::Admission;
    use crate::gateway::registry::Registry;
    use crate::gateway::{Backend, Connection, Handshake, Refusal};

    /// A socket whose far end is two channels.
    struct ChannelSocket {
        from_client: mpsc::UnboundedReceiver<Message>,
        to_client: mpsc::UnboundedSender<Message>,
    }

    impl Stream for ChannelSocket {
        type Item = Result<Message, AxumError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for ChannelSocket {
        type Error = AxumError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), AxumError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), AxumError> {
            self.to_client.send(item).map_err(AxumError::new)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), AxumError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), AxumError>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Answers every text frame with `echo:` and the text; records `$disconnect`s.
    #[derive(Default)]
    struct Echo {
        disconnects: Mutex<Vec<(ConnectionId, Closed)>>,
    }

    #[async_trait]
    impl Backend for Echo {
        async fn authorize(
            &self,
            _: &Connection,
            _: &Handshake,
        ) -> Result<Option<Map<String, Value>>, Refusal> {
            Ok(None)
        }
        async fn connect(&self, _: &Connection, _: &Handshake) -> Result<(), Refusal> {
            Ok(())
        }
        async fn message(&self, _: &Connection, inbound: Inbound<'_>) -> Option<Payload> {
            match inbound {
                Inbound::Text(text) => Some(Payload::from_json(format!("echo:{text}"))),
                Inbound::Binary => None,
            }
        }
        async fn disconnect(&self, connection: &Connection, closed: &Closed) {
            self.disconnects
                .lock()
                .unwrap()
                .push((connection.id.clone(), closed.clone()));
        }
        async fn shutdown(&self) {}
    }

    struct Harness {
        backend: Arc<Echo>,
        handle: Arc<ConnectionHandle>,
        client_out: mpsc::UnboundedSender<Message>,
        client_in: mpsc::UnboundedReceiver<Message>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start() -> Harness {
        let dir = std::env::temp_dir();
        let settings = Settings::for_tests(dir);
        let backend = Arc::new(Echo::default());
        let registry = Arc::new(Registry::new(10, 16));
        let state = AppState {
            backend: backend.clone(),
            registry: registry.clone(),
            admission: Arc::new(Admission::new(settings.ip_connect_rate())),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        let facts = Connection {
            id: ConnectionId::random(),
            connected_at_ms: now_ms(),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: None,
            authorizer: None,
        };
        let (handle, queue) = registry.register(facts).unwrap();
        let (client_out, from_client) = mpsc::unbounded_channel();
        let (to_client, client_in) = mpsc::unbounded_channel();
        let socket = ChannelSocket {
            from_client,
            to_client,
        };
        let task = tokio::spawn(run(socket, state, handle.clone(), queue));
        Harness {
            backend,
            handle,
            client_out,
            client_in,
            task,
        }
    }

    async fn next(h: &mut Harness) -> Message {
        tokio::time::timeout(Duration::from_secs(5), h.client_in.recv())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
    }

    #[tokio::test]
    async fn each_frame_reaches_the_backend_and_its_reply_comes_back_in_order() {
        let mut h = start();
        for text in ["a", "b", "c"] {
            h.client_out.send(Message::Text(text.into())).unwrap();
        }
        for text in ["a", "b", "c"] {
            assert_eq!(
                next(&mut h).await,
                Message::Text(format!("echo:{text}").into())
            );
        }
    }

    #[tokio::test]
    async fn the_clients_close_ends_the_connection_and_runs_disconnect() {
        let mut h = start();
        h.client_out.send(Message::Close(None)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut h.task)
            .await
            .expect("the connection ends")
            .unwrap();
        let disconnects = h.backend.disconnects.lock().unwrap();
        assert_eq!(disconnects.len(), 1);
        assert_eq!(disconnects[0].0, *h.handle.id());
    }

    #[tokio::test]
    async fn a_close_from_outside_sends_its_close_frame_and_ends_the_connection() {
        let mut h = start();
        h.handle
            .close(close_code::POLICY, "slow consumer: send queue full");
        match next(&mut h).await {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, close_code::POLICY);
                assert_eq!(frame.reason, "slow consumer: send queue full");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(5), &mut h.task)
            .await
            .expect("the connection ends")
            .unwrap();
        let disconnects = h.backend.disconnects.lock().unwrap();
        assert_eq!(disconnects[0].1.status_code, close_code::POLICY);
    }
}
