//! One WebSocket connection after the handshake: a reader task and a writer task.
//!
//! The reader applies API Gateway's rules (idle timeout, lifetime, frame and message limits)
//! and hands each frame to the backend; the writer drains the connection's bounded queue.
//! Both are written over `Stream`/`Sink`, so any socket type works.

use std::sync::Arc;
use std::time::Duration;

use axum::Error as AxumError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use chat_core::domain::ConnectionId;
use chat_core::protocol::Inbound;
use chat_core::service::MAX_FRAME_BYTES;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, sleep_until, timeout};

use super::integration;
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
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        handle.clone(),
        state.settings.write_timeout,
    ));
    let ended = read_loop(&mut stream, &state, &handle).await;
    // Whatever ended the reader, the writer must end too.
    handle.close(close_code::NORMAL, "");
    let closed = match &ended {
        Ended::ClientClosed(closed) => closed.clone(),
        Ended::Dropped => Closed {
            status_code: close_code::ABNORMAL,
            reason: "connection lost".into(),
        },
        Ended::ByGateway => {
            let (status_code, reason) = handle.close_frame().unwrap_or((1006, ""));
            Closed {
                status_code,
                reason: reason.into(),
            }
        }
    };
    // `$disconnect` before leaving the registry: until then, frames for this connection are
    // dropped quietly rather than reported gone, so that its rooms hear its `leave`.
    state.backend.disconnect(&handle.facts, &closed).await;
    state.registry.remove(handle.id());
    // Once both halves are gone the socket closes, lingering (see `linger`), so that the close
    // frame reaches the client whatever it still sends.
    let _ = writer.await;
    tracing::debug!(connection = %handle.id(), "connection closed");
}

/// How the reader ended.
enum Ended {
    /// The client's close frame: `$disconnect` reports its code and reason, 1005 when it had
    /// no code (RFC 6455 7.1.5).
    ClientClosed(Closed),
    /// The TCP connection ended without a close frame: 1006 (RFC 6455 7.1.5).
    Dropped,
    /// The gateway closed it (idle, lifetime, a limit, a management DELETE, shutdown): its
    /// close frame is on the way, and `$disconnect` reports its code.
    ByGateway,
}

async fn read_loop<S>(stream: &mut S, state: &AppState, handle: &Arc<ConnectionHandle>) -> Ended
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
            () = &mut closing => return Ended::ByGateway,
            () = &mut shutdown => {
                handle.close(close_code::GOING_AWAY, "server shutting down");
                return Ended::ByGateway;
            }
            () = &mut lifetime => {
                handle.close(close_code::GOING_AWAY, "connection lifetime exceeded");
                return Ended::ByGateway;
            }
            // API Gateway's idle timeout: 10 minutes ("Idle Connection Timeout", "Quotas for
            // configuring and running a WebSocket in API Gateway"). AWS does not say which
            // traffic counts; messages either way do: a server that posts every few minutes
            // keeps an otherwise silent client connected (Hotsock's keep-alive,
            // https://www.hotsock.io/docs/connections/keep-alive/, "if no messages are sent
            // between the server and client for a 10-minute period"). So a frame from the
            // client, or one written to it, resets the timer here. WebSocket pings from the
            // client count too, because PROTOCOL.md promises it ("a WebSocket ping keeps it
            // open"), although users report that API Gateway ignores protocol-level pings for
            // idleness (andyrichardson/subscriptionless issue 3): on AWS, send the `ping`
            // action.
            () = &mut idle => {
                let now = Instant::now();
                let since_sent = Duration::from_millis(
                    chat_core::clock::now_ms().saturating_sub(handle.last_sent_ms()),
                );
                let last_traffic = last_frame.max(now.checked_sub(since_sent).unwrap_or(now));
                let deadline = last_traffic + settings.idle_timeout;
                if deadline <= now {
                    handle.close(close_code::GOING_AWAY, "idle timeout");
                    return Ended::ByGateway;
                }
                idle.as_mut().reset(deadline);
                continue;
            }
            next = stream.next() => next,
        };
        let message = match next {
            None => return Ended::Dropped,
            Some(Err(e)) => {
                return if close_for_read_error(handle, e) {
                    Ended::ByGateway
                } else {
                    Ended::Dropped
                };
            }
            Some(Ok(message)) => message,
        };
        last_frame = Instant::now();
        handle.touch();
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            metrics::counter!(crate::telemetry::FRAMES_RECEIVED).increment(1);
        }
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
                return Ended::ByGateway;
            }
            // tungstenite answers pings itself; a ping or pong only keeps the connection alive.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(frame) => {
                return Ended::ClientClosed(match frame {
                    Some(frame) => Closed {
                        status_code: frame.code,
                        reason: frame.reason.to_string(),
                    },
                    // AWS's words for it, from its sample `$disconnect` event
                    // (aws_lambda_events' example-apigw-websocket-request-disconnect-route.json).
                    None => Closed {
                        status_code: close_code::NO_STATUS,
                        reason: "Client-side close frame status not set".into(),
                    },
                });
            }
        };
        if frames_at_once == 1 {
            route(state, handle, inbound).await;
            continue;
        }
        let Message::Text(text) = message else {
            continue;
        };
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut closing => return Ended::ByGateway,
            () = &mut shutdown => {
                handle.close(close_code::GOING_AWAY, "server shutting down");
                return Ended::ByGateway;
            }
        };
        // Its own task, as its own invocation: it runs to its end even if the connection
        // closes meanwhile (its reply then goes nowhere), and the server's shutdown waits for it.
        let (task_state, task_handle) = (state.clone(), handle.clone());
        state.connections.spawn(async move {
            route(&task_state, &task_handle, Inbound::Text(text.as_str())).await;
            drop(permit);
        });
    }
}

/// Hands a frame to its route's integration and sends the route response back, as API Gateway
/// does for a two-way route: the response's body, as one text frame, and nothing when it has
/// none; a failed integration gets API Gateway's error frame instead.
async fn route(state: &AppState, handle: &ConnectionHandle, inbound: Inbound<'_>) {
    let request_id = ConnectionId::random();
    let call = state
        .backend
        .message(&handle.facts, request_id.as_str(), inbound);
    let reply = match integration::invoke(state.settings.integration_timeout, call).await {
        Ok(None) => return,
        // API Gateway delivers no message over 128 KB ("WebSocket API message payload size",
        // Amazon API Gateway quotas). What it does with a bigger route response is not
        // documented; the client gets the error frame, so that it does not wait forever and
        // the developer sees it.
        Ok(Some(reply)) if reply.bytes().len() > MAX_FRAME_BYTES => {
            tracing::error!(connection = %handle.id(), request = %request_id, bytes = reply.bytes().len(), "a route response over 128 KB: not delivered");
            Ok(
                integration::internal_server_error(handle.id().as_str(), request_id.as_str())
                    .into(),
            )
        }
        Ok(Some(reply)) => Utf8Bytes::try_from(reply.bytes().clone()).map_err(|e| {
            tracing::error!(error = %e, "a reply is not UTF-8");
        }),
        Err(failure) => {
            tracing::error!(connection = %handle.id(), request = %request_id, ?failure, "the integration failed");
            Ok(
                integration::internal_server_error(handle.id().as_str(), request_id.as_str())
                    .into(),
            )
        }
    };
    if let Ok(text) = reply {
        handle.push(Outbound::Text(text));
    }
}

/// A read error ends the connection; the close code says why, as API Gateway and RFC 6455 do.
/// Returns whether the gateway closes it (with a close frame), rather than the connection
/// being lost.
fn close_for_read_error(handle: &ConnectionHandle, error: AxumError) -> bool {
    use tungstenite::error::{CapacityError, Error, ProtocolError};
    match error.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            handle.close(close_code::TOO_BIG, "frame or message too big")
        }
        Ok(Error::Utf8(_)) => {
            handle.close(close_code::INVALID_PAYLOAD, "invalid UTF-8 in a text frame")
        }
        // The TCP connection ended without a close frame.
        Ok(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return false,
        Ok(Error::Protocol(e)) => {
            tracing::debug!(connection = %handle.id(), error = %e, "protocol error");
            handle.close(close_code::PROTOCOL, "protocol error")
        }
        Ok(e) => {
            tracing::debug!(connection = %handle.id(), error = %e, "read error");
            return false;
        }
        Err(e) => {
            tracing::debug!(connection = %handle.id(), error = %e, "read error");
            return false;
        }
    }
    true
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
            let mut frames = 1;
            for _ in 1..WRITE_BATCH {
                match queue.try_recv() {
                    Some(frame) => sink.feed(to_message(frame)).await?,
                    None => break,
                }
                frames += 1;
            }
            sink.flush().await.map(|()| frames)
        };
        // A client that stops reading blocks the write; closing must not wait for it, and a
        // write that makes no headway for `write_timeout` is a slow consumer's.
        let written = tokio::select! {
            biased;
            () = &mut closed => break,
            written = timeout(write_timeout, write) => written,
        };
        match written {
            Ok(Ok(frames)) => {
                handle.sent();
                metrics::counter!(crate::telemetry::FRAMES_SENT).increment(frames);
            }
            Ok(Err(_)) => {
                // The socket is broken: make the reader stop too.
                handle.close(close_code::GOING_AWAY, "");
                return;
            }
            Err(_elapsed) => {
                tracing::warn!(connection = %handle.id(), "slow consumer: socket blocked, closing");
                metrics::counter!(crate::telemetry::SLOW_CONSUMERS).increment(1);
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
    use crate::gateway::{Accepted, Backend, Connection, Handshake, IntegrationError, Refusal};

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
        async fn connect(&self, _: &Connection, _: &Handshake) -> Result<Accepted, Refusal> {
            Ok(Accepted::default())
        }
        async fn message(
            &self,
            _: &Connection,
            _: &str,
            inbound: Inbound<'_>,
        ) -> Result<Option<Payload>, IntegrationError> {
            match inbound {
                Inbound::Text("panic") => panic!("a bug in the integration"),
                Inbound::Text("fail") => Err(IntegrationError("a function error".into())),
                Inbound::Text("hang") => std::future::pending().await,
                Inbound::Text("silent") => Ok(None),
                Inbound::Text(text) => Ok(Some(Payload::from_json(format!("echo:{text}")))),
                Inbound::Binary => Ok(None),
            }
        }
        async fn api(&self, _: &crate::gateway::ApiCall) -> chat_core::api::ApiResponse {
            chat_core::api::ApiError::not_found("no server API here").response()
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
        start_with(|_| {})
    }

    fn start_with(adjust: impl FnOnce(&mut Settings)) -> Harness {
        let dir = std::env::temp_dir();
        let mut settings = Settings::for_tests(dir);
        adjust(&mut settings);
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

    /// API Gateway's frame for a failed integration, as JSON.
    fn error_frame(message: Message) -> Value {
        let Message::Text(text) = message else {
            panic!("expected a text frame, got {message:?}");
        };
        assert!(
            text.starts_with(r#"{"message": "Internal server error", "connectionId":""#),
            "{text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn a_failed_integration_gets_api_gateways_error_frame_and_the_connection_goes_on() {
        let mut h = start_with(|s| s.integration_timeout = Duration::from_millis(200));
        let mut request_ids = Vec::new();
        for text in ["panic", "fail", "hang"] {
            h.client_out.send(Message::Text(text.into())).unwrap();
            let frame = error_frame(next(&mut h).await);
            assert_eq!(frame["connectionId"], h.handle.id().as_str(), "{text}");
            let request_id = frame["requestId"].as_str().unwrap().to_owned();
            assert_eq!(request_id.len(), 16, "API Gateway's form: {request_id}");
            request_ids.push(request_id);
        }
        request_ids.dedup();
        assert_eq!(request_ids.len(), 3, "one request id per request");
        h.client_out.send(Message::Text("after".into())).unwrap();
        assert_eq!(next(&mut h).await, Message::Text("echo:after".into()));
        assert!(!h.handle.is_closing());
    }

    #[tokio::test]
    async fn a_route_response_without_a_body_sends_nothing() {
        let mut h = start();
        h.client_out.send(Message::Text("silent".into())).unwrap();
        h.client_out.send(Message::Text("b".into())).unwrap();
        assert_eq!(next(&mut h).await, Message::Text("echo:b".into()));
    }

    async fn disconnect_after(h: &mut Harness, end: impl FnOnce(&mut Harness)) -> Closed {
        end(h);
        tokio::time::timeout(Duration::from_secs(5), &mut h.task)
            .await
            .expect("the connection ends")
            .unwrap();
        let disconnects = h.backend.disconnects.lock().unwrap();
        assert_eq!(disconnects.len(), 1);
        disconnects[0].1.clone()
    }

    #[tokio::test]
    async fn disconnect_reports_the_clients_close_code_and_reason() {
        let mut h = start();
        let closed = disconnect_after(&mut h, |h| {
            let frame = CloseFrame {
                code: 4001,
                reason: "bye now".into(),
            };
            h.client_out.send(Message::Close(Some(frame))).unwrap();
        })
        .await;
        assert_eq!(
            closed,
            Closed {
                status_code: 4001,
                reason: "bye now".into()
            }
        );
    }

    #[tokio::test]
    async fn a_close_frame_without_a_code_is_1005_and_a_lost_connection_1006() {
        let mut h = start();
        let closed = disconnect_after(&mut h, |h| {
            h.client_out.send(Message::Close(None)).unwrap();
        })
        .await;
        assert_eq!(
            closed,
            Closed {
                status_code: 1005,
                reason: "Client-side close frame status not set".into()
            }
        );

        let mut h = start();
        let closed = disconnect_after(&mut h, |h| {
            // The client's end goes away without a close frame.
            let (dead, _) = mpsc::unbounded_channel();
            h.client_out = dead;
        })
        .await;
        assert_eq!(closed.status_code, 1006);
    }
}
