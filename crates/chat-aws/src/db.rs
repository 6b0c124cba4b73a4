//! What both stores share: the client, the table names, the optional meter, and the keys and
//! items of the room partitions.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::error::TransactionCanceledException;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, ReturnConsumedCapacity, TransactWriteItem,
};
use chat_core::domain::Member;
use chat_core::ports::{StoreError, StoreResult};
use serde::{Deserialize, Serialize};

use crate::capacity::{Meter, Units};
use crate::tables::{ROOM_KEY, SORT_KEY, Tables};

pub type Item = HashMap<String, AttributeValue>;

/// The client, the tables, and where to count what the calls cost.
#[derive(Clone)]
pub struct Db {
    pub client: Client,
    pub tables: Tables,
    pub meter: Option<Arc<Meter>>,
}

impl Db {
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            client,
            tables,
            meter: None,
        }
    }

    /// `TOTAL` when metering, else nothing (DynamoDB's default: none reported).
    pub fn capacity(&self) -> Option<ReturnConsumedCapacity> {
        self.meter.as_ref().map(|_| ReturnConsumedCapacity::Total)
    }

    pub fn record<'a>(
        &self,
        operation: &'static str,
        units: Units,
        consumed: impl IntoIterator<Item = &'a ConsumedCapacity>,
    ) {
        if let Some(meter) = &self.meter {
            meter.record(operation, units, consumed);
        }
    }
}

impl Db {
    /// Writes an item, whatever was there, counting what it cost.
    pub async fn put(&self, table: &str, item: Item) -> StoreResult<()> {
        let out = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .set_return_consumed_capacity(self.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("PutItem", e))?;
        self.record("PutItem", Units::Write, out.consumed_capacity());
        Ok(())
    }

    /// Runs a transaction, counting what it cost. `Ok(Err(cancelled))` when DynamoDB cancelled
    /// it (a condition failed, or another request on its items was under way: its reasons say
    /// which item), so that the caller reads again and decides again.
    pub async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> StoreResult<Result<(), TransactionCanceledException>> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .set_return_consumed_capacity(self.capacity())
            .send()
            .await;
        match result {
            Ok(out) => {
                self.record("TransactWriteItems", Units::Write, out.consumed_capacity());
                Ok(Ok(()))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                match e.into_err() {
                    TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                        Ok(Err(cancelled))
                    }
                    other => Err(StoreError(format!("TransactWriteItems: {other}"))),
                }
            }
            Err(e) => Err(sdk_error("TransactWriteItems", e)),
        }
    }
}

/// A failed call, with the SDK's whole error chain (for the logs; clients only see `internal`).
pub fn sdk_error<E, R>(operation: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError(format!("{operation}: {}", DisplayErrorContext(&e)))
}

pub fn serde_error(e: serde_dynamo::Error) -> StoreError {
    StoreError(format!("an item does not have the expected shape: {e}"))
}

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub use chat_core::clock::now_ms;

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// DynamoDB's rule: an item whose `ttl` is in the past has expired, deleted or not yet.
pub fn expired(ttl: u64) -> bool {
    ttl < now_secs()
}

/// The sort keys of a room partition.
pub mod keys {
    /// Every message id (`0-9`, `a-f`, `-`) sorts before this; every other item after it.
    pub const END_OF_MESSAGES: &str = "~";
    pub const MEMBER_PREFIX: &str = "~member#";
    /// The room's head: its latest `seq` and message id.
    pub const HEAD: &str = "~head";

    pub fn member(join_key: &str) -> String {
        format!("{MEMBER_PREFIX}{join_key}")
    }

    /// The mark of a room whose events go through the fan-out queue (`crate::fanout`). It
    /// sorts just before the members (`!` before `#`), so that the `Query` of the members that
    /// `begins_with` [`MEMBERS_AND_MARK`] finds it first, at no extra request.
    pub const QUEUED_MARK: &str = "~member!queued";
    pub const MEMBERS_AND_MARK: &str = "~member";

    /// A queued event's progress in one shard (`crate::fanout`), by the event's id.
    pub fn progress(event: &str) -> String {
        format!("~fanout#{event}")
    }

    /// The sender key is prefixed with its length, so that no two (sender, clientMsgId) pairs
    /// make the same key, whatever characters they hold.
    pub fn dedupe(sender_key: &str, client_msg_id: &str) -> String {
        format!("~dedupe#{}#{sender_key}#{client_msg_id}", sender_key.len())
    }

    pub fn is_message(sort_key: &str) -> bool {
        sort_key < END_OF_MESSAGES
    }

    /// An edit or delete: the room's event `seq`, in the index beside the messages.
    pub const CHANGE_PREFIX: &str = "~change#";

    pub fn change(seq: u64) -> String {
        format!("{CHANGE_PREFIX}{seq:020}")
    }

    pub fn is_change(sort_key: &str) -> bool {
        sort_key.starts_with(CHANGE_PREFIX)
    }

    /// A direct room's two users.
    pub const DIRECT: &str = "~direct";

    /// A reader's mark: the message it read up to.
    pub fn read(reader: &str) -> String {
        format!("~read#{reader}")
    }

    /// What the server API set for a user in the room: its grant and its ban.
    pub fn access(user_id: &str) -> String {
        format!("~access#{user_id}")
    }
}

/// How many shards a queued room's members are spread over: a constant of the data model (each
/// membership has a copy in its shard's partition from the moment it joins), so that a member is
/// in the same shard, and its events in the same FIFO group, for as long as it is a member.
pub const SHARDS: usize = 16;

/// The shard of a connection: FNV-1a of its id, modulo [`SHARDS`] (stable across processes and
/// versions, unlike std's hasher).
pub fn shard_of(connection_id: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in connection_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % SHARDS as u64) as usize
}

/// The partition of a room's shard: `{room}#{shard}` (a room name has no `#`, so it is never
/// another room's).
pub fn shard_partition(room: &str, shard: usize) -> String {
    format!("{room}#{shard:02}")
}

/// The key of an item in a room partition.
pub fn room_key(room: &str, sort_key: impl Into<String>) -> Item {
    HashMap::from([
        (ROOM_KEY.to_owned(), s(room)),
        (SORT_KEY.to_owned(), s(sort_key)),
    ])
}

/// A connection's membership of a room, in the room's partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberItem {
    pub room: String,
    pub sk: String,
    pub connection_id: String,
    pub member: Member,
    /// The connection's expiry, so that a connection that never said goodbye leaves its rooms
    /// when it expires.
    pub ttl: u64,
}

impl MemberItem {
    /// Its copy in the partition of the connection's shard (what a queued event's fan-out
    /// reads: `crate::fanout`), written and deleted with it.
    pub fn shard_copy(&self) -> Self {
        Self {
            room: shard_partition(&self.room, shard_of(&self.connection_id)),
            ..self.clone()
        }
    }
}
