//! What each function's `main` runs: JSON logs, the configuration and the clients (once per
//! container), then `lambda_runtime`'s loop over events.

use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayWebsocketProxyRequest,
};
use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use tracing_subscriber::filter::Targets;

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
    let sdk = chat_aws::sdk::for_lambda(|name| std::env::var(name).ok());
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
    let sdk = chat_aws::sdk::for_lambda(|name| std::env::var(name).ok());
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

/// The body of the `fanout` function's `main`: a large room's events, from the SQS FIFO queue
/// (`FANOUT_QUEUE_URL`), one shard per message. A message stops between two pages when less
/// than [`FANOUT_MARGIN_MS`] of the invocation is left.
pub async fn run_fanout() -> Result<(), lambda_runtime::Error> {
    init_logging();
    let config = Config::from_env()?;
    let sdk = chat_aws::sdk::for_lambda(|name| std::env::var(name).ok());
    let handlers = Arc::new(Handlers::on_aws(&sdk, &config));
    let recorder = EmfRecorder::default();
    if metrics::set_global_recorder(recorder.clone()).is_err() {
        tracing::warn!("a metrics recorder is installed already: no EMF metrics");
    }
    let namespace: Arc<str> = config.metrics_namespace.clone().into();
    tracing::info!(tables = ?config.tables, "fanout function ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (handlers, recorder, namespace) =
            (handlers.clone(), recorder.clone(), namespace.clone());
        async move {
            let deadline = event.context.deadline;
            let out_of_time = move || chat_core::clock::now_ms() + FANOUT_MARGIN_MS >= deadline;
            let response = handlers.fanout(event.payload, out_of_time).await;
            for line in recorder.flush(&namespace, "fanout", chat_core::clock::now_ms()) {
                println!("{line}");
            }
            Ok::<_, lambda_runtime::Error>(response)
        }
    }))
    .await
}

/// How much of an invocation a page of a shard may need: 1,000 posts 32 at a time, at ~10 ms
/// each, and the progress write; well above that.
pub const FANOUT_MARGIN_MS: u64 = 5_000;

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
///
/// `RUST_LOG` is read as [`Targets`] (`warn`, `info,chat_core=debug`): a level per target, which
/// is all a function's log needs. `EnvFilter`'s span and field filters would bring the regex
/// engine into every bootstrap (docs/bench/LAMBDA.md).
pub fn init_logging() {
    let filter = log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(),
    );
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let json_lines = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .with_target(false)
        .with_ansi(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(json_lines)
        .init();
}

/// The filter of [`init_logging`]: `RUST_LOG` when it is set and reads as a filter, else
/// Lambda's log level (`AWS_LAMBDA_LOG_LEVEL`: `TRACE` … `ERROR`, and `FATAL`, which tracing has
/// not, read as `ERROR`), else `info`.
fn log_filter(rust_log: Option<&str>, lambda_level: Option<&str>) -> Targets {
    let from_rust_log = rust_log
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .and_then(|value| value.parse::<Targets>().ok());
    let from_lambda = || {
        let level = lambda_level?.trim().to_ascii_lowercase();
        let level = if level == "fatal" {
            "error".into()
        } else {
            level
        };
        level.parse::<tracing::Level>().ok()
    };
    from_rust_log.unwrap_or_else(|| {
        Targets::new().with_default(from_lambda().unwrap_or(tracing::Level::INFO))
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::log_filter;

    #[test]
    fn rust_log_then_the_lambda_level_then_info() {
        let default = |filter: tracing_subscriber::filter::Targets| filter.default_level();
        assert_eq!(default(log_filter(None, None)), Some(LevelFilter::INFO));
        assert_eq!(
            default(log_filter(Some("warn"), Some("DEBUG"))),
            Some(LevelFilter::WARN)
        );
        assert_eq!(
            default(log_filter(None, Some("DEBUG"))),
            Some(LevelFilter::DEBUG)
        );
        // Lambda's FATAL is no level of tracing's: its nearest, ERROR.
        assert_eq!(
            default(log_filter(None, Some("FATAL"))),
            Some(LevelFilter::ERROR)
        );
        assert_eq!(
            default(log_filter(None, Some("loud"))),
            Some(LevelFilter::INFO)
        );
        assert_eq!(
            default(log_filter(Some("  "), None)),
            Some(LevelFilter::INFO)
        );
        let targets = log_filter(Some("warn,chat_core=debug"), None);
        assert!(targets.would_enable("chat_core::service", &Level::DEBUG));
        assert!(!targets.would_enable("aws_smithy_runtime", &Level::INFO));
    }
}
