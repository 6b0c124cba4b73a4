//! In-memory adapters of the ports.
//!
//! [`MemoryConnections`] is the local binary's connection store: connections live as long as the
//! process, so memory is their natural home there. [`MemoryMessages`] and [`RecordingNotifier`]
//! are fakes for tests of the core.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use indexmap::IndexMap;

use crate::clock::now_ms;
use crate::domain::{
    ClientMsgId, ConnectionId, Cursor, Member, NewMessage, Page, RoomHead, RoomName, StoredMessage,
};
use crate::ports::{
    Appended, ConnectionRecord, ConnectionStore, Delivery, JoinOutcome, MessageStore, Notifier,
    NotifyError, StoreResult,
};
use crate::protocol::Payload;
use crate::rate_limit::{RateLimit, TokenBucket};

/// A poisoned lock only means another thread panicked while holding it; the maps stay usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct ConnectionEntry {
    member: Member,
    connected_at_ms: u64,
    rooms: Vec<RoomName>,
    allowance: Option<TokenBucket>,
}

#[derive(Default)]
struct ConnectionsState {
    connections: HashMap<ConnectionId, ConnectionEntry>,
    /// Room → its connections, in the order they joined (so `members` lists the oldest first).
    rooms: HashMap<RoomName, IndexMap<ConnectionId, Member>>,
}

/// Connections and room membership in memory.
#[derive(Default)]
pub struct MemoryConnections {
    // One lock for both maps: every operation is a few map updates that must agree with each
    // other, and none of them awaits while holding it.
    state: Mutex<ConnectionsState>,
}

impl MemoryConnections {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        lock(&self.state).connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ConnectionStore for MemoryConnections {
    async fn insert(
        &self,
        id: &ConnectionId,
        member: &Member,
        connected_at_ms: u64,
    ) -> StoreResult<()> {
        lock(&self.state).connections.insert(
            id.clone(),
            ConnectionEntry {
                member: member.clone(),
                connected_at_ms,
                rooms: Vec::new(),
                allowance: None,
            },
        );
        Ok(())
    }

    async fn get(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
        Ok(lock(&self.state)
            .connections
            .get(id)
            .map(|entry| ConnectionRecord {
                id: id.clone(),
                member: entry.member.clone(),
                connected_at_ms: entry.connected_at_ms,
                rooms: entry.rooms.clone(),
            }))
    }

    async fn remove(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
        let mut state = lock(&self.state);
        let Some(entry) = state.connections.remove(id) else {
            return Ok(None);
        };
        for room in &entry.rooms {
            if let Some(members) = state.rooms.get_mut(room) {
                members.shift_remove(id);
                if members.is_empty() {
                    state.rooms.remove(room);
                }
            }
        }
        Ok(Some(ConnectionRecord {
            id: id.clone(),
            member: entry.member,
            connected_at_ms: entry.connected_at_ms,
            rooms: entry.rooms,
        }))
    }

    async fn join(
        &self,
        id: &ConnectionId,
        room: &RoomName,
        max_rooms: usize,
    ) -> StoreResult<JoinOutcome> {
        let mut state = lock(&self.state);
        let Some(entry) = state.connections.get_mut(id) else {
            return Ok(JoinOutcome::NoConnection);
        };
        if entry.rooms.contains(room) {
            return Ok(JoinOutcome::AlreadyMember);
        }
        if entry.rooms.len() >= max_rooms {
            return Ok(JoinOutcome::LimitExceeded);
        }
        entry.rooms.push(room.clone());
        let member = entry.member.clone();
        state
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(id.clone(), member);
        Ok(JoinOutcome::Joined)
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> StoreResult<bool> {
        let mut state = lock(&self.state);
        let Some(entry) = state.connections.get_mut(id) else {
            return Ok(false);
        };
        let Some(position) = entry.rooms.iter().position(|r| r == room) else {
            return Ok(false);
        };
        entry.rooms.remove(position);
        if let Some(members) = state.rooms.get_mut(room) {
            members.shift_remove(id);
            if members.is_empty() {
                state.rooms.remove(room);
            }
        }
        Ok(true)
    }

    async fn room_connections(&self, room: &RoomName) -> StoreResult<Vec<ConnectionId>> {
        Ok(lock(&self.state)
            .rooms
            .get(room)
            .map(|members| members.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn room_members(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Member>> {
        let state = lock(&self.state);
        let Some(members) = state.rooms.get(room) else {
            return Ok(Vec::new());
        };
        // The same person on two tabs is one member.
        let mut seen = HashSet::new();
        Ok(members
            .values()
            .filter(|member| seen.insert(*member))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn take_send_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool> {
        let mut state = lock(&self.state);
        let Some(entry) = state.connections.get_mut(id) else {
            return Ok(false);
        };
        let bucket = entry
            .allowance
            .get_or_insert_with(|| TokenBucket::full(limit, now_ms));
        Ok(bucket.try_take(limit, now_ms))
    }
}

#[derive(Default)]
struct MessagesState {
    /// Room → messages in `seq` order.
    rooms: HashMap<RoomName, Vec<StoredMessage>>,
    by_client_msg_id: HashMap<(RoomName, String, ClientMsgId), StoredMessage>,
}

/// Messages in memory: a fake of the durable stores, for tests.
#[derive(Default)]
pub struct MemoryMessages {
    state: Mutex<MessagesState>,
}

impl MemoryMessages {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One page out of a room's messages in `seq` order (which is also id order); shared by the
/// fakes and usable by any store that holds a room in memory.
pub fn page_of(messages: &[StoredMessage], cursor: Cursor, limit: usize) -> Page {
    let forward = |start: usize| (start, (start + limit).min(messages.len()));
    let (start, end) = match cursor {
        Cursor::Latest => (messages.len().saturating_sub(limit), messages.len()),
        Cursor::Before(before) => {
            let end = messages.partition_point(|m| m.id < before);
            (end.saturating_sub(limit), end)
        }
        Cursor::After(after) => forward(messages.partition_point(|m| m.id <= after)),
        Cursor::AfterSeq(seq) => forward(messages.partition_point(|m| m.seq <= seq)),
    };
    let has_more = match cursor {
        Cursor::Latest | Cursor::Before(_) => start > 0,
        Cursor::After(_) | Cursor::AfterSeq(_) => end < messages.len(),
    };
    Page {
        messages: messages[start..end].to_vec(),
        has_more,
    }
}

#[async_trait]
impl MessageStore for MemoryMessages {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let mut state = lock(&self.state);
        let key = message.client_msg_id.clone().map(|client_msg_id| {
            (
                message.room.clone(),
                message.sender.sender_key(),
                client_msg_id,
            )
        });
        if let Some(earlier) = key.as_ref().and_then(|k| state.by_client_msg_id.get(k)) {
            return Ok(Appended::Duplicate(earlier.clone()));
        }
        let room = state.rooms.entry(message.room.clone()).or_default();
        let head = room.last().map_or(RoomHead::default(), |last| RoomHead {
            seq: last.seq,
            last_id: Some(last.id),
        });
        let stored = StoredMessage::stamp(message, head, now_ms());
        room.push(stored.clone());
        if let Some(key) = key {
            state.by_client_msg_id.insert(key, stored.clone());
        }
        Ok(Appended::New(stored))
    }

    async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64> {
        let state = lock(&self.state);
        Ok(state
            .rooms
            .get(room)
            .and_then(|messages| messages.last())
            .map_or(0, |last| last.seq))
    }

    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>> {
        let key = (room.clone(), sender_key.to_owned(), client_msg_id.clone());
        Ok(lock(&self.state).by_client_msg_id.get(&key).cloned())
    }

    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
        let state = lock(&self.state);
        let messages = state.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        Ok(page_of(messages, cursor, limit))
    }
}

/// A notifier that records what it delivers; connections in `gone` answer [`Delivery::Gone`].
#[derive(Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<(ConnectionId, String)>>,
    gone: Mutex<HashSet<ConnectionId>>,
}

impl RecordingNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mark_gone(&self, id: &ConnectionId) {
        lock(&self.gone).insert(id.clone());
    }

    /// Takes the frames delivered so far, as JSON text, in delivery order.
    pub fn take(&self) -> Vec<(ConnectionId, String)> {
        std::mem::take(&mut *lock(&self.sent))
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError> {
        if lock(&self.gone).contains(to) {
            return Ok(Delivery::Gone);
        }
        lock(&self.sent).push((to.clone(), payload.to_text()));
        Ok(Delivery::Delivered)
    }
}
