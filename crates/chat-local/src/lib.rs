//! The local binary `chat`: the chat on one machine, with an embedded store, behind a local
//! emulation of API Gateway's WebSocket API.
//!
//! # Layout
//!
//! - [`auth`]: JWT verification on `$connect` (the same code as the Lambda authorizer).
//! - [`config`]: the settings of `chat serve`, from flags, the environment and `.env`.
//! - [`backend`]: what runs behind the gateway: the chat core with SQLite and in-process
//!   delivery (`embedded`), the same trait the Lambda mode implements.
//! - [`lambda_mode`]: the other back end (`--backend lambda`): the Lambda handlers, unchanged, fed
//!   events in API Gateway's shape, on DynamoDB, posting to the gateway's own `@connections`.
//! - [`gateway`]: the axum server: WebSockets at `/{stage}` with API Gateway's rules,
//!   the `@connections` management API, the web client, graceful shutdown.
//! - [`web`]: the browser client's files, embedded in the binary.

pub mod auth;
pub mod backend;
pub mod config;
pub mod gateway;
pub mod lambda_mode;
pub mod web;

pub use config::Settings;
pub use gateway::{Server, serve};
