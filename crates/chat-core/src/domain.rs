//! The values of the protocol, as types that can only hold valid values.
//!
//! Each type has one way in (`parse`) that checks the rule of `PROTOCOL.md`, so that code holding
//! a `RoomName` or a `MessageText` never checks it again.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use unicode_general_category::{GeneralCategory, get_general_category};
use uuid::Uuid;

/// Why a value was refused; the text is shown to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A room name: `[A-Za-z0-9_.-]{1,64}`, case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(allowed) {
            return Err(invalid(format!(
                "invalid room name: it must be 1 to {} characters of A-Z, a-z, 0-9, '_', '.' or '-'",
                Self::MAX_LEN
            )));
        }
        Ok(Self(s.into()))
    }

    /// The room every connection joins on connect.
    pub fn lobby() -> Self {
        Self("lobby".into())
    }

    pub fn is_lobby(&self) -> bool {
        &*self.0 == "lobby"
    }

    /// (Version 2) The direct room of two users: the same whichever opens it, opaque to
    /// clients (`dm.` and 32 hex digits of a name-based UUID of the pair).
    pub fn direct(a: &str, b: &str) -> Self {
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        // The lengths first, so that no two pairs make the same bytes.
        let key = format!("{}:{first}{}:{second}", first.len(), second.len());
        let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes());
        Self(format!("dm.{}", id.simple()).into())
    }

    /// (Version 2) Who may enter, by the name's prefix.
    pub fn access(&self) -> RoomAccess {
        if self.0.starts_with("private.") {
            RoomAccess::Private
        } else if self.0.starts_with("dm.") {
            RoomAccess::Direct
        } else {
            RoomAccess::Public
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// (Version 2) Who may enter a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    /// Everyone.
    Public,
    /// `private.`: users with a grant.
    Private,
    /// `dm.`: the two users of a direct room.
    Direct,
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1 to 32 characters, not only whitespace, no control or format characters
/// (Unicode category C).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let chars = s.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(invalid(format!(
                "invalid name: it must be 1 to {} characters",
                Self::MAX_CHARS
            )));
        }
        if s.chars().all(char::is_whitespace) {
            return Err(invalid("invalid name: it cannot be only whitespace"));
        }
        if s.chars().any(is_other_category) {
            return Err(invalid(
                "invalid name: it cannot contain control, format or unassigned characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// `guest-XXXX`, for a connection that gave no name.
    pub fn guest() -> Self {
        Self(format!("guest-{:04}", fastrand::u16(0..10_000)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode general category C: Cc, Cf, Cs, Co, Cn.
fn is_other_category(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
    )
}

/// The text of a message: 1 to 4000 Unicode scalar values, not only whitespace. Kept exactly as
/// sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

/// Why a message text was refused: the two cases map to different error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    Empty,
    TooLong { chars: usize },
}

impl MessageText {
    pub const MAX_CHARS: usize = 4000;

    pub fn parse(s: String) -> Result<Self, TextError> {
        // Counting stops early: a huge text costs no more than the limit.
        let chars = s.chars().take(Self::MAX_CHARS + 1).count();
        if chars > Self::MAX_CHARS {
            return Err(TextError::TooLong {
                chars: s.chars().count(),
            });
        }
        if s.chars().all(char::is_whitespace) {
            return Err(TextError::Empty);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A message id: a UUID (version 7 when the server makes it), written in canonical lowercase
/// hyphenated form. Its string form sorts like its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new version 7 id: ordered by creation within this process.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// Accepts only the canonical lowercase hyphenated form, as the protocol says.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || invalid("invalid message id: it must be a UUID in lowercase hyphenated form");
        if s.len() != 36 {
            return Err(bad());
        }
        let uuid = Uuid::try_parse(s).map_err(|_| bad())?;
        // try_parse also accepts upper case; the canonical form is lower case only.
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        Ok(Self(uuid))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// A version 7 id for a message stored after `previous` (the room's latest, if any): its time
    /// is `now_ms`, or `previous`'s when the clock is behind it (another container's clock, a
    /// clock set back), and it is always greater than `previous`. So a room's ids sort in the
    /// order its messages were stored, whatever the clocks of the servers that stored them.
    pub fn after(previous: Option<MessageId>, now_ms: u64) -> Self {
        let fresh = |ms: u64| {
            let mut random = [0u8; 10];
            fastrand::fill(&mut random);
            Self(uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid())
        };
        let Some(previous) = previous else {
            return fresh(now_ms);
        };
        let previous_ms = previous.timestamp_ms().unwrap_or(0);
        if now_ms > previous_ms {
            return fresh(now_ms);
        }
        // Same millisecond (or a clock behind): the 62 random bits after the variant, plus a
        // random step (so that ids stay hard to guess and leave room between them), which keeps
        // the time, the version and the variant; should they overflow, the next millisecond.
        const RAND_B: u128 = (1 << 62) - 1;
        let bits = previous.0.as_u128();
        let step = u128::from(fastrand::u32(1..));
        if (bits & RAND_B) + step > RAND_B {
            return fresh(previous_ms + 1);
        }
        Self(Uuid::from_u128(bits + step))
    }

    /// Milliseconds since the Unix epoch encoded in a version 7 id.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.0.get_timestamp().map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

/// A string of at most 64 characters, the rule shared by `requestId` and `clientMsgId`.
fn short_string(s: &str, field: &str) -> Result<Arc<str>, Invalid> {
    if s.chars().count() > 64 {
        return Err(invalid(format!("{field} must be at most 64 characters")));
    }
    Ok(s.into())
}

/// The `requestId` a client puts on a frame so that it can match the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        short_string(s, "requestId").map(Self)
    }
}

/// The sender's own id for a message, which makes retries idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        short_string(s, "clientMsgId").map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The page size of `history`: 1 to 100, 50 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u8);

impl PageLimit {
    pub const MAX: u8 = 100;
    pub const DEFAULT: Self = Self(50);

    pub fn parse(n: u64) -> Result<Self, Invalid> {
        match u8::try_from(n) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(invalid(format!(
                "limit must be an integer from 1 to {}",
                Self::MAX
            ))),
        }
    }

    pub const fn max() -> Self {
        Self(Self::MAX)
    }

    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// The gateway's id of a connection. Never shown to other clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }

    /// A fresh id in API Gateway's form: 11 random bytes in URL-safe base64 with its padding,
    /// 16 characters of `A-Z a-z 0-9 - _` ending in `=`, like `L0SM9cOFvHcCIhw=` (AWS's
    /// examples in the `@connections` docs and its sample events), so that code that handles
    /// ids (paths, URL encoding of `=`, keys) is tested on the real form.
    pub fn random() -> Self {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        // 88 bits make 14 full sextets and a last one of 4 bits (its low 2 bits are 0).
        let bits = fastrand::u128(..) >> 40;
        let mut s: String = (0..15)
            .map(|i| {
                let sextet = ((bits << 2) >> (6 * (14 - i))) & 0x3f;
                char::from(ALPHABET[sextet as usize])
            })
            .collect();
        s.push('=');
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who sent a message or is in a room, as other clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub name: DisplayName,
    /// Only when the connection is authenticated.
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<String>,
}

impl Member {
    /// The key under which `clientMsgId`s are remembered: the user id when authenticated, else
    /// the display name.
    pub fn sender_key(&self) -> String {
        match &self.user_id {
            Some(id) => format!("u:{id}"),
            None => format!("n:{}", self.name.as_str()),
        }
    }
}

// The records of a room's history, as the stores keep them and the frames show them.

/// A message to store. The store gives it its id and time.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomName,
    pub sender: Member,
    /// The connection it came from: without a user, the one that may change it later.
    pub connection: ConnectionId,
    pub text: MessageText,
    pub client_msg_id: Option<ClientMsgId>,
}

/// A stored message, as the `message` event and history show it (a deleted one as its
/// tombstone: `room`, `id`, `ts`, `seq` and `deleted: true`, nothing of its sender or text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: RoomName,
    pub id: MessageId,
    pub ts: u64,
    /// The room's sequence number of this message: one more than the room's event before it.
    pub seq: u64,
    pub sender: Member,
    /// Empty once deleted.
    pub text: String,
    pub client_msg_id: Option<ClientMsgId>,
    /// When its text was last edited.
    pub edited_at: Option<u64>,
    /// Who reacted with what: each reaction's users (see [`Editor::reactor_key`]).
    pub reactions: Reactions,
    /// Deleted: its text is gone from the store.
    pub deleted: bool,
    /// The connection that sent it, kept when the sender has no user id: the only one that may
    /// change it (never shown).
    pub author_connection: Option<ConnectionId>,
}

impl Serialize for StoredMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("room", &self.room)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("ts", &self.ts)?;
        map.serialize_entry("seq", &self.seq)?;
        if self.deleted {
            map.serialize_entry("deleted", &true)?;
            return map.end();
        }
        map.serialize_entry("sender", &self.sender)?;
        map.serialize_entry("text", &self.text)?;
        if let Some(client_msg_id) = &self.client_msg_id {
            map.serialize_entry("clientMsgId", client_msg_id)?;
        }
        if let Some(edited_at) = self.edited_at {
            map.serialize_entry("editedAt", &edited_at)?;
        }
        if !self.reactions.is_empty() {
            map.serialize_entry("reactions", &ReactionSummary(&self.reactions))?;
        }
        map.end()
    }
}

/// A message's reactions: each reaction (an emoji, say) to the users who reacted with it, in a
/// stable order; never an empty set.
pub type Reactions = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The most kinds of reaction on one message.
pub const MAX_REACTION_KINDS: usize = 20;

/// Reactions as frames show them: `{"👍": {"count": 2}}`, nobody's name.
pub struct ReactionSummary<'a>(pub &'a Reactions);

impl Serialize for ReactionSummary<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Count {
            count: usize,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (emoji, users) in self.0 {
            map.serialize_entry(emoji, &Count { count: users.len() })?;
        }
        map.end()
    }
}

/// A reaction: 1 to 16 characters (an emoji, a short word), no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Emoji(Arc<str>);

impl Emoji {
    pub const MAX_CHARS: usize = 16;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let chars = s.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS || s.chars().any(char::is_control) {
            return Err(invalid(format!(
                "emoji must be 1 to {} characters, without control characters",
                Self::MAX_CHARS
            )));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a reaction would do to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reacted {
    /// Its reactions after it.
    Changed(Reactions),
    /// Nothing: the user had reacted so already (or had not, to unreact).
    Unchanged,
    /// A new kind past [`MAX_REACTION_KINDS`].
    TooManyKinds,
}

/// Who asks to change a message.
#[derive(Debug, Clone, Copy)]
pub enum Editor<'a> {
    /// A client: its connection, and its user when authenticated.
    Connection {
        id: &'a ConnectionId,
        user_id: Option<&'a str>,
    },
    /// The product's own back end (the server API): it may change any message.
    Server,
}

impl Editor<'_> {
    /// Whose reaction it is: the user when authenticated, else the connection (a reaction of
    /// each kind per user per message).
    pub fn reactor_key(&self) -> String {
        match self {
            Self::Connection {
                user_id: Some(user),
                ..
            } => format!("u:{user}"),
            Self::Connection { id, user_id: None } => format!("c:{id}"),
            Self::Server => "server".to_owned(),
        }
    }
}

/// A change to a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit(MessageText),
    Delete,
    /// `react` (`add`) or `unreact`, by the reactor `by`.
    React {
        emoji: Emoji,
        by: String,
        add: bool,
    },
}

impl Change {
    /// What a room's log keeps of it.
    pub fn logged_kind(&self) -> LoggedKind {
        match self {
            Self::Edit(_) => LoggedKind::Edit,
            Self::Delete => LoggedKind::Delete,
            Self::React { .. } => LoggedKind::Reactions,
        }
    }
}

/// The kind of a change as a room's log keeps it. A message has at most one event of each kind
/// in the log: its latest edit, its latest change of reactions, its delete (which takes the
/// other two out); each shows the message as it is when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoggedKind {
    Edit,
    Reactions,
    Delete,
}

impl LoggedKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Edit => "edit",
            Self::Reactions => "reactions",
            Self::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Edit, Self::Reactions, Self::Delete]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// A change as a room's log keeps it: which message, and what kind (what it shows is read from
/// the message when the log is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedChange {
    pub seq: u64,
    pub id: MessageId,
    pub kind: LoggedKind,
}

/// A change as the room sees it, an event with its own `seq`: `messageUpdated` or
/// `messageDeleted`. An edit shows the message's latest text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageChange {
    pub room: RoomName,
    pub id: MessageId,
    pub seq: u64,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Edited {
        text: String,
        edited_at: u64,
    },
    Deleted,
    /// The message's reactions after the change.
    Reactions {
        reactions: Reactions,
    },
}

impl MessageChange {
    /// The event of `change` made at `now_ms` with `seq`, to `message`; `None` when it changes
    /// nothing (a reaction the user had already, or did not have), and an `Err` when it may not
    /// be made (a kind of reaction past the most).
    pub fn of(
        message: &StoredMessage,
        change: &Change,
        seq: u64,
        now_ms: u64,
    ) -> Result<Option<Self>, Reacted> {
        let kind = match change {
            Change::Edit(text) => ChangeKind::Edited {
                text: text.as_str().to_owned(),
                edited_at: now_ms,
            },
            Change::Delete => ChangeKind::Deleted,
            Change::React { emoji, by, add } => match message.react(emoji, by, *add) {
                Reacted::Changed(reactions) => ChangeKind::Reactions { reactions },
                Reacted::Unchanged => return Ok(None),
                Reacted::TooManyKinds => return Err(Reacted::TooManyKinds),
            },
        };
        Ok(Some(Self {
            room: message.room.clone(),
            id: message.id,
            seq,
            kind,
        }))
    }

    /// How an event read back from a store shows: an edit with the message's text as it is now,
    /// a change of reactions with its reactions now. A delete takes the message's other events
    /// out of the room's sequence, so they are not read back; should one be (a page read while
    /// the delete commits), it is `None`: the `messageDeleted` after it tells the rest.
    pub fn replayed(
        room: &RoomName,
        logged: LoggedChange,
        now: Option<&StoredMessage>,
    ) -> Option<Self> {
        let kind = match logged.kind {
            LoggedKind::Delete => ChangeKind::Deleted,
            LoggedKind::Edit => {
                let now = now.filter(|message| !message.deleted)?;
                ChangeKind::Edited {
                    text: now.text.clone(),
                    edited_at: now.edited_at.unwrap_or(now.ts),
                }
            }
            LoggedKind::Reactions => {
                let now = now.filter(|message| !message.deleted)?;
                ChangeKind::Reactions {
                    reactions: now.reactions.clone(),
                }
            }
        };
        Some(Self {
            room: room.clone(),
            id: logged.id,
            seq: logged.seq,
            kind,
        })
    }
}

/// Where a room's sequence stands: its latest event, as a store reads it before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomHead {
    /// The latest `seq`, 0 for a room with no event yet.
    pub seq: u64,
    /// The latest message's id.
    pub last_id: Option<MessageId>,
    /// How many messages the room has, where a store keeps the count (DynamoDB's, for unread
    /// counts without reading the messages); 0 in the others.
    pub messages: u64,
}

impl StoredMessage {
    /// Gives a new message the room's next `seq`, an id after the room's latest
    /// ([`MessageId::after`]), and `ts`, the id's own time, so that the two always agree.
    pub fn stamp(new: NewMessage, head: RoomHead, now_ms: u64) -> Self {
        let id = MessageId::after(head.last_id, now_ms);
        Self {
            ts: id.timestamp_ms().unwrap_or_default(),
            seq: head.seq + 1,
            id,
            room: new.room,
            author_connection: new.sender.user_id.is_none().then_some(new.connection),
            sender: new.sender,
            text: new.text.into_string(),
            client_msg_id: new.client_msg_id,
            edited_at: None,
            reactions: Reactions::new(),
            deleted: false,
        }
    }

    /// What `react` or `unreact` by `by` would make of its reactions.
    pub fn react(&self, emoji: &Emoji, by: &str, add: bool) -> Reacted {
        let mut reactions = self.reactions.clone();
        let changed = if add {
            if !reactions.contains_key(emoji.as_str()) && reactions.len() >= MAX_REACTION_KINDS {
                return Reacted::TooManyKinds;
            }
            reactions
                .entry(emoji.as_str().to_owned())
                .or_default()
                .insert(by.to_owned())
        } else {
            let removed = reactions
                .get_mut(emoji.as_str())
                .is_some_and(|users| users.remove(by));
            reactions.retain(|_, users| !users.is_empty());
            removed
        };
        if changed {
            Reacted::Changed(reactions)
        } else {
            Reacted::Unchanged
        }
    }

    /// Whether `editor` may edit or delete it: its sender's user, or without one the
    /// connection that sent it; and the server.
    pub fn may_be_changed_by(&self, editor: Editor<'_>) -> bool {
        match (editor, &self.sender.user_id) {
            (Editor::Server, _) => true,
            (Editor::Connection { user_id, .. }, Some(sender)) => user_id == Some(sender.as_str()),
            (Editor::Connection { id, user_id: None }, None) => {
                self.author_connection.as_ref() == Some(id)
            }
            (Editor::Connection { .. }, None) => false,
        }
    }

    /// The message after `change` (the stores keep it so): the new text, or the tombstone.
    pub fn apply(&mut self, change: &MessageChange) {
        match &change.kind {
            ChangeKind::Edited { text, edited_at } => {
                self.text.clone_from(text);
                self.edited_at = Some(*edited_at);
            }
            ChangeKind::Reactions { reactions } => self.reactions.clone_from(reactions),
            ChangeKind::Deleted => {
                self.text = String::new();
                self.reactions.clear();
                self.deleted = true;
            }
        }
    }
}

/// Where a page of history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// The newest messages before this id.
    Before(MessageId),
    /// The oldest messages after this id.
    After(MessageId),
    /// (Version 2) The oldest events after this sequence number.
    AfterSeq(u64),
}

/// Where a reader stands in a room (version 2's read state).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadState {
    /// The message it read up to; `None` before its first `markRead`.
    pub last_read: Option<MessageId>,
    /// The messages after it (all of the room's without a mark); shown up to [`MAX_UNREAD`].
    pub unread: u64,
}

/// The most `unread` a frame shows: past it, a client shows "999+".
pub const MAX_UNREAD: u64 = 999;

/// (Version 2) What the server API set for one user in one room: a grant (of a `private.`
/// room) and a ban (of any room but `lobby`), each on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserAccess {
    pub granted: bool,
    pub banned: bool,
}

/// (Version 2) One change of a [`UserAccess`]: the other half stays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChange {
    Grant(bool),
    Ban(bool),
}

impl UserAccess {
    pub fn with(mut self, change: AccessChange) -> Self {
        match change {
            AccessChange::Grant(on) => self.granted = on,
            AccessChange::Ban(on) => self.banned = on,
        }
        self
    }
}

/// A page of history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// Read after a `seq` only: the edits and deletes after it, which with `messages` make the
    /// page's events (at most the limit of both together, in `seq` order when merged).
    pub changes: Vec<MessageChange>,
    /// More messages exist beyond this page, in the direction of the query.
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_pattern_as_a_whole() {
        assert!(RoomName::parse("lobby").is_ok());
        assert!(RoomName::parse("A-b_c.9").is_ok());
        assert!(RoomName::parse(&"a".repeat(64)).is_ok());
        assert!(RoomName::parse(&"a".repeat(65)).is_err());
        assert!(RoomName::parse("").is_err());
        assert!(RoomName::parse("lobby\n").is_err());
        assert!(RoomName::parse("a b").is_err());
        assert!(RoomName::parse("é").is_err());
    }

    #[test]
    fn room_names_are_case_sensitive() {
        assert_ne!(RoomName::parse("Lobby").unwrap(), RoomName::lobby());
    }

    #[test]
    fn display_names_count_characters_not_bytes() {
        assert!(DisplayName::parse(&"é".repeat(32)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(33)).is_err());
    }

    #[test]
    fn display_names_refuse_empty_blank_and_control_characters() {
        assert!(DisplayName::parse("").is_err());
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse("a\u{0}b").is_err());
        assert!(
            DisplayName::parse("a\u{200b}b").is_err(),
            "zero width space is Cf"
        );
        assert!(
            DisplayName::parse("a\u{e000}").is_err(),
            "private use is Co"
        );
        assert!(DisplayName::parse("Ada Lovelace").is_ok());
    }

    #[test]
    fn guest_names_are_valid_display_names() {
        let guest = DisplayName::guest();
        assert!(guest.as_str().starts_with("guest-"));
        assert!(DisplayName::parse(guest.as_str()).is_ok());
    }

    #[test]
    fn message_text_allows_exactly_4000_code_points() {
        assert!(MessageText::parse("😀".repeat(4000)).is_ok());
        assert_eq!(
            MessageText::parse("😀".repeat(4001)),
            Err(TextError::TooLong { chars: 4001 })
        );
    }

    #[test]
    fn message_text_refuses_empty_and_whitespace_only_and_keeps_the_rest_verbatim() {
        assert_eq!(MessageText::parse(String::new()), Err(TextError::Empty));
        assert_eq!(MessageText::parse(" \n\t".into()), Err(TextError::Empty));
        let kept = MessageText::parse("  <b>hi</b>  ".into()).unwrap();
        assert_eq!(kept.as_str(), "  <b>hi</b>  ");
    }

    #[test]
    fn message_ids_must_be_canonical_lowercase_uuids() {
        let id = MessageId::new_v7();
        assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        assert!(MessageId::parse(&id.to_string().to_uppercase()).is_err());
        assert!(MessageId::parse(&id.as_uuid().simple().to_string()).is_err());
        assert!(MessageId::parse("not-a-uuid").is_err());
        assert!(MessageId::parse(&format!("{{{id}}}")).is_err());
    }

    #[test]
    fn new_message_ids_sort_in_creation_order_as_strings() {
        let ids: Vec<String> = (0..1000).map(|_| MessageId::new_v7().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn an_id_after_another_is_greater_whatever_the_clock_says() {
        let first = MessageId::after(None, 1_700_000_000_000);
        assert_eq!(first.timestamp_ms(), Some(1_700_000_000_000));
        // The same millisecond, and a clock 50 ms behind: still after, at the latest's time.
        for now in [1_700_000_000_000, 1_699_999_999_950] {
            let next = MessageId::after(Some(first), now);
            assert!(next > first);
            assert!(next.to_string() > first.to_string());
            assert_eq!(next.timestamp_ms(), Some(1_700_000_000_000));
            assert_eq!(next.as_uuid().get_version_num(), 7);
            assert_eq!(MessageId::parse(&next.to_string()), Ok(next));
        }
        // A clock ahead: its own time.
        let later = MessageId::after(Some(first), 1_700_000_000_007);
        assert_eq!(later.timestamp_ms(), Some(1_700_000_000_007));
        // All the random bits used up in one millisecond: the next millisecond.
        let full =
            MessageId::from_uuid(Uuid::from_u128(first.as_uuid().as_u128() | ((1 << 62) - 1)));
        let next = MessageId::after(Some(full), 1_700_000_000_000);
        assert!(next > full);
        assert_eq!(next.timestamp_ms(), Some(1_700_000_000_001));
    }

    #[test]
    fn page_limits_run_from_1_to_100() {
        assert!(PageLimit::parse(0).is_err());
        assert_eq!(PageLimit::parse(1).unwrap().get(), 1);
        assert_eq!(PageLimit::parse(100).unwrap().get(), 100);
        assert!(PageLimit::parse(101).is_err());
        assert!(PageLimit::parse(u64::MAX).is_err());
    }

    #[test]
    fn request_ids_are_at_most_64_characters() {
        assert!(RequestId::parse(&"x".repeat(64)).is_ok());
        assert!(RequestId::parse(&"x".repeat(65)).is_err());
        assert!(ClientMsgId::parse(&"é".repeat(64)).is_ok());
        assert!(ClientMsgId::parse(&"é".repeat(65)).is_err());
    }

    #[test]
    fn random_connection_ids_have_api_gateways_form() {
        let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = ConnectionId::random();
            let id = id.as_str();
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.ends_with('='), "{id}");
            assert!(id[..15].chars().all(alphabet), "{id}");
            // The last sextet holds 4 bits: AWS's ids end in one of `AEIMQUYcgkosw048` then `=`.
            assert!("AEIMQUYcgkosw048".contains(&id[14..15]), "{id}");
            seen.extend(id[..15].chars());
        }
        assert!(
            seen.contains(&'-') && seen.contains(&'_'),
            "the whole alphabet is used"
        );
        assert_ne!(ConnectionId::random(), ConnectionId::random());
    }
}
