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
    AccessChange, Change, ClientMsgId, ConnectionId, Cursor, LoggedKind, Member, MessageChange,
    MessageId, NewMessage, Page, ReadState, RoomHead, RoomName, StoredMessage, UserAccess,
};
use crate::ports::{
    Appended, Changed, ConnectionRecord, ConnectionStore, Delivery, DirectUsers, JoinOutcome,
    MessageStore, Notifier, NotifyError, StoreResult,
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
    grants: Vec<String>,
    allowance: Option<TokenBucket>,
    reaction_allowance: Option<TokenBucket>,
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
        grants: &[String],
        connected_at_ms: u64,
    ) -> StoreResult<()> {
        lock(&self.state).connections.insert(
            id.clone(),
            ConnectionEntry {
                member: member.clone(),
                connected_at_ms,
                rooms: Vec::new(),
                grants: grants.to_vec(),
                allowance: None,
                reaction_allowance: None,
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
                grants: entry.grants.clone(),
                allowance: entry.allowance,
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
            grants: entry.grants,
            allowance: entry.allowance,
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

    async fn user_connections(
        &self,
        room: &RoomName,
        user_id: &str,
    ) -> StoreResult<Vec<ConnectionId>> {
        Ok(lock(&self.state)
            .rooms
            .get(room)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, member)| member.user_id.as_deref() == Some(user_id))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
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
        Ok(self.take(id, |entry| &mut entry.allowance, limit, now_ms))
    }

    async fn take_reaction_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool> {
        Ok(self.take(id, |entry| &mut entry.reaction_allowance, limit, now_ms))
    }
}

impl MemoryConnections {
    /// Takes a token of the connection's bucket that `which` names (full when first used).
    fn take(
        &self,
        id: &ConnectionId,
        which: fn(&mut ConnectionEntry) -> &mut Option<TokenBucket>,
        limit: RateLimit,
        now_ms: u64,
    ) -> bool {
        let mut state = lock(&self.state);
        let Some(entry) = state.connections.get_mut(id) else {
            return false;
        };
        which(entry)
            .get_or_insert_with(|| TokenBucket::full(limit, now_ms))
            .try_take(limit, now_ms)
    }
}

#[derive(Default)]
struct MessagesState {
    /// Room → messages in `seq` order, as they are now.
    rooms: HashMap<RoomName, Vec<StoredMessage>>,
    /// Room → its changes in `seq` order.
    changes: HashMap<RoomName, Vec<LoggedChange>>,
    /// Room → its latest `seq`.
    heads: HashMap<RoomName, u64>,
    by_client_msg_id: HashMap<(RoomName, String, ClientMsgId), MessageId>,
    /// (Room, reader) → the message it read up to.
    reads: HashMap<(RoomName, String), MessageId>,
    /// Direct room → its two users.
    directs: HashMap<RoomName, DirectUsers>,
    /// (Room, user) → what the server API set.
    access: HashMap<(RoomName, String), UserAccess>,
}

pub use crate::domain::LoggedChange;

impl MessagesState {
    fn message(&self, room: &RoomName, id: &MessageId) -> Option<&StoredMessage> {
        let messages = self.rooms.get(room)?;
        let at = messages.binary_search_by_key(id, |m| m.id).ok()?;
        Some(&messages[at])
    }
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
        changes: Vec::new(),
        has_more,
    }
}

/// The page of events after `seq`: messages (`messages`, in `seq` order, as they are now) and
/// changes (`log`, in `seq` order) merged, at most `limit` of them; the reference of every store.
pub fn events_page(
    room: &RoomName,
    messages: &[StoredMessage],
    log: &[LoggedChange],
    seq: u64,
    limit: usize,
) -> Page {
    let after = |m: &&StoredMessage| m.seq > seq;
    let read: Vec<StoredMessage> = messages
        .iter()
        .filter(after)
        .take(limit + 1)
        .cloned()
        .collect();
    let changes: Vec<LoggedChange> = log
        .iter()
        .filter(|c| c.seq > seq)
        .take(limit + 1)
        .copied()
        .collect();
    let (kept, changes, has_more) = merge_events(read, changes, limit);
    let others: Vec<StoredMessage> = messages_to_read(&kept, &changes)
        .iter()
        .filter_map(|id| {
            let at = messages.binary_search_by_key(id, |m| m.id).ok()?;
            Some(messages[at].clone())
        })
        .collect();
    let changes = replay(room, &changes, &kept, &others);
    Page {
        messages: kept,
        changes,
        has_more,
    }
}

/// The first `limit` events of messages and changes read after a `seq` (each list in `seq`
/// order, each read with a limit of `limit + 1`): the messages and changes kept, and whether
/// more follow.
pub fn merge_events(
    mut messages: Vec<StoredMessage>,
    mut changes: Vec<LoggedChange>,
    limit: usize,
) -> (Vec<StoredMessage>, Vec<LoggedChange>, bool) {
    let mut seqs: Vec<u64> = messages
        .iter()
        .map(|m| m.seq)
        .chain(changes.iter().map(|c| c.seq))
        .collect();
    seqs.sort_unstable();
    let has_more = seqs.len() > limit;
    if let Some(&last_kept) = limit.checked_sub(1).and_then(|i| seqs.get(i)) {
        messages.retain(|m| m.seq <= last_kept);
        changes.retain(|c| c.seq <= last_kept);
    } else if limit == 0 {
        messages.clear();
        changes.clear();
    }
    (messages, changes, has_more)
}

/// The messages whose state a page's edits and changes of reactions show but that the page
/// does not hold, each once: a store reads them as they are now, then [`replay`] shows the
/// changes.
pub fn messages_to_read(messages: &[StoredMessage], changes: &[LoggedChange]) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = changes
        .iter()
        .filter(|change| change.kind != LoggedKind::Delete)
        .map(|change| change.id)
        .filter(|id| !messages.iter().any(|m| m.id == *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The changes as frames show them, from the state of their messages now: the page's
/// `messages`, and the `others` read for it ([`messages_to_read`]); see
/// [`MessageChange::replayed`]. An edit of a message deleted since is left out.
pub fn replay(
    room: &RoomName,
    changes: &[LoggedChange],
    messages: &[StoredMessage],
    others: &[StoredMessage],
) -> Vec<MessageChange> {
    let now = |id: &MessageId| messages.iter().chain(others).find(|m| m.id == *id);
    changes
        .iter()
        .filter_map(|change| {
            let message = match change.kind {
                LoggedKind::Delete => None,
                LoggedKind::Edit | LoggedKind::Reactions => now(&change.id),
            };
            MessageChange::replayed(room, *change, message)
        })
        .collect()
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
        if let Some(earlier) = key
            .as_ref()
            .and_then(|k| state.by_client_msg_id.get(k))
            .and_then(|id| state.message(&message.room, id))
        {
            return Ok(Appended::Duplicate(earlier.clone()));
        }
        let seq = state.heads.get(&message.room).copied().unwrap_or(0);
        let room = state.rooms.entry(message.room.clone()).or_default();
        let head = RoomHead {
            seq,
            last_id: room.last().map(|last| last.id),
            messages: room.len() as u64,
        };
        let stored = StoredMessage::stamp(message, head, now_ms());
        room.push(stored.clone());
        state.heads.insert(stored.room.clone(), stored.seq);
        if let Some(key) = key {
            state.by_client_msg_id.insert(key, stored.id);
        }
        Ok(Appended::New(stored))
    }

    async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64> {
        Ok(lock(&self.state).heads.get(room).copied().unwrap_or(0))
    }

    async fn get(&self, room: &RoomName, id: &MessageId) -> StoreResult<Option<StoredMessage>> {
        Ok(lock(&self.state).message(room, id).cloned())
    }

    async fn mark_read(
        &self,
        room: &RoomName,
        reader: &str,
        id: &MessageId,
    ) -> StoreResult<Option<MessageId>> {
        let mut state = lock(&self.state);
        if state.message(room, id).is_none() {
            return Ok(None);
        }
        // Ids follow the room's order: the later of the two marks stays.
        let mark = state
            .reads
            .entry((room.clone(), reader.to_owned()))
            .or_insert(*id);
        *mark = (*mark).max(*id);
        Ok(Some(*mark))
    }

    async fn open_direct(&self, room: &RoomName, users: &DirectUsers) -> StoreResult<()> {
        lock(&self.state)
            .directs
            .entry(room.clone())
            .or_insert_with(|| users.clone());
        Ok(())
    }

    async fn direct_users(&self, room: &RoomName) -> StoreResult<Option<DirectUsers>> {
        Ok(lock(&self.state).directs.get(room).cloned())
    }

    async fn access(&self, room: &RoomName, user_id: &str) -> StoreResult<UserAccess> {
        let key = (room.clone(), user_id.to_owned());
        Ok(lock(&self.state)
            .access
            .get(&key)
            .copied()
            .unwrap_or_default())
    }

    async fn set_access(
        &self,
        room: &RoomName,
        user_id: &str,
        change: AccessChange,
    ) -> StoreResult<()> {
        let key = (room.clone(), user_id.to_owned());
        let mut state = lock(&self.state);
        let access = state.access.entry(key).or_default();
        *access = access.with(change);
        Ok(())
    }

    async fn read_state(&self, room: &RoomName, reader: &str) -> StoreResult<ReadState> {
        let state = lock(&self.state);
        let messages = state.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        let last_read = state.reads.get(&(room.clone(), reader.to_owned())).copied();
        let read = last_read.map_or(0, |id| messages.partition_point(|m| m.id <= id));
        Ok(ReadState {
            last_read,
            unread: (messages.len() - read) as u64,
        })
    }

    async fn change(
        &self,
        room: &RoomName,
        id: &MessageId,
        change: Change,
    ) -> StoreResult<Changed> {
        let mut state = lock(&self.state);
        let seq = state.heads.get(room).copied().unwrap_or(0) + 1;
        let Some(message) = state
            .rooms
            .get_mut(room)
            .and_then(|messages| {
                let at = messages.binary_search_by_key(id, |m| m.id).ok()?;
                Some(&mut messages[at])
            })
            .filter(|message| !message.deleted)
        else {
            return Ok(Changed::Gone);
        };
        let event = match MessageChange::of(message, &change, seq, now_ms()) {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(Changed::Unchanged),
            Err(_) => return Ok(Changed::TooManyReactions),
        };
        message.apply(&event);
        state.heads.insert(room.clone(), seq);
        let kind = change.logged_kind();
        let log = state.changes.entry(room.clone()).or_default();
        // One event of each kind per message: the latest (a delete takes all of them out).
        log.retain(|logged| {
            logged.id != *id || (kind != LoggedKind::Delete && logged.kind != kind)
        });
        log.push(LoggedChange { seq, id: *id, kind });
        Ok(Changed::Done(event))
    }

    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>> {
        let key = (room.clone(), sender_key.to_owned(), client_msg_id.clone());
        let state = lock(&self.state);
        Ok(state
            .by_client_msg_id
            .get(&key)
            .and_then(|id| state.message(room, id))
            .cloned())
    }

    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
        let state = lock(&self.state);
        let messages = state.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        Ok(match cursor {
            Cursor::AfterSeq(seq) => {
                let log = state
                    .changes
                    .get(room)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                events_page(room, messages, log, seq, limit)
            }
            _ => page_of(messages, cursor, limit),
        })
    }
}

/// A notifier that records what it delivers; connections in `gone` answer [`Delivery::Gone`].
#[derive(Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<(ConnectionId, String)>>,
    gone: Mutex<HashSet<ConnectionId>>,
    closed: Mutex<Vec<ConnectionId>>,
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

    /// Takes the connections closed so far, in order.
    pub fn take_closed(&self) -> Vec<ConnectionId> {
        std::mem::take(&mut *lock(&self.closed))
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

    /// A closed connection is gone from then on.
    async fn close(&self, to: &ConnectionId) -> Result<Delivery, NotifyError> {
        if !lock(&self.gone).insert(to.clone()) {
            return Ok(Delivery::Gone);
        }
        lock(&self.closed).push(to.clone());
        Ok(Delivery::Delivered)
    }
}
