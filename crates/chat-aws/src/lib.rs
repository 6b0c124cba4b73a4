//! The chat core's ports on AWS: DynamoDB stores and the API Gateway management API notifier.
//!
//! Everything the protocol requires across frames (membership, the rate limit, idempotent sends)
//! lives in DynamoDB, so that it holds across Lambda invocations and containers: nothing here keeps
//! chat state in memory.
//!
//! # Tables
//!
//! - **Connections** (`WEBSOCKET_TABLE`, default `WebSocketConnections`), key `connectionId`: one
//!   item per connection with its member (name, user id), its rooms (a map room → join key), its
//!   rate-limit bucket and a `ttl` (epoch seconds) after which it is ignored and, eventually,
//!   deleted by DynamoDB.
//! - **Messages** (`MESSAGES_TABLE`, default `ChatMessages`), key `room` + `sk`: one partition per
//!   room holding everything about the room, read with strongly consistent `Query`s:
//!   - messages, `sk` = the message id (a UUID v7: sorts by time, so history is one `Query`);
//!   - members, `sk` = `~member#{join key}` (a UUID v7, so they list in the order joined), with the
//!     connection id, the member and the connection's `ttl`: the fan-out list is a paginated
//!     `Query` on the room's key, never a `Scan`;
//!   - idempotency keys, `sk` = `~dedupe#{len}#{sender key}#{clientMsgId}`, written in one
//!     transaction with the message under `attribute_not_exists`;
//!   - `~member!queued`, the mark of a large room, whose events go through the fan-out queue
//!     (it sorts before the members, so the members' `Query` reads it too).
//!
//!   Each membership also has a copy in its shard's partition, `room` = `{room}#{NN}` (16
//!   shards, by a hash of the connection id), written and deleted in the same transaction as the
//!   room's; a shard's partition also holds `~fanout#{event id}`, how far its posting of a queued
//!   event got ([`fanout`]).
//!
//!   Message ids are made of `0-9a-f-`, which all sort before `~`: a key condition `sk < "~"`
//!   reads messages only.
//!
//! # Layout
//!
//! - [`tables`]: table names, key attributes, and `create_tables` for local runs.
//! - [`connections`]: [`DynamoConnections`], the [`ConnectionStore`](chat_core::ports::ConnectionStore).
//! - [`messages`]: [`DynamoMessages`], the [`MessageStore`](chat_core::ports::MessageStore).
//! - [`notifier`]: [`ManagementNotifier`] on `PostToConnection`, and [`ManagementClients`], one
//!   client per endpoint, built once.
//! - [`fanout`]: the sharded fan-out of large rooms through SQS FIFO: [`QueuedFanOut`] and
//!   [`ShardWorker`].
//! - [`sdk`]: the SDK's configuration and its HTTPS client (rustls on ring).
//! - [`capacity`]: an optional meter of DynamoDB calls and consumed capacity units.
//! - `one_at_a_time` (feature `one-at-a-time`): DynamoDB requests one at a time, for moto.
//! - `testing` (feature `testing`): a moto_server for tests.

pub mod capacity;
pub mod connections;
mod db;
pub mod fanout;
pub mod messages;
pub mod notifier;
#[cfg(feature = "one-at-a-time")]
pub mod one_at_a_time;
pub mod sdk;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;

pub use capacity::{Meter, Tally};
pub use connections::DynamoConnections;
pub use fanout::{FanOutQueue, QueuedFanOut, ShardJob, ShardWorker};
pub use messages::DynamoMessages;
pub use notifier::{ManagementClients, ManagementNotifier};
pub use tables::{Tables, create_tables};
