//! [`DynamoMessages`]: each room's messages in its partition of the messages table, sorted by id,
//! and by `seq` in the table's local index.
//!
//! A room's head item holds its latest `seq` and message id. An append reads it, and writes the
//! message (with the next `seq`, and an id after the head's) in one transaction with the head,
//! on the condition that the head has not moved: of two containers appending at once, one
//! commits and the other reads the new head and tries again. So a message becomes visible only
//! together with its `seq`, every `seq` is used once and in order, and no reader can see `seq`
//! N+1 before N, whatever the order in which requests finish or the containers' clocks (a clock
//! behind the head's time takes the head's). A message with a `clientMsgId` also writes its
//! idempotency key, which must not exist yet: a retry, from any container, finds the key and gets
//! the first message back.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chat_core::clock::{Clock, now_ms};
use chat_core::domain::{
    ClientMsgId, Cursor, Member, MessageId, NewMessage, Page, RoomHead, RoomName, StoredMessage,
};
use chat_core::ports::{Appended, MessageStore, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

use crate::capacity::{Meter, Units};
use crate::db::{Db, Item, keys, n, room_key, s, sdk_error, serde_error};
use crate::tables::{ROOM_KEY, SEQ_ATTRIBUTE, SEQ_INDEX, SORT_KEY, Tables};

/// How long an append may keep losing the race for its room's head (to appends of other
/// containers) before it fails: well inside API Gateway's 29 s integration timeout.
const APPEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A message item: the sort key is its id; `seq` puts it in the local index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageItem {
    room: String,
    sk: String,
    seq: u64,
    ts: u64,
    sender: Member,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<String>,
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

/// A room's head: its latest `seq` and message id. Its `headSeq` is not `seq`, which keeps it
/// out of the index of messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadItem {
    room: String,
    sk: String,
    head_seq: u64,
    last_id: String,
}

/// A room's head as this container last saw it, behind the lock that lets one append of this
/// container at a time race for it (appends of other containers race with it for real).
type CachedHead = Arc<tokio::sync::Mutex<Option<RoomHead>>>;

/// Messages in DynamoDB.
pub struct DynamoMessages {
    db: Db,
    /// The clock of new ids (tests skew it, as another container's would be).
    clock: Clock,
    /// Per room: this container's appends take turns, so that they never race each other for the
    /// head, and the head each one leaves is the next one's guess (right unless another container
    /// appended meanwhile, which the condition then tells). One entry per room appended to by
    /// this container.
    heads: std::sync::Mutex<std::collections::HashMap<RoomName, CachedHead>>,
}

impl DynamoMessages {
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            db: Db::new(client, tables),
            clock: Arc::new(now_ms),
            heads: Default::default(),
        }
    }

    fn cached_head(&self, room: &RoomName) -> CachedHead {
        self.heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(room.clone())
            .or_default()
            .clone()
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

    /// One attempt at appending after `head`: what the transaction did.
    async fn try_append(&self, message: &NewMessage, head: RoomHead) -> StoreResult<Attempt> {
        let stored = StoredMessage::stamp(message.clone(), head, (self.clock)());
        let table = &self.db.tables.messages;
        let put_message = Put::builder()
            .table_name(table)
            .set_item(Some(
                serde_dynamo::to_item(MessageItem::of(&stored)).map_err(serde_error)?,
            ))
            .build()
            .map_err(StoreError::new)?;
        let new_head = HeadItem {
            room: stored.room.as_str().to_owned(),
            sk: keys::HEAD.to_owned(),
            head_seq: stored.seq,
            last_id: stored.id.to_string(),
        };
        let put_head = Put::builder()
            .table_name(table)
            .set_item(Some(serde_dynamo::to_item(new_head).map_err(serde_error)?));
        // The head must be where this append read it.
        let put_head = if head.seq == 0 {
            put_head
                .condition_expression("attribute_not_exists(#sk)")
                .expression_attribute_names("#sk", SORT_KEY)
        } else {
            put_head
                .condition_expression("#headSeq = :read")
                .expression_attribute_names("#headSeq", "headSeq")
                .expression_attribute_values(":read", n(head.seq))
        }
        // When the head moved, the cancellation carries where it is now: no read needed.
        .return_values_on_condition_check_failure(
            aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
        )
        .build()
        .map_err(StoreError::new)?;
        let mut transaction = self
            .db
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put_head).build())
            .transact_items(TransactWriteItem::builder().put(put_message).build());
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
                .build()
                .map_err(StoreError::new)?;
            transaction =
                transaction.transact_items(TransactWriteItem::builder().put(put_dedupe).build());
        }
        let result = transaction
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await;
        match result {
            Ok(out) => {
                self.db
                    .record("TransactWriteItems", Units::Write, out.consumed_capacity());
                Ok(Attempt::Stored(stored))
            }
            // Nothing was written: the head moved (another append committed first, or is
            // committing: `TransactionConflict`), or the idempotency key exists.
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                let reasons = match e.err() {
                    TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                        cancelled.cancellation_reasons()
                    }
                    _ => &[],
                };
                let failed = |index: usize| {
                    reasons
                        .get(index)
                        .and_then(|reason| reason.code())
                        .is_some_and(|code| code != "None")
                };
                // Reasons are in the order of the items: head, message, idempotency key. When
                // DynamoDB gives none, look for the key to know.
                if stored.client_msg_id.is_some() && (failed(2) || reasons.is_empty()) {
                    return Ok(Attempt::KeyExists);
                }
                let now = match reasons.first() {
                    Some(reason) if reason.code() == Some("ConditionalCheckFailed") => reason
                        .item()
                        .map(|item| head_of(Some(item.clone())))
                        .transpose()?,
                    _ => None,
                };
                Ok(Attempt::HeadMoved(now))
            }
            Err(e) => Err(sdk_error("TransactWriteItems", e)),
        }
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

    /// Up to `want` messages of the room, in the direction asked, page after page (a page stops at
    /// 1 MB, before `Limit` when messages are long).
    async fn query(
        &self,
        room: &RoomName,
        range: Range<'_>,
        forward: bool,
        want: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let mut messages = Vec::with_capacity(want);
        let mut start = None;
        loop {
            let left = want - messages.len();
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
                // The index holds messages only, and is as consistent as the table.
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
                let is_message = matches!(
                    item.get(SORT_KEY),
                    Some(AttributeValue::S(sk)) if keys::is_message(sk)
                );
                if !is_message {
                    // Members, heads and idempotency keys sort after every message: the
                    // messages ended.
                    return Ok(messages);
                }
                let item: MessageItem = serde_dynamo::from_item(item).map_err(serde_error)?;
                messages.push(item.into_message()?);
            }
            start = out.last_evaluated_key;
            if start.is_none() || messages.len() >= want {
                return Ok(messages);
            }
        }
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
    Ok(RoomHead {
        seq: head.head_seq,
        last_id: Some(MessageId::parse(&head.last_id).map_err(|e| StoreError::new(e.0))?),
    })
}

/// What one attempt at an append did.
enum Attempt {
    Stored(StoredMessage),
    /// Another append moved the room's head since it was read: where it is now, when DynamoDB
    /// said.
    HeadMoved(Option<RoomHead>),
    /// The idempotency key exists (or may: DynamoDB gave no reasons).
    KeyExists,
}

#[async_trait]
impl MessageStore for DynamoMessages {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let cached = self.cached_head(&message.room);
        let mut cached = cached.lock().await;
        let deadline = tokio::time::Instant::now() + APPEND_DEADLINE;
        let mut lost = 0u32;
        while tokio::time::Instant::now() < deadline {
            let head = match *cached {
                Some(head) => head,
                None => self.head(&message.room).await?,
            };
            // Unless this attempt commits, the head is unknown until read again.
            *cached = None;
            match self.try_append(&message, head).await? {
                Attempt::Stored(stored) => {
                    *cached = Some(RoomHead {
                        seq: stored.seq,
                        last_id: Some(stored.id),
                    });
                    return Ok(Appended::New(stored));
                }
                Attempt::HeadMoved(now) => {
                    *cached = now;
                    // Another container appended. Losing again and again means several race:
                    // a few ms of jitter, growing, spreads them out.
                    lost += 1;
                    if lost > 2 {
                        let ms = fastrand::u64(0..=u64::from(lost.min(8)) * 4);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                }
                Attempt::KeyExists => {
                    let client_msg_id = message.client_msg_id.as_ref().ok_or_else(|| {
                        StoreError::new("an idempotency key conflict without a clientMsgId")
                    })?;
                    // A retry raced with the first send and lost; or, without reasons from
                    // DynamoDB, the head moved: then there is no earlier message, and we go on.
                    if let Some(earlier) = self
                        .find_by_client_msg_id(
                            &message.room,
                            &message.sender.sender_key(),
                            client_msg_id,
                        )
                        .await?
                    {
                        return Ok(Appended::Duplicate(earlier));
                    }
                }
            }
        }
        Err(StoreError(format!(
            "room {}: other appends kept moving the head for {APPEND_DEADLINE:?}",
            message.room
        )))
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
        let key = room_key(
            room.as_str(),
            keys::dedupe(sender_key, client_msg_id.as_str()),
        );
        let Some(dedupe) = self.get(key).await? else {
            return Ok(None);
        };
        let dedupe: DedupeItem = serde_dynamo::from_item(dedupe).map_err(serde_error)?;
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
            Cursor::AfterSeq(seq) => (range, forward) = (Range::AfterSeq(seq), true),
        }
        let mut messages = self.query(room, range, forward, want).await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        if !forward {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
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
