//! The integrations behind the gateway, each a [`Backend`](crate::gateway::Backend):
//!
//! - [`embedded`]: the chat core in process, with SQLite for messages, memory for connections,
//!   and delivery through the gateway's [`Outbox`](crate::gateway::Outbox).
//! - [`lambda`] (cargo feature `lambda`): the Lambda handlers of `chat-lambda`, unchanged, fed the events API Gateway
//!   would send, on DynamoDB, posting to the gateway's own `@connections` over HTTP.
//! - [`events`]: those events, in API Gateway's exact JSON shapes.
//! - [`queue`]: Lambda's SQS event source mapping, feeding the `fanout` function from the
//!   fan-out queue.
//! - [`policy`]: the authorizer's IAM policy, evaluated as API Gateway does.

pub mod embedded;
#[cfg(feature = "lambda")]
pub mod events;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "lambda")]
pub mod policy;
#[cfg(feature = "lambda")]
pub mod queue;
