//! The live connections of this gateway, and the in-process [`Notifier`] over them.
//!
//! Each connection has a bounded queue drained by its own writer task. Delivery never waits:
//! a frame is pushed without blocking, and a connection whose queue is full is a slow consumer,
//! closed at once (1008), so that one client that stops reading can neither grow the server's
//! memory nor stall the others.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use chat_core::domain::ConnectionId;
use chat_core::ports::{Delivery, Notifier, NotifyError};
use chat_core::protocol::Payload;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

/// Close codes the gateway uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// A frame waiting in a connection's queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Utf8Bytes),
    Binary(Bytes),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One live connection, shared by its reader, its writer, the notifier and the management API.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    /// Frames waiting for the writer. A plain deque behind a lock: it allocates nothing while
    /// empty (an idle connection costs no queue memory), and a push is one uncontended lock.
    queue: Mutex<VecDeque<Outbound>>,
    queue_len: usize,
    /// The writer is gone: frames pushed now are dropped.
    writer_gone: AtomicBool,
    /// Cancelled when the connection must close, from inside or out; the writer then sends the
    /// close frame in `close_frame` and the reader stops.
    closing: CancellationToken,
    /// The same fact, for the hot paths: reading a `CancellationToken` takes a lock, and
    /// waiting on one takes a lock on every poll, once per frame written.
    closed: AtomicBool,
    /// Wakes the writer task: a frame was queued, or the connection must close.
    writer_waker: AtomicWaker,
    close_frame: OnceLock<(u16, &'static str)>,
    pub connected_at_ms: u64,
    last_active_ms: AtomicU64,
    pub source_ip: IpAddr,
    pub user_agent: Option<String>,
}

impl ConnectionHandle {
    /// Queues a frame. Returns false when it was dropped: the connection is closing, or its
    /// queue was full, which closes it as a slow consumer.
    pub fn push(&self, frame: Outbound) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if self.writer_gone.load(Ordering::Acquire) {
            return false;
        }
        if queue.len() >= self.queue_len {
            drop(queue);
            tracing::warn!(connection = %self.id, "slow consumer: send queue full, closing");
            self.close(close_code::POLICY, "slow consumer: send queue full");
            return false;
        }
        queue.push_back(frame);
        drop(queue);
        self.writer_waker.wake();
        true
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
        self.closed.store(true, Ordering::Release);
        self.writer_waker.wake();
        self.closing.cancel();
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection must close: the writer's wait, lock-free (a
    /// `CancellationToken` locks a mutex on every poll). One task may wait at a time.
    pub async fn closed_for_writer(&self) {
        poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(());
            }
            self.writer_waker.register(cx.waker());
            // Closed between the check and the registration: `close` may have woken nobody.
            if self.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
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
    pub fn register(
        &self,
        id: ConnectionId,
        source_ip: IpAddr,
        user_agent: Option<String>,
    ) -> Result<(Arc<ConnectionHandle>, Frames), Full> {
        let mut connections = self.lock();
        if connections.len() >= self.max_connections {
            return Err(Full);
        }
        let now = now_ms();
        let handle = Arc::new(ConnectionHandle {
            id: id.clone(),
            queue: Mutex::new(VecDeque::new()),
            queue_len: self.queue_len,
            writer_gone: AtomicBool::new(false),
            closing: CancellationToken::new(),
            closed: AtomicBool::new(false),
            writer_waker: AtomicWaker::new(),
            close_frame: OnceLock::new(),
            connected_at_ms: now,
            last_active_ms: AtomicU64::new(now),
            source_ip,
            user_agent,
        });
        connections.insert(id, handle.clone());
        let frames = Frames {
            handle: handle.clone(),
        };
        Ok((handle, frames))
    }

    pub fn get(&self, id: &ConnectionId) -> Option<Arc<ConnectionHandle>> {
        self.lock().get(id).cloned()
    }

    pub fn remove(&self, id: &ConnectionId) {
        self.lock().remove(id);
    }

    pub fn ids(&self) -> Vec<ConnectionId> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for handle in self.lock().values() {
            handle.close(code, reason);
        }
    }
}

/// Delivers the chat core's frames straight into the gateway's connection queues.
pub struct LocalNotifier {
    registry: Arc<Registry>,
}

impl LocalNotifier {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

fn to_text(payload: &Payload) -> Result<Utf8Bytes, NotifyError> {
    Utf8Bytes::try_from(payload.bytes().clone()).map_err(|e| NotifyError(e.to_string()))
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError> {
        let Some(handle) = self.registry.get(to) else {
            return Ok(Delivery::Gone);
        };
        // A frame dropped because the connection is closing is not "gone": its own
        // `$disconnect` is on its way and will tell its rooms.
        handle.push(Outbound::Text(to_text(payload)?));
        Ok(Delivery::Delivered)
    }

    /// One conversion and one lock for the whole room; each recipient gets a reference-counted
    /// clone of the same bytes.
    async fn broadcast(&self, to: &[ConnectionId], payload: &Payload) -> Vec<ConnectionId> {
        let text = match to_text(payload) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "a payload is not UTF-8");
                return Vec::new();
            }
        };
        let connections = self.registry.lock();
        let mut gone = Vec::new();
        for id in to {
            match connections.get(id) {
                Some(handle) => {
                    handle.push(Outbound::Text(text.clone()));
                }
                None => gone.push(id.clone()),
            }
        }
        gone
    }
}
