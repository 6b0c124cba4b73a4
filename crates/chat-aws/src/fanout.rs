//! The sharded fan-out of a large room: its events go through an SQS FIFO queue, one queue
//! message per shard, and the `fanout` function posts each shard's members page by page.
//!
//! - Every membership has a copy in its shard's partition (`{room}#{shard}`, the shard a hash of
//!   the connection id, one of [`SHARDS`]), written and deleted in the same transaction as the
//!   membership itself ([`DynamoConnections`](crate::DynamoConnections)).
//! - [`QueuedFanOut`] is the chat core's [`FanOut`]: it reads the room's members (the same one
//!   `Query` as the direct path, with at most `shard_from` + 1 items); a room of fewer than
//!   `shard_from` connections is posted to now, as before. A larger one is marked queued (an
//!   item of its partition, sticky for a day: a room going back to the direct path while some
//!   of its events wait in the queue would let a later event overtake them) and its event is
//!   sent to the queue, one message per shard ([`ShardJob`], `MessageGroupId` = the shard's
//!   partition), before the sender's ack. What was acknowledged is stored; delivery follows.
//! - [`ShardWorker::deliver`] is one queue message's work: the shard's members, page by page,
//!   each page posted at once; after each page it stores how far it got. Out of time, it stops
//!   between pages: the caller hands the message back to the queue (at the head of its FIFO
//!   group, so that no later event of the shard overtakes it) and the next attempt goes on
//!   from the page after the last one stored. A message received again after it was done does
//!   nothing.
//!
//! Order: a member is always in the same shard, and SQS FIFO hands a group's messages out one
//! at a time, in the order sent; so events sent one after another (one connection's, or one
//! sent after another's ack) reach each member in that order. What a member may see twice: the
//! page being posted when an invocation died or timed out (at most `page_size` members get that
//! event again from the retry); and an event stored less than [`JOINED_AFTER_MS`] before it
//! joined, in its `joined` history and live (one stored earlier is not posted to it). Clients
//! deduplicate by `id` and `seq`.

use std::ops::ControlFlow;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chat_core::Chat;
use chat_core::domain::{ConnectionId, RoomName};
use chat_core::ports::{FanOut, Recipients, StoreError, StoreResult};
use chat_core::protocol::Payload;
use serde::{Deserialize, Serialize};

use crate::capacity::Units;
use crate::db::{
    Db, Item, MemberItem, keys, n, now_secs, room_key, s, sdk_error, serde_error, shard_partition,
};
pub use crate::db::{SHARDS, shard_of};
use crate::tables::{ROOM_KEY, SORT_KEY, TTL_ATTRIBUTE};

/// How long a room stays queued after it was last seen large (and a progress item is kept):
/// far longer than any queued event waits (the queue keeps a message a day at most, and its
/// dead-letter queue takes it after 5 receives).
const MARK_LIFETIME_SECS: u64 = 24 * 3600;
/// SQS's limits: 10 entries in a `SendMessageBatch`, 256 KiB in all of its bodies.
const BATCH_ENTRIES: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;

/// One shard's part of a queued event: the body of a queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardJob {
    pub room: String,
    pub shard: usize,
    /// The management API to post with (`https://{domain}/{stage}`): the fanout function gets
    /// no API Gateway event to read it from.
    pub endpoint: String,
    /// The connection that does not get it (a `presence` join's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
    /// The event's id (a UUID v7): its deduplication id in the queue, and its progress key.
    pub event: String,
    /// The frame, as posted.
    pub payload: String,
}

impl ShardJob {
    /// Its FIFO group: the shard.
    pub fn group(&self) -> String {
        shard_partition(&self.room, self.shard)
    }

    /// The body of its queue message. SQS refuses U+FFFE and U+FFFF in a body (its allowed
    /// characters: #x9, #xA, #xD, #x20 to #xD7FF, #xE000 to #xFFFD, #x10000 to #x10FFFF), which a
    /// message's text may hold and JSON need not escape: they are escaped here.
    pub fn body(&self) -> String {
        serde_json::to_string(self)
            .expect("a job serializes")
            .replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// The queue and when a room uses it: shared by a container's events.
#[derive(Debug, Clone)]
pub struct FanOutQueue {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// A room with at least this many connections is queued.
    pub shard_from: usize,
}

/// The [`FanOut`] of one API's events (its management endpoint goes into each job).
pub struct QueuedFanOut {
    db: Db,
    queue: FanOutQueue,
    endpoint: String,
}

impl QueuedFanOut {
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        tables: crate::Tables,
        queue: FanOutQueue,
        endpoint: String,
    ) -> Self {
        Self {
            db: Db::new(dynamodb, tables),
            queue,
            endpoint,
        }
    }

    /// Marks the room queued until a day from now.
    async fn mark_queued(&self, room: &RoomName) -> StoreResult<()> {
        let mut item = room_key(room.as_str(), keys::QUEUED_MARK);
        item.insert(TTL_ATTRIBUTE.into(), n(now_secs() + MARK_LIFETIME_SECS));
        self.db.put(&self.db.tables.messages, item).await
    }

    /// Sends one message per shard, in batches, all at once; each batch's failed entries are
    /// tried once more.
    async fn enqueue(&self, jobs: &[ShardJob]) -> StoreResult<()> {
        let mut batches: Vec<Vec<SendMessageBatchRequestEntry>> = Vec::new();
        let mut bytes = 0;
        for job in jobs {
            let body = job.body();
            let fits = batches.last().is_some_and(|batch| {
                batch.len() < BATCH_ENTRIES && bytes + body.len() <= BATCH_BYTES
            });
            if !fits {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += body.len();
            let entry = SendMessageBatchRequestEntry::builder()
                .id(job.shard.to_string())
                .message_body(body)
                .message_group_id(job.group())
                .message_deduplication_id(format!("{}-{}", job.event, job.shard))
                .build()
                .map_err(StoreError::new)?;
            batches.last_mut().expect("pushed").push(entry);
        }
        let sends = batches.into_iter().map(|batch| self.send_batch(batch));
        futures_util::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn send_batch(&self, mut entries: Vec<SendMessageBatchRequestEntry>) -> StoreResult<()> {
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let out = self
                .queue
                .sqs
                .send_message_batch()
                .queue_url(&self.queue.queue_url)
                .set_entries(Some(entries.clone()))
                .send()
                .await
                .map_err(|e| sdk_error("SendMessageBatch", e))?;
            self.db.record("SendMessageBatch", Units::Write, None);
            let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
            if failed.is_empty() {
                return Ok(());
            }
            tracing::warn!(failed = ?out.failed(), "SendMessageBatch: entries failed; trying them again");
            entries.retain(|entry| failed.contains(&entry.id()));
        }
        Err(StoreError::new("SendMessageBatch: entries failed twice"))
    }
}

#[async_trait::async_trait]
impl FanOut for QueuedFanOut {
    async fn recipients(
        &self,
        room: &RoomName,
        except: Option<&ConnectionId>,
        payload: &Payload,
    ) -> StoreResult<Recipients> {
        let limit = i32::try_from(self.queue.shard_from.saturating_add(1)).unwrap_or(i32::MAX);
        let out = self
            .db
            .client
            .query()
            .table_name(&self.db.tables.messages)
            .consistent_read(true)
            .key_condition_expression("#room = :room AND begins_with(#sk, :prefix)")
            .filter_expression("#ttl >= :now")
            .expression_attribute_names("#room", ROOM_KEY)
            .expression_attribute_names("#sk", SORT_KEY)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":room", s(room.as_str()))
            .expression_attribute_values(":prefix", s(keys::MEMBERS_AND_MARK))
            .expression_attribute_values(":now", n(now_secs()))
            .limit(limit)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("Query", e))?;
        self.db
            .record("Query", Units::Read, out.consumed_capacity());
        let more = out.last_evaluated_key.is_some();
        let mut mark_ttl = None;
        let mut ids = Vec::new();
        for item in out.items.unwrap_or_default() {
            if item
                .get(SORT_KEY)
                .and_then(|sk| sk.as_s().ok())
                .map(String::as_str)
                == Some(keys::QUEUED_MARK)
            {
                mark_ttl = Some(ttl_of(&item));
                continue;
            }
            let member: MemberItem = serde_dynamo::from_item(item).map_err(serde_error)?;
            ids.push(ConnectionId::new(member.connection_id));
        }
        let large = more || ids.len() >= self.queue.shard_from;
        if mark_ttl.is_none() && !large {
            return Ok(Recipients::Now(ids));
        }
        // Marked before the first event goes to the queue, and kept while the room is large.
        if large && mark_ttl.is_none_or(|ttl| ttl < now_secs() + MARK_LIFETIME_SECS / 2) {
            self.mark_queued(room).await?;
        }
        let event = uuid::Uuid::now_v7().to_string();
        let payload = payload.to_text();
        let jobs: Vec<ShardJob> = (0..SHARDS)
            .map(|shard| ShardJob {
                room: room.as_str().to_owned(),
                shard,
                endpoint: self.endpoint.clone(),
                except: except.map(|id| id.as_str().to_owned()),
                event: event.clone(),
                payload: payload.clone(),
            })
            .collect();
        self.enqueue(&jobs).await?;
        metrics::counter!("chat_fanout_queued_total").increment(1);
        Ok(Recipients::Queued)
    }
}

/// A member that joined this long after its event was queued does not get it: it joined after
/// the event was stored (the event's id is made after the store), so its `joined` read the
/// event already, or (a `presence`) shows its state. Without this, a shard whose queue is behind
/// would post events older than a join. The margin is for the clocks of two machines (the
/// event's id and the join key are each from their container's clock); within it, a member that
/// joined around the event may get it both in `joined` and live.
pub const JOINED_AFTER_MS: u64 = 1_000;

/// The time of a UUID v7 (an event's id, a join key), in ms since the epoch.
fn job_time_ms(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// When a member joined: the time of its join key (`~member#{join key}`).
fn joined_ms(sort_key: &str) -> Option<u64> {
    job_time_ms(sort_key.strip_prefix(keys::MEMBER_PREFIX)?)
}

fn ttl_of(item: &Item) -> u64 {
    item.get(TTL_ATTRIBUTE)
        .and_then(|ttl| ttl.as_n().ok())
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or(0)
}

/// How far a job got: stored after each page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProgressItem {
    room: String,
    sk: String,
    /// The sort key of the last member posted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    done: bool,
    ttl: u64,
}

/// Where [`ShardWorker::deliver`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every member of the shard was posted to (now, or by an earlier attempt).
    Done,
    /// Time ran out between two pages; how far it got is stored.
    OutOfTime,
}

/// The fanout function's work on one queue message.
pub struct ShardWorker {
    db: Db,
    /// Members per page (`None`: DynamoDB's 1 MB pages, about 6,000 members).
    page_size: Option<i32>,
}

impl ShardWorker {
    /// Pages of 1,000 members: a page is posted in about a third of a second (32 posts at once).
    pub const DEFAULT_PAGE_SIZE: i32 = 1000;

    pub fn new(dynamodb: aws_sdk_dynamodb::Client, tables: crate::Tables) -> Self {
        Self {
            db: Db::new(dynamodb, tables),
            page_size: Some(Self::DEFAULT_PAGE_SIZE),
        }
    }

    pub fn with_page_size(mut self, page_size: Option<i32>) -> Self {
        self.page_size = page_size;
        self
    }

    pub fn with_meter(mut self, meter: std::sync::Arc<crate::Meter>) -> Self {
        self.db.meter = Some(meter);
        self
    }

    /// Posts the job's event to its shard's members with `chat` (whose notifier is the job's
    /// endpoint's), page after page from where an earlier attempt stopped, storing its progress
    /// after each; stops before a page when `out_of_time` says so.
    pub async fn deliver(
        &self,
        chat: &Chat,
        job: &ShardJob,
        out_of_time: impl Fn() -> bool,
    ) -> StoreResult<Progress> {
        let partition = job.group();
        let progress_key = room_key(&partition, keys::progress(&job.event));
        let mut progress = self.progress(&progress_key).await?.unwrap_or(ProgressItem {
            room: partition.clone(),
            sk: keys::progress(&job.event),
            ..ProgressItem::default()
        });
        if progress.done {
            return Ok(Progress::Done);
        }
        let payload = Payload::from_json(job.payload.clone());
        let except = job.except.as_deref();
        let joined_too_late = job_time_ms(&job.event).map(|queued| queued + JOINED_AFTER_MS);
        loop {
            if out_of_time() {
                return Ok(Progress::OutOfTime);
            }
            let start = progress
                .after
                .as_ref()
                .map(|after| room_key(&partition, after.clone()));
            let mut ids = Vec::new();
            let last = self
                .page(&partition, start, |member| {
                    let late = joined_too_late
                        .zip(joined_ms(&member.sk))
                        .is_some_and(|(too_late, joined)| joined > too_late);
                    if !late && except != Some(member.connection_id.as_str()) {
                        ids.push(ConnectionId::new(member.connection_id));
                    }
                    ControlFlow::Continue(())
                })
                .await?;
            chat.post(&ids, &payload).await;
            progress.done = last.is_none();
            progress.after = last;
            progress.ttl = now_secs() + MARK_LIFETIME_SECS;
            let item = serde_dynamo::to_item(&progress).map_err(serde_error)?;
            self.db.put(&self.db.tables.messages, item).await?;
            if progress.done {
                return Ok(Progress::Done);
            }
        }
    }

    async fn progress(&self, key: &Item) -> StoreResult<Option<ProgressItem>> {
        let out = self
            .db
            .client
            .get_item()
            .table_name(&self.db.tables.messages)
            .set_key(Some(key.clone()))
            .consistent_read(true)
            .set_return_consumed_capacity(self.db.capacity())
            .send()
            .await
            .map_err(|e| sdk_error("GetItem", e))?;
        self.db
            .record("GetItem", Units::Read, out.consumed_capacity());
        out.item
            .map(|item| serde_dynamo::from_item(item).map_err(serde_error))
            .transpose()
    }

    /// One page of the shard's members after `start`; the sort key to go on after, if more.
    async fn page(
        &self,
        partition: &str,
        start: Option<Item>,
        mut visit: impl FnMut(MemberItem) -> ControlFlow<()>,
    ) -> StoreResult<Option<String>> {
        let out = self
            .db
            .client
            .query()
            .table_name(&self.db.tables.messages)
            .consistent_read(true)
            .key_condition_expression("#room = :room AND begins_with(#sk, :prefix)")
            .filter_expression("#ttl >= :now")
            .expression_attribute_names("#room", ROOM_KEY)
            .expression_attribute_names("#sk", SORT_KEY)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":room", s(partition))
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
                break;
            }
        }
        Ok(out
            .last_evaluated_key
            .and_then(|key| key.get(SORT_KEY)?.as_s().ok().cloned()))
    }
}
