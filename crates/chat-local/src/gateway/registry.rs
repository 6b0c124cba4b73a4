//! The live connections of this gateway, each with its send queue, and the [`Outbox`] through
//! which a back end in the same process posts to them (the in-process `@connections`).
//!
//! Each connection has a bounded queue drained by its own writer task. Delivery never waits:
//! a frame is pushed without blocking, and a connection whose queue is full is a slow consumer,
//! closed at once (1008), so that one client that stops reading can neither grow the server's
//! memory nor stall the others.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use chat_core::clock::now_ms;
use chat_core::domain::ConnectionId;
use futures_util::task::AtomicWaker;

use super::backend::Connection;

/// Close codes the gateway uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Never sent: the client's close frame had no code (RFC 6455 7.1.5).
    pub const NO_STATUS: u16 = 1005;
    /// Never sent: the connection ended without a close frame (RFC 6455 7.1.5).
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// What [`ConnectionHandle::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// The queue is full; the frame was dropped and the connection left open.
    Full,
    /// The connection is closing; the frame was dropped.
    Closing,
}

/// A frame waiting in a connection's queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// One live connection, shared by its reader, its writer, the outbox and the management API.
#[derive(Debug)]
pub struct ConnectionHandle {
    /// What every call to the back end about this connection carries (its id among them).
    pub facts: Connection,
    /// Frames waiting for the writer. A plain deque behind a lock: it allocates nothing while
    /// empty (an idle connection costs no queue memory), and a push is one uncontended lock.
    queue: Mutex<VecDeque<Outbound>>,
    queue_len: usize,
    /// The writer is gone: frames pushed now are dropped.
    writer_gone: AtomicBool,
    /// Set once, when the connection must close (from inside or out): the close frame the writer
    /// sends. Its being set is the one record of "closing"; reading it is one atomic load, where
    /// a `CancellationToken` would take a lock on every poll, once per frame written.
    close_frame: OnceLock<(u16, &'static str)>,
    /// Wakes the writer task: a frame was queued, or the connection must close.
    writer_waker: AtomicWaker,
    /// Wakes the reader task: the connection must close.
    reader_waker: AtomicWaker,
    /// `$connect` has returned and accepted it. Until then API Gateway answers every post to it
    /// with 410 and queues nothing ("A message was posted to the WebSocket API before the
    /// connection was established": AWS Knowledge Center, "How do I troubleshoot 410
    /// GoneException errors with API Gateway WebSocket APIs?"), and so does this gateway.
    connected: AtomicBool,
    last_active_ms: AtomicU64,
    /// When the writer last sent the client a frame: traffic that resets the idle timer too.
    last_sent_ms: AtomicU64,
}

impl ConnectionHandle {
    /// Queues a frame. Returns false when it was dropped: the connection is closing, or its
    /// queue was full, which closes it as a slow consumer.
    pub fn push(&self, frame: Outbound) -> bool {
        match self.offer(frame) {
            Offered::Queued => true,
            Offered::Closing => false,
            Offered::Full => {
                tracing::warn!(connection = %self.facts.id, "slow consumer: send queue full, closing");
                metrics::counter!(crate::telemetry::SLOW_CONSUMERS).increment(1);
                self.close(close_code::POLICY, "slow consumer: send queue full");
                false
            }
        }
    }

    /// Queues a frame if there is room, and leaves the connection alone when there is not.
    pub fn offer(&self, frame: Outbound) -> Offered {
        if self.is_closing() {
            return Offered::Closing;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if self.writer_gone.load(Ordering::Acquire) {
            return Offered::Closing;
        }
        if queue.len() >= self.queue_len {
            return Offered::Full;
        }
        queue.push_back(frame);
        drop(queue);
        self.writer_waker.wake();
        Offered::Queued
    }

    fn pop(&self) -> Option<Outbound> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let frame = queue.pop_front();
        // Give back what a burst made the deque grow to.
        if queue.is_empty() && queue.capacity() > 64 {
            queue.shrink_to(8);
        }
        frame
    }

    /// Asks for the connection to close with this code; the first request wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.close_frame.set((code, reason));
        self.writer_waker.wake();
        self.reader_waker.wake();
    }

    pub fn is_closing(&self) -> bool {
        self.close_frame.get().is_some()
    }

    /// `$connect` accepted the connection: posts reach it from now on.
    pub fn mark_connected(&self) {
        self.connected.store(true, Ordering::Release);
    }

    /// Whether `$connect` has accepted it: until then, posts to it are 410.
    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether posts reach it: `$connect` has accepted it and it is not closing.
    pub fn is_reachable(&self) -> bool {
        self.is_connected() && !self.is_closing()
    }

    pub fn id(&self) -> &ConnectionId {
        &self.facts.id
    }

    /// Resolves once the connection must close: the writer's wait.
    pub async fn closed_for_writer(&self) {
        self.closed(&self.writer_waker).await
    }

    /// Resolves once the connection must close: the reader's wait.
    pub async fn closed_for_reader(&self) {
        self.closed(&self.reader_waker).await
    }

    /// Lock-free; one task may wait on each waker at a time.
    async fn closed(&self, waker: &AtomicWaker) {
        poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(());
            }
            waker.register(cx.waker());
            // Closed between the check and the registration: `close` may have woken nobody.
            if self.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The close frame asked for, if any.
    pub fn close_frame(&self) -> Option<(u16, &'static str)> {
        self.close_frame.get().copied()
    }

    /// Records a frame from the client (for `lastActiveAt`).
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// Records frames written to the client.
    pub fn sent(&self) {
        self.last_sent_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_sent_ms(&self) -> u64 {
        self.last_sent_ms.load(Ordering::Relaxed)
    }
}

/// The writer's end of a connection's queue.
pub struct Frames {
    handle: Arc<ConnectionHandle>,
}

impl Frames {
    /// The next frame; waits for one. `None` once the connection is closing.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            if let Some(frame) = self.handle.pop() {
                return Poll::Ready(Some(frame));
            }
            if self.handle.is_closing() {
                return Poll::Ready(None);
            }
            self.handle.writer_waker.register(cx.waker());
            // A push or a close between the checks and the registration may have woken nobody.
            match self.handle.pop() {
                Some(frame) => Poll::Ready(Some(frame)),
                None if self.handle.is_closing() => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.handle.pop()
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let handle = &self.handle;
        handle.writer_gone.store(true, Ordering::Release);
        handle
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The connection limit is reached.
#[derive(Debug)]
pub struct Full;

/// Every live connection of this gateway.
pub struct Registry {
    connections: Mutex<HashMap<ConnectionId, Arc<ConnectionHandle>>>,
    max_connections: usize,
    queue_len: usize,
}

impl Registry {
    pub fn new(max_connections: usize, queue_len: usize) -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            max_connections,
            queue_len: queue_len.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ConnectionId, Arc<ConnectionHandle>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection (before `$connect` runs, so that nothing sent to it is lost), unless
    /// the server is full.
    pub fn register(&self, facts: Connection) -> Result<(Arc<ConnectionHandle>, Frames), Full> {
        let mut connections = self.lock();
        if connections.len() >= self.max_connections {
            return Err(Full);
        }
        let id = facts.id.clone();
        let handle = Arc::new(ConnectionHandle {
            last_active_ms: AtomicU64::new(facts.connected_at_ms),
            last_sent_ms: AtomicU64::new(facts.connected_at_ms),
            facts,
            queue: Mutex::new(VecDeque::new()),
            queue_len: self.queue_len,
            writer_gone: AtomicBool::new(false),
            close_frame: OnceLock::new(),
            writer_waker: AtomicWaker::new(),
            reader_waker: AtomicWaker::new(),
            connected: AtomicBool::new(false),
        });
        connections.insert(id, handle.clone());
        metrics::gauge!(crate::telemetry::CONNECTIONS).increment(1.0);
        let frames = Frames {
            handle: handle.clone(),
        };
        Ok((handle, frames))
    }

    pub fn get(&self, id: &ConnectionId) -> Option<Arc<ConnectionHandle>> {
        self.lock().get(id).cloned()
    }

    pub fn remove(&self, id: &ConnectionId) {
        if self.lock().remove(id).is_some() {
            metrics::gauge!(crate::telemetry::CONNECTIONS).decrement(1.0);
        }
    }

    pub fn ids(&self) -> Vec<ConnectionId> {
        self.lock().keys().cloned().collect()
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for handle in self.lock().values() {
            handle.close(code, reason);
        }
    }
}

/// What a post to a connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Queued for the connection (or dropped because it is closing: its `$disconnect` is on
    /// its way, and will tell its rooms).
    Queued,
    /// No such connection (API Gateway's `410 GoneException`).
    Gone,
}

/// The in-process `@connections`: how a back end in this process delivers to the gateway's
/// connections, without reading anything else of the gateway.
#[derive(Clone)]
pub struct Outbox {
    registry: Arc<Registry>,
}

impl Outbox {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Posts one text frame to one connection; a connection whose `$connect` has not returned is
    /// [`Posted::Gone`], as on API Gateway.
    pub fn post(&self, to: &ConnectionId, text: Utf8Bytes) -> Posted {
        match self.registry.get(to) {
            Some(handle) if handle.is_connected() => {
                handle.push(Outbound::Text(text));
                Posted::Queued
            }
            Some(_) | None => Posted::Gone,
        }
    }

    /// Closes a connection with `code` and `reason` (the server API's close of a user's
    /// connections); one whose `$connect` has not returned is [`Posted::Gone`], as for a post.
    pub fn close(&self, id: &ConnectionId, code: u16, reason: &'static str) -> Posted {
        match self.registry.get(id) {
            Some(handle) if handle.is_connected() => {
                handle.close(code, reason);
                Posted::Queued
            }
            Some(_) | None => Posted::Gone,
        }
    }

    /// Posts one text frame to many connections, under one lock; each gets a
    /// reference-counted clone of the same bytes. Returns those that are gone.
    pub fn post_many(&self, to: &[ConnectionId], text: &Utf8Bytes) -> Vec<ConnectionId> {
        let connections = self.registry.lock();
        let mut gone = Vec::new();
        for id in to {
            match connections.get(id) {
                Some(handle) if handle.is_connected() => {
                    handle.push(Outbound::Text(text.clone()));
                }
                Some(_) | None => gone.push(id.clone()),
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn facts(id: &str) -> Connection {
        Connection {
            id: ConnectionId::new(id),
            connected_at_ms: now_ms(),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: None,
            authorizer: None,
        }
    }

    fn text(s: &'static str) -> Outbound {
        Outbound::Text(Utf8Bytes::from_static(s))
    }

    fn as_text(frame: Outbound) -> String {
        match frame {
            Outbound::Text(text) => text.to_string(),
            Outbound::Binary(_) => panic!("a binary frame"),
        }
    }

    #[tokio::test]
    async fn frames_come_out_in_the_order_pushed_and_a_waiting_writer_is_woken() {
        let registry = Registry::new(10, 8);
        let (handle, mut frames) = registry.register(facts("a")).unwrap();
        let writer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = frames.recv().await {
                got.push(as_text(frame));
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await; // the writer waits, empty
        assert!(handle.push(text("1")));
        assert!(handle.push(text("2")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(handle.push(text("3")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle.close(close_code::NORMAL, "");
        let got = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("close wakes the writer")
            .unwrap();
        assert_eq!(got, ["1", "2", "3"]);
    }

    #[test]
    fn a_full_queue_closes_the_connection_as_a_slow_consumer() {
        let registry = Registry::new(10, 2);
        let (handle, mut frames) = registry.register(facts("a")).unwrap();
        assert!(handle.push(text("1")));
        assert!(handle.push(text("2")));
        assert!(!handle.push(text("3")), "the third does not fit");
        assert!(handle.is_closing());
        assert_eq!(
            handle.close_frame(),
            Some((close_code::POLICY, "slow consumer: send queue full"))
        );
        assert!(!handle.push(text("4")), "nothing is queued once closing");
        // What was queued before can still go out, then the writer ends.
        assert_eq!(as_text(frames.try_recv().unwrap()), "1");
    }

    #[test]
    fn an_offer_to_a_full_queue_is_refused_and_the_connection_stays_open() {
        let registry = Registry::new(10, 1);
        let (handle, mut frames) = registry.register(facts("a")).unwrap();
        assert_eq!(handle.offer(text("1")), Offered::Queued);
        assert_eq!(handle.offer(text("2")), Offered::Full);
        assert!(!handle.is_closing());
        assert_eq!(as_text(frames.try_recv().unwrap()), "1");
        assert_eq!(handle.offer(text("3")), Offered::Queued);
        handle.close(close_code::NORMAL, "");
        assert_eq!(handle.offer(text("4")), Offered::Closing);
    }

    #[test]
    fn the_first_close_wins() {
        let registry = Registry::new(10, 2);
        let (handle, _frames) = registry.register(facts("a")).unwrap();
        handle.close(close_code::TOO_BIG, "big");
        handle.close(close_code::NORMAL, "");
        assert_eq!(handle.close_frame(), Some((close_code::TOO_BIG, "big")));
    }

    #[test]
    fn frames_pushed_after_the_writer_is_gone_are_dropped_and_freed() {
        let registry = Registry::new(10, 8);
        let (handle, frames) = registry.register(facts("a")).unwrap();
        assert!(handle.push(text("kept until the writer goes")));
        drop(frames);
        assert!(!handle.push(text("dropped")));
        assert!(handle.queue.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn closing_wakes_the_reader() {
        let registry = Registry::new(10, 8);
        let (handle, _frames) = registry.register(facts("a")).unwrap();
        let waiting = handle.clone();
        let reader = tokio::spawn(async move { waiting.closed_for_reader().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished());
        handle.close(close_code::GOING_AWAY, "bye");
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn the_registry_refuses_connections_past_its_limit() {
        let registry = Registry::new(1, 8);
        let _a = registry.register(facts("a")).unwrap();
        assert!(registry.register(facts("b")).is_err());
        registry.remove(&ConnectionId::new("a"));
        assert!(registry.register(facts("b")).is_ok());
    }

    #[test]
    fn the_outbox_posts_to_live_connections_and_reports_the_gone() {
        let registry = Arc::new(Registry::new(10, 8));
        let (a, mut a_frames) = registry.register(facts("a")).unwrap();
        let outbox = Outbox::new(registry.clone());
        let hello = Utf8Bytes::from_static("hello");
        // Until `$connect` has returned, posts are 410 and nothing is queued, as on API Gateway.
        assert_eq!(
            outbox.post(&ConnectionId::new("a"), hello.clone()),
            Posted::Gone
        );
        assert_eq!(
            outbox.post_many(&[ConnectionId::new("a")], &hello),
            [ConnectionId::new("a")]
        );
        assert!(a_frames.try_recv().is_none());
        a.mark_connected();
        assert_eq!(
            outbox.post(&ConnectionId::new("a"), hello.clone()),
            Posted::Queued
        );
        assert_eq!(
            outbox.post(&ConnectionId::new("z"), hello.clone()),
            Posted::Gone
        );
        let gone = outbox.post_many(&[ConnectionId::new("a"), ConnectionId::new("z")], &hello);
        assert_eq!(gone, [ConnectionId::new("z")]);
        assert_eq!(as_text(a_frames.try_recv().unwrap()), "hello");
        assert_eq!(as_text(a_frames.try_recv().unwrap()), "hello");
        assert!(a_frames.try_recv().is_none());
    }
}
