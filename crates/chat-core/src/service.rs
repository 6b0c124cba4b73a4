//! [`Chat`]: `$connect`, `$disconnect` and every action of the protocol, over the ports.
//!
//! The gateway (the local binary, or a Lambda function) calls [`Chat::connect`] on the handshake,
//! [`Chat::handle`] for each frame, and [`Chat::disconnect`] when the socket is gone. Events for
//! other connections go out through the [`Notifier`]; the reply to the sender is returned, so
//! that the gateway can send it the way its platform does (a socket write locally, the route
//! response on API Gateway).

use std::sync::Arc;

use serde_json::Value;

use crate::clock::{Clock, now_ms};
use crate::config::ChatConfig;
use crate::domain::{
    Change, ChangeKind, ConnectionId, Cursor, DisplayName, Editor, MAX_REACTION_KINDS, MAX_UNREAD,
    Member, MessageId, NewMessage, Page, Reacted, RequestId, RoomAccess, RoomName, StoredMessage,
    UserAccess,
};
use crate::ports::{
    AllowanceClaim, Appended, Changed, ConnectionRecord, ConnectionStore, DirectUsers, FanOut,
    JoinOutcome, MessageStore, Notifier, Recipients, StoreError,
};
use crate::protocol::{
    Action, ActionName, ChangeEvent, ChatError, ErrorCode, HistoryPage, Inbound, PageItem, Payload,
    PresenceEvent, Rejection, Reply, Request, RoomSummary, ServerFrame, parse_frame,
};
use crate::rate_limit::TokenBucket;
use crate::telemetry;

/// Who is connecting, as the gateway read it from the handshake.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// The first `name` query parameter, decoded.
    pub name: Option<String>,
    /// The user id from a verified token, when authentication is on.
    pub user_id: Option<String>,
    /// The display name from a verified token (its `name` claim, else `sub`).
    pub token_name: Option<String>,
    /// (Version 2) The `private.` rooms the token grants (its `rooms` claim).
    pub rooms: Vec<String>,
    /// When the gateway accepted the handshake (API Gateway's `connectedAt`); now when `None`.
    pub connected_at_ms: Option<u64>,
}

impl ConnectRequest {
    /// The `name` query parameter (the first, when repeated), and the user an authorizer's
    /// context names, if any; `context` reads one field of that context.
    pub fn new<'a>(name: Option<&str>, context: impl Fn(&str) -> Option<&'a Value>) -> Self {
        let user = authorizer_context::user(&context);
        Self {
            name: name.map(str::to_owned),
            token_name: user.as_ref().and_then(|(_, name)| name.clone()),
            rooms: if user.is_some() {
                authorizer_context::rooms(&context)
            } else {
                Vec::new()
            },
            user_id: user.map(|(id, _)| id),
            connected_at_ms: None,
        }
    }

    /// The gateway's `connectedAt`.
    pub fn connected_at(mut self, ms: u64) -> Self {
        self.connected_at_ms = Some(ms);
        self
    }
}

/// How an authorizer names the user in its context (API Gateway's `requestContext.authorizer`),
/// one shape on both paths: the Lambda authorizer and the local binary's in-process one write
/// it, and `$connect` reads it into a [`ConnectRequest`].
pub mod authorizer_context {
    use serde_json::{Map, Value};

    pub const USER_ID: &str = "userId";
    pub const NAME: &str = "name";
    /// The rooms granted, as one string: API Gateway's context values are strings, numbers or
    /// booleans only ("Output from an Amazon API Gateway Lambda authorizer", API Gateway
    /// Developer Guide), so the list is JSON inside the string.
    pub const ROOMS: &str = "rooms";

    /// The context with the rooms a token grants (none: unchanged).
    pub fn with_rooms(mut context: Map<String, Value>, rooms: &[String]) -> Map<String, Value> {
        if !rooms.is_empty() {
            let list = Value::from(rooms.to_vec()).to_string();
            context.insert(ROOMS.into(), Value::String(list));
        }
        context
    }

    /// The rooms a context grants: none when absent or unreadable.
    pub fn rooms<'a>(get: impl Fn(&str) -> Option<&'a Value>) -> Vec<String> {
        get(ROOMS)
            .and_then(Value::as_str)
            .and_then(|list| serde_json::from_str(list).ok())
            .unwrap_or_default()
    }

    /// The context for a user (strings only, as API Gateway requires of context values).
    pub fn of(user_id: &str, name: Option<&str>) -> Map<String, Value> {
        let mut context = Map::new();
        context.insert(USER_ID.into(), Value::String(user_id.into()));
        if let Some(name) = name {
            context.insert(NAME.into(), Value::String(name.into()));
        }
        context
    }

    /// The user (id, name claim) a context names, if any: `get` reads one of its fields.
    pub fn user<'a>(get: impl Fn(&str) -> Option<&'a Value>) -> Option<(String, Option<String>)> {
        let user_id = get(USER_ID)?.as_str().filter(|id| !id.is_empty())?;
        let name = get(NAME).and_then(Value::as_str).map(str::to_owned);
        Some((user_id.to_owned(), name))
    }
}

/// Why a handshake is refused, with the HTTP status API Gateway would give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRejection {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many connections")]
    TooManyConnections,
    #[error("the server failed to accept the connection")]
    Internal,
}

impl ConnectRejection {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::TooManyConnections => 429,
            Self::Internal => 500,
        }
    }
}

/// The chat: one per process, shared by every connection.
#[derive(Clone)]
pub struct Chat {
    pub(crate) connections: Arc<dyn ConnectionStore>,
    pub(crate) messages: Arc<dyn MessageStore>,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) config: ChatConfig,
    /// Where a room's events go when not straight to its connections (a large room on AWS).
    fan_out: Option<Arc<dyn FanOut>>,
    clock: Clock,
}

impl Chat {
    pub fn new(
        connections: Arc<dyn ConnectionStore>,
        messages: Arc<dyn MessageStore>,
        notifier: Arc<dyn Notifier>,
        config: ChatConfig,
    ) -> Self {
        Self {
            connections,
            messages,
            notifier,
            config,
            fan_out: None,
            clock: Arc::new(now_ms),
        }
    }

    /// Hands each room event to `fan_out`, which may queue it rather than name its recipients.
    pub fn with_fan_out(mut self, fan_out: Arc<dyn FanOut>) -> Self {
        self.fan_out = Some(fan_out);
        self
    }

    /// Replaces the clock (tests of the rate limit).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Works out who is connecting and stores the connection in `lobby`.
    ///
    /// The gateway must be ready to deliver frames to `connection_id` before it calls this: from
    /// the moment the connection is in `lobby`, messages may be sent to it.
    pub async fn connect(
        &self,
        connection_id: &ConnectionId,
        request: &ConnectRequest,
    ) -> Result<Member, ConnectRejection> {
        let member = Self::member_for(request)?;
        let connected_at = request.connected_at_ms.unwrap_or_else(|| (self.clock)());
        let grants = if member.user_id.is_some() {
            request.rooms.clone()
        } else {
            Vec::new()
        };
        let stored = async {
            self.connections
                .insert(connection_id, &member, &grants, connected_at)
                .await?;
            self.connections
                .join(
                    connection_id,
                    &RoomName::lobby(),
                    self.config.max_rooms_per_connection,
                )
                .await
        };
        match stored.await {
            Ok(_) => Ok(member),
            Err(e) => {
                tracing::error!(connection = %connection_id, error = %e, "failed to store a new connection");
                // Best effort: leave nothing half-made behind.
                let _ = self.connections.remove(connection_id).await;
                Err(ConnectRejection::Internal)
            }
        }
    }

    fn member_for(request: &ConnectRequest) -> Result<Member, ConnectRejection> {
        if let Some(user_id) = &request.user_id {
            // Authenticated: the token names the user; a `name` query parameter is ignored.
            let claimed = request.token_name.as_deref().unwrap_or(user_id);
            let name = DisplayName::parse(claimed).map_err(|e| {
                ConnectRejection::Unauthorized(format!("the token's name is not usable: {e}"))
            })?;
            return Ok(Member {
                name,
                user_id: Some(user_id.clone()),
            });
        }
        let name = match &request.name {
            Some(name) => {
                DisplayName::parse(name).map_err(|e| ConnectRejection::BadRequest(e.0))?
            }
            None => DisplayName::guest(),
        };
        Ok(Member {
            name,
            user_id: None,
        })
    }

    /// Removes the connection and tells the rooms it was in (but `lobby`) that it left.
    pub async fn disconnect(&self, connection_id: &ConnectionId) {
        let record = match self.connections.remove(connection_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(connection = %connection_id, error = %e, "failed to remove a connection");
                return;
            }
        };
        for room in record.rooms.iter().filter(|room| !room.is_lobby()) {
            let result = self
                .notify_room(
                    room,
                    None,
                    &ServerFrame::Presence {
                        room,
                        event: PresenceEvent::Leave,
                        member: &record.member,
                    },
                )
                .await;
            if let Err(e) = result {
                tracing::warn!(room = %room, error = %e, "failed to send a leave on disconnect");
            }
        }
    }

    /// Handles one frame from a connection; returns the reply to the sender, if any.
    pub async fn handle(
        &self,
        connection_id: &ConnectionId,
        inbound: Inbound<'_>,
    ) -> Option<Reply> {
        let reply = match parse_frame(inbound) {
            Ok(request) => match self.dispatch(connection_id, &request).await {
                Ok(reply) => reply.map(Reply::ok),
                Err(error) => Some(
                    Rejection {
                        request_id: request.request_id,
                        error,
                    }
                    .into(),
                ),
            },
            Err(rejection) => Some(rejection.into()),
        };
        if let Some(code) = reply.as_ref().and_then(|reply| reply.error) {
            metrics::counter!(telemetry::ERRORS, "code" => code.as_str()).increment(1);
        }
        reply
    }

    async fn dispatch(
        &self,
        connection_id: &ConnectionId,
        request: &Request,
    ) -> Result<Option<Payload>, ChatError> {
        let request_id = request.request_id.as_ref();
        if let Action::Ping = request.action {
            return Ok(Some(Payload::encode(&ServerFrame::Pong { request_id })));
        }
        let read_me = self.connections.get(connection_id);
        // A message's room head is read while the connection is: one round trip, not two.
        let me = match &request.action {
            Action::SendMessage { room, .. } => {
                futures_util::future::join(read_me, self.messages.prepare_append(room))
                    .await
                    .0
            }
            _ => read_me.await,
        };
        let Some(me) = me.map_err(internal)? else {
            tracing::warn!(connection = %connection_id, "a frame from a connection that is not stored");
            return Err(ChatError::internal());
        };
        if let Some(room) = request.action.room_requiring_membership()
            && !me.is_member_of(room)
        {
            return Err(ChatError::new(
                ErrorCode::NotMember,
                format!("you are not a member of room {room}; join it first"),
            ));
        }
        match &request.action {
            Action::SendMessage {
                room,
                text,
                client_msg_id,
            } => {
                let new = NewMessage {
                    room: room.clone(),
                    sender: me.member.clone(),
                    connection: me.id.clone(),
                    text: text.clone(),
                    client_msg_id: client_msg_id.clone(),
                };
                self.send_message(&me, request_id, new).await.map(Some)
            }
            Action::JoinRoom { room, from } => {
                self.join_room(&me, request_id, room, *from).await.map(Some)
            }
            Action::LeaveRoom { room } => self.leave_room(&me, request_id, room).await.map(Some),
            Action::History {
                room,
                cursor,
                limit,
            } => {
                let page = self
                    .messages
                    .page(room, *cursor, limit.get())
                    .await
                    .map_err(internal)?;
                let field = HistoryPage::field_for(ActionName::History, *cursor);
                Ok(Some(fit_reply(
                    &page,
                    *cursor,
                    &[],
                    |items, has_more, _| {
                        Payload::encode(&ServerFrame::History {
                            request_id,
                            room,
                            page: HistoryPage {
                                items,
                                has_more,
                                field,
                            },
                        })
                    },
                )))
            }
            Action::Members { room } => {
                let members = self
                    .connections
                    .room_members(room, self.config.max_members_listed)
                    .await
                    .map_err(internal)?;
                let occupancy = self.occupancy(room).await?;
                let none = Page::default();
                Ok(Some(fit_reply(
                    &none,
                    Cursor::Latest,
                    &members,
                    |_, _, members| {
                        Payload::encode(&ServerFrame::Members {
                            request_id,
                            room,
                            members,
                            occupancy,
                        })
                    },
                )))
            }
            Action::Typing { room } => {
                self.notify_room(
                    room,
                    Some(&me.id),
                    &ServerFrame::Typing {
                        room,
                        member: &me.member,
                    },
                )
                .await
                .map_err(internal)?;
                Ok(None)
            }
            Action::Ping => Ok(Some(Payload::encode(&ServerFrame::Pong { request_id }))),
            Action::EditMessage { room, id, text } => self
                .change_message(&me, request_id, room, id, Change::Edit(text.clone()))
                .await
                .map(Some),
            Action::DeleteMessage { room, id } => self
                .change_message(&me, request_id, room, id, Change::Delete)
                .await
                .map(Some),
            Action::React {
                room,
                id,
                emoji,
                add,
            } => {
                let by = Editor::Connection {
                    id: &me.id,
                    user_id: me.member.user_id.as_deref(),
                }
                .reactor_key();
                let change = Change::React {
                    emoji: emoji.clone(),
                    by,
                    add: *add,
                };
                self.change_message(&me, request_id, room, id, change)
                    .await
                    .map(Some)
            }
            Action::MarkRead { room, id } => {
                self.mark_read(&me, request_id, room, id).await.map(Some)
            }
            Action::Rooms => self.rooms(&me, request_id).await.map(Some),
            Action::OpenDirect { user_id } => {
                self.open_direct(&me, request_id, user_id).await.map(Some)
            }
        }
    }

    /// `editMessage`, `deleteMessage`, `react` and `unreact`. Edits and deletes are the
    /// sender's only (checked after membership, before the rate limit, which they share with
    /// `sendMessage`: each is a frame to every member); reactions are anyone's, with an
    /// allowance of their own. The change is stored as the room's next event, then sent to the
    /// room, then acknowledged, like a message.
    async fn change_message(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        room: &RoomName,
        id: &MessageId,
        change: Change,
    ) -> Result<Payload, ChatError> {
        let no_message = || ChatError::bad_request(format!("room {room} has no message {id}"));
        let deleted = || ChatError::bad_request(format!("message {id} is deleted"));
        let message = self
            .messages
            .get(room, id)
            .await
            .map_err(internal)?
            .ok_or_else(no_message)?;
        if message.deleted {
            return Err(deleted());
        }
        let editor = Editor::Connection {
            id: &me.id,
            user_id: me.member.user_id.as_deref(),
        };
        let reaction = matches!(change, Change::React { .. });
        if !reaction && !message.may_be_changed_by(editor) {
            return Err(ChatError::new(
                ErrorCode::Forbidden,
                "only the sender of a message may edit or delete it",
            ));
        }
        if reaction {
            self.take_reaction_allowance(me).await?;
        } else {
            self.take_allowance(me).await?;
        }
        let answer = |frame: ServerFrame<'_>| Ok(Payload::encode(&frame));
        // A reaction the message has already (a double tap), or past the most kinds, needs no
        // store: the message was just read. (The store checks again, at its turn.)
        let known = match &change {
            Change::React { emoji, by, add } => match message.react(emoji, by, *add) {
                Reacted::Changed(_) => None,
                Reacted::Unchanged => Some(Changed::Unchanged),
                Reacted::TooManyKinds => Some(Changed::TooManyReactions),
            },
            Change::Edit(_) | Change::Delete => None,
        };
        let outcome = match known {
            Some(outcome) => outcome,
            None => self
                .messages
                .change(room, id, change)
                .await
                .map_err(internal)?,
        };
        let event = match outcome {
            Changed::Done(event) => event,
            Changed::Gone => return Err(deleted()),
            // Already so: nothing to tell the room.
            Changed::Unchanged => {
                return answer(ServerFrame::Reacted {
                    request_id,
                    room,
                    id: *id,
                });
            }
            Changed::TooManyReactions => {
                return Err(ChatError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "message {id} has {MAX_REACTION_KINDS} kinds of reaction, the most a message can have"
                    ),
                ));
            }
        };
        self.notify_room(room, None, &ServerFrame::Change(ChangeEvent(&event)))
            .await
            .map_err(|e| {
                // Stored: recovery by seq shows it to whoever missed it.
                tracing::error!(room = %room, error = %e, "fan-out failed after a change was stored");
            })
            .ok();
        let (id, seq) = (event.id, event.seq);
        answer(match event.kind {
            ChangeKind::Edited { .. } => ServerFrame::Updated {
                request_id,
                room,
                id,
                seq,
            },
            ChangeKind::Deleted => ServerFrame::Deleted {
                request_id,
                room,
                id,
                seq,
            },
            ChangeKind::Reactions { .. } => ServerFrame::Reacted {
                request_id,
                room,
                id,
            },
        })
    }

    /// `markRead`: the room read up to `id` (never back), for the user on all its connections
    /// (for a guest, this connection): the others in the room receive `read`.
    async fn mark_read(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        room: &RoomName,
        id: &MessageId,
    ) -> Result<Payload, ChatError> {
        // A write per call, as cheap as a reaction: the same allowance.
        self.take_reaction_allowance(me).await?;
        let read = self
            .messages
            .mark_read(room, &reader_key(me), id)
            .await
            .map_err(internal)?
            .ok_or_else(|| ChatError::bad_request(format!("room {room} has no message {id}")))?;
        if let Some(user_id) = &me.member.user_id {
            let mut others = self
                .connections
                .user_connections(room, user_id)
                .await
                .map_err(internal)?;
            others.retain(|other| other != &me.id);
            if !others.is_empty() {
                let frame = Payload::encode(&ServerFrame::Read {
                    request_id: None,
                    room,
                    id: read,
                });
                // Gone ones are the fan-out's to remove; a lost `read` costs a stale badge.
                self.notifier.broadcast(&others, &frame).await;
            }
        }
        Ok(Payload::encode(&ServerFrame::Read {
            request_id,
            room,
            id: read,
        }))
    }

    /// `openDirect`: the direct room of this user and `other` (the same whichever opens it),
    /// joined; the other user's connections are told, so that their clients can join it too.
    async fn open_direct(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        other: &str,
    ) -> Result<Payload, ChatError> {
        let Some(user_id) = &me.member.user_id else {
            return Err(ChatError::new(
                ErrorCode::Forbidden,
                "direct rooms are for signed-in users: connect with a token",
            ));
        };
        if user_id == other {
            return Err(ChatError::bad_request(
                "a direct room is of two users: userId is your own",
            ));
        }
        let room = RoomName::direct(user_id, other);
        self.messages
            .open_direct(&room, &DirectUsers::new(user_id, other))
            .await
            .map_err(internal)?;
        let joined = self
            .join_room(me, request_id, &room, Cursor::Latest)
            .await?;
        // Every connection is in lobby: the other user's connections are its members there.
        let theirs = self
            .connections
            .user_connections(&RoomName::lobby(), other)
            .await
            .map_err(internal)?;
        let mut theirs: Vec<ConnectionId> = theirs.into_iter().filter(|id| *id != me.id).collect();
        theirs.dedup();
        if !theirs.is_empty() {
            let frame = Payload::encode(&ServerFrame::Direct {
                room: &room,
                from: &me.member,
            });
            self.notifier.broadcast(&theirs, &frame).await;
        }
        Ok(joined)
    }

    /// `rooms`: each room of the connection with its unread count and latest message, in the
    /// order joined.
    async fn rooms(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
    ) -> Result<Payload, ChatError> {
        let reader = reader_key(me);
        let mut rooms = Vec::with_capacity(me.rooms.len());
        for room in &me.rooms {
            let read_state = self
                .messages
                .read_state(room, &reader)
                .await
                .map_err(internal)?;
            let mut latest = self
                .messages
                .page(room, Cursor::Latest, 1)
                .await
                .map_err(internal)?;
            rooms.push(RoomSummary {
                room: room.clone(),
                unread: read_state.unread.min(MAX_UNREAD),
                last: latest.messages.pop(),
            });
        }
        Ok(Payload::encode(&ServerFrame::Rooms {
            request_id,
            rooms: &rooms,
        }))
    }

    /// `lobby`'s number of connections, for its `joined` and `members` (no presence event
    /// keeps lobby's member list current, so clients show this instead); `None` elsewhere.
    async fn occupancy(&self, room: &RoomName) -> Result<Option<usize>, ChatError> {
        if !room.is_lobby() {
            return Ok(None);
        }
        let connections = self
            .connections
            .room_connections(room)
            .await
            .map_err(internal)?;
        Ok(Some(connections.len()))
    }

    /// Takes one reaction of the connection's reaction allowance, or refuses with
    /// `rate_limited`.
    async fn take_reaction_allowance(&self, me: &ConnectionRecord) -> Result<(), ChatError> {
        let limit = self.config.reaction_rate_limit;
        let allowed = self
            .connections
            .take_reaction_allowance(&me.id, limit, (self.clock)())
            .await
            .map_err(internal)?;
        if allowed {
            return Ok(());
        }
        Err(ChatError::new(
            ErrorCode::RateLimited,
            format!(
                "too many reactions: the limit is a burst of {}, then {} a second; nothing changed",
                limit.burst, limit.per_second
            ),
        ))
    }

    /// What the server API set for the connection's user in the room (nothing for a guest, or
    /// in `lobby`).
    pub(crate) async fn user_access(
        &self,
        me: &ConnectionRecord,
        room: &RoomName,
    ) -> Result<UserAccess, ChatError> {
        match &me.member.user_id {
            Some(user_id) if may_have_access_set(me, room) => {
                self.messages.access(room, user_id).await.map_err(internal)
            }
            _ => Ok(UserAccess::default()),
        }
    }

    /// Takes one frame of the connection's send allowance, or refuses with `rate_limited`.
    async fn take_allowance(&self, me: &ConnectionRecord) -> Result<(), ChatError> {
        let allowed = self
            .connections
            .take_send_allowance(&me.id, self.config.rate_limit, (self.clock)())
            .await
            .map_err(internal)?;
        if allowed {
            return Ok(());
        }
        let limit = self.config.rate_limit;
        Err(ChatError::new(
            ErrorCode::RateLimited,
            format!(
                "too many messages: the limit is a burst of {}, then {} a second; nothing was sent",
                limit.burst, limit.per_second
            ),
        ))
    }

    async fn send_message(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        new: NewMessage,
    ) -> Result<Payload, ChatError> {
        // The fast path: the allowance taken in the append's own write, when the store can and
        // the connection's bucket (as read) has a token. A retry uses up nothing there either:
        // a duplicate `clientMsgId` cancels the whole write.
        let limit = self.config.rate_limit;
        let now = (self.clock)();
        let mut bucket = me
            .allowance
            .unwrap_or_else(|| TokenBucket::full(limit, now));
        if bucket.try_take(limit, now) {
            let claim = AllowanceClaim {
                connection: me.id.clone(),
                before: me.allowance,
                after: bucket,
            };
            let started = std::time::Instant::now();
            let appended = self.messages.append_taking(&new, &claim).await;
            match appended.map_err(internal)? {
                Some(Appended::New(message)) => {
                    metrics::histogram!(telemetry::STORE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(telemetry::MESSAGES_STORED).increment(1);
                    self.deliver(&message).await;
                    return Ok(ack(request_id, &message));
                }
                Some(Appended::Duplicate(earlier)) => return Ok(ack(request_id, &earlier)),
                None => {}
            }
        }
        // A retry of a message already stored is answered with its ack, before the rate limit:
        // retries must not use up the allowance.
        if let Some(earlier) = self.earlier_send(&new).await? {
            return Ok(ack(request_id, &earlier));
        }
        self.take_allowance(me).await?;
        let message = self.store_and_deliver(new).await?;
        Ok(ack(request_id, &message))
    }

    /// The message stored already for this sender's `clientMsgId` in the room, if any.
    pub(crate) async fn earlier_send(
        &self,
        new: &NewMessage,
    ) -> Result<Option<StoredMessage>, ChatError> {
        let Some(client_msg_id) = &new.client_msg_id else {
            return Ok(None);
        };
        self.messages
            .find_by_client_msg_id(&new.room, &new.sender.sender_key(), client_msg_id)
            .await
            .map_err(internal)
    }

    /// Stores the message, then sends it to the room: the message as stored (the earlier one
    /// when a concurrent retry of the same `clientMsgId` won the race).
    pub(crate) async fn store_and_deliver(
        &self,
        new: NewMessage,
    ) -> Result<StoredMessage, ChatError> {
        // Stored before anyone sees it: what was acknowledged is never lost.
        let started = std::time::Instant::now();
        let appended = self.messages.append(new).await;
        metrics::histogram!(telemetry::STORE_SECONDS).record(started.elapsed().as_secs_f64());
        let message = match appended.map_err(internal)? {
            Appended::New(message) => {
                metrics::counter!(telemetry::MESSAGES_STORED).increment(1);
                message
            }
            // A concurrent retry won the race: answer it like a retry.
            Appended::Duplicate(earlier) => return Ok(earlier),
        };
        self.deliver(&message).await;
        Ok(message)
    }

    /// Sends a stored message to its room. Before the ack, so that a message sent after this
    /// ack reaches every member after this one.
    async fn deliver(&self, message: &StoredMessage) {
        self.notify_room(&message.room, None, &ServerFrame::Message(message))
            .await
            .map_err(|e| {
                // The message is stored; a member list that cannot be read loses only live
                // delivery, which history recovers. The sender still gets its ack.
                tracing::error!(room = %message.room, error = %e, "fan-out failed after the message was stored");
            })
            .ok();
    }

    async fn join_room(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        room: &RoomName,
        from: Cursor,
    ) -> Result<Payload, ChatError> {
        let direct = match room.access() {
            RoomAccess::Direct => self.messages.direct_users(room).await.map_err(internal)?,
            _ => None,
        };
        let access = self.user_access(me, room).await?;
        if !me.may_enter(room, direct.as_ref(), access) {
            return Err(refused_entry(me, room, access));
        }
        let outcome = self
            .connections
            .join(&me.id, room, self.config.max_rooms_per_connection)
            .await
            .map_err(internal)?;
        // Read again now that it is a member: a ban or revoke meanwhile either removed this
        // membership (it came after the join) or shows here (it came before this read).
        if outcome == JoinOutcome::Joined && may_have_access_set(me, room) {
            let now = match self.user_access(me, room).await {
                Ok(now) => now,
                Err(e) => {
                    let _ = self.connections.leave(&me.id, room).await;
                    return Err(e);
                }
            };
            if !me.may_enter(room, direct.as_ref(), now) {
                let _ = self.connections.leave(&me.id, room).await;
                return Err(refused_entry(me, room, now));
            }
        }
        match outcome {
            JoinOutcome::Joined | JoinOutcome::AlreadyMember => {}
            JoinOutcome::LimitExceeded => {
                return Err(ChatError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "you are in {} rooms already, the most a connection can be in; leave one first",
                        self.config.max_rooms_per_connection
                    ),
                ));
            }
            JoinOutcome::NoConnection => return Err(ChatError::internal()),
        }
        let limit = match from {
            Cursor::Latest => self.config.join_history,
            _ => self.config.recovery_history,
        };
        // The room's seq is read before its page: whatever is stored after it is in the page or
        // reaches this connection live (it is a member now), so a client that goes on from
        // `seq`, or from the last event it holds, misses nothing.
        let read = async {
            let (seq, read_state) = self
                .messages
                .seq_and_read_state(room, &reader_key(me))
                .await?;
            let page = self.messages.page(room, from, limit).await?;
            let members = self
                .connections
                .room_members(room, self.config.max_members_listed)
                .await?;
            Ok::<_, StoreError>((seq, page, members, read_state))
        };
        let (seq, page, members, read_state) = match read.await {
            Ok(read) => read,
            Err(e) => {
                // Undo a fresh join, so that a retry joins again and tells the room.
                if outcome == JoinOutcome::Joined {
                    let _ = self.connections.leave(&me.id, room).await;
                }
                return Err(internal(e));
            }
        };
        if outcome == JoinOutcome::Joined && !room.is_lobby() {
            self.notify_room(
                room,
                Some(&me.id),
                &ServerFrame::Presence {
                    room,
                    event: PresenceEvent::Join,
                    member: &me.member,
                },
            )
            .await
            .map_err(internal)?;
        }
        let occupancy = self.occupancy(room).await?;
        let field = HistoryPage::field_for(ActionName::JoinRoom, from);
        Ok(fit_reply(
            &page,
            from,
            &members,
            |items, has_more, members| {
                Payload::encode(&ServerFrame::Joined {
                    request_id,
                    room,
                    members,
                    seq,
                    last_read: read_state.last_read,
                    unread: read_state.unread.min(MAX_UNREAD),
                    occupancy,
                    history: HistoryPage {
                        items,
                        has_more,
                        field,
                    },
                })
            },
        ))
    }

    async fn leave_room(
        &self,
        me: &ConnectionRecord,
        request_id: Option<&RequestId>,
        room: &RoomName,
    ) -> Result<Payload, ChatError> {
        let was_member = self
            .connections
            .leave(&me.id, room)
            .await
            .map_err(internal)?;
        if was_member && !room.is_lobby() {
            self.notify_room(
                room,
                None,
                &ServerFrame::Presence {
                    room,
                    event: PresenceEvent::Leave,
                    member: &me.member,
                },
            )
            .await
            .map_err(internal)?;
        }
        Ok(Payload::encode(&ServerFrame::Left { request_id, room }))
    }

    /// Serializes the frame once and sends it to every connection in the room (but `except`).
    /// Connections found gone are removed.
    pub(crate) async fn notify_room(
        &self,
        room: &RoomName,
        except: Option<&ConnectionId>,
        frame: &ServerFrame<'_>,
    ) -> Result<(), StoreError> {
        let payload = Payload::encode(frame);
        let mut recipients = match &self.fan_out {
            None => self.connections.room_connections(room).await?,
            Some(fan_out) => match fan_out.recipients(room, except, &payload).await? {
                Recipients::Now(ids) => ids,
                Recipients::Queued => return Ok(()),
            },
        };
        if let Some(except) = except {
            recipients.retain(|id| id != except);
        }
        self.post(&recipients, &payload).await;
        Ok(())
    }
}

impl Chat {
    /// Posts one event to these connections, and removes those found gone (but one whose
    /// `$connect` may still run): the fan-out of [`Chat::notify_room`], and of a queued event's
    /// shard ([`FanOut`]).
    pub async fn post(&self, recipients: &[ConnectionId], payload: &Payload) {
        if recipients.is_empty() {
            return;
        }
        metrics::counter!(telemetry::DELIVERIES).increment(recipients.len() as u64);
        let gone = self.notifier.broadcast(recipients, payload).await;
        for id in gone {
            if self.may_still_be_connecting(&id).await {
                tracing::debug!(connection = %id, "gone while its $connect may still run: kept");
                continue;
            }
            tracing::info!(connection = %id, "removing a connection that is gone");
            if let Err(e) = self.connections.remove(&id).await {
                tracing::warn!(connection = %id, error = %e, "failed to remove a gone connection");
            }
        }
    }

    /// Whether a connection reported gone may be one whose `$connect` has not returned yet: API
    /// Gateway answers `PostToConnection` with 410 until then ("A message was posted to the
    /// WebSocket API before the connection was established": AWS Knowledge Center, "How do I
    /// troubleshoot 410 GoneException errors with API Gateway WebSocket APIs?"), and the
    /// connection is stored (in `lobby`) during its `$connect`. Such a connection must not be
    /// removed; one that is really gone is removed by its `$disconnect`, or expires.
    async fn may_still_be_connecting(&self, id: &ConnectionId) -> bool {
        match self.connections.get(id).await {
            Ok(Some(record)) => {
                (self.clock)().saturating_sub(record.connected_at_ms) < CONNECTING_WINDOW_MS
            }
            // Already removed, or unreadable: nothing to keep.
            Ok(None) | Err(_) => false,
        }
    }
}

/// How long after `connectedAt` a `$connect` may still be running: API Gateway's integration
/// timeout for WebSocket APIs is at most 29 seconds (API Gateway quotas), and a second more.
pub const CONNECTING_WINDOW_MS: u64 = 30_000;

/// The largest frame API Gateway delivers to a client: 128 KB, for a route response as for a
/// `PostToConnection` ("WebSocket API message payload size": Amazon API Gateway quotas for
/// configuring and running a WebSocket API). A bigger one never reaches the client.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// Encodes a reply that holds a page of messages and a member list, so that it fits in
/// [`MAX_FRAME_BYTES`]: messages are left out from the far end of the page (the oldest of a page
/// read backwards, the newest of one read forwards), so that the page stays a page in the
/// direction of its query and `hasMore` tells the client to read on; only when no message is
/// left are members left out. `encode` builds the frame from what is kept.
fn fit_reply(
    page: &Page,
    cursor: Cursor,
    members: &[Member],
    encode: impl Fn(&[PageItem<'_>], bool, &[Member]) -> Payload,
) -> Payload {
    let forward = matches!(cursor, Cursor::After(_) | Cursor::AfterSeq(_));
    let all = PageItem::merged(page);
    let (mut messages, mut members) = (all.as_slice(), members);
    loop {
        let shortened = messages.len() < all.len();
        let payload = encode(messages, page.has_more || shortened, members);
        let size = payload.bytes().len();
        if size <= MAX_FRAME_BYTES || (messages.is_empty() && members.is_empty()) {
            return payload;
        }
        let mut excess = size - MAX_FRAME_BYTES;
        // Each item costs its JSON and a comma; drop until that much is gone (at least one).
        let cost = |json: Result<Vec<u8>, _>| json.map_or(1, |j: Vec<u8>| j.len() + 1);
        if !messages.is_empty() {
            while excess > 0 && !messages.is_empty() {
                let (dropped, rest) = if forward {
                    let (rest, last) = messages.split_at(messages.len() - 1);
                    (&last[0], rest)
                } else {
                    let (first, rest) = messages.split_at(1);
                    (&first[0], rest)
                };
                excess = excess.saturating_sub(cost(serde_json::to_vec(dropped)));
                messages = rest;
            }
        } else {
            while excess > 0 && !members.is_empty() {
                let (rest, last) = members.split_at(members.len() - 1);
                excess = excess.saturating_sub(cost(serde_json::to_vec(&last[0])));
                members = rest;
            }
        }
    }
}

/// Whether the server API may have set anything for this connection in this room: it sets
/// grants and bans for users, never in `lobby`.
fn may_have_access_set(me: &ConnectionRecord, room: &RoomName) -> bool {
    me.member.user_id.is_some() && !room.is_lobby()
}

/// The `forbidden` of a `joinRoom` that [`ConnectionRecord::may_enter`] refused.
fn refused_entry(me: &ConnectionRecord, room: &RoomName, access: UserAccess) -> ChatError {
    let message = match room.access() {
        _ if access.banned => format!("you are banned from room {room}"),
        RoomAccess::Private if me.member.user_id.is_none() => {
            format!("room {room} is private: only signed-in users with a grant may enter")
        }
        RoomAccess::Private => format!("room {room} is private: you have no grant"),
        RoomAccess::Direct => format!("room {room} is a direct room of two other users"),
        RoomAccess::Public => format!("you may not enter room {room}"),
    };
    ChatError::new(ErrorCode::Forbidden, message)
}

/// Whose read state a connection reads and writes: its user's, or without one its own.
fn reader_key(me: &ConnectionRecord) -> String {
    Editor::Connection {
        id: &me.id,
        user_id: me.member.user_id.as_deref(),
    }
    .reactor_key()
}

fn ack(request_id: Option<&RequestId>, message: &StoredMessage) -> Payload {
    Payload::encode(&ServerFrame::Ack {
        request_id,
        room: &message.room,
        id: message.id,
        ts: message.ts,
        seq: message.seq,
        client_msg_id: message.client_msg_id.as_ref(),
    })
}

fn internal(e: StoreError) -> ChatError {
    tracing::error!(error = %e, "a store failed");
    ChatError::internal()
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::authorizer_context;

    fn user(context: Value) -> Option<(String, Option<String>)> {
        let context: Map<String, Value> = serde_json::from_value(context).unwrap();
        authorizer_context::user(|key| context.get(key))
    }

    #[test]
    fn the_context_gives_the_user_only_when_there_is_one() {
        assert_eq!(
            user(json!({"userId":"u1","name":"Ada","principalId":"u1"})),
            Some(("u1".into(), Some("Ada".into())))
        );
        assert_eq!(user(json!({})), None);
        assert_eq!(user(json!({"userId":""})), None);
        assert_eq!(user(json!({"userId":7})), None);
    }

    #[test]
    fn a_contexts_rooms_are_a_json_list_in_a_string_and_read_back() {
        let rooms = vec!["private.a".to_owned(), "private.team-*".to_owned()];
        let context = authorizer_context::with_rooms(authorizer_context::of("u1", None), &rooms);
        assert_eq!(
            context.get("rooms"),
            Some(&Value::String(r#"["private.a","private.team-*"]"#.into())),
            "API Gateway takes strings, numbers and booleans only"
        );
        assert_eq!(authorizer_context::rooms(|key| context.get(key)), rooms);
        let none = authorizer_context::with_rooms(authorizer_context::of("u1", None), &[]);
        assert!(!none.contains_key("rooms"));
        assert!(authorizer_context::rooms(|key| none.get(key)).is_empty());
        let garbled = json!({"rooms": "not a list"});
        assert!(authorizer_context::rooms(|key| garbled.get(key)).is_empty());
    }

    #[test]
    fn a_written_context_reads_back_as_its_user() {
        let context = Value::Object(authorizer_context::of("u1", Some("Ada")));
        assert_eq!(user(context), Some(("u1".into(), Some("Ada".into()))));
        let nameless = Value::Object(authorizer_context::of("u2", None));
        assert_eq!(user(nameless), Some(("u2".into(), None)));
    }
}
