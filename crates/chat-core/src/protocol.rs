//! The wire format of `PROTOCOL.md`: client frames in, server frames out.
//!
//! A client frame is read into a [`Request`] (its `requestId` and one [`Action`] with valid
//! fields) or refused with a [`Rejection`] that carries the coded error. Server frames are
//! [`ServerFrame`]s, serialized once into a [`Payload`] that is shared by every recipient.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{
    ChangeKind, ClientMsgId, Cursor, Emoji, Invalid, Member, MessageChange, MessageId, MessageText,
    PageLimit, ReactionSummary, RequestId, RoomName, StoredMessage, TextError,
};

/// Declares a closed set of protocol names once: the enum, `ALL`, and `as_str` (an exhaustive
/// match), so that a name cannot exist in one list and be missing from another.
macro_rules! names {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in the protocol's order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }

            /// The value of a name on the wire (case-sensitive).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|value| value.as_str() == name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The error codes of the protocol.
    pub enum ErrorCode {
        BadRequest = "bad_request",
        UnknownAction = "unknown_action",
        NotMember = "not_member",
        PayloadTooLarge = "payload_too_large",
        RateLimited = "rate_limited",
        LimitExceeded = "limit_exceeded",
        Internal = "internal",
        /// (Version 2) Not this user's to do: not the message's sender.
        Forbidden = "forbidden",
    }
}

impl ErrorCode {
    /// The HTTP status that stands for the code where a status is needed: a Lambda function's
    /// answer (for its metrics and logs: API Gateway sends the body to the client whatever the
    /// status), and HTTP APIs.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnknownAction => 400,
            Self::NotMember | Self::Forbidden => 403,
            Self::LimitExceeded => 409,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Internal => 500,
        }
    }
}

names! {
    /// The client actions: the `action` field, and API Gateway's route keys.
    pub enum ActionName {
        SendMessage = "sendMessage",
        JoinRoom = "joinRoom",
        LeaveRoom = "leaveRoom",
        History = "history",
        Members = "members",
        Typing = "typing",
        Ping = "ping",
        EditMessage = "editMessage",
        DeleteMessage = "deleteMessage",
        React = "react",
        Unreact = "unreact",
        MarkRead = "markRead",
        Rooms = "rooms",
        OpenDirect = "openDirect",
    }
}

/// A coded error with a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The one message an `internal` error ever shows: nothing of the server's internals.
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "the server failed to handle this request; try again",
        )
    }
}

impl From<Invalid> for ChatError {
    fn from(e: Invalid) -> Self {
        Self::bad_request(e.0)
    }
}

/// One client action with valid fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SendMessage {
        room: RoomName,
        text: MessageText,
        client_msg_id: Option<ClientMsgId>,
    },
    JoinRoom {
        room: RoomName,
        /// `Latest` without `since` or `sinceSeq`; `After(since)`; `AfterSeq(sinceSeq)`.
        from: Cursor,
    },
    LeaveRoom {
        room: RoomName,
    },
    History {
        room: RoomName,
        cursor: Cursor,
        limit: PageLimit,
    },
    Members {
        room: RoomName,
    },
    Typing {
        room: RoomName,
    },
    Ping,
    /// (Version 2) A new text for one's own message.
    EditMessage {
        room: RoomName,
        id: MessageId,
        text: MessageText,
    },
    /// (Version 2) Takes one's own message back.
    DeleteMessage {
        room: RoomName,
        id: MessageId,
    },
    /// (Version 2) `react` (`add`) or `unreact` to a message.
    React {
        room: RoomName,
        id: MessageId,
        emoji: Emoji,
        add: bool,
    },
    /// (Version 2) The room is read up to this message.
    MarkRead {
        room: RoomName,
        id: MessageId,
    },
    /// (Version 2) The connection's rooms, with their unread counts and latest messages.
    Rooms,
    /// (Version 2) Joins the direct room of this user and the one with `userId`.
    OpenDirect {
        user_id: String,
    },
}

impl Action {
    /// The room whose membership the action needs, if any (`joinRoom` and `ping` need none).
    pub fn room_requiring_membership(&self) -> Option<&RoomName> {
        match self {
            Self::SendMessage { room, .. }
            | Self::LeaveRoom { room }
            | Self::History { room, .. }
            | Self::Members { room }
            | Self::Typing { room }
            | Self::EditMessage { room, .. }
            | Self::DeleteMessage { room, .. }
            | Self::React { room, .. }
            | Self::MarkRead { room, .. } => Some(room),
            Self::JoinRoom { .. } | Self::Ping | Self::Rooms | Self::OpenDirect { .. } => None,
        }
    }
}

/// A readable client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: Option<RequestId>,
    pub action: Action,
}

/// A client frame that was refused, with what the error frame needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Echoed only when the frame was a readable object with a valid `requestId`.
    pub request_id: Option<RequestId>,
    pub error: ChatError,
}

/// What arrived on the socket.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    Text(&'a str),
    Binary,
}

/// Reads one client frame. Never panics, whatever the input.
pub fn parse_frame(inbound: Inbound<'_>) -> Result<Request, Rejection> {
    let reject = |request_id: Option<RequestId>, error: ChatError| Rejection { request_id, error };
    let text = match inbound {
        Inbound::Text(text) => text,
        Inbound::Binary => {
            return Err(reject(
                None,
                ChatError::bad_request("binary frames are not supported; send JSON text frames"),
            ));
        }
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        reject(
            None,
            ChatError::bad_request(format!("the frame is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(reject(
            None,
            ChatError::bad_request("the frame must be a JSON object"),
        ));
    };
    let request_id = match optional_str(&fields, "requestId") {
        Ok(None) => None,
        Ok(Some(s)) => Some(RequestId::parse(s).map_err(|e| reject(None, e.into()))?),
        Err(e) => return Err(reject(None, e)),
    };
    parse_action(&fields)
        .map(|action| Request {
            request_id: request_id.clone(),
            action,
        })
        .map_err(|error| reject(request_id, error))
}

/// Like API Gateway's route selection on `$request.body.action`: a missing, non-string or unknown
/// action goes to `$default`, which answers `unknown_action`.
pub fn route_key(fields: &Map<String, Value>) -> Option<ActionName> {
    ActionName::from_name(fields.get("action")?.as_str()?)
}

/// The action names, for a person: `sendMessage, joinRoom, ...`.
fn action_list() -> String {
    let names: Vec<&str> = ActionName::ALL.iter().map(|a| a.as_str()).collect();
    names.join(", ")
}

fn parse_action(fields: &Map<String, Value>) -> Result<Action, ChatError> {
    let Some(action) = route_key(fields) else {
        let message = match fields.get("action") {
            None | Some(Value::Null) => "the frame has no action".to_owned(),
            Some(Value::String(s)) => format!(
                "unknown action {:?}; the actions are {}",
                truncate(s, 64),
                action_list()
            ),
            Some(_) => "action must be a string".to_owned(),
        };
        return Err(ChatError::new(ErrorCode::UnknownAction, message));
    };
    Ok(match action {
        ActionName::SendMessage => {
            let room = match optional_str(fields, "room")? {
                Some(room) => RoomName::parse(room)?,
                None => RoomName::lobby(),
            };
            let text = required_text(fields)?;
            let client_msg_id = optional_str(fields, "clientMsgId")?
                .map(ClientMsgId::parse)
                .transpose()?;
            Action::SendMessage {
                room,
                text,
                client_msg_id,
            }
        }
        ActionName::JoinRoom => {
            let room = required_room(fields)?;
            let since = optional_message_id(fields, "since")?;
            let since_seq = optional_seq(fields, "sinceSeq")?;
            let from = match (since, since_seq) {
                (Some(_), Some(_)) => {
                    return Err(ChatError::bad_request("give since or sinceSeq, not both"));
                }
                (Some(id), None) => Cursor::After(id),
                (None, Some(seq)) => Cursor::AfterSeq(seq),
                (None, None) => Cursor::Latest,
            };
            Action::JoinRoom { room, from }
        }
        ActionName::LeaveRoom => Action::LeaveRoom {
            room: required_room(fields)?,
        },
        ActionName::History => {
            let room = required_room(fields)?;
            let before = optional_message_id(fields, "before")?;
            let after = optional_message_id(fields, "after")?;
            let after_seq = optional_seq(fields, "afterSeq")?;
            let cursor = match (before, after, after_seq) {
                (Some(id), None, None) => Cursor::Before(id),
                (None, Some(id), None) => Cursor::After(id),
                (None, None, Some(seq)) => Cursor::AfterSeq(seq),
                (None, None, None) => Cursor::Latest,
                _ => {
                    return Err(ChatError::bad_request(
                        "give one of before, after and afterSeq, not several",
                    ));
                }
            };
            let limit = match fields.get("limit") {
                None | Some(Value::Null) => PageLimit::DEFAULT,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(n) => PageLimit::parse(n)?,
                    None => return Err(PageLimit::parse(0).unwrap_err().into()),
                },
                Some(_) => {
                    return Err(ChatError::bad_request(
                        "limit must be an integer from 1 to 100",
                    ));
                }
            };
            Action::History {
                room,
                cursor,
                limit,
            }
        }
        ActionName::Members => Action::Members {
            room: required_room(fields)?,
        },
        ActionName::Typing => Action::Typing {
            room: required_room(fields)?,
        },
        ActionName::Ping => Action::Ping,
        ActionName::EditMessage => Action::EditMessage {
            room: required_room(fields)?,
            id: required_message_id(fields)?,
            text: required_text(fields)?,
        },
        ActionName::DeleteMessage => Action::DeleteMessage {
            room: required_room(fields)?,
            id: required_message_id(fields)?,
        },
        ActionName::React | ActionName::Unreact => Action::React {
            room: required_room(fields)?,
            id: required_message_id(fields)?,
            emoji: Emoji::parse(required_string(fields, "emoji")?)?,
            add: action == ActionName::React,
        },
        ActionName::MarkRead => Action::MarkRead {
            room: required_room(fields)?,
            id: required_message_id(fields)?,
        },
        ActionName::Rooms => Action::Rooms,
        ActionName::OpenDirect => {
            let user_id = required_string(fields, "userId")?;
            if user_id.is_empty() || user_id.chars().count() > MAX_USER_ID_CHARS {
                return Err(ChatError::bad_request(format!(
                    "userId must be 1 to {MAX_USER_ID_CHARS} characters"
                )));
            }
            Action::OpenDirect {
                user_id: user_id.to_owned(),
            }
        }
    })
}

/// `text`: a message's text (sendMessage, editMessage).
pub(crate) fn required_text(fields: &Map<String, Value>) -> Result<MessageText, ChatError> {
    let text = required_string(fields, "text")?;
    MessageText::parse(text.to_owned()).map_err(|e| match e {
        TextError::Empty => ChatError::bad_request("text must not be empty or only whitespace"),
        TextError::TooLong { chars } => ChatError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "text is {chars} characters long; the limit is {}",
                MessageText::MAX_CHARS
            ),
        ),
    })
}

/// The longest `userId` that `openDirect` takes (a token's `sub` is rarely longer than a UUID).
pub(crate) const MAX_USER_ID_CHARS: usize = 256;

fn required_message_id(fields: &Map<String, Value>) -> Result<MessageId, ChatError> {
    optional_message_id(fields, "id")?.ok_or_else(|| ChatError::bad_request("id is required"))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// A string field that may be absent; `null` counts as absent.
pub(crate) fn optional_str<'a>(
    fields: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ChatError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ChatError::bad_request(format!("{key} must be a string"))),
    }
}

pub(crate) fn required_string<'a>(
    fields: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, ChatError> {
    optional_str(fields, key)?.ok_or_else(|| ChatError::bad_request(format!("{key} is required")))
}

fn required_room(fields: &Map<String, Value>) -> Result<RoomName, ChatError> {
    Ok(RoomName::parse(required_string(fields, "room")?)?)
}

fn optional_message_id(
    fields: &Map<String, Value>,
    key: &str,
) -> Result<Option<MessageId>, ChatError> {
    optional_str(fields, key)?
        .map(|s| MessageId::parse(s).map_err(|e| ChatError::bad_request(format!("{key}: {e}"))))
        .transpose()
}

/// A sequence number: a JSON integer from 0 (`10.0`, `"10"` and `-1` are refused).
fn optional_seq(fields: &Map<String, Value>, key: &str) -> Result<Option<u64>, ChatError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(_) => Err(ChatError::bad_request(format!(
            "{key} must be an integer from 0"
        ))),
    }
}

/// A serialized server frame: valid UTF-8 JSON, cheap to clone, shared by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    pub fn from_json(json: String) -> Self {
        Self(Bytes::from(json))
    }

    /// Serializes a frame. Our frames always serialize; should one ever fail, the client gets an
    /// `internal` error rather than nothing.
    pub fn encode(frame: &ServerFrame<'_>) -> Self {
        match serde_json::to_string(frame) {
            Ok(json) => Self::from_json(json),
            Err(e) => {
                tracing::error!(error = %e, "failed to serialize a server frame");
                Self::from_json(
                    r#"{"type":"error","code":"internal","message":"the server failed to encode a reply"}"#
                        .to_owned(),
                )
            }
        }
    }

    /// The bytes, valid UTF-8 by construction.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Every frame the server sends.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame<'a> {
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        id: MessageId,
        ts: u64,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a ClientMsgId>,
    },
    Message(&'a StoredMessage),
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        members: &'a [Member],
        /// The room's latest `seq` when the join took effect.
        seq: u64,
        /// (Version 2) The message this user read up to, absent before its first `markRead`.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_read: Option<MessageId>,
        /// (Version 2) The messages after it, up to 999.
        unread: u64,
        /// (Version 2) `lobby` only: the connections in it.
        #[serde(skip_serializing_if = "Option::is_none")]
        occupancy: Option<usize>,
        #[serde(flatten)]
        history: HistoryPage<'a>,
    },
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        #[serde(flatten)]
        page: HistoryPage<'a>,
    },
    Members {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        members: &'a [Member],
        /// (Version 2) `lobby` only: the connections in it.
        #[serde(skip_serializing_if = "Option::is_none")]
        occupancy: Option<usize>,
    },
    Presence {
        room: &'a RoomName,
        event: PresenceEvent,
        member: &'a Member,
    },
    Typing {
        room: &'a RoomName,
        member: &'a Member,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
    },
    /// (Version 2) The reply to `editMessage`.
    Updated {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        id: MessageId,
        seq: u64,
    },
    /// (Version 2) The reply to `markRead`, and what the user's other connections in the room
    /// receive (without `requestId`).
    Read {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        id: MessageId,
    },
    /// (Version 2) The reply to `rooms`.
    Rooms {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        rooms: &'a [RoomSummary],
    },
    /// (Version 2) To the other user's connections when a direct room is opened: `from` is
    /// the user who opened it, `room` the room to join.
    Direct {
        room: &'a RoomName,
        from: &'a Member,
    },
    /// (Version 2) To each connection of a user that the server API banned from the room, or
    /// whose grant of it was revoked: it is no longer a member.
    Removed {
        room: &'a RoomName,
        reason: RemovedReason,
    },
    /// (Version 2) The reply to `react` and `unreact`.
    Reacted {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        id: MessageId,
    },
    /// (Version 2) The reply to `deleteMessage`.
    Deleted {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        room: &'a RoomName,
        id: MessageId,
        seq: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a RequestId>,
        code: ErrorCode,
        message: &'a str,
    },
    /// (Version 2) `messageUpdated` or `messageDeleted`, to the room.
    #[serde(untagged)]
    Change(ChangeEvent<'a>),
}

/// (Version 2) Why a connection was removed from a room (`removed`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovedReason {
    Banned,
    Revoked,
}

/// A change to a message as a frame, with its `type`: `messageUpdated` (`room`, `id`, `text`,
/// `editedAt`, `seq`), `messageDeleted` (`room`, `id`, `seq`) or `reactions` (`room`, `id`,
/// `reactions`, `seq`). The same object is the live
/// frame and the event in a page of `events`.
#[derive(Debug, Clone, Copy)]
pub struct ChangeEvent<'a>(pub &'a MessageChange);

impl Serialize for ChangeEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let change = self.0;
        let mut map = s.serialize_map(None)?;
        let kind = match change.kind {
            ChangeKind::Edited { .. } => "messageUpdated",
            ChangeKind::Deleted => "messageDeleted",
            ChangeKind::Reactions { .. } => "reactions",
        };
        map.serialize_entry("type", kind)?;
        map.serialize_entry("room", &change.room)?;
        map.serialize_entry("id", &change.id)?;
        match &change.kind {
            ChangeKind::Edited { text, edited_at } => {
                map.serialize_entry("text", text)?;
                map.serialize_entry("editedAt", edited_at)?;
            }
            ChangeKind::Reactions { reactions } => {
                map.serialize_entry("reactions", &ReactionSummary(reactions))?;
            }
            ChangeKind::Deleted => {}
        }
        map.serialize_entry("seq", &change.seq)?;
        map.end()
    }
}

/// One event of a page: a message, or a change to one.
#[derive(Debug, Clone, Copy)]
pub enum PageItem<'a> {
    Message(&'a StoredMessage),
    Change(&'a MessageChange),
}

impl<'a> PageItem<'a> {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Message(message) => message.seq,
            Self::Change(change) => change.seq,
        }
    }

    /// A page's messages and changes as one list, in `seq` order (a page read by id holds
    /// messages only, in id order, which is their `seq` order too).
    pub fn merged(page: &'a crate::domain::Page) -> Vec<Self> {
        let mut items: Vec<Self> = page.messages.iter().map(Self::Message).collect();
        if !page.changes.is_empty() {
            items.extend(page.changes.iter().map(Self::Change));
            items.sort_by_key(Self::seq);
        }
        items
    }
}

impl Serialize for PageItem<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Message(message) => message.serialize(s),
            Self::Change(change) => ChangeEvent(change).serialize(s),
        }
    }
}

/// One room of the `rooms` reply.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub room: RoomName,
    /// Messages after the user's last read one, up to 999.
    pub unread: u64,
    /// The room's latest message; absent in a room without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<StoredMessage>,
}

/// A page of a room's past, as `joined` and `history` hold it: version 1's `messages` (in
/// `history`) or `history` (in `joined`) for id cursors, version 2's `events` after a `seq`.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPage<'a> {
    pub items: &'a [PageItem<'a>],
    pub has_more: bool,
    /// The field that holds them: `messages`, `history` or `events`.
    pub field: &'static str,
}

impl HistoryPage<'_> {
    /// The field of `joined` or `history` (`frame`) for a page read with `cursor`.
    pub fn field_for(frame: ActionName, cursor: Cursor) -> &'static str {
        match (cursor, frame) {
            (Cursor::AfterSeq(_), _) => "events",
            (_, ActionName::JoinRoom) => "history",
            _ => "messages",
        }
    }
}

/// A stored message as `events` lists it: with its `type`, so that clients read every event of
/// a room the same way (changes carry theirs).
#[derive(Serialize)]
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    message: &'a StoredMessage,
}

/// One of `events`.
struct Event<'a>(&'a PageItem<'a>);

impl Serialize for Event<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            PageItem::Message(message) => MessageEvent {
                kind: "message",
                message,
            }
            .serialize(s),
            PageItem::Change(change) => ChangeEvent(change).serialize(s),
        }
    }
}

impl Serialize for HistoryPage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        if self.field == "events" {
            let events: Vec<Event<'_>> = self.items.iter().map(Event).collect();
            map.serialize_entry(self.field, &events)?;
        } else {
            map.serialize_entry(self.field, self.items)?;
        }
        map.serialize_entry("hasMore", &self.has_more)?;
        map.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// What the sender of a frame gets back: the frame, and its error code when it is an `error`, so
/// that a gateway can map the code (to a status, a metric) without reading the JSON again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub payload: Payload,
    pub error: Option<ErrorCode>,
}

impl Reply {
    pub fn ok(payload: Payload) -> Self {
        Self {
            payload,
            error: None,
        }
    }

    /// 200 for a reply, the code's status for an `error`.
    pub fn http_status(&self) -> u16 {
        self.error.map_or(200, ErrorCode::http_status)
    }
}

impl From<Rejection> for Reply {
    fn from(rejection: Rejection) -> Self {
        Self {
            payload: rejection.to_payload(),
            error: Some(rejection.error.code),
        }
    }
}

impl Rejection {
    pub fn to_payload(&self) -> Payload {
        Payload::encode(&ServerFrame::Error {
            request_id: self.request_id.as_ref(),
            code: self.error.code,
            message: &self.error.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, Rejection> {
        parse_frame(Inbound::Text(text))
    }

    fn code_of(text: &str) -> ErrorCode {
        parse(text).unwrap_err().error.code
    }

    #[test]
    fn send_message_defaults_to_lobby() {
        let req = parse(r#"{"action":"sendMessage","text":"hi"}"#).unwrap();
        assert_eq!(req.request_id, None);
        match req.action {
            Action::SendMessage {
                room,
                text,
                client_msg_id,
            } => {
                assert!(room.is_lobby());
                assert_eq!(text.as_str(), "hi");
                assert_eq!(client_msg_id, None);
            }
            other => panic!("unexpected action {other:?}"),
        }
    }

    #[test]
    fn null_fields_count_as_absent_and_unknown_fields_are_ignored() {
        let req = parse(
            r#"{"action":"sendMessage","room":null,"text":"x","clientMsgId":null,"requestId":null,"extra":[1,2]}"#,
        )
        .unwrap();
        assert!(matches!(req.action, Action::SendMessage { room, .. } if room.is_lobby()));
    }

    #[test]
    fn unreadable_frames_are_bad_requests_without_request_id() {
        for frame in [
            "",
            "not json",
            "[1,2]",
            "\"s\"",
            "42",
            "null",
            "{\"action\":",
            "{}{}",
        ] {
            let rejection = parse(frame).unwrap_err();
            assert_eq!(rejection.error.code, ErrorCode::BadRequest, "{frame}");
            assert_eq!(rejection.request_id, None);
        }
        let binary = parse_frame(Inbound::Binary).unwrap_err();
        assert_eq!(binary.error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn missing_or_unknown_actions_are_unknown_action_and_echo_the_request_id() {
        for frame in [
            r#"{"requestId":"r1"}"#,
            r#"{"requestId":"r1","action":null}"#,
            r#"{"requestId":"r1","action":"fly"}"#,
            r#"{"requestId":"r1","action":7}"#,
            r#"{"requestId":"r1","action":"SENDMESSAGE"}"#,
        ] {
            let rejection = parse(frame).unwrap_err();
            assert_eq!(rejection.error.code, ErrorCode::UnknownAction, "{frame}");
            assert_eq!(rejection.request_id, Some(RequestId::parse("r1").unwrap()));
        }
    }

    #[test]
    fn an_invalid_request_id_is_a_bad_request_that_is_not_echoed() {
        let long = "x".repeat(65);
        let rejection = parse(&format!(r#"{{"action":"ping","requestId":"{long}"}}"#)).unwrap_err();
        assert_eq!(rejection.error.code, ErrorCode::BadRequest);
        assert_eq!(rejection.request_id, None);
        let rejection = parse(r#"{"action":"ping","requestId":5}"#).unwrap_err();
        assert_eq!(rejection.error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn fields_of_the_wrong_type_or_range_are_bad_requests() {
        for frame in [
            r#"{"action":"sendMessage","text":5}"#,
            r#"{"action":"sendMessage"}"#,
            r#"{"action":"sendMessage","text":"   "}"#,
            r#"{"action":"sendMessage","text":"x","room":"bad room"}"#,
            r#"{"action":"sendMessage","text":"x","room":7}"#,
            r#"{"action":"joinRoom"}"#,
            r#"{"action":"joinRoom","room":"ok","since":"nope"}"#,
            r#"{"action":"history","room":"r","limit":0}"#,
            r#"{"action":"history","room":"r","limit":101}"#,
            r#"{"action":"history","room":"r","limit":1.5}"#,
            r#"{"action":"history","room":"r","limit":-1}"#,
            r#"{"action":"history","room":"r","limit":"5"}"#,
            r#"{"action":"history","room":"r","limit":1e400}"#,
            r#"{"action":"history","room":"r","before":"0190a0b0-0000-7000-8000-000000000000","after":"0190a0b0-0000-7000-8000-000000000000"}"#,
            r#"{"action":"members","room":""}"#,
            r#"{"action":"typing","room":["lobby"]}"#,
        ] {
            assert_eq!(code_of(frame), ErrorCode::BadRequest, "{frame}");
        }
        let long_id = "x".repeat(65);
        assert_eq!(
            code_of(&format!(
                r#"{{"action":"sendMessage","text":"x","clientMsgId":"{long_id}"}}"#
            )),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn a_text_over_4000_characters_is_payload_too_large() {
        let frame = format!(
            r#"{{"action":"sendMessage","requestId":"r","text":"{}"}}"#,
            "a".repeat(4001)
        );
        let rejection = parse(&frame).unwrap_err();
        assert_eq!(rejection.error.code, ErrorCode::PayloadTooLarge);
        assert_eq!(rejection.request_id, Some(RequestId::parse("r").unwrap()));
    }

    #[test]
    fn history_reads_its_cursor_and_limit() {
        let id = MessageId::new_v7();
        let req = parse(&format!(
            r#"{{"action":"history","room":"r","before":"{id}","limit":10}}"#
        ))
        .unwrap();
        assert_eq!(
            req.action,
            Action::History {
                room: RoomName::parse("r").unwrap(),
                cursor: Cursor::Before(id),
                limit: PageLimit::parse(10).unwrap(),
            }
        );
    }

    #[test]
    fn deeply_nested_frames_are_refused_without_overflowing_the_stack() {
        let frame = format!(
            r#"{{"action":"ping","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(code_of(&frame), ErrorCode::BadRequest);
    }

    #[test]
    fn every_action_name_routes_to_its_own_parser() {
        // A name with no parser arm of its own would be caught by the exhaustive match; a name
        // routed to another action's parser shows here.
        for name in ActionName::ALL {
            let frame = format!(
                r#"{{"action":"{name}","room":"r","text":"t","emoji":"+1","userId":"u","id":"0190a0f0-0000-7000-8000-000000000000"}}"#
            );
            let action = parse(&frame).unwrap().action;
            let parsed = match action {
                Action::SendMessage { .. } => ActionName::SendMessage,
                Action::JoinRoom { .. } => ActionName::JoinRoom,
                Action::LeaveRoom { .. } => ActionName::LeaveRoom,
                Action::History { .. } => ActionName::History,
                Action::Members { .. } => ActionName::Members,
                Action::Typing { .. } => ActionName::Typing,
                Action::Ping => ActionName::Ping,
                Action::EditMessage { .. } => ActionName::EditMessage,
                Action::DeleteMessage { .. } => ActionName::DeleteMessage,
                Action::React { add: true, .. } => ActionName::React,
                Action::React { add: false, .. } => ActionName::Unreact,
                Action::MarkRead { .. } => ActionName::MarkRead,
                Action::Rooms => ActionName::Rooms,
                Action::OpenDirect { .. } => ActionName::OpenDirect,
            };
            assert_eq!(parsed, *name);
            assert_eq!(ActionName::from_name(name.as_str()), Some(*name));
        }
    }

    #[test]
    fn a_reply_has_status_200_and_an_error_its_codes_status() {
        let pong = Reply::ok(Payload::encode(&ServerFrame::Pong { request_id: None }));
        assert_eq!(pong.http_status(), 200);
        let refused: Reply = parse("{}").unwrap_err().into();
        assert_eq!(refused.error, Some(ErrorCode::UnknownAction));
        assert_eq!(refused.http_status(), 400);
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }

    #[test]
    fn error_codes_are_written_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::String(code.as_str().into())
            );
        }
        assert_eq!(
            ErrorCode::from_name("not_member"),
            Some(ErrorCode::NotMember)
        );
        assert_eq!(ErrorCode::from_name("NotMember"), None);
    }

    #[test]
    fn server_frames_leave_absent_fields_out() {
        let payload = Payload::encode(&ServerFrame::Pong { request_id: None });
        assert_eq!(payload.to_text(), r#"{"type":"pong"}"#);
        let rid = RequestId::parse("a").unwrap();
        let payload = Payload::encode(&ServerFrame::Error {
            request_id: Some(&rid),
            code: ErrorCode::NotMember,
            message: "m",
        });
        assert_eq!(
            payload.to_text(),
            r#"{"type":"error","requestId":"a","code":"not_member","message":"m"}"#
        );
    }
}
