//! The Lambda mode (`chat serve --backend lambda`): the whole AWS code path on one machine.
//!
//! The gateway plays API Gateway; [`LambdaBackend`] plays its Lambda integration. For each
//! `$connect`, frame and `$disconnect` it builds the event API Gateway would send, in its exact
//! JSON shape (`requestContext` with `routeKey` chosen like API Gateway's route selection on
//! `$request.body.action`, `eventType`, `connectionId`, `connectedAt`, `requestTimeEpoch`,
//! `domainName` and `stage`, `identity`, headers and query parameters), and calls the handlers of
//! `chat-lambda` with it, in process and unchanged: DynamoDB stores at the SDK's endpoint
//! (`AWS_ENDPOINT_URL_DYNAMODB`), and the management notifier posting to
//! `http://{domainName}/{stage}`, which is this gateway's own `@connections` API (the events name
//! its loopback address; the handlers use `http` here where AWS needs `https`).
//!
//! With authentication configured, the `$connect` REQUEST authorizer of `chat-lambda` runs first,
//! on the event API Gateway would give it: `Unauthorized` is a 401, a policy that does not allow
//! the route a 403, and an allowed connection's context (with `principalId`) goes into
//! `requestContext.authorizer` of every event of that connection, as on AWS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_lambda_events::encodings::Body;
use chat_aws::{ManagementNotifier, Tables, create_tables};
use chat_core::api::ApiResponse;
use chat_core::protocol::{Inbound, Payload};
use chat_lambda::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayWebsocketProxyRequest, Authorizer, Config, Denied, Handlers, ManagementEndpoint,
};
use serde_json::{Map, Value, json};

use super::events::Api;
use super::policy;
use crate::config::Settings;
use crate::gateway::{
    Accepted, ApiCall, Backend, Closed, Connection, Handshake, IntegrationError, Refusal,
};

/// The SDK's configuration from the environment (as on Lambda), with `us-east-1` when no region
/// is set: a local DynamoDB does not care, and the SDK refuses to sign without one.
pub async fn sdk_config_from_env() -> SdkConfig {
    // The loader's own region chain, not `RegionProviderChain::default_provider()`: that one
    // builds its IMDS client without the loader's HTTP client, and the SDK has no default one
    // (chat_aws::sdk): the binary panicked at start.
    let mut sdk = chat_aws::sdk::defaults().load().await;
    if let Some(endpoint) = sqs_endpoint_beside_dynamodb() {
        sdk = sdk.into_builder().endpoint_url(endpoint).build();
    }
    // An empty `AWS_REGION` counts as none (the SDK would take "" and refuse every request).
    if sdk
        .region()
        .is_some_and(|region| !region.as_ref().is_empty())
    {
        return sdk;
    }
    sdk.into_builder()
        .region(aws_config::Region::new("us-east-1"))
        .build()
}

/// `sdk`, with its DynamoDB requests sent one at a time (`--dynamodb-one-at-a-time`, for moto) to
/// the endpoint the environment names for DynamoDB.
pub fn one_request_at_a_time(sdk: SdkConfig) -> anyhow::Result<SdkConfig> {
    let endpoint = ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|url| !url.is_empty()))
        .or_else(|| sdk.endpoint_url().map(str::to_owned))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--dynamodb-one-at-a-time is for a local DynamoDB: set AWS_ENDPOINT_URL_DYNAMODB \
                 to its URL"
            )
        })?;
    Ok(chat_aws::one_at_a_time::dynamodb_requests_one_at_a_time(
        sdk, &endpoint,
    ))
}

/// The endpoint of every service (SQS's, for the fan-out queue) when the environment names one
/// for DynamoDB but none for SQS (neither `AWS_ENDPOINT_URL_SQS` nor `AWS_ENDPOINT_URL`):
/// DynamoDB's, since moto serves every service on one port. Without this, a developer who
/// points the chat at moto would send its queue requests to AWS. (An explicit endpoint, as the
/// management API's, still wins.)
fn sqs_endpoint_beside_dynamodb() -> Option<String> {
    let set = |name: &str| std::env::var(name).ok().filter(|url| !url.is_empty());
    if set("AWS_ENDPOINT_URL_SQS").is_some() || set("AWS_ENDPOINT_URL").is_some() {
        return None;
    }
    set("AWS_ENDPOINT_URL_DYNAMODB")
}

/// The function's containers, as Lambda runs them: an invocation takes an idle container, or
/// starts a new one when all are busy (a cold start); each container handles one invocation at
/// a time and keeps its own state (its SDK clients, its cache of room heads, its clock).
struct Containers {
    idle: std::sync::Mutex<Vec<Arc<Handlers>>>,
    started: AtomicUsize,
    start: Box<dyn Fn(usize) -> Handlers + Send + Sync>,
}

impl Containers {
    fn new(start: impl Fn(usize) -> Handlers + Send + Sync + 'static) -> Self {
        Self {
            idle: Default::default(),
            started: AtomicUsize::new(0),
            start: Box::new(start),
        }
    }

    /// An idle container, or a new one; it goes back when the returned guard is dropped.
    fn take(&self) -> Container<'_> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let handlers = idle.unwrap_or_else(|| {
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(container = n, "a new function container");
            Arc::new((self.start)(n))
        });
        Container {
            handlers: Some(handlers),
            pool: self,
        }
    }
}

struct Container<'a> {
    handlers: Option<Arc<Handlers>>,
    pool: &'a Containers,
}

impl std::ops::Deref for Container<'_> {
    type Target = Handlers;

    fn deref(&self) -> &Handlers {
        self.handlers.as_deref().expect("present until dropped")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Some(handlers) = self.handlers.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(handlers);
        }
    }
}

/// The clock of container `n` when containers' clocks are `skew_ms` apart: on time, ahead,
/// behind, twice ahead, twice behind, ...
fn container_clock(n: usize, skew_ms: u64) -> chat_core::clock::Clock {
    let steps = n.div_ceil(2) as i64;
    let offset = if n % 2 == 1 { steps } else { -steps } * skew_ms as i64;
    Arc::new(move || chat_core::clock::now_ms().saturating_add_signed(offset))
}

/// The Lambda handlers behind the local gateway.
pub struct LambdaBackend {
    containers: Containers,
    /// The `api` function's containers (the server API): a function of its own on AWS, whose
    /// management endpoint is configured (`APIGW_MANAGEMENT_ENDPOINT`), since its events name
    /// the HTTP API and not the WebSocket API.
    api_containers: Containers,
    /// The `$connect` authorizer, when authentication is on.
    authorizer: Option<Authorizer>,
    /// The API the events name: this gateway, so that the handlers post back to it.
    api: Api,
    /// Frames of one connection invoked at once.
    frames_at_once: usize,
    /// The `fanout` function's event source mapping on the fan-out queue, when it is on.
    fan_out_queue: std::sync::Mutex<Option<super::queue::EventSourceMapping>>,
}

/// How many `fanout` invocations run at once (the queue's pollers).
const FANOUT_CONCURRENCY: usize = 4;

impl LambdaBackend {
    /// Checks (or creates) the tables, and builds the handlers for a gateway listening on
    /// `addr`.
    pub async fn open(
        settings: &Settings,
        sdk: &SdkConfig,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let authorizer = settings.auth.verifier()?.map(Authorizer::with_verifier);
        let tables = Tables::new(&settings.websocket_table, &settings.messages_table);
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        if settings.create_tables {
            create_tables(&dynamodb, &tables).await?;
        } else {
            for table in [&tables.connections, &tables.messages] {
                dynamodb
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(aws_sdk_dynamodb::Error::from)
                    .with_context(|| {
                        format!(
                            "cannot use table {table} (to create the tables, pass --create-tables)"
                        )
                    })?;
            }
        }
        // The fan-out queue, as template.yaml makes it, unless it is off.
        // Its own HTTP client: a long poll must not hold up DynamoDB requests that
        // `--dynamodb-one-at-a-time` sends one at a time to the same local endpoint.
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk)
                .http_client(chat_aws::sdk::https_client())
                .build(),
        );
        let fanout_queue_url = if settings.fanout_shard_from > 0 {
            let url =
                super::queue::open_queue(&sqs, &settings.fanout_queue, settings.create_tables)
                    .await
                    .map_err(|error| {
                        error.context(
                            "the fan-out queue is needed for rooms of FANOUT_SHARD_FROM members \
                             or more (FANOUT_SHARD_FROM=0 turns the queue off: every room \
                             posted to at once)",
                        )
                    })?;
            tracing::info!(queue = %url, shard_from = settings.fanout_shard_from, "Lambda mode: rooms this large go through the fan-out queue");
            Some(url)
        } else {
            None
        };
        let config = Config {
            tables,
            management_endpoint: ManagementEndpoint::FromEvent {
                scheme: "http".into(),
            },
            chat: settings.chat_config(),
            // The gateway closes connections at the end of their lifetime, as API Gateway does.
            connection_ttl: settings.max_lifetime + Duration::from_secs(600),
            fanout_concurrency: ManagementNotifier::DEFAULT_CONCURRENCY,
            // Unused here: in this process the chat's counters go to GET /metrics, not to EMF.
            metrics_namespace: chat_lambda::config::DEFAULT_METRICS_NAMESPACE.to_owned(),
            fanout_queue_url: fanout_queue_url.clone(),
            fanout_shard_from: settings.fanout_shard_from.max(1),
        };
        tracing::info!(
            connections = %config.tables.connections,
            messages = %config.tables.messages,
            "Lambda mode: the Lambda handlers on DynamoDB"
        );
        let (sdk, skew) = (sdk.clone(), settings.lambda_clock_skew_ms);
        let api_config = Config {
            management_endpoint: ManagementEndpoint::Fixed(format!(
                "http://{}/{}",
                loopback(addr),
                settings.stage
            )),
            ..config.clone()
        };
        let api_sdk = sdk.clone();
        let fan_out_queue = fanout_queue_url.map(|url| {
            let (sdk, config) = (sdk.clone(), config.clone());
            super::queue::EventSourceMapping::start(sqs, url, FANOUT_CONCURRENCY, move |n| {
                Handlers::on_aws_with_clock(&sdk, &config, container_clock(n, skew))
            })
        });
        Ok(Self {
            containers: Containers::new(move |n| {
                Handlers::on_aws_with_clock(&sdk, &config, container_clock(n, skew))
            }),
            api_containers: Containers::new(move |n| {
                Handlers::on_aws_with_clock(&api_sdk, &api_config, container_clock(n, skew))
            }),
            authorizer,
            api: Api {
                domain: loopback(addr).to_string(),
                stage: settings.stage.clone(),
            },
            frames_at_once: usize::from(settings.lambda_concurrency),
            fan_out_queue: std::sync::Mutex::new(fan_out_queue),
        })
    }

    /// Runs the authorizer as API Gateway would: the context for `requestContext.authorizer`,
    /// or the handshake's refusal.
    async fn run_authorizer(
        &self,
        authorizer: &Authorizer,
        connect_event: &Value,
    ) -> Result<Map<String, Value>, Refusal> {
        let refusal = Refusal::new;
        let event: ApiGatewayCustomAuthorizerRequestTypeRequest =
            serde_json::from_value(self.api.authorizer(connect_event))
                .map_err(|_| refusal(500, "Internal server error"))?;
        let started = std::time::Instant::now();
        let response = match authorizer.authorize(&event).await {
            Ok(response) => response,
            Err(Denied::Unauthorized(_)) => return Err(refusal(401, "Unauthorized")),
            Err(Denied::KeysUnavailable(_)) => return Err(refusal(500, "Internal server error")),
        };
        let method_arn = event.method_arn.unwrap_or_default();
        if !policy::allows(&response.policy_document, &method_arn) {
            return Err(refusal(403, "Forbidden"));
        }
        let mut context = match response.context {
            Value::Object(context) => context,
            _ => Map::new(),
        };
        context.insert("principalId".into(), json!(response.principal_id));
        context.insert(
            "integrationLatency".into(),
            json!(started.elapsed().as_millis() as u64),
        );
        Ok(context)
    }
}

/// Where the gateway answers management calls: loopback, whatever address it listens on.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, addr.port())
}

/// Reads the event as the Lambda runtime would (it must deserialize exactly as on AWS).
fn to_request(event: Value) -> Option<ApiGatewayWebsocketProxyRequest> {
    serde_json::from_value(event)
        .map_err(|e| tracing::error!(error = %e, "an event that the handlers cannot read"))
        .ok()
}

fn body_text(response: &ApiGatewayProxyResponse) -> Option<String> {
    match &response.body {
        Some(Body::Text(text)) => Some(text.clone()),
        Some(Body::Binary(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

/// The route response of a Lambda proxy integration on a two-way route: its `body`, sent to
/// the client as one frame; nothing when it has none ("For proxy integrations, API Gateway
/// automatically passes the backend output to the caller as the complete payload", "Set up a
/// WebSocket API integration response in API Gateway",
/// <https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-integration-responses.html>).
/// Its `statusCode` and `headers` never reach the client. An empty body sends nothing:
/// AWS does not document it, and serverless-offline sends nothing either (it tests `if (body)`).
fn route_response(response: &ApiGatewayProxyResponse) -> Option<Payload> {
    body_text(response)
        .filter(|body| !body.is_empty())
        .map(Payload::from_json)
}

/// The subprotocol a `$connect` response names in its `Sec-WebSocket-Protocol` header (any
/// case), as API Gateway reads it.
fn subprotocol(response: &ApiGatewayProxyResponse) -> Option<String> {
    let name = "sec-websocket-protocol";
    response
        .headers
        .get(name)
        .or_else(|| response.multi_value_headers.get(name))
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

#[async_trait]
impl Backend for LambdaBackend {
    async fn authorize(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Option<Map<String, Value>>, Refusal> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(None);
        };
        let event = self.api.connect(connection, handshake);
        self.run_authorizer(authorizer, &event).await.map(Some)
    }

    async fn connect(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Accepted, Refusal> {
        let Some(event) = to_request(self.api.connect(connection, handshake)) else {
            return Err(Refusal::new(500, "Internal server error"));
        };
        let response = self.containers.take().connect(event).await;
        if (200..300).contains(&response.status_code) {
            return Ok(Accepted {
                subprotocol: subprotocol(&response),
            });
        }
        // API Gateway answers the handshake with the function's status.
        let message = body_text(&response)
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|body| body.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "Forbidden".into());
        Err(Refusal::new(
            u16::try_from(response.status_code).unwrap_or(500),
            message,
        ))
    }

    async fn message(
        &self,
        connection: &Connection,
        request_id: &str,
        inbound: Inbound<'_>,
    ) -> Result<Option<Payload>, IntegrationError> {
        // An event the runtime cannot read is a function error on Lambda.
        let event = to_request(self.api.message(connection, request_id, inbound))
            .ok_or_else(|| IntegrationError("the event cannot be read".into()))?;
        let response = self.containers.take().message(event).await;
        Ok(route_response(&response))
    }

    /// API Gateway does not wait for one frame's invocation before it invokes the next: pipelined
    /// frames of a connection run at once, in separate containers (the developer guide says
    /// nothing of an order; only the account's concurrency bounds them).
    fn frames_at_once(&self) -> usize {
        self.frames_at_once
    }

    async fn disconnect(&self, connection: &Connection, closed: &Closed) {
        if let Some(event) = to_request(self.api.disconnect(connection, closed)) {
            self.containers.take().disconnect(event).await;
        }
    }

    /// The `api` function on the HTTP API's event; its `statusCode` and `body` are the
    /// response, as an HTTP API sends a payload 2.0 function's answer.
    async fn api(&self, call: &ApiCall) -> ApiResponse {
        let event = super::events::http_api(call, &self.api.domain);
        let event: ApiGatewayV2httpRequest = match serde_json::from_value(event) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "an api event that the handler cannot read");
                return ApiResponse {
                    status: 500,
                    body: Some(json!({"message": "Internal Server Error"}).to_string()),
                };
            }
        };
        let response = self.api_containers.take().api(event).await;
        let body = match response.body {
            Some(Body::Text(text)) => Some(text),
            Some(Body::Binary(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        };
        ApiResponse {
            status: u16::try_from(response.status_code).unwrap_or(500),
            body,
        }
    }

    async fn shutdown(&self) {
        let mapping = self
            .fan_out_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mapping) = mapping {
            mapping.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chat_core::clock::now_ms;
    use chat_core::domain::ConnectionId;

    use super::*;

    /// The authorizer refuses a bad token and allows a good one; its context goes into every
    /// event of that connection, as on AWS.
    #[tokio::test]
    async fn the_authorizer_context_goes_into_every_event_of_the_connection() {
        use chat_core::memory::{MemoryConnections, MemoryMessages, RecordingNotifier};
        use chat_lambda::FixedNotifier;

        let secret = b"a secret for the lambda mode test";
        let connections = Arc::new(MemoryConnections::new());
        let messages = Arc::new(MemoryMessages::new());
        let notifier = Arc::new(FixedNotifier(Arc::new(RecordingNotifier::default())));
        let api_containers = {
            let (connections, messages, notifier) =
                (connections.clone(), messages.clone(), notifier.clone());
            Containers::new(move |_| {
                Handlers::new(
                    connections.clone(),
                    messages.clone(),
                    notifier.clone(),
                    chat_core::ChatConfig::default(),
                )
            })
        };
        let backend = LambdaBackend {
            containers: Containers::new(move |_| {
                Handlers::new(
                    connections.clone(),
                    messages.clone(),
                    notifier.clone(),
                    chat_core::ChatConfig::default(),
                )
            }),
            api_containers,
            authorizer: Some(Authorizer::with_verifier(chat_auth::Verifier::hs256(
                secret,
            ))),
            api: Api {
                domain: "127.0.0.1:9".into(),
                stage: "dev".into(),
            },
            frames_at_once: 8,
            fan_out_queue: Default::default(),
        };
        let claims = chat_auth::MintClaims {
            sub: "u-1".into(),
            name: Some("Ada".into()),
            exp: chat_auth::now_secs() + 600,
            iat: chat_auth::now_secs(),
            iss: None,
            aud: None,
            rooms: Vec::new(),
        };
        let token = chat_auth::mint_hs256(secret, &claims).unwrap();
        let handshake = |token: &str| Handshake {
            query: vec![("token".into(), token.into())],
            ..Handshake::default()
        };
        let mut ada = Connection {
            id: ConnectionId::random(),
            connected_at_ms: now_ms(),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: None,
            authorizer: None,
        };
        let refused = backend
            .authorize(&ada, &handshake("forged"))
            .await
            .unwrap_err();
        assert_eq!(refused.status, 401);

        let context = backend
            .authorize(&ada, &handshake(&token))
            .await
            .unwrap()
            .expect("a context");
        assert_eq!(context["userId"], "u-1");
        assert_eq!(context["name"], "Ada");
        assert_eq!(context["principalId"], "u-1");
        ada.authorizer = Some(context);
        backend.connect(&ada, &handshake(&token)).await.unwrap();
        let event = backend
            .api
            .message(&ada, "req-1", Inbound::Text(r#"{"action":"ping"}"#));
        assert_eq!(event["requestContext"]["authorizer"]["userId"], "u-1");
        assert!(to_request(event).is_some(), "the handlers can read it");
        let closed = Closed {
            status_code: 1000,
            reason: String::new(),
        };
        assert_eq!(
            backend.api.disconnect(&ada, &closed)["requestContext"]["authorizer"]["userId"],
            "u-1"
        );
    }

    #[test]
    fn container_clocks_spread_around_the_time() {
        let offsets: Vec<i64> = (0..5)
            .map(|n| {
                let (clock, now) = (container_clock(n, 50), chat_core::clock::now_ms() as i64);
                // Rounded to 10 ms: the two reads are a few microseconds apart.
                ((clock() as i64 - now) as f64 / 10.0).round() as i64 * 10
            })
            .collect();
        assert_eq!(offsets, [0, 50, -50, 100, -100]);
    }

    /// Invocations at once run in containers of their own; one after another reuse one.
    #[test]
    fn a_busy_container_is_not_shared_and_an_idle_one_is_reused() {
        let pool = Containers::new(|_| {
            Handlers::new(
                Arc::new(chat_core::memory::MemoryConnections::new()),
                Arc::new(chat_core::memory::MemoryMessages::new()),
                Arc::new(chat_lambda::FixedNotifier(Arc::new(
                    chat_core::memory::RecordingNotifier::default(),
                ))),
                chat_core::ChatConfig::default(),
            )
        });
        let (a, b) = (pool.take(), pool.take());
        assert!(!std::ptr::eq(&*a, &*b));
        assert_eq!(pool.started.load(Ordering::Relaxed), 2);
        drop((a, b));
        let _c = pool.take();
        assert_eq!(pool.started.load(Ordering::Relaxed), 2, "no cold start");
    }

    #[test]
    fn management_calls_go_to_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(loopback(any).to_string(), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(loopback(any6).to_string(), "[::1]:8080");
    }

    fn with(
        body: Option<Body>,
        headers: &[(&'static str, &'static str)],
    ) -> ApiGatewayProxyResponse {
        let mut response = ApiGatewayProxyResponse::default();
        response.status_code = 200;
        response.body = body;
        for (name, value) in headers {
            response
                .headers
                .insert(*name, axum::http::HeaderValue::from_static(value));
        }
        response
    }

    #[test]
    fn a_route_response_is_its_body_and_nothing_without_one() {
        let text = |s: &str| Some(Body::Text(s.into()));
        assert_eq!(
            route_response(&with(text(r#"{"type":"pong"}"#), &[("x-a", "1")])).map(|p| p.to_text()),
            Some(r#"{"type":"pong"}"#.to_owned())
        );
        assert!(route_response(&with(None, &[])).is_none());
        assert!(route_response(&with(Some(Body::Empty), &[])).is_none());
        assert!(route_response(&with(text(""), &[])).is_none());
    }

    #[test]
    fn the_subprotocol_is_read_from_the_connect_response_headers() {
        assert_eq!(
            subprotocol(&with(None, &[("Sec-WebSocket-Protocol", "chat.v1")])),
            Some("chat.v1".into())
        );
        assert_eq!(subprotocol(&with(None, &[("x-other", "1")])), None);
    }
}
