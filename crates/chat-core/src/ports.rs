//! The ports: what the chat core needs from the world, as small traits.
//!
//! Adapters implement them: [`crate::memory`] (in process), `chat-sqlite` (the local binary's
//! messages), and the DynamoDB / API Gateway adapters of the Lambda functions. Everything the
//! protocol requires across frames (membership, rate limits, idempotent sends) lives behind these
//! traits, so that it holds across Lambda invocations when the adapter is DynamoDB.

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::domain::{
    AccessChange, Change, ClientMsgId, ConnectionId, Cursor, Member, MessageChange, MessageId,
    NewMessage, Page, ReadState, RoomAccess, RoomName, StoredMessage, UserAccess,
};
use crate::protocol::Payload;
use crate::rate_limit::{RateLimit, TokenBucket};

/// A store failed (I/O, throttling, a broken connection). The client sees only `internal`.
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A connection as the stores know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub member: Member,
    /// When the gateway accepted its handshake (API Gateway's `connectedAt`), ms since the epoch.
    pub connected_at_ms: u64,
    /// The rooms it is a member of, in the order joined.
    pub rooms: Vec<RoomName>,
    /// (Version 2) The `private.` rooms its user may enter: exact names, or prefixes ending in
    /// `*` (its token's `rooms` claim). Always empty without a user.
    pub grants: Vec<String>,
    /// Its `sendMessage` allowance as stored when it was read (`None`: untouched, so full). A
    /// store that can take it in the append's own write ([`MessageStore::append_taking`]) is
    /// given it back as the state to compare with.
    pub allowance: Option<TokenBucket>,
}

impl ConnectionRecord {
    pub fn is_member_of(&self, room: &RoomName) -> bool {
        self.rooms.contains(room)
    }

    /// Whether its token grants the room: a `private.` one that a grant of its `rooms` claim
    /// covers (never without a user).
    pub fn token_grants(&self, room: &RoomName) -> bool {
        self.member.user_id.is_some() && self.grants.iter().any(|grant| grant_covers(grant, room))
    }

    /// Whether it may join the room: any public one; a `private.` one with a user and a grant
    /// that covers it (its token's, or the server API's: `access`); a `dm.` one if its user is
    /// one of the room's two (`direct`: the room's users, when it was opened). Never when the
    /// server API banned its user (`access`: what it set for this user in this room).
    pub fn may_enter(
        &self,
        room: &RoomName,
        direct: Option<&DirectUsers>,
        access: UserAccess,
    ) -> bool {
        if access.banned {
            return false;
        }
        match room.access() {
            RoomAccess::Public => true,
            RoomAccess::Private => {
                self.token_grants(room) || (self.member.user_id.is_some() && access.granted)
            }
            RoomAccess::Direct => match (&self.member.user_id, direct) {
                (Some(user), Some(users)) => users.0 == *user || users.1 == *user,
                _ => false,
            },
        }
    }
}

/// The two users of a direct room, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectUsers(pub String, pub String);

impl DirectUsers {
    pub fn new(a: &str, b: &str) -> Self {
        if a <= b {
            Self(a.to_owned(), b.to_owned())
        } else {
            Self(b.to_owned(), a.to_owned())
        }
    }
}

/// Whether a grant (an exact room name, or a prefix ending in `*`) covers the room.
pub fn grant_covers(grant: &str, room: &RoomName) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => room.as_str().starts_with(prefix),
        None => grant == room.as_str(),
    }
}

/// What `join` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    AlreadyMember,
    /// The connection is in `max_rooms` rooms already.
    LimitExceeded,
    /// The connection is not (or no longer) stored.
    NoConnection,
}

/// Who is connected, and in which rooms.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Stores a new connection, in no room yet; `connected_at_ms` is the gateway's `connectedAt`.
    async fn insert(
        &self,
        id: &ConnectionId,
        member: &Member,
        grants: &[String],
        connected_at_ms: u64,
    ) -> StoreResult<()>;

    async fn get(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>>;

    /// Removes the connection and all its memberships; returns what it was.
    async fn remove(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>>;

    /// Adds the connection to the room, unless it would then be in more than `max_rooms`.
    async fn join(
        &self,
        id: &ConnectionId,
        room: &RoomName,
        max_rooms: usize,
    ) -> StoreResult<JoinOutcome>;

    /// Removes the connection from the room; false when it was not a member.
    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> StoreResult<bool>;

    /// Every connection in the room: the fan-out list.
    async fn room_connections(&self, room: &RoomName) -> StoreResult<Vec<ConnectionId>>;

    /// The distinct members of the room, at most `limit`.
    async fn room_members(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Member>>;

    /// (Version 2) The connections in the room of the user with this id (its tabs and devices).
    async fn user_connections(
        &self,
        room: &RoomName,
        user_id: &str,
    ) -> StoreResult<Vec<ConnectionId>>;

    /// Takes one message from the connection's allowance; false when it is used up.
    async fn take_send_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool>;

    /// (Version 2) Takes one reaction (`react`, `unreact`) from the connection's reaction
    /// allowance, which is apart from its messages'; false when it is used up.
    async fn take_reaction_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool>;
}

/// What `append` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now.
    New(StoredMessage),
    /// The same sender already sent this `clientMsgId` in this room: here is that message.
    Duplicate(StoredMessage),
}

/// One token of a connection's `sendMessage` allowance, for [`MessageStore::append_taking`]:
/// the bucket as it was read, and as it is after the take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowanceClaim {
    pub connection: ConnectionId,
    pub before: Option<TokenBucket>,
    pub after: TokenBucket,
}

/// What `change` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Stored, with the room's next `seq`.
    Done(MessageChange),
    /// No such message in the room, or it is deleted: nothing changed, no event added.
    Gone,
    /// A reaction the user had already (or an `unreact` of one it had not): nothing to change.
    Unchanged,
    /// A new kind of reaction past [`MAX_REACTION_KINDS`](crate::domain::MAX_REACTION_KINDS).
    TooManyReactions,
}

/// Messages, per room, in the order they were stored.
///
/// Each stored event of a room gets the room's next `seq` (1, 2, 3, ...) and becomes visible to
/// readers in that order, with no gap, whichever server or container stored it: a reader that
/// has seen `seq` N and asks for what follows N misses nothing. A message's id sorts in the same
/// order ([`StoredMessage::stamp`]), so that version 1's id cursors see the same order.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Stores the message durably, unless its sender already used its `clientMsgId` in the room.
    async fn append(&self, message: NewMessage) -> StoreResult<Appended>;

    /// The room's latest `seq`: 0 when it has no event.
    async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64>;

    /// Reads ahead what an append to the room will need, while the caller reads the sender's
    /// connection (a store whose every read is a round trip saves one). A hint: the default
    /// does nothing, and a failure only loses the head start.
    async fn prepare_append(&self, _room: &RoomName) {}

    /// Stores the message and takes the sender's allowance in one write, when the store keeps
    /// connections too (DynamoDB: one transaction over both tables): nothing is written unless
    /// both succeed, so a duplicate `clientMsgId` uses up nothing. `None` when it cannot here:
    /// the default; the bucket is no longer `claim.before` (another frame of the connection took
    /// a token); or the room is busy. The caller then takes the allowance and appends apart.
    async fn append_taking(
        &self,
        _message: &NewMessage,
        _claim: &AllowanceClaim,
    ) -> StoreResult<Option<Appended>> {
        Ok(None)
    }

    /// The message this sender (see [`Member::sender_key`]) sent with this `clientMsgId`.
    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>>;

    /// A page of the room's history: at most `limit` messages, oldest first (in `seq` order).
    /// After a `seq`, the page also holds the changes after it (at most `limit` events in all),
    /// each as [`MessageChange::replayed`] shows it; the messages show their latest state.
    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page>;

    /// (Version 2) Marks the room read up to `id` for `reader` (see
    /// [`Editor::reactor_key`](crate::domain::Editor::reactor_key)), unless it has read up to a
    /// later message already: the message it has read up to now, or `None` when the room has no
    /// message `id`.
    async fn mark_read(
        &self,
        room: &RoomName,
        reader: &str,
        id: &MessageId,
    ) -> StoreResult<Option<MessageId>>;

    /// (Version 2) Where `reader` stands in the room: the message it read up to, and how many
    /// messages came after it (all of the room's without a mark), counted up to at least
    /// [`MAX_UNREAD`](crate::domain::MAX_UNREAD).
    async fn read_state(&self, room: &RoomName, reader: &str) -> StoreResult<ReadState>;

    /// (Version 2) The room's latest `seq` ([`MessageStore::latest_seq`]) and the reader's
    /// state ([`MessageStore::read_state`]), for `joined`. A store that keeps both in one
    /// place (DynamoDB's room head) reads it once.
    async fn seq_and_read_state(
        &self,
        room: &RoomName,
        reader: &str,
    ) -> StoreResult<(u64, ReadState)> {
        Ok((
            self.latest_seq(room).await?,
            self.read_state(room, reader).await?,
        ))
    }

    /// (Version 2) Records the two users of a direct room (the same pair again: nothing new).
    async fn open_direct(&self, room: &RoomName, users: &DirectUsers) -> StoreResult<()>;

    /// (Version 2) The two users of a direct room, if it was opened.
    async fn direct_users(&self, room: &RoomName) -> StoreResult<Option<DirectUsers>>;

    /// (Version 2) What the server API set for the user in the room (nothing set: neither
    /// granted nor banned). Read with strong consistency: a join reads it after it is a member,
    /// so that a ban or revoke at the same time either sees the membership or is seen.
    async fn access(&self, room: &RoomName, user_id: &str) -> StoreResult<UserAccess>;

    /// (Version 2) Grants or revokes, bans or lifts the ban, durably; the other half of the
    /// user's access in the room stays as it is.
    async fn set_access(
        &self,
        room: &RoomName,
        user_id: &str,
        change: AccessChange,
    ) -> StoreResult<()>;

    /// (Version 2) The message with this id in the room, as it is now (a tombstone when deleted).
    async fn get(&self, room: &RoomName, id: &MessageId) -> StoreResult<Option<StoredMessage>>;

    /// (Version 2) Edits, deletes or reacts to the message, as the room's next event (its own
    /// `seq`), keeping one event of each [`LoggedKind`](crate::domain::LoggedKind) per message;
    /// [`Changed::Gone`] when it does not exist or is deleted. Who may is the caller's to check.
    async fn change(&self, room: &RoomName, id: &MessageId, change: Change)
    -> StoreResult<Changed>;
}

/// Who gets one event of a room now: [`FanOut::recipients`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// These connections: the caller posts to them before it answers.
    Now(Vec<ConnectionId>),
    /// Nobody now: a queue took the event and posts it to every member (but the one excepted)
    /// later, in order (a room too large for one invocation: the AWS adapter's sharded fan-out).
    Queued,
}

/// How a room's events reach its members, when that is not always "post to each now". Without
/// one, [`Chat`](crate::Chat) posts to [`ConnectionStore::room_connections`].
#[async_trait]
pub trait FanOut: Send + Sync {
    /// The recipients of `payload`, an event of `room` for every member but `except`; or
    /// [`Recipients::Queued`] once it is durably queued for them.
    async fn recipients(
        &self,
        room: &RoomName,
        except: Option<&ConnectionId>,
        payload: &Payload,
    ) -> StoreResult<Recipients>;
}

/// Whether a frame reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The connection no longer exists (API Gateway's `GoneException`).
    Gone,
}

/// Delivering a frame failed for another reason than the connection being gone.
#[derive(Debug, thiserror::Error)]
#[error("notify error: {0}")]
pub struct NotifyError(pub String);

/// Delivers frames to connections.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError>;

    /// (Version 2) Closes the connection (the server API's `DELETE .../connections`): with
    /// 1008 where the gateway can say so, as API Gateway's `DeleteConnection` does with 1000.
    async fn close(&self, to: &ConnectionId) -> Result<Delivery, NotifyError>;

    /// How many sends [`Notifier::broadcast`] runs at once by default.
    fn broadcast_concurrency(&self) -> usize {
        32
    }

    /// Sends one payload to many connections; returns those that are gone. A failure to reach
    /// one never stops the others. The default runs up to [`Notifier::broadcast_concurrency`]
    /// sends at once.
    async fn broadcast(&self, to: &[ConnectionId], payload: &Payload) -> Vec<ConnectionId> {
        let concurrency = self.broadcast_concurrency().max(1);
        let mut gone = Vec::new();
        let mut ids = to.iter();
        let mut pending = FuturesUnordered::new();
        loop {
            while pending.len() < concurrency {
                let Some(id) = ids.next() else { break };
                pending.push(deliver(self, id, payload));
            }
            let Some((id, result)) = pending.next().await else {
                break;
            };
            match result {
                Ok(Delivery::Delivered) => {}
                Ok(Delivery::Gone) => gone.push(id.clone()),
                Err(e) => tracing::warn!(connection = %id, error = %e, "failed to deliver a frame"),
            }
        }
        gone
    }
}

async fn deliver<'a, N: Notifier + ?Sized>(
    notifier: &'a N,
    id: &'a ConnectionId,
    payload: &'a Payload,
) -> (&'a ConnectionId, Result<Delivery, NotifyError>) {
    (id, notifier.send(id, payload).await)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the sends in flight; every third connection is gone.
    #[derive(Default)]
    struct Slow {
        in_flight: AtomicUsize,
        most: AtomicUsize,
        bound: usize,
    }

    #[async_trait]
    impl Notifier for Slow {
        async fn send(&self, to: &ConnectionId, _: &Payload) -> Result<Delivery, NotifyError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let n: usize = to.as_str().parse().unwrap();
            Ok(if n.is_multiple_of(3) {
                Delivery::Gone
            } else {
                Delivery::Delivered
            })
        }

        async fn close(&self, _: &ConnectionId) -> Result<Delivery, NotifyError> {
            Ok(Delivery::Delivered)
        }

        fn broadcast_concurrency(&self) -> usize {
            self.bound
        }
    }

    #[tokio::test]
    async fn broadcast_runs_at_most_the_notifiers_concurrency_and_reports_the_gone() {
        let notifier = Slow {
            bound: 5,
            ..Slow::default()
        };
        let to: Vec<ConnectionId> = (0..40).map(|n| ConnectionId::new(n.to_string())).collect();
        let payload = Payload::from_json("{}".into());
        let mut gone = notifier.broadcast(&to, &payload).await;
        gone.sort();
        let mut expected: Vec<ConnectionId> = to.iter().step_by(3).cloned().collect();
        expected.sort();
        assert_eq!(gone, expected);
        assert_eq!(notifier.most.load(Ordering::SeqCst), 5);
    }
}
