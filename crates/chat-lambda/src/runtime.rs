//! What each function's `main` runs: JSON logs, the configuration and the clients (once per
//! container), then `lambda_runtime`'s loop over events.

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayWebsocketProxyRequest,
};
use lambda_runtime::{LambdaEvent, service_fn};
use tracing_subscriber::EnvFilter;

use crate::authorizer::{Authorizer, AuthorizerConfig};
use crate::config::Config;
use crate::emf::EmfRecorder;
use crate::handlers::Handlers;

/// Which handler a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Connect,
    Disconnect,
    /// Every route but `$connect` and `$disconnect`.
    Message,
}

impl Handlers {
    pub async fn handle(
        &self,
        route: Route,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        match route {
            Route::Connect => self.connect(event).await,
            Route::Disconnect => self.disconnect(event).await,
            Route::Message => self.message(event).await,
        }
    }
}

impl Route {
    /// The function's name, as the `Function` dimension of its metrics.
    pub const fn function(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Disconnect => "disconnect",
            Self::Message => "message",
        }
    }
}

/// One invocation, and what it counted as EMF lines (see [`crate::emf`]) for the function's
/// log.
pub async fn invoke(
    handlers: &Handlers,
    route: Route,
    event: ApiGatewayWebsocketProxyRequest,
    recorder: &EmfRecorder,
    namespace: &str,
) -> (ApiGatewayProxyResponse, Vec<String>) {
    let response = handlers.handle(route, event).await;
    let lines = recorder.flush(namespace, route.function(), chat_core::clock::now_ms());
    (response, lines)
}

/// The body of each function's `main`.
pub async fn run(route: Route) -> Result<(), lambda_runtime::Error> {
    init_logging();
    let config = Config::from_env()?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let handlers = Arc::new(Handlers::on_aws(&sdk, &config));
    let recorder = EmfRecorder::default();
    if metrics::set_global_recorder(recorder.clone()).is_err() {
        tracing::warn!("a metrics recorder is installed already: no EMF metrics");
    }
    let namespace: Arc<str> = config.metrics_namespace.clone().into();
    tracing::info!(?route, tables = ?config.tables, "function ready");
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let (handlers, recorder, namespace) =
                (handlers.clone(), recorder.clone(), namespace.clone());
            async move {
                let (response, lines) =
                    invoke(&handlers, route, event.payload, &recorder, &namespace).await;
                // EMF documents are log lines of their own: CloudWatch reads the metrics off them.
                for line in lines {
                    println!("{line}");
                }
                Ok::<_, lambda_runtime::Error>(response)
            }
        },
    ))
    .await
}

/// The body of the `api` function's `main`: the server API, on an HTTP API's events.
pub async fn run_api() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let config = Config::from_env()?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let handlers = Arc::new(Handlers::on_aws(&sdk, &config));
    let recorder = EmfRecorder::default();
    if metrics::set_global_recorder(recorder.clone()).is_err() {
        tracing::warn!("a metrics recorder is installed already: no EMF metrics");
    }
    let namespace: Arc<str> = config.metrics_namespace.clone().into();
    tracing::info!(tables = ?config.tables, "api function ready");
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
            let (handlers, recorder, namespace) =
                (handlers.clone(), recorder.clone(), namespace.clone());
            async move {
                let response = handlers.api(event.payload).await;
                for line in recorder.flush(&namespace, "api", chat_core::clock::now_ms()) {
                    println!("{line}");
                }
                Ok::<_, lambda_runtime::Error>(response)
            }
        },
    ))
    .await
}

/// The body of the `authorizer` function's `main`. A refusal is the error `Unauthorized`, which
/// API Gateway turns into a 401 (see [`crate::authorizer`]).
pub async fn run_authorizer() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let authorizer = Arc::new(Authorizer::from_config(&AuthorizerConfig::from_env()?)?);
    tracing::info!("authorizer ready");
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| {
            let authorizer = authorizer.clone();
            async move { authorizer.authorize(&event.payload).await }
        },
    ))
    .await
}

/// JSON lines on stdout, which CloudWatch keeps (and timestamps). `RUST_LOG` sets the level, else
/// Lambda's `AWS_LAMBDA_LOG_LEVEL`, else `info`.
pub fn init_logging() {
    let lambda_level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .filter(|level| !level.is_empty())
        .map(|level| level.to_lowercase());
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| lambda_level.and_then(|level| EnvFilter::try_new(level).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
}
