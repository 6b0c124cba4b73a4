//! The Lambda functions of the chat: `connect`, `disconnect` and `message`, as handlers over API
//! Gateway's WebSocket events, and `authorizer`, the `$connect` REQUEST authorizer when
//! authentication is on.
//!
//! Each handler takes an [`ApiGatewayWebsocketProxyRequest`] and returns an
//! [`ApiGatewayProxyResponse`], never an error: whatever a client sends, the function answers with
//! a status and, for frames, a coded error frame, and nothing panics (a bug that would is caught
//! and answered `internal`). The handlers run the same [`Chat`](chat_core::Chat) as the local
//! binary, over DynamoDB and the management API on AWS, or over any other ports (the tests use the
//! in-memory ones, the local binary's Lambda mode the real ones).
//!
//! # Layout
//!
//! - [`authorizer`]: [`Authorizer`]: the token check, with keys from a secret or a JWKS URL.
//! - [`config`]: the configuration, from the environment, read once per container.
//! - [`handlers`]: [`Handlers`]: `$connect`, `$disconnect`, and every other route (`message`).
//! - `fanout` ([`Handlers::fanout`]): the `fanout` function: a large room's events from the SQS
//!   FIFO queue, one shard per message (`chat_aws::fanout`).
//! - [`api`]: the `api` function: the server API on an HTTP API's events (payload 2.0).
//! - [`emf`]: the chat's counters as CloudWatch Embedded Metric Format log lines.
//! - [`runtime`]: the `lambda_runtime` loop and JSON logs that the thin `main`s in `src/bin` run.

pub mod api;
pub mod authorizer;
pub mod config;
pub mod emf;
pub mod handlers;
pub mod runtime;

pub use authorizer::{Authorizer, AuthorizerConfig, Denied};
pub use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
    ApiGatewayWebsocketProxyRequest,
};
pub use config::{Config, ManagementEndpoint};
pub use handlers::{FixedNotifier, Handlers, Notifiers, Queued};
pub use runtime::{Route, run, run_api, run_authorizer, run_fanout};
