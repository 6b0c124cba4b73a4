//! The chat core: every action, event, error and limit of `PROTOCOL.md`, written once.
//!
//! It knows nothing of AWS, HTTP or SQL. It talks to the world through three small traits
//! (the *ports* in [`ports`]): a [`ConnectionStore`](ports::ConnectionStore) (who is connected and in
//! which rooms), a [`MessageStore`](ports::MessageStore) (history, idempotent appends) and a
//! [`Notifier`](ports::Notifier) (deliver a frame to a connection, learn that it is gone). The local
//! binary plugs in SQLite and its own sockets; the Lambda functions plug in DynamoDB and the API
//! Gateway management API. Both run this same code.
//!
//! # Layout
//!
//! - [`domain`]: the values of the protocol (room names, display names, message text, ids) as
//!   types that can only hold valid values ("parse, don't validate").
//! - [`protocol`]: the wire format: parsing a client frame into a [`protocol::Request`], and the
//!   server frames, serialized once.
//! - [`ports`]: the traits the adapters implement, and the records they store.
//! - [`service`]: [`Chat`], which runs `$connect`, `$disconnect` and every action.
//! - [`api`]: the server API (HTTP JSON for the product's own back end), routed and answered
//!   here, so that the local binary and the `api` Lambda function serve the same one.
//! - [`rate_limit`]: the token bucket behind `rate_limited`.
//! - [`memory`]: in-memory adapters: the local binary's connection store, and fakes for tests.
//! - [`config`]: the limits, with the protocol's defaults.
//! - [`clock`]: the current time, read in one place.
//! - `testing` (feature `testing`): the conformance suites of the ports, which every adapter's
//!   tests run.

pub mod api;
pub mod clock;
pub mod config;
pub mod domain;
pub mod memory;
pub mod ports;
pub mod protocol;
pub mod rate_limit;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::ChatConfig;
pub use service::{Chat, ConnectRejection, ConnectRequest};
