//! [`DynamoMessages`]: each room's messages in its partition of the messages table, sorted by id.
//!
//! A message with a `clientMsgId` is written in one transaction with its idempotency key, which
//! must not exist yet: a retry, from any container, finds the key and gets the first message back.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chat_core::domain::{
    ClientMsgId, Cursor, Member, MessageId, NewMessage, Page, RoomName, StoredMessage,
};
use chat_core::ports::{Appended, MessageStore, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

use crate::capacity::{Meter, Units};
use crate::db::{Db, Item, keys, room_key, s, sdk_error, serde_error};
use crate::tables::{ROOM_KEY, SORT_KEY, Tables};

/// A message item: the sort key is its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageItem {
    room: String,
    sk: String,
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

/// Messages in DynamoDB.
pub struct DynamoMessages {
    db: Db,
}

impl DynamoMessages {
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            db: Db::new(client, tables),
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
        condition: &str,
        bound: &str,
        forward: bool,
        want: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let mut messages = Vec::with_capacity(want);
        let mut start = None;
        loop {
            let left = want - messages.len();
            let out = self
                .db
                .client
                .query()
                .table_name(&self.db.tables.messages)
                .consistent_read(true)
                .key_condition_expression(format!("#room = :room AND #sk {condition} :bound"))
                .expression_attribute_names("#room", ROOM_KEY)
                .expression_attribute_names("#sk", SORT_KEY)
                .expression_attribute_values(":room", s(room.as_str()))
                .expression_attribute_values(":bound", s(bound))
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
                    // Members and idempotency keys sort after every message: the messages ended.
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

#[async_trait]
impl MessageStore for DynamoMessages {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let stored = StoredMessage::stamp(message);
        let item = serde_dynamo::to_item(MessageItem::of(&stored)).map_err(serde_error)?;
        let Some(client_msg_id) = &stored.client_msg_id else {
            let out = self
                .db
                .client
                .put_item()
                .table_name(&self.db.tables.messages)
                .set_item(Some(item))
                .set_return_consumed_capacity(self.db.capacity())
                .send()
                .await
                .map_err(|e| sdk_error("PutItem", e))?;
            self.db
                .record("PutItem", Units::Write, out.consumed_capacity());
            return Ok(Appended::New(stored));
        };
        let sender_key = stored.sender.sender_key();
        let dedupe = DedupeItem {
            room: stored.room.as_str().to_owned(),
            sk: keys::dedupe(&sender_key, client_msg_id.as_str()),
            message_id: stored.id.to_string(),
        };
        let put_message = Put::builder()
            .table_name(&self.db.tables.messages)
            .set_item(Some(item))
            .build()
            .map_err(StoreError::new)?;
        let put_dedupe = Put::builder()
            .table_name(&self.db.tables.messages)
            .set_item(Some(serde_dynamo::to_item(dedupe).map_err(serde_error)?))
            .condition_expression("attribute_not_exists(#sk)")
            .expression_attribute_names("#sk", SORT_KEY)
            .build()
            .map_err(StoreError::new)?;
        let result = self
            .db
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put_message).build())
            .transact_items(TransactWriteItem::builder().put(put_dedupe).build())
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await;
        match result {
            Ok(out) => {
                self.db
                    .record("TransactWriteItems", Units::Write, out.consumed_capacity());
                Ok(Appended::New(stored))
            }
            // The key exists: a retry raced with the first send and lost. Nothing was written.
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => self
                .find_by_client_msg_id(&stored.room, &sender_key, client_msg_id)
                .await?
                .map(Appended::Duplicate)
                .ok_or_else(|| {
                    StoreError(format!(
                        "TransactWriteItems cancelled, and no earlier message: {:?}",
                        e.err()
                    ))
                }),
            Err(e) => Err(sdk_error("TransactWriteItems", e)),
        }
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
        let (mut messages, forward) = match cursor {
            Cursor::Latest => (
                self.query(room, "<", keys::END_OF_MESSAGES, false, want)
                    .await?,
                false,
            ),
            Cursor::Before(id) => (
                self.query(room, "<", &id.to_string(), false, want).await?,
                false,
            ),
            Cursor::After(id) => (
                self.query(room, ">", &id.to_string(), true, want).await?,
                true,
            ),
        };
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
