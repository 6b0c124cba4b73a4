//! [`DynamoConnections`]: who is connected, and in which rooms, in DynamoDB.
//!
//! A connection is one item of the connections table; each of its memberships is also an item in
//! the room's partition of the messages table (see the crate docs), written in the same
//! transaction as the connection's `rooms` map, so that the two never disagree. Every change is a
//! conditional write: two Lambda invocations for one connection cannot both take the last token
//! of its allowance or both join its 50th room.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, DeleteRequest, Put, ReturnValue, TransactWriteItem, Update,
    WriteRequest,
};
use chat_core::domain::{ConnectionId, Member, RoomName};
use chat_core::ports::{ConnectionRecord, ConnectionStore, JoinOutcome, StoreError, StoreResult};
use chat_core::rate_limit::{RateLimit, TokenBucket};
use serde::{Deserialize, Serialize};

use crate::capacity::{Meter, Units};
use crate::db::{
    Db, Item, MemberItem, expired, keys, n, now_secs, room_key, s, sdk_error, serde_error,
    shard_of, shard_partition,
};
use crate::tables::{CONNECTION_KEY, Tables};

/// How often a conditional write is tried again when another invocation changed the item first
/// (API Gateway runs a connection's frames concurrently: several invocations may race for its
/// item); each retry waits a little longer (see [`after_lost_race`]).
const MAX_ATTEMPTS: usize = 30;

/// Before attempt `attempt` of a conditional write that lost a race: nothing the first time,
/// then a random wait in a window that doubles (2, 4, 8 ... 256 ms), so that racers spread out
/// instead of colliding again.
async fn after_lost_race(attempt: usize) {
    if attempt > 0 {
        let window = 1u64 << attempt.min(8);
        tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..=window))).await;
    }
}
/// BatchWriteItem's limit.
const BATCH: usize = 25;

/// The keys of a membership's two items: in the room's partition, and its copy in the
/// connection's shard.
fn membership_keys(id: &ConnectionId, room: &str, join_key: &str) -> [Item; 2] {
    let sort_key = keys::member(join_key);
    let shard = shard_partition(room, shard_of(id.as_str()));
    [room_key(room, sort_key.clone()), room_key(&shard, sort_key)]
}

/// A connection item.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionItem {
    connection_id: String,
    member: Member,
    /// Room → join key (a UUID v7: sorting by it gives the order joined). A map, so that joining
    /// and leaving are single conditional updates of one entry.
    #[serde(default)]
    rooms: BTreeMap<String, String>,
    /// Epoch seconds after which the connection is ignored (and, later, deleted by DynamoDB).
    ttl: u64,
    connected_at: u64,
    /// The `sendMessage` allowance, absent until the first send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowance: Option<TokenBucket>,
    /// The `react`/`unreact` allowance, absent until the first reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reaction_allowance: Option<TokenBucket>,
    /// The `private.` rooms its user may enter (its token's `rooms` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    grants: Vec<String>,
}

impl ConnectionItem {
    fn record(&self, id: &ConnectionId) -> StoreResult<ConnectionRecord> {
        let mut rooms: Vec<(&String, &String)> = self.rooms.iter().collect();
        rooms.sort_by(|a, b| a.1.cmp(b.1));
        let rooms = rooms
            .into_iter()
            .map(|(room, _)| RoomName::parse(room).map_err(|e| StoreError::new(e.0)))
            .collect::<StoreResult<_>>()?;
        Ok(ConnectionRecord {
            id: id.clone(),
            member: self.member.clone(),
            connected_at_ms: self.connected_at,
            rooms,
            grants: self.grants.clone(),
            allowance: self.allowance,
        })
    }
}

/// Connections and room membership in DynamoDB.
pub struct DynamoConnections {
    db: Db,
    /// How long a connection is kept when its `$disconnect` never comes: API Gateway closes every
    /// connection after 2 hours, so a little more than that.
    ttl: Duration,
    /// The `Limit` of each page of a room's members (None: DynamoDB's 1 MB pages). Small pages
    /// are for tests of the paging.
    page_size: Option<i32>,
}

impl DynamoConnections {
    /// API Gateway's connection lifetime (2 h), and some slack.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(2 * 3600 + 600);

    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            db: Db::new(client, tables),
            ttl: Self::DEFAULT_TTL,
            page_size: None,
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn with_page_size(mut self, page_size: Option<i32>) -> Self {
        self.page_size = page_size;
        self
    }

    pub fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.db.meter = Some(meter);
        self
    }

    fn key(id: &ConnectionId) -> Item {
        Item::from([(CONNECTION_KEY.to_owned(), s(id.as_str()))])
    }

    /// The connection item, unless it is missing or expired.
    async fn load(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionItem>> {
        let out = self
            .db
            .client
            .get_item()
            .table_name(&self.db.tables.connections)
            .set_key(Some(Self::key(id)))
            .consistent_read(true)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        self.db
            .record("GetItem", Units::Read, out.consumed_capacity());
        let Some(item) = out.item else {
            return Ok(None);
        };
        let item: ConnectionItem = serde_dynamo::from_item(item).map_err(serde_error)?;
        Ok((!expired(item.ttl)).then_some(item))
    }

    /// Runs a transaction; `Ok(false)` when it was cancelled (a condition failed, or it
    /// conflicted with another), so that the caller reads again and decides again.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> StoreResult<bool> {
        match self.db.transact(items).await? {
            Ok(()) => Ok(true),
            Err(cancelled) => {
                tracing::debug!(error = ?cancelled, "transaction cancelled; reading again");
                Ok(false)
            }
        }
    }

    /// Deletes membership items, 25 at a time, until none is left unprocessed.
    async fn delete_memberships(&self, keys: Vec<Item>) -> StoreResult<()> {
        for chunk in keys.chunks(BATCH) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|delete| WriteRequest::builder().delete_request(delete).build())
                        .map_err(StoreError::new)
                })
                .collect::<StoreResult<_>>()?;
            for attempt in 0..MAX_ATTEMPTS {
                if requests.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
                }
                let out = self
                    .db
                    .client
                    .batch_write_item()
                    .request_items(&self.db.tables.messages, requests)
                    .set_return_consumed_capacity(self.db.capacity())
                    .send()
                    .await
                    .map_err(|e| sdk_error("BatchWriteItem", e))?;
                self.db
                    .record("BatchWriteItem", Units::Write, out.consumed_capacity());
                requests = out
                    .unprocessed_items
                    .and_then(|mut left| left.remove(&self.db.tables.messages))
                    .unwrap_or_default();
            }
            if !requests.is_empty() {
                return Err(StoreError::new(
                    "BatchWriteItem: some memberships stayed unprocessed",
                ));
            }
        }
        Ok(())
    }

    /// Reads the room's members, page after page, until `visit` breaks or the pages end.
    /// Members of expired connections are skipped.
    async fn each_member(
        &self,
        room: &RoomName,
        mut visit: impl FnMut(MemberItem) -> ControlFlow<()>,
    ) -> StoreResult<()> {
        let mut start = None;
        loop {
            let out = self
                .db
                .client
                .query()
                .table_name(&self.db.tables.messages)
                .consistent_read(true)
                .key_condition_expression("#room = :room AND begins_with(#sk, :prefix)")
                .filter_expression("#ttl >= :now")
                .expression_attribute_names("#room", crate::tables::ROOM_KEY)
                .expression_attribute_names("#sk", crate::tables::SORT_KEY)
                .expression_attribute_names("#ttl", crate::tables::TTL_ATTRIBUTE)
                .expression_attribute_values(":room", s(room.as_str()))
                .expression_attribute_values(":prefix", s(keys::MEMBER_PREFIX))
                .expression_attribute_values(":now", n(now_secs()))
                .set_limit(self.page_size)
                .set_exclusive_start_key(start)
                .set_return_consumed_capacity(self.db.capacity())
                .send()
                .await
                .map_err(|e| sdk_error("Query", e))?;
            self.db
                .record("Query", Units::Read, out.consumed_capacity());
            for item in out.items.unwrap_or_default() {
                let member: MemberItem = serde_dynamo::from_item(item).map_err(serde_error)?;
                if visit(member).is_break() {
                    return Ok(());
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl ConnectionStore for DynamoConnections {
    async fn insert(
        &self,
        id: &ConnectionId,
        member: &Member,
        grants: &[String],
        connected_at_ms: u64,
    ) -> StoreResult<()> {
        let item = ConnectionItem {
            connection_id: id.as_str().to_owned(),
            member: member.clone(),
            rooms: BTreeMap::new(),
            ttl: now_secs() + self.ttl.as_secs(),
            connected_at: connected_at_ms,
            allowance: None,
            reaction_allowance: None,
            grants: grants.to_vec(),
        };
        let item = serde_dynamo::to_item(item).map_err(serde_error)?;
        self.db.put(&self.db.tables.connections, item).await
    }

    async fn get(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
        self.load(id).await?.map(|item| item.record(id)).transpose()
    }

    async fn remove(&self, id: &ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
        let out = self
            .db
            .client
            .delete_item()
            .table_name(&self.db.tables.connections)
            .set_key(Some(Self::key(id)))
            .return_values(ReturnValue::AllOld)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem", e))?;
        self.db
            .record("DeleteItem", Units::Write, out.consumed_capacity());
        let Some(old) = out.attributes else {
            return Ok(None);
        };
        let old: ConnectionItem = serde_dynamo::from_item(old).map_err(serde_error)?;
        // The connection is gone now; joins racing with this fail on `attribute_exists`, so
        // these are all the memberships it will ever have had.
        let memberships = old
            .rooms
            .iter()
            .flat_map(|(room, join_key)| membership_keys(id, room, join_key))
            .collect();
        self.delete_memberships(memberships).await?;
        if expired(old.ttl) {
            return Ok(None);
        }
        old.record(id).map(Some)
    }

    async fn join(
        &self,
        id: &ConnectionId,
        room: &RoomName,
        max_rooms: usize,
    ) -> StoreResult<JoinOutcome> {
        for attempt in 0..MAX_ATTEMPTS {
            after_lost_race(attempt).await;
            let Some(connection) = self.load(id).await? else {
                return Ok(JoinOutcome::NoConnection);
            };
            if connection.rooms.contains_key(room.as_str()) {
                return Ok(JoinOutcome::AlreadyMember);
            }
            if connection.rooms.len() >= max_rooms {
                return Ok(JoinOutcome::LimitExceeded);
            }
            let join_key = uuid::Uuid::now_v7().to_string();
            let update = Update::builder()
                .table_name(&self.db.tables.connections)
                .set_key(Some(Self::key(id)))
                .update_expression("SET #rooms.#room = :join_key")
                .condition_expression(
                    "attribute_exists(#id) AND attribute_not_exists(#rooms.#room) AND size(#rooms) < :max",
                )
                .expression_attribute_names("#id", CONNECTION_KEY)
                .expression_attribute_names("#rooms", "rooms")
                .expression_attribute_names("#room", room.as_str())
                .expression_attribute_values(":join_key", s(&join_key))
                .expression_attribute_values(":max", n(max_rooms))
                .build()
                .map_err(StoreError::new)?;
            let membership = MemberItem {
                room: room.as_str().to_owned(),
                sk: keys::member(&join_key),
                connection_id: id.as_str().to_owned(),
                member: connection.member.clone(),
                ttl: connection.ttl,
            };
            // The membership, and its copy in the connection's shard (what a queued event's
            // fan-out reads: `crate::fanout`).
            let shard_copy = membership.shard_copy();
            let mut items = vec![TransactWriteItem::builder().update(update).build()];
            for item in [membership, shard_copy] {
                let put = Put::builder()
                    .table_name(&self.db.tables.messages)
                    .set_item(Some(serde_dynamo::to_item(item).map_err(serde_error)?))
                    .build()
                    .map_err(StoreError::new)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            if self.transact(items).await? {
                return Ok(JoinOutcome::Joined);
            }
        }
        Err(StoreError::new(
            "join: the connection kept changing; gave up",
        ))
    }

    async fn leave(&self, id: &ConnectionId, room: &RoomName) -> StoreResult<bool> {
        for attempt in 0..MAX_ATTEMPTS {
            after_lost_race(attempt).await;
            let Some(connection) = self.load(id).await? else {
                return Ok(false);
            };
            let Some(join_key) = connection.rooms.get(room.as_str()) else {
                return Ok(false);
            };
            let update = Update::builder()
                .table_name(&self.db.tables.connections)
                .set_key(Some(Self::key(id)))
                .update_expression("REMOVE #rooms.#room")
                .condition_expression("#rooms.#room = :join_key")
                .expression_attribute_names("#rooms", "rooms")
                .expression_attribute_names("#room", room.as_str())
                .expression_attribute_values(":join_key", s(join_key))
                .build()
                .map_err(StoreError::new)?;
            let mut items = vec![TransactWriteItem::builder().update(update).build()];
            for key in membership_keys(id, room.as_str(), join_key) {
                let delete = Delete::builder()
                    .table_name(&self.db.tables.messages)
                    .set_key(Some(key))
                    .build()
                    .map_err(StoreError::new)?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            if self.transact(items).await? {
                return Ok(true);
            }
        }
        Err(StoreError::new(
            "leave: the connection kept changing; gave up",
        ))
    }

    async fn room_connections(&self, room: &RoomName) -> StoreResult<Vec<ConnectionId>> {
        let mut ids = Vec::new();
        self.each_member(room, |member| {
            ids.push(ConnectionId::new(member.connection_id));
            ControlFlow::Continue(())
        })
        .await?;
        Ok(ids)
    }

    async fn user_connections(
        &self,
        room: &RoomName,
        user_id: &str,
    ) -> StoreResult<Vec<ConnectionId>> {
        let mut ids = Vec::new();
        self.each_member(room, |item| {
            if item.member.user_id.as_deref() == Some(user_id) {
                ids.push(ConnectionId::new(item.connection_id));
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(ids)
    }

    async fn room_members(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Member>> {
        let mut members = Vec::new();
        if limit == 0 {
            return Ok(members);
        }
        // The same person on two tabs is one member.
        let mut seen = HashSet::new();
        self.each_member(room, |item| {
            if seen.insert(item.member.clone()) {
                members.push(item.member);
            }
            if members.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok(members)
    }

    async fn take_send_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool> {
        self.take_from(id, Bucket::Messages, limit, now_ms).await
    }

    async fn take_reaction_allowance(
        &self,
        id: &ConnectionId,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool> {
        self.take_from(id, Bucket::Reactions, limit, now_ms).await
    }
}

/// The compare-and-set of one allowance of a connection item: `SET #allowance = :after`, on the
/// condition that the connection exists and its bucket is still `before` (absent for `None`).
pub(crate) struct AllowanceCas {
    pub condition: &'static str,
    pub names: Vec<(&'static str, &'static str)>,
    pub values: Vec<(&'static str, AttributeValue)>,
}

impl AllowanceCas {
    pub const UPDATE: &'static str = "SET #allowance = :after";

    fn new(
        attribute: &'static str,
        before: Option<TokenBucket>,
        after: TokenBucket,
    ) -> StoreResult<Self> {
        let after = serde_dynamo::to_attribute_value(after).map_err(serde_error)?;
        let mut names = vec![("#allowance", attribute)];
        let mut values = vec![(":after", after)];
        let condition = match before {
            None => {
                names.push(("#id", CONNECTION_KEY));
                "attribute_exists(#id) AND attribute_not_exists(#allowance)"
            }
            Some(before) => {
                names.extend([("#tokens", "milli_tokens"), ("#updated", "updated_ms")]);
                values.extend([
                    (":tokens", n(before.milli_tokens)),
                    (":updated", n(before.updated_ms)),
                ]);
                "#allowance.#tokens = :tokens AND #allowance.#updated = :updated"
            }
        };
        Ok(Self {
            condition,
            names,
            values,
        })
    }

    /// The `sendMessage` allowance's, as an item of a transaction (an append's).
    pub fn send_allowance(
        tables: &Tables,
        id: &ConnectionId,
        before: Option<TokenBucket>,
        after: TokenBucket,
    ) -> StoreResult<Update> {
        let cas = Self::new(Bucket::Messages.attribute(), before, after)?;
        let mut update = Update::builder()
            .table_name(&tables.connections)
            .set_key(Some(DynamoConnections::key(id)))
            .update_expression(Self::UPDATE)
            .condition_expression(cas.condition);
        for (name, attribute) in cas.names {
            update = update.expression_attribute_names(name, attribute);
        }
        for (name, value) in cas.values {
            update = update.expression_attribute_values(name, value);
        }
        update.build().map_err(StoreError::new)
    }
}

/// The allowances of a connection item.
#[derive(Clone, Copy)]
enum Bucket {
    Messages,
    Reactions,
}

impl Bucket {
    fn attribute(self) -> &'static str {
        match self {
            Self::Messages => "allowance",
            Self::Reactions => "reactionAllowance",
        }
    }
}

impl DynamoConnections {
    /// Takes one token of the connection's `which` allowance: a compare-and-set of the bucket
    /// read.
    async fn take_from(
        &self,
        id: &ConnectionId,
        which: Bucket,
        limit: RateLimit,
        now_ms: u64,
    ) -> StoreResult<bool> {
        for attempt in 0..MAX_ATTEMPTS {
            after_lost_race(attempt).await;
            let Some(connection) = self.load(id).await? else {
                return Ok(false);
            };
            let before = match which {
                Bucket::Messages => connection.allowance,
                Bucket::Reactions => connection.reaction_allowance,
            };
            let mut bucket = before.unwrap_or_else(|| TokenBucket::full(limit, now_ms));
            if !bucket.try_take(limit, now_ms) {
                // A refusal changes nothing that matters: the tokens it would store are exactly
                // those the next attempt computes from the stored state. No write.
                return Ok(false);
            }
            let cas = AllowanceCas::new(which.attribute(), before, bucket)?;
            let mut update = self
                .db
                .client
                .update_item()
                .table_name(&self.db.tables.connections)
                .set_key(Some(Self::key(id)))
                .update_expression(AllowanceCas::UPDATE)
                .condition_expression(cas.condition)
                .set_return_consumed_capacity(self.db.capacity());
            for (name, attribute) in cas.names {
                update = update.expression_attribute_names(name, attribute);
            }
            for (name, value) in cas.values {
                update = update.expression_attribute_values(name, value);
            }
            match update.send().await {
                Ok(out) => {
                    self.db
                        .record("UpdateItem", Units::Write, out.consumed_capacity());
                    return Ok(true);
                }
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    self.db.record("UpdateItem", Units::Write, None);
                    continue;
                }
                Err(e) => return Err(sdk_error("UpdateItem", e)),
            }
        }
        Err(StoreError::new(
            "take an allowance: the allowance kept changing; gave up",
        ))
    }
}
