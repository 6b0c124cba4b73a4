//! [`DynamoMessages`]: each room's messages in its partition of the messages table, sorted by id,
//! and by `seq` in the table's local index.
//!
//! A room's head item holds its latest visible `seq` and message id, and a ticket counter. An
//! append takes the next ticket (an atomic `ADD`: never contended), waits for its turn (the head
//! at the ticket before), and writes its message with `seq` = its ticket and an id after the
//! head's, in one transaction with the head, on the condition that the head is still at the
//! ticket before. So messages become visible one after another in `seq` order, every `seq` is
//! used once, and no reader can see `seq` N+1 before N, whatever the order in which requests
//! finish or the containers' clocks (a clock behind the head's time takes the head's). Appends
//! racing in one room queue in ticket order rather than all retrying at once, which would cost a
//! cancelled transaction each. A writer that died holding a ticket is skipped after
//! [`STALLED_AFTER`] (its `seq` then never appears); should it wake up, it finds its turn passed
//! and takes a new ticket.
//!
//! A message with a `clientMsgId` also writes its idempotency key, which must not exist yet: a
//! retry, from any container, finds the key and gets the first message back.
//!
//! An edit, a change of reactions or a delete is an event of the room too: it takes its turn
//! like an append, and in one transaction moves the head, updates the message (on the condition
//! that it exists and is not deleted), writes a change item (`~change#<seq>`, in the index) that
//! names the message, and deletes the change item it replaces: a message keeps one of each kind,
//! its latest (a delete replaces both). A change item holds no text: a recovery shows the
//! message as it is then, so a delete removes the text from the table at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chat_core::clock::{Clock, now_ms};
use chat_core::domain::{
    AccessChange, Change, ChangeKind, ClientMsgId, ConnectionId, Cursor, LoggedKind, Member,
    MessageChange, MessageId, NewMessage, Page, Reactions, ReadState, RoomHead, RoomName,
    StoredMessage, UserAccess,
};
use chat_core::memory::{LoggedChange, merge_events, messages_to_read, replay};
use chat_core::ports::{
    AllowanceClaim, Appended, Changed, DirectUsers, MessageStore, StoreError, StoreResult,
};
use serde::{Deserialize, Serialize};

use crate::capacity::{Meter, Units};
use crate::db::{Db, Item, keys, n, room_key, s, sdk_error, serde_error};
use crate::tables::{ROOM_KEY, SEQ_ATTRIBUTE, SEQ_INDEX, SORT_KEY, Tables};

/// How long an append may wait for its turn before it fails: well inside API Gateway's 29 s
/// integration timeout.
const APPEND_DEADLINE: Duration = Duration::from_secs(15);
/// A head that has not moved for this long, while a later ticket waits, has lost the writer of
/// its next `seq` (a container that died, or is stuck): the waiter skips that `seq`. A live
/// writer commits within milliseconds of its turn.
pub const STALLED_AFTER: Duration = Duration::from_secs(3);
/// The attributes of a user's access item (`~access#<user>`): the server API's grant and ban.
const GRANTED: &str = "granted";
const BANNED: &str = "banned";
/// How long a guest's read mark is kept (its connection's lifetime on API Gateway is 2 hours).
const GUEST_MARK_LIFETIME_SECS: u64 = 3 * 3600;

/// A message item: the sort key is its id; `seq` puts it in the local index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageItem {
    room: String,
    sk: String,
    seq: u64,
    ts: u64,
    sender: Member,
    /// Absent once deleted.
    #[serde(default)]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited_at: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author_connection: Option<String>,
    #[serde(default, skip_serializing_if = "Reactions::is_empty")]
    reactions: Reactions,
    /// The `seq` of its latest edit and of its latest change of reactions: their change
    /// items, which the next of their kind (or its delete) replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edit_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reactions_seq: Option<u64>,
    /// Its place among the room's messages (1, 2, 3...): unread counts are differences of these.
    #[serde(default, rename = "n")]
    number: u64,
}

/// A direct room's two users, in its partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DirectItem {
    room: String,
    sk: String,
    users: Vec<String>,
}

/// A reader's mark in a room: the message it read up to, and that message's number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadItem {
    room: String,
    sk: String,
    last_read: String,
    #[serde(rename = "n")]
    number: u64,
    /// A guest's mark goes with its connection (the table's TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

/// An edit or a delete of `message_id`, the room's event `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeItem {
    room: String,
    sk: String,
    seq: u64,
    message_id: String,
    /// `edit`, `reactions` or `delete`.
    kind: String,
}

impl MessageItem {
    fn of(message: &StoredMessage) -> Self {
        Self {
            room: message.room.as_str().to_owned(),
            sk: message.id.to_string(),
            seq: message.seq,
            ts: message.ts,
            sender: message.sender.clone(),
            text: message.text.clone(),
            client_msg_id: message
                .client_msg_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            edited_at: message.edited_at,
            deleted: message.deleted,
            author_connection: message
                .author_connection
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            reactions: message.reactions.clone(),
            // Written only by changes.
            edit_seq: None,
            reactions_seq: None,
            // Written by the append, which counts.
            number: 0,
        }
    }

    fn into_message(self) -> StoreResult<StoredMessage> {
        let invalid = |e: chat_core::domain::Invalid| StoreError::new(e.0);
        Ok(StoredMessage {
            room: RoomName::parse(&self.room).map_err(invalid)?,
            id: MessageId::parse(&self.sk).map_err(invalid)?,
            ts: self.ts,
            seq: self.seq,
            sender: self.sender,
            text: self.text,
            client_msg_id: self
                .client_msg_id
                .as_deref()
                .map(ClientMsgId::parse)
                .transpose()
                .map_err(invalid)?,
            edited_at: self.edited_at,
            reactions: self.reactions,
            deleted: self.deleted,
            author_connection: self.author_connection.map(ConnectionId::new),
        })
    }
}

/// An idempotency key: which message a sender's `clientMsgId` became in a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DedupeItem {
    room: String,
    sk: String,
    message_id: String,
}

/// A room's head: its latest visible `seq` and message id, and the last ticket taken. Its
/// `headSeq` is not `seq`, which keeps it out of the index of messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadItem {
    #[serde(default)]
    head_seq: u64,
    #[serde(default)]
    last_id: Option<String>,
    /// How many messages the room has: unread counts are differences of these.
    #[serde(default)]
    message_count: u64,
    /// The last ticket taken (absent before the first).
    #[serde(default)]
    next_ticket: Option<u64>,
}

const HEAD_SEQ: &str = "headSeq";
const LAST_ID: &str = "lastId";
const MESSAGE_COUNT: &str = "messageCount";
const NEXT_TICKET: &str = "nextTicket";

/// Messages in DynamoDB.
pub struct DynamoMessages {
    db: Db,
    /// The clock of new ids (tests skew it, as another container's would be).
    clock: Clock,
    /// Per room: this process's appends take their turns one after another, so that only other
    /// processes (containers) wait in the head's queue, each with one append at a time, rather
    /// than every pending append of this one asking the table whether its turn has come. One
    /// entry per room appended to.
    turns: std::sync::Mutex<std::collections::HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    /// Heads read ahead by [`MessageStore::prepare_append`], each for the next append to its
    /// room in this process.
    prepared: std::sync::Mutex<std::collections::HashMap<RoomName, HeadItem>>,
}

impl DynamoMessages {
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            db: Db::new(client, tables),
            clock: Arc::new(now_ms),
            turns: Default::default(),
            prepared: Default::default(),
        }
    }

    /// Replaces the clock that times new ids.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    async fn head(&self, room: &RoomName) -> StoreResult<RoomHead> {
        let item = self.get(room_key(room.as_str(), keys::HEAD)).await?;
        head_of(item)
    }

    /// The next ticket of the room (the `seq` its next append will have, if all goes well), and
    /// where the head was when it was taken.
    async fn take_ticket(&self, room: &RoomName) -> StoreResult<(u64, RoomHead)> {
        let out = self
            .db
            .client
            .update_item()
            .table_name(&self.db.tables.messages)
            .set_key(Some(room_key(room.as_str(), keys::HEAD)))
            .update_expression("ADD #ticket :one")
            .expression_attribute_names("#ticket", NEXT_TICKET)
            .expression_attribute_values(":one", n(1))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem", e))?;
        self.db
            .record("UpdateItem", Units::Write, out.consumed_capacity());
        let ticket = match out.attributes.as_ref().and_then(|a| a.get(NEXT_TICKET)) {
            Some(AttributeValue::N(ticket)) => ticket.parse().map_err(StoreError::new)?,
            other => return Err(StoreError(format!("no ticket in the head: {other:?}"))),
        };
        Ok((ticket, head_of(out.attributes)?))
    }

    /// The update that moves the head from `from` (the seq before `to`) to `to`, with `last_id`.
    fn move_head(
        &self,
        room: &RoomName,
        from: u64,
        to: u64,
        message: Option<(MessageId, u64)>,
    ) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        let update = aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.db.tables.messages)
            .set_key(Some(room_key(room.as_str(), keys::HEAD)))
            .expression_attribute_names("#headSeq", HEAD_SEQ)
            .expression_attribute_values(":to", n(to));
        // A new message: the latest id, and the room's count of messages with it.
        let update = match message {
            Some((id, count)) => update
                .update_expression("SET #headSeq = :to, #lastId = :id, #count = :count")
                .expression_attribute_names("#lastId", LAST_ID)
                .expression_attribute_names("#count", MESSAGE_COUNT)
                .expression_attribute_values(":id", s(id.to_string()))
                .expression_attribute_values(":count", n(count)),
            None => update.update_expression("SET #headSeq = :to"),
        };
        // The head must still be at the seq before: this writer's turn.
        let update = if from == 0 {
            update.condition_expression("attribute_not_exists(#headSeq)")
        } else {
            update
                .condition_expression("#headSeq = :from")
                .expression_attribute_values(":from", n(from))
        };
        // When it is not, the cancellation carries where the head is: no read needed.
        update.return_values_on_condition_check_failure(
            aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
        )
    }

    /// Passes a turn without a message: the head moves from `head` to the next seq, which no
    /// message will have (a stalled writer's, or one whose message was a duplicate). False when
    /// the head was not at `head` any more.
    async fn skip(&self, room: &RoomName, head: RoomHead) -> StoreResult<bool> {
        let update = self
            .move_head(room, head.seq, head.seq + 1, None)
            .build()
            .map_err(StoreError::new)?;
        let items = vec![TransactWriteItem::builder().update(update).build()];
        Ok(self.db.transact(items).await?.is_ok())
    }

    /// Writes at its turn (`head` is at the seq before `ticket`): what the transaction did.
    async fn commit(&self, write: &Write<'_>, head: RoomHead, ticket: u64) -> StoreResult<Attempt> {
        match write {
            Write::Append(message) => self.commit_message(message, head, ticket).await,
            Write::Change { room, id, change } => {
                self.commit_change(room, id, change, head, ticket).await
            }
        }
    }

    async fn commit_message(
        &self,
        message: &NewMessage,
        head: RoomHead,
        ticket: u64,
    ) -> StoreResult<Attempt> {
        let stored = StoredMessage::stamp(message.clone(), head, (self.clock)());
        debug_assert_eq!(stored.seq, ticket);
        let number = head.messages + 1;
        let move_head = self
            .move_head(
                &stored.room,
                head.seq,
                stored.seq,
                Some((stored.id, number)),
            )
            .build()
            .map_err(StoreError::new)?;
        let mut items = vec![TransactWriteItem::builder().update(move_head).build()];
        items.extend(self.message_writes(&stored, number)?);
        // Nothing was written when it is cancelled: the head was not at the seq before (a
        // stalled-writer skip passed this turn; or `TransactionConflict`: another request on
        // these items is under way), or the idempotency key exists.
        let cancelled = match self.db.transact(items).await? {
            Ok(()) => return Ok(Attempt::Stored(Written::Message(stored))),
            Err(cancelled) => cancelled,
        };
        let reasons = cancelled.cancellation_reasons();
        let code = |index: usize| reasons.get(index).and_then(|reason| reason.code());
        let failed = |index: usize| code(index).is_some_and(|code| code != "None");
        // Reasons are in the order of the items: head, message, idempotency key. When DynamoDB
        // gives none, look for the key to know.
        if stored.client_msg_id.is_some() && (failed(2) || reasons.is_empty()) {
            return Ok(Attempt::KeyExists {
                my_turn: !reasons.is_empty() && !failed(0),
            });
        }
        Ok(Attempt::NotMyTurn(head_in(reasons)?))
    }

    /// The message item and, with a `clientMsgId`, its idempotency key (which must not exist).
    fn message_writes(
        &self,
        stored: &StoredMessage,
        number: u64,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let table = &self.db.tables.messages;
        let mut item = MessageItem::of(stored);
        item.number = number;
        let put_message = Put::builder()
            .table_name(table)
            .set_item(Some(serde_dynamo::to_item(item).map_err(serde_error)?))
            .build()
            .map_err(StoreError::new)?;
        let mut items = vec![TransactWriteItem::builder().put(put_message).build()];
        if let Some(client_msg_id) = &stored.client_msg_id {
            let dedupe = DedupeItem {
                room: stored.room.as_str().to_owned(),
                sk: keys::dedupe(&stored.sender.sender_key(), client_msg_id.as_str()),
                message_id: stored.id.to_string(),
            };
            let put_dedupe = Put::builder()
                .table_name(table)
                .set_item(Some(serde_dynamo::to_item(dedupe).map_err(serde_error)?))
                .condition_expression("attribute_not_exists(#sk)")
                .expression_attribute_names("#sk", SORT_KEY)
                // A retry's cancellation then carries the key as stored, with its message's
                // id: one read less to answer it ("CancellationReasons ... Item", in the
                // TransactWriteItems API reference).
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(StoreError::new)?;
            items.push(TransactWriteItem::builder().put(put_dedupe).build());
        }
        Ok(items)
    }

    /// The head as stored, with its last ticket.
    async fn head_item(&self, room: &RoomName) -> StoreResult<HeadItem> {
        match self.get(room_key(room.as_str(), keys::HEAD)).await? {
            Some(item) => serde_dynamo::from_item(item).map_err(serde_error),
            None => Ok(HeadItem::default()),
        }
    }

    /// The one-transaction append of [`MessageStore::append_taking`], from the head as read
    /// (`None`: it was not at rest, or the transaction was cancelled for another reason than
    /// the idempotency key).
    async fn append_at_rest(
        &self,
        message: &NewMessage,
        claim: &AllowanceClaim,
        head: HeadItem,
    ) -> StoreResult<Option<Appended>> {
        // At rest: no ticket beyond the head, so no append of another process is waiting for
        // its turn. Then this one may take the next seq without a ticket, on the condition that
        // the head (and its last ticket) is still as read: exactly what a ticket would give it.
        let seq = head.head_seq;
        if head.next_ticket.is_some_and(|ticket| ticket != seq) {
            return Ok(None);
        }
        let room_head = head.room_head()?;
        let stored = StoredMessage::stamp(message.clone(), room_head, (self.clock)());
        let number = room_head.messages + 1;
        let allowance = crate::connections::AllowanceCas::send_allowance(
            &self.db.tables,
            &claim.connection,
            claim.before,
            claim.after,
        )?;
        let move_head = self
            .move_head(&stored.room, seq, stored.seq, Some((stored.id, number)))
            .update_expression("SET #headSeq = :to, #lastId = :id, #count = :count, #ticket = :to")
            .expression_attribute_names("#ticket", NEXT_TICKET);
        let move_head = if seq == 0 {
            move_head.condition_expression(
                "attribute_not_exists(#headSeq) AND attribute_not_exists(#ticket)",
            )
        } else {
            move_head.condition_expression(
                "#headSeq = :from AND (attribute_not_exists(#ticket) OR #ticket = :from)",
            )
        };
        let mut items = vec![
            TransactWriteItem::builder().update(allowance).build(),
            TransactWriteItem::builder()
                .update(move_head.build().map_err(StoreError::new)?)
                .build(),
        ];
        items.extend(self.message_writes(&stored, number)?);
        let cancelled = match self.db.transact(items).await? {
            Ok(()) => return Ok(Some(Appended::New(stored))),
            Err(cancelled) => cancelled,
        };
        // Reasons in the order of the items: allowance, head, message, idempotency key. The key
        // that cancelled it comes with its reason (ALL_OLD): it names the earlier message. Any
        // other cancellation goes back to the caller, whose ticket path looks the key up anyway.
        let Some(key) = cancelled
            .cancellation_reasons()
            .get(3)
            .filter(|reason| reason.code() == Some("ConditionalCheckFailed"))
            .and_then(|reason| reason.item())
        else {
            return Ok(None);
        };
        let dedupe: DedupeItem = serde_dynamo::from_item(key.clone()).map_err(serde_error)?;
        let earlier = self.message_of_key(&message.room, &dedupe).await?;
        Ok(earlier.map(Appended::Duplicate))
    }

    /// An edit or delete at its turn: the head, the message (which must exist and not be
    /// deleted) and the change item, in one transaction; a delete also removes the change items
    /// of the message's edits. The message is read at the turn: no other write of the room can
    /// commit before this one, so what the transaction writes follows what was read.
    async fn commit_change(
        &self,
        room: &RoomName,
        id: &MessageId,
        change: &Change,
        head: RoomHead,
        ticket: u64,
    ) -> StoreResult<Attempt> {
        let pass = |outcome| {
            Ok(Attempt::Passed {
                my_turn: true,
                outcome,
            })
        };
        let item = match self.get(room_key(room.as_str(), id.to_string())).await? {
            Some(item) => serde_dynamo::from_item::<_, MessageItem>(item).map_err(serde_error)?,
            None => return pass(Outcome::Gone),
        };
        if item.deleted {
            return pass(Outcome::Gone);
        }
        // The change items this one replaces: the message's latest of the same kind (one of
        // each kind is an event), or for a delete all of them.
        let kind = change.logged_kind();
        let replaced: Vec<u64> = match kind {
            LoggedKind::Edit => item.edit_seq.into_iter().collect(),
            LoggedKind::Reactions => item.reactions_seq.into_iter().collect(),
            LoggedKind::Delete => item
                .edit_seq
                .into_iter()
                .chain(item.reactions_seq)
                .collect(),
        };
        let message = item.into_message()?;
        let event = match MessageChange::of(&message, change, ticket, (self.clock)()) {
            Ok(Some(event)) => event,
            Ok(None) => return pass(Outcome::Unchanged),
            Err(_) => return pass(Outcome::TooManyReactions),
        };
        let table = &self.db.tables.messages;
        let room = message.room.as_str();
        let update = aws_sdk_dynamodb::types::Update::builder()
            .table_name(table)
            .set_key(Some(room_key(room, message.id.to_string())))
            .condition_expression(
                "attribute_exists(#sk) AND (attribute_not_exists(#deleted) OR #deleted = :no)",
            )
            .expression_attribute_names("#sk", SORT_KEY)
            .expression_attribute_names("#deleted", "deleted")
            .expression_attribute_values(":no", AttributeValue::Bool(false));
        let update = match &event.kind {
            ChangeKind::Edited { text, edited_at } => update
                .update_expression("SET #text = :text, #editedAt = :at, #editSeq = :seq")
                .expression_attribute_names("#text", "text")
                .expression_attribute_names("#editedAt", "editedAt")
                .expression_attribute_names("#editSeq", "editSeq")
                .expression_attribute_values(":text", s(text.as_str()))
                .expression_attribute_values(":at", n(edited_at))
                .expression_attribute_values(":seq", n(ticket)),
            ChangeKind::Reactions { reactions } if reactions.is_empty() => update
                .update_expression("SET #reactionsSeq = :seq REMOVE #reactions")
                .expression_attribute_names("#reactions", "reactions")
                .expression_attribute_names("#reactionsSeq", "reactionsSeq")
                .expression_attribute_values(":seq", n(ticket)),
            ChangeKind::Reactions { reactions } => update
                .update_expression("SET #reactions = :reactions, #reactionsSeq = :seq")
                .expression_attribute_names("#reactions", "reactions")
                .expression_attribute_names("#reactionsSeq", "reactionsSeq")
                .expression_attribute_values(
                    ":reactions",
                    serde_dynamo::to_attribute_value(reactions).map_err(serde_error)?,
                )
                .expression_attribute_values(":seq", n(ticket)),
            // The text goes: the change items never held it.
            ChangeKind::Deleted => update
                .update_expression(
                    "SET #deleted = :yes REMOVE #text, #reactions, #editSeq, #reactionsSeq",
                )
                .expression_attribute_names("#text", "text")
                .expression_attribute_names("#reactions", "reactions")
                .expression_attribute_names("#editSeq", "editSeq")
                .expression_attribute_names("#reactionsSeq", "reactionsSeq")
                .expression_attribute_values(":yes", AttributeValue::Bool(true)),
        };
        let change_item = ChangeItem {
            room: room.to_owned(),
            sk: keys::change(ticket),
            seq: ticket,
            message_id: message.id.to_string(),
            kind: kind.as_str().to_owned(),
        };
        let put_change = Put::builder()
            .table_name(table)
            .set_item(Some(
                serde_dynamo::to_item(change_item).map_err(serde_error)?,
            ))
            .build()
            .map_err(StoreError::new)?;
        let move_head = self
            .move_head(&message.room, head.seq, ticket, None)
            .build()
            .map_err(StoreError::new)?;
        let mut items = vec![
            TransactWriteItem::builder().update(move_head).build(),
            TransactWriteItem::builder()
                .update(update.build().map_err(StoreError::new)?)
                .build(),
            TransactWriteItem::builder().put(put_change).build(),
        ];
        for seq in replaced {
            let delete = aws_sdk_dynamodb::types::Delete::builder()
                .table_name(table)
                .set_key(Some(room_key(room, keys::change(seq))))
                .build()
                .map_err(StoreError::new)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        let cancelled = match self.db.transact(items).await? {
            Ok(()) => return Ok(Attempt::Stored(Written::Change(event))),
            Err(cancelled) => cancelled,
        };
        let reasons = cancelled.cancellation_reasons();
        let failed = |index: usize| {
            reasons
                .get(index)
                .and_then(|reason| reason.code())
                .is_some_and(|code| code == "ConditionalCheckFailed")
        };
        if failed(1) {
            // Deleted (or gone) since it was read.
            return Ok(Attempt::Passed {
                my_turn: !failed(0),
                outcome: Outcome::Gone,
            });
        }
        Ok(Attempt::NotMyTurn(head_in(reasons)?))
    }

    pub fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.db.meter = Some(meter);
        self
    }

    async fn get(&self, key: Item) -> StoreResult<Option<Item>> {
        let out = self
            .db
            .client
            .get_item()
            .table_name(&self.db.tables.messages)
            .set_key(Some(key))
            .consistent_read(true)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        self.db
            .record("GetItem", Units::Read, out.consumed_capacity());
        Ok(out.item)
    }

    /// Up to `want` messages (and, in the index, changes) of the room, in the direction asked,
    /// page after page (a page stops at 1 MB, before `Limit` when messages are long).
    async fn query(
        &self,
        room: &RoomName,
        range: Range<'_>,
        forward: bool,
        want: usize,
    ) -> StoreResult<(Vec<StoredMessage>, Vec<LoggedChange>)> {
        let mut messages = Vec::with_capacity(want);
        let mut changes = Vec::new();
        let mut start = None;
        loop {
            let left = want - messages.len() - changes.len();
            let query = self
                .db
                .client
                .query()
                .table_name(&self.db.tables.messages)
                .consistent_read(true)
                .expression_attribute_names("#room", ROOM_KEY)
                .expression_attribute_values(":room", s(room.as_str()));
            let query = match range {
                Range::SortKey { condition, bound } => query
                    .key_condition_expression(format!("#room = :room AND #sk {condition} :bound"))
                    .expression_attribute_names("#sk", SORT_KEY)
                    .expression_attribute_values(":bound", s(bound)),
                // The index holds messages and changes, and is as consistent as the table.
                Range::AfterSeq(seq) => query
                    .index_name(SEQ_INDEX)
                    .key_condition_expression("#room = :room AND #seq > :seq")
                    .expression_attribute_names("#seq", SEQ_ATTRIBUTE)
                    .expression_attribute_values(":seq", n(seq)),
            };
            let out = query
                .scan_index_forward(forward)
                .limit(i32::try_from(left).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .set_return_consumed_capacity(self.db.capacity())
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            self.db
                .record("Query", Units::Read, out.consumed_capacity());
            for item in out.items.unwrap_or_default() {
                let sort_key = match item.get(SORT_KEY) {
                    Some(AttributeValue::S(sk)) => sk.as_str(),
                    _ => "",
                };
                if keys::is_change(sort_key) {
                    let change: ChangeItem = serde_dynamo::from_item(item).map_err(serde_error)?;
                    changes.push(LoggedChange {
                        seq: change.seq,
                        id: MessageId::parse(&change.message_id)
                            .map_err(|e| StoreError::new(e.0))?,
                        kind: LoggedKind::parse(&change.kind).ok_or_else(|| {
                            StoreError(format!("an unknown kind of change: {}", change.kind))
                        })?,
                    });
                    continue;
                }
                if !keys::is_message(sort_key) {
                    // Members, heads and idempotency keys sort after every message: the
                    // messages ended.
                    return Ok((messages, changes));
                }
                let item: MessageItem = serde_dynamo::from_item(item).map_err(serde_error)?;
                messages.push(item.into_message()?);
            }
            start = out.last_evaluated_key;
            if start.is_none() || messages.len() + changes.len() >= want {
                return Ok((messages, changes));
            }
        }
    }
}

impl DynamoMessages {
    /// The room's events after `seq`, from the index: messages and changes in `seq` order; an
    /// edit shows its message's text now, read when the message is not in the page.
    async fn events_after(&self, room: &RoomName, seq: u64, limit: usize) -> StoreResult<Page> {
        if limit == 0 {
            return Ok(Page::default());
        }
        let (messages, changes) = self
            .query(room, Range::AfterSeq(seq), true, limit + 1)
            .await?;
        let (messages, changes, has_more) = merge_events(messages, changes, limit);
        // An edit shows its message's text now: from the page when it is there, else read.
        let mut others = Vec::new();
        for id in messages_to_read(&messages, &changes) {
            others.extend(MessageStore::get(self, room, &id).await?);
        }
        let changes = replay(room, &changes, &messages, &others);
        Ok(Page {
            messages,
            changes,
            has_more,
        })
    }
}

fn sort_key<'a>(condition: &'static str, bound: &'a str) -> Range<'a> {
    Range::SortKey { condition, bound }
}

/// Which messages of a room a query reads.
#[derive(Clone, Copy)]
enum Range<'a> {
    /// By id: `condition` is `<` or `>`, against `bound`.
    SortKey {
        condition: &'static str,
        bound: &'a str,
    },
    /// By `seq`, in the index.
    AfterSeq(u64),
}

/// A head item (or none: a room with no message yet) as a [`RoomHead`].
fn head_of(item: Option<Item>) -> StoreResult<RoomHead> {
    let Some(item) = item else {
        return Ok(RoomHead::default());
    };
    let head: HeadItem = serde_dynamo::from_item(item).map_err(serde_error)?;
    head.room_head()
}

impl HeadItem {
    fn room_head(&self) -> StoreResult<RoomHead> {
        Ok(RoomHead {
            seq: self.head_seq,
            last_id: self
                .last_id
                .as_deref()
                .map(|id| MessageId::parse(id).map_err(|e| StoreError::new(e.0)))
                .transpose()?,
            messages: self.message_count,
        })
    }
}

/// Where the head is, when a cancelled transaction's first reason (the head's condition) says.
fn head_in(
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
) -> StoreResult<Option<RoomHead>> {
    match reasons.first() {
        Some(reason) if reason.code() == Some("ConditionalCheckFailed") => reason
            .item()
            .map(|item| head_of(Some(item.clone())))
            .transpose(),
        _ => Ok(None),
    }
}

/// What takes a turn of the room: a new message, or a change to one (as it was read).
enum Write<'a> {
    Append(&'a NewMessage),
    Change {
        room: &'a RoomName,
        id: &'a MessageId,
        change: &'a Change,
    },
}

/// What a turn wrote.
enum Written {
    Message(StoredMessage),
    Change(MessageChange),
}

/// What a write came to.
enum Outcome {
    Written(Written),
    /// An append whose idempotency key exists: the earlier message.
    Duplicate(StoredMessage),
    /// A change to a message deleted (or gone) since it was read.
    Gone,
    /// A reaction that changes nothing.
    Unchanged,
    /// A new kind of reaction past the most.
    TooManyReactions,
}

/// What one attempt at committing a write did.
enum Attempt {
    Stored(Written),
    /// Nothing to write (the message is gone, or the change changes nothing or may not be
    /// made): `outcome` says which; `my_turn` as for `KeyExists`.
    Passed {
        my_turn: bool,
        outcome: Outcome,
    },
    /// The head was not at the seq before the ticket: where it is, when DynamoDB said.
    NotMyTurn(Option<RoomHead>),
    /// The idempotency key exists (or may: DynamoDB gave no reasons); `my_turn`: the head was
    /// at the seq before the ticket, so this append must pass its turn on.
    KeyExists {
        my_turn: bool,
    },
}

#[async_trait]
impl MessageStore for DynamoMessages {
    /// Reads the room's head (its seq, last id and last ticket) for the next append.
    async fn prepare_append(&self, room: &RoomName) {
        match self.head_item(room).await {
            Ok(head) => {
                let mut prepared = self
                    .prepared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                prepared.insert(room.clone(), head);
            }
            Err(e) => tracing::debug!(room = %room, error = %e, "no head read ahead"),
        }
    }

    /// One transaction over both tables, when the room is at rest: the sender's allowance
    /// (compare and set on the bucket read with the connection), the head (still as read ahead,
    /// and no ticket out), the message and its idempotency key. With the head read while the
    /// connection was, a message's ack takes three sequential requests: those two reads, this
    /// write, and the members' query.
    async fn append_taking(
        &self,
        message: &NewMessage,
        claim: &AllowanceClaim,
    ) -> StoreResult<Option<Appended>> {
        let ahead = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&message.room);
        let head = match ahead {
            Some(head) => head,
            None => self.head_item(&message.room).await?,
        };
        self.append_at_rest(message, claim, head).await
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        // A retry found before it takes a ticket takes no seq. (One that races with its first
        // send and loses finds the key at its commit, and passes its turn on unused.)
        if let Some(client_msg_id) = &message.client_msg_id {
            let sender_key = message.sender.sender_key();
            if let Some(earlier) = self
                .find_by_client_msg_id(&message.room, &sender_key, client_msg_id)
                .await?
            {
                return Ok(Appended::Duplicate(earlier));
            }
        }
        match self.write(&message.room, Write::Append(&message)).await? {
            Outcome::Written(Written::Message(stored)) => Ok(Appended::New(stored)),
            Outcome::Duplicate(earlier) => Ok(Appended::Duplicate(earlier)),
            Outcome::Written(Written::Change(_))
            | Outcome::Gone
            | Outcome::Unchanged
            | Outcome::TooManyReactions => Err(StoreError::new("an append wrote no message")),
        }
    }

    async fn get(&self, room: &RoomName, id: &MessageId) -> StoreResult<Option<StoredMessage>> {
        let Some(item) = self.get(room_key(room.as_str(), id.to_string())).await? else {
            return Ok(None);
        };
        let item: MessageItem = serde_dynamo::from_item(item).map_err(serde_error)?;
        item.into_message().map(Some)
    }

    async fn mark_read(
        &self,
        room: &RoomName,
        reader: &str,
        id: &MessageId,
    ) -> StoreResult<Option<MessageId>> {
        let Some(item) = self.get(room_key(room.as_str(), id.to_string())).await? else {
            return Ok(None);
        };
        let message: MessageItem = serde_dynamo::from_item(item).map_err(serde_error)?;
        let mark = ReadItem {
            room: room.as_str().to_owned(),
            sk: keys::read(reader),
            last_read: id.to_string(),
            number: message.number,
            // A guest's connection lives at most 2 hours on API Gateway.
            ttl: reader
                .starts_with("c:")
                .then(|| crate::db::now_secs() + GUEST_MARK_LIFETIME_SECS),
        };
        // Forwards only: a mark of an earlier message than the one stored changes nothing.
        let put = self
            .db
            .client
            .put_item()
            .table_name(&self.db.tables.messages)
            .set_item(Some(serde_dynamo::to_item(mark).map_err(serde_error)?))
            .condition_expression("attribute_not_exists(#n) OR #n < :n")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":n", n(message.number))
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await;
        match put {
            Ok(out) => {
                self.db
                    .record("PutItem", Units::Write, out.consumed_capacity());
                Ok(Some(*id))
            }
            Err(aws_sdk_dynamodb::error::SdkError::ServiceError(e))
                if e.err().is_conditional_check_failed_exception() =>
            {
                self.db.record("PutItem", Units::Write, None);
                Ok(self
                    .read_mark(room, reader)
                    .await?
                    .map(|(id, _)| id)
                    .or(Some(*id)))
            }
            Err(e) => Err(sdk_error("PutItem", e)),
        }
    }

    async fn open_direct(&self, room: &RoomName, users: &DirectUsers) -> StoreResult<()> {
        let item = DirectItem {
            room: room.as_str().to_owned(),
            sk: keys::DIRECT.to_owned(),
            users: vec![users.0.clone(), users.1.clone()],
        };
        // The pair never changes: a second open writes the same item again.
        let item = serde_dynamo::to_item(item).map_err(serde_error)?;
        self.db.put(&self.db.tables.messages, item).await
    }

    async fn direct_users(&self, room: &RoomName) -> StoreResult<Option<DirectUsers>> {
        let Some(item) = self.get(room_key(room.as_str(), keys::DIRECT)).await? else {
            return Ok(None);
        };
        let item: DirectItem = serde_dynamo::from_item(item).map_err(serde_error)?;
        match item.users.as_slice() {
            [a, b] => Ok(Some(DirectUsers::new(a, b))),
            _ => Err(StoreError::new("a direct room without its two users")),
        }
    }

    async fn read_state(&self, room: &RoomName, reader: &str) -> StoreResult<ReadState> {
        Ok(self.seq_and_read_state(room, reader).await?.1)
    }

    async fn access(&self, room: &RoomName, user_id: &str) -> StoreResult<UserAccess> {
        let Some(item) = self
            .get(room_key(room.as_str(), keys::access(user_id)))
            .await?
        else {
            return Ok(UserAccess::default());
        };
        let flag = |name: &str| matches!(item.get(name), Some(AttributeValue::Bool(true)));
        Ok(UserAccess {
            granted: flag(GRANTED),
            banned: flag(BANNED),
        })
    }

    /// One attribute of the user's access item, set in place (the other is left as it is).
    async fn set_access(
        &self,
        room: &RoomName,
        user_id: &str,
        change: AccessChange,
    ) -> StoreResult<()> {
        let (attribute, on) = match change {
            AccessChange::Grant(on) => (GRANTED, on),
            AccessChange::Ban(on) => (BANNED, on),
        };
        let out = self
            .db
            .client
            .update_item()
            .table_name(&self.db.tables.messages)
            .set_key(Some(room_key(room.as_str(), keys::access(user_id))))
            .update_expression("SET #flag = :on")
            .expression_attribute_names("#flag", attribute)
            .expression_attribute_values(":on", AttributeValue::Bool(on))
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("UpdateItem", e))?;
        self.db
            .record("UpdateItem", Units::Write, out.consumed_capacity());
        Ok(())
    }

    /// One read of the head gives both the room's `seq` and its count of messages.
    async fn seq_and_read_state(
        &self,
        room: &RoomName,
        reader: &str,
    ) -> StoreResult<(u64, ReadState)> {
        let mark = self.read_mark(room, reader).await?;
        let head = self.head(room).await?;
        let state = ReadState {
            unread: head
                .messages
                .saturating_sub(mark.map_or(0, |(_, number)| number)),
            last_read: mark.map(|(id, _)| id),
        };
        Ok((head.seq, state))
    }

    async fn change(
        &self,
        room: &RoomName,
        id: &MessageId,
        change: Change,
    ) -> StoreResult<Changed> {
        // The message is read at the turn (see `commit_change`): one that is missing or
        // deleted by then passes the turn on unused. (The chat read it before, to know who may
        // change it: a second read here would cost a request for a case that is rare.)
        let write = Write::Change {
            room,
            id,
            change: &change,
        };
        match self.write(room, write).await? {
            Outcome::Written(Written::Change(event)) => Ok(Changed::Done(event)),
            Outcome::Gone => Ok(Changed::Gone),
            Outcome::Unchanged => Ok(Changed::Unchanged),
            Outcome::TooManyReactions => Ok(Changed::TooManyReactions),
            Outcome::Written(Written::Message(_)) | Outcome::Duplicate(_) => {
                Err(StoreError::new("a change wrote a message"))
            }
        }
    }

    async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64> {
        Ok(self.head(room).await?.seq)
    }

    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>> {
        self.find_by_client_msg_id(room, sender_key, client_msg_id)
            .await
    }

    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
        self.page(room, cursor, limit).await
    }
}

impl DynamoMessages {
    /// The reader's mark in the room: the message, and its number.
    async fn read_mark(
        &self,
        room: &RoomName,
        reader: &str,
    ) -> StoreResult<Option<(MessageId, u64)>> {
        let Some(item) = self
            .get(room_key(room.as_str(), keys::read(reader)))
            .await?
        else {
            return Ok(None);
        };
        let mark: ReadItem = serde_dynamo::from_item(item).map_err(serde_error)?;
        let id = MessageId::parse(&mark.last_read).map_err(|e| StoreError::new(e.0))?;
        Ok(Some((id, mark.number)))
    }

    /// Takes the room's next turn for `write` and commits it.
    async fn write(&self, room: &RoomName, write: Write<'_>) -> StoreResult<Outcome> {
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(room.clone())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        let deadline = tokio::time::Instant::now() + APPEND_DEADLINE;
        let (mut ticket, mut head) = self.take_ticket(room).await?;
        // When this append first saw the head where it is, to tell a stalled writer; and how
        // long a turn takes here, as seen (each wait is about the turns ahead times that).
        let mut unchanged_since = (head.seq, tokio::time::Instant::now());
        let mut turn_ms = 10.0_f64;
        while tokio::time::Instant::now() < deadline {
            if head.seq >= ticket {
                // Our turn was passed (we were taken for a stalled writer): a new ticket.
                (ticket, head) = self.take_ticket(room).await?;
                continue;
            }
            if head.seq + 1 < ticket {
                // Earlier tickets are being written: wait about as long as they take, rather
                // than ask again and again (each read is paid for, and slows the others).
                let ahead = (ticket - 1 - head.seq) as f64;
                let ms = (ahead * turn_ms).clamp(2.0, 500.0);
                let jittered = ms * (0.75 + fastrand::f64() / 2.0);
                tokio::time::sleep(Duration::from_micros((jittered * 1000.0) as u64)).await;
                head = self.head(room).await?;
                let (seen, since) = unchanged_since;
                if head.seq > seen {
                    let elapsed = since.elapsed().as_secs_f64() * 1000.0;
                    turn_ms = (elapsed / (head.seq - seen) as f64).clamp(1.0, 200.0);
                    unchanged_since = (head.seq, tokio::time::Instant::now());
                } else if since.elapsed() > STALLED_AFTER {
                    tracing::warn!(room = %room, seq = head.seq + 1, "skipping the seq of a stalled writer");
                    if self.skip(room, head).await? {
                        head.seq += 1;
                    } else {
                        head = self.head(room).await?;
                    }
                    unchanged_since = (head.seq, tokio::time::Instant::now());
                }
                continue;
            }
            match self.commit(&write, head, ticket).await? {
                Attempt::Stored(written) => return Ok(Outcome::Written(written)),
                Attempt::Passed { my_turn, outcome } => {
                    if my_turn {
                        self.skip(room, head).await?;
                    }
                    return Ok(outcome);
                }
                Attempt::NotMyTurn(now) => {
                    head = match now {
                        Some(now) => now,
                        None => self.head(room).await?,
                    };
                }
                Attempt::KeyExists { my_turn } => {
                    let Write::Append(message) = &write else {
                        return Err(StoreError::new("an idempotency key conflict of a change"));
                    };
                    let client_msg_id = message.client_msg_id.as_ref().ok_or_else(|| {
                        StoreError::new("an idempotency key conflict without a clientMsgId")
                    })?;
                    // A retry raced with the first send and lost. Its turn goes on unused, so
                    // that the appends after it need not wait for a stalled writer.
                    if my_turn {
                        self.skip(room, head).await?;
                    }
                    let earlier = self
                        .find_by_client_msg_id(room, &message.sender.sender_key(), client_msg_id)
                        .await?;
                    if let Some(earlier) = earlier {
                        return Ok(Outcome::Duplicate(earlier));
                    }
                    // DynamoDB gave no reasons and there is no earlier message: the head had
                    // moved. Read it again.
                    head = self.head(room).await?;
                }
            }
        }
        Err(StoreError(format!(
            "room {room}: no turn to write within {APPEND_DEADLINE:?}"
        )))
    }

    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>> {
        let key = room_key(
            room.as_str(),
            keys::dedupe(sender_key, client_msg_id.as_str()),
        );
        let Some(dedupe) = self.get(key).await? else {
            return Ok(None);
        };
        let dedupe: DedupeItem = serde_dynamo::from_item(dedupe).map_err(serde_error)?;
        self.message_of_key(room, &dedupe).await
    }

    /// The message an idempotency key names.
    async fn message_of_key(
        &self,
        room: &RoomName,
        dedupe: &DedupeItem,
    ) -> StoreResult<Option<StoredMessage>> {
        let message = self
            .get(room_key(room.as_str(), &dedupe.message_id))
            .await?
            .ok_or_else(|| {
                StoreError(format!(
                    "idempotency key without its message {}",
                    dedupe.message_id
                ))
            })?;
        let message: MessageItem = serde_dynamo::from_item(message).map_err(serde_error)?;
        message.into_message().map(Some)
    }

    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
        if limit == 0 {
            return Ok(Page::default());
        }
        // One more than asked says whether there are more.
        let want = limit + 1;
        let (range, forward, bound);
        match cursor {
            Cursor::Latest => {
                (range, forward) = (sort_key("<", keys::END_OF_MESSAGES), false);
            }
            Cursor::Before(id) => {
                bound = id.to_string();
                (range, forward) = (sort_key("<", &bound), false);
            }
            Cursor::After(id) => {
                bound = id.to_string();
                (range, forward) = (sort_key(">", &bound), true);
            }
            Cursor::AfterSeq(seq) => return self.events_after(room, seq, limit).await,
        }
        let (mut messages, _) = self.query(room, range, forward, want).await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        if !forward {
            messages.reverse();
        }
        Ok(Page {
            messages,
            changes: Vec::new(),
            has_more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_id_sorts_before_the_other_items_of_a_room() {
        for id in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            assert!(keys::is_message(id));
            assert!(id < keys::member("x").as_str());
            assert!(id < keys::dedupe("n:a", "c").as_str());
        }
        assert!(!keys::is_message(&keys::member("x")));
    }

    #[test]
    fn idempotency_keys_of_different_senders_never_collide() {
        // Without the length prefix both would be "~dedupe#n:a#b#c".
        assert_ne!(keys::dedupe("n:a#b", "c"), keys::dedupe("n:a", "b#c"));
    }
}
