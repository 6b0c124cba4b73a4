//! The local binary `chat`: the chat on one machine, with an embedded store, behind a local
//! emulation of API Gateway's WebSocket API.
//!
//! # Layout
//!
//! [`run`] is the one way in: it builds the gateway, the back end the settings name, and serves.
//!
//! - [`gateway`]: API Gateway's WebSocket API, emulated: WebSockets at `/{stage}` with its rules,
//!   `@connections`, the web client, graceful shutdown. It knows the integration behind it only
//!   as a [`gateway::Backend`].
//! - [`backends`]: the integrations: [`backends::embedded`] (the chat core with SQLite, in
//!   process), [`backends::lambda`] (`--backend lambda`: the Lambda handlers, unchanged, on
//!   DynamoDB), and [`backends::events`] (API Gateway's event shapes, for the latter).
//! - [`config`]: the settings of `chat serve`, from flags, the environment and `.env`.
//! - [`auth`]: the token settings (the same verifier as the Lambda authorizer).
//! - [`web`]: the browser client's files, embedded in the binary.
//! - [`telemetry`]: the metrics, at `GET /metrics`.

pub mod auth;
pub mod backends;
pub mod config;
pub mod gateway;
pub mod telemetry;
pub mod web;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Settings;
pub use gateway::Server;

use backends::embedded::Embedded;
use config::BackendKind;
use gateway::{Backend, Gateway};

/// The one way to start the server (the composition root): the gateway on `listener`, with the
/// back end `settings.backend` names behind it, until `shutdown` is cancelled. Returns once it
/// serves; [`Server::wait`] waits for it to stop.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    run_with(listener, settings, shutdown, |backend| backend).await
}

/// [`run`], with the back end wrapped by `wrap` before the gateway is given it: how a test puts
/// a failing or recording integration in front of the real one, on either back end.
pub async fn run_with(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
    wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
) -> anyhow::Result<Server> {
    telemetry::install();
    let gateway = Gateway::new(&settings);
    let backend: Arc<dyn Backend> = match settings.backend {
        BackendKind::Embedded => Arc::new(Embedded::open(&settings, gateway.outbox())?),
        #[cfg(feature = "lambda")]
        BackendKind::Lambda => {
            let mut sdk = match &settings.aws {
                Some(sdk) => sdk.clone(),
                None => backends::lambda::sdk_config_from_env().await,
            };
            if settings.dynamodb_one_at_a_time {
                sdk = backends::lambda::one_request_at_a_time(sdk)?;
            }
            let addr = listener.local_addr()?;
            Arc::new(backends::lambda::LambdaBackend::open(&settings, &sdk, addr).await?)
        }
        #[cfg(not(feature = "lambda"))]
        BackendKind::Lambda => anyhow::bail!(
            "this build has no Lambda mode: build with it (cargo run --release -p chat-local \
             --features lambda -- serve --backend lambda)"
        ),
    };
    gateway.serve(listener, settings, wrap(backend), shutdown)
}
