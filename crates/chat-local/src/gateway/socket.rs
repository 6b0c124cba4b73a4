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

use super::AppState;
use super::registry::{ConnectionHandle, Frames, Outbound, close_code};

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
    state.backend.disconnect(&handle.id).await;
    state.registry.remove(&handle.id);
    let _ = writer.await;
    tracing::debug!(connection = %handle.id, "connection closed");
}

async fn read_loop<S>(mut stream: S, state: &AppState, handle: &ConnectionHandle)
where
    S: Stream<Item = Result<Message, AxumError>> + Unpin,
{
    let settings = &state.settings;
    // Created once and polled again on each frame: a timer or a cancellation future made per
    // frame costs a registration and a removal each time.
    let closing = handle.closing().cancelled();
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
            Message::Binary(_) => Inbound::Binary,
            // tungstenite answers pings itself; a ping or pong only keeps the connection alive.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return,
        };
        if let Some(reply) = state.backend.message(&handle.id, inbound).await {
            match axum::extract::ws::Utf8Bytes::try_from(reply.bytes().clone()) {
                Ok(text) => {
                    handle.push(Outbound::Text(text));
                }
                Err(e) => tracing::error!(error = %e, "a reply is not UTF-8"),
            }
        }
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
            tracing::debug!(connection = %handle.id, error = %e, "protocol error");
            handle.close(1002, "protocol error")
        }
        Ok(e) => tracing::debug!(connection = %handle.id, error = %e, "read error"),
        Err(e) => tracing::debug!(connection = %handle.id, error = %e, "read error"),
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
                tracing::warn!(connection = %handle.id, "slow consumer: socket blocked, closing");
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
