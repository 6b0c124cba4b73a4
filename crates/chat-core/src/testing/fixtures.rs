//! Members, rooms and messages for tests: the suites' own, and adapter-specific tests'.

use crate::domain::{
    ClientMsgId, ConnectionId, DisplayName, Member, MessageId, MessageText, NewMessage, Page,
    RoomName, StoredMessage,
};
use crate::ports::{Appended, ConnectionStore, MessageStore};

pub fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("a valid room name")
}

/// A guest: known by its display name.
pub fn guest(name: &str) -> Member {
    Member {
        name: DisplayName::parse(name).expect("a valid display name"),
        user_id: None,
    }
}

/// An authenticated member: known by its user id.
pub fn user(name: &str, user_id: &str) -> Member {
    Member {
        name: DisplayName::parse(name).expect("a valid display name"),
        user_id: Some(user_id.to_owned()),
    }
}

pub fn client_msg_id(id: &str) -> ClientMsgId {
    ClientMsgId::parse(id).expect("a valid clientMsgId")
}

/// A message from `sender` (a guest of that name).
pub fn message(
    room_name: &str,
    sender: &str,
    text: &str,
    client_msg_id: Option<&str>,
) -> NewMessage {
    message_from(room_name, &guest(sender), text, client_msg_id)
}

pub fn message_from(
    room_name: &str,
    sender: &Member,
    text: &str,
    client_msg_id: Option<&str>,
) -> NewMessage {
    NewMessage {
        room: room(room_name),
        sender: sender.clone(),
        connection: connection_of(sender),
        text: MessageText::parse(text.to_owned()).expect("a valid message text"),
        client_msg_id: client_msg_id.map(self::client_msg_id),
    }
}

/// The connection the fixtures' messages of `sender` come from: one per sender.
pub fn connection_of(sender: &Member) -> ConnectionId {
    ConnectionId::new(format!("conn-{}", sender.sender_key()))
}

/// Appends a message that must be new; returns it as stored.
pub async fn append_new(store: &dyn MessageStore, message: NewMessage) -> StoredMessage {
    match store.append(message).await.expect("append") {
        Appended::New(stored) => stored,
        Appended::Duplicate(earlier) => {
            panic!("expected a new message, got a duplicate of {earlier:?}")
        }
    }
}

/// The `connectedAt` of every connection [`connect`] makes.
pub const CONNECTED_AT_MS: u64 = 1_795_000_000_123;

/// Inserts a connection for `member`, in no room, connected at [`CONNECTED_AT_MS`]; returns its
/// (random) id.
pub async fn connect(store: &dyn ConnectionStore, member: &Member) -> ConnectionId {
    let id = ConnectionId::random();
    store
        .insert(&id, member, &[], CONNECTED_AT_MS)
        .await
        .expect("insert");
    id
}

pub fn texts(page: &Page) -> Vec<&str> {
    page.messages.iter().map(|m| m.text.as_str()).collect()
}

pub fn names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

/// A version 7 id below every id made today.
pub fn lowest_id() -> MessageId {
    MessageId::parse("00000000-0000-7000-8000-000000000000").expect("a canonical id")
}

/// A version 7 id above every id made today.
pub fn highest_id() -> MessageId {
    MessageId::parse("ffffffff-ffff-7fff-bfff-ffffffffffff").expect("a canonical id")
}

/// The id just after `id` (its random bits plus one): names no stored message, and sorts between
/// `id` and the next message.
pub fn id_after(id: MessageId) -> MessageId {
    MessageId::from_uuid(uuid::Uuid::from_u128(id.as_uuid().as_u128() + 1))
}

/// Milliseconds since the Unix epoch, from this process's clock.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
