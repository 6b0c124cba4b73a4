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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::iam::IamPolicyEffect;
use chat_aws::{ManagementNotifier, Tables, create_tables};
use chat_core::domain::ConnectionId;
use chat_core::protocol::{Inbound, Payload, route_key};
use chat_lambda::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyResponse,
    ApiGatewayWebsocketProxyRequest, Authorizer, Config, Denied, Handlers, ManagementEndpoint,
};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Handshake, Refusal};
use crate::config::Settings;
use crate::gateway::registry::{Registry, now_ms};
use crate::gateway::{self, Server};

/// The API id the local events carry.
const API_ID: &str = "local";

/// The SDK's configuration from the environment (as on Lambda), with `us-east-1` when no region
/// is set: a local DynamoDB does not care, and the SDK refuses to sign without one.
pub async fn sdk_config_from_env() -> SdkConfig {
    let region = RegionProviderChain::default_provider().or_else("us-east-1");
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}

/// Binds `settings.addr`, checks (or creates) the tables, and serves the Lambda handlers behind
/// the gateway until `shutdown` is cancelled.
pub async fn serve(
    settings: Settings,
    sdk: SdkConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    let authorizer = settings.auth.verifier()?.map(Authorizer::with_verifier);
    let listener = TcpListener::bind(settings.addr).await?;
    let addr = listener.local_addr()?;
    let tables = Tables::new(&settings.websocket_table, &settings.messages_table);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
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
                    format!("cannot use table {table} (to create the tables, pass --create-tables)")
                })?;
        }
    }
    let config = Config {
        tables,
        management_endpoint: ManagementEndpoint::FromEvent {
            scheme: "http".into(),
        },
        chat: settings.chat_config(),
        // The gateway closes connections at the end of their lifetime, as API Gateway does.
        connection_ttl: settings.max_lifetime + Duration::from_secs(600),
        fanout_concurrency: ManagementNotifier::DEFAULT_CONCURRENCY,
    };
    let registry = Arc::new(Registry::new(settings.max_connections, settings.send_queue));
    let backend = Arc::new(LambdaBackend {
        handlers: Handlers::on_aws(&sdk, &config),
        authorizer,
        authorized: Mutex::new(HashMap::new()),
        registry: registry.clone(),
        domain: loopback(addr).to_string(),
        stage: settings.stage.clone(),
    });
    tracing::info!(
        connections = %config.tables.connections,
        messages = %config.tables.messages,
        "Lambda mode: the Lambda handlers on DynamoDB"
    );
    gateway::serve_on(listener, settings, backend, registry, shutdown).await
}

/// Where the gateway answers management calls: loopback, whatever address it listens on.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, addr.port())
}

/// The Lambda handlers behind the local gateway.
pub struct LambdaBackend {
    handlers: Handlers,
    /// The `$connect` authorizer, when authentication is on.
    authorizer: Option<Authorizer>,
    /// The authorizer's context for each connection it allowed (`requestContext.authorizer`).
    authorized: Mutex<HashMap<ConnectionId, Value>>,
    /// The gateway's live connections: what API Gateway knows of each (when it connected, from
    /// where) and puts in every event.
    registry: Arc<Registry>,
    /// `127.0.0.1:PORT`, the events' `domainName`.
    domain: String,
    stage: String,
}

impl LambdaBackend {
    /// The `requestContext` API Gateway sends with every event.
    fn request_context(
        &self,
        route: &str,
        event_type: &str,
        connection_id: &ConnectionId,
        connected_at_ms: u64,
        identity: Value,
    ) -> Map<String, Value> {
        let now = now_ms();
        let request_id = ConnectionId::random().to_string();
        let context = json!({
            "routeKey": route,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": connected_at_ms,
            "requestTimeEpoch": now,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain,
            "connectionId": connection_id.as_str(),
            "apiId": API_ID,
        });
        let Value::Object(mut map) = context else {
            unreachable!("a JSON object literal")
        };
        if let Some(authorizer) = self.authorized_context(connection_id) {
            map.insert("authorizer".into(), authorizer);
        }
        map
    }

    fn authorized_context(&self, connection_id: &ConnectionId) -> Option<Value> {
        self.authorized
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(connection_id)
            .cloned()
    }

    fn set_authorized_context(&self, connection_id: &ConnectionId, context: Option<Value>) {
        let mut authorized = self
            .authorized
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match context {
            Some(context) => authorized.insert(connection_id.clone(), context),
            None => authorized.remove(connection_id),
        };
    }

    /// The event API Gateway gives a REQUEST authorizer: the handshake's headers, query string
    /// and request context, the route's ARN.
    fn authorizer_event(&self, connect_event: &Value) -> Value {
        let mut event = connect_event.clone();
        event["type"] = json!("REQUEST");
        event["methodArn"] = json!(format!(
            "arn:aws:execute-api:us-east-1:000000000000:{API_ID}/{}/$connect",
            self.stage
        ));
        event["stageVariables"] = json!({});
        if let Some(fields) = event.as_object_mut() {
            fields.remove("isBase64Encoded");
        }
        event
    }

    /// Runs the authorizer as API Gateway would: the context for `requestContext.authorizer`,
    /// or the handshake's refusal.
    async fn authorize(
        &self,
        authorizer: &Authorizer,
        connect_event: &Value,
    ) -> Result<Value, Refusal> {
        let refusal = |status: u16, message: &str| Refusal {
            status,
            message: message.into(),
        };
        let event: ApiGatewayCustomAuthorizerRequestTypeRequest =
            serde_json::from_value(self.authorizer_event(connect_event))
                .map_err(|_| refusal(500, "Internal server error"))?;
        let started = std::time::Instant::now();
        let response = match authorizer.authorize(&event).await {
            Ok(response) => response,
            Err(Denied::Unauthorized(_)) => return Err(refusal(401, "Unauthorized")),
            Err(Denied::KeysUnavailable(_)) => return Err(refusal(500, "Internal server error")),
        };
        let method_arn = event.method_arn.unwrap_or_default();
        let allowed = response.policy_document.statement.iter().any(|statement| {
            statement.effect == IamPolicyEffect::Allow && statement.resource.contains(&method_arn)
        });
        if !allowed {
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
        Ok(Value::Object(context))
    }

    /// When the connection was made and from where, as the gateway recorded it.
    fn known(&self, connection_id: &ConnectionId) -> (u64, Value) {
        match self.registry.get(connection_id) {
            Some(handle) => (
                handle.connected_at_ms,
                json!({ "sourceIp": handle.source_ip.to_string() }),
            ),
            // Gone from the registry already (a failed upgrade): what is left to say.
            None => (now_ms(), json!({ "sourceIp": "127.0.0.1" })),
        }
    }

    fn connect_event(&self, handshake: &Handshake) -> Value {
        let mut identity = json!({ "sourceIp": handshake.source_ip.to_string() });
        let mut headers = Map::new();
        headers.insert("Host".into(), json!(self.domain));
        headers.insert("Sec-WebSocket-Version".into(), json!("13"));
        if let Some(user_agent) = &handshake.user_agent {
            identity["userAgent"] = json!(user_agent);
            headers.insert("User-Agent".into(), json!(user_agent));
        }
        headers.insert(
            "X-Forwarded-For".into(),
            json!(handshake.source_ip.to_string()),
        );
        headers.insert(
            "X-Forwarded-Port".into(),
            json!(self.domain.rsplit(':').next().unwrap_or_default()),
        );
        headers.insert("X-Forwarded-Proto".into(), json!("http"));
        let multi_value_headers: Map<String, Value> = headers
            .iter()
            .map(|(name, value)| (name.clone(), json!([value])))
            .collect();
        let mut event = json!({
            "headers": headers,
            "multiValueHeaders": multi_value_headers,
            "requestContext": self.request_context(
                "$connect",
                "CONNECT",
                &handshake.connection_id,
                handshake.connected_at_ms,
                identity,
            ),
            "isBase64Encoded": false,
        });
        // As API Gateway: every value in the multi-value map, the last in the other; neither
        // when there is no query string.
        if !handshake.query.is_empty() {
            let mut single = Map::new();
            let mut multi: Map<String, Value> = Map::new();
            for (name, value) in &handshake.query {
                single.insert(name.clone(), json!(value));
                let values = multi.entry(name.clone()).or_insert_with(|| json!([]));
                if let Value::Array(values) = values {
                    values.push(json!(value));
                }
            }
            event["queryStringParameters"] = Value::Object(single);
            event["multiValueQueryStringParameters"] = Value::Object(multi);
        }
        event
    }

    fn message_event(&self, connection_id: &ConnectionId, inbound: Inbound<'_>) -> Value {
        let (connected_at, identity) = self.known(connection_id);
        // API Gateway's route selection: `$request.body.action` when the body is a JSON object
        // whose `action` names a route, else `$default`.
        let (route, body, base64) = match inbound {
            Inbound::Text(text) => {
                let route = serde_json::from_str::<Map<String, Value>>(text)
                    .ok()
                    .and_then(|fields| route_key(&fields))
                    .map(|action| action.as_str())
                    .unwrap_or("$default");
                (route, text, false)
            }
            // The gateway keeps no bytes of a binary frame (the protocol refuses them); API
            // Gateway would send them base64-encoded.
            Inbound::Binary => ("$default", "", true),
        };
        let mut context =
            self.request_context(route, "MESSAGE", connection_id, connected_at, identity);
        context.insert("messageId".into(), json!(ConnectionId::random().as_str()));
        json!({
            "requestContext": context,
            "body": body,
            "isBase64Encoded": base64,
        })
    }

    fn disconnect_event(&self, connection_id: &ConnectionId) -> Value {
        let (connected_at, identity) = self.known(connection_id);
        let (code, reason) = self
            .registry
            .get(connection_id)
            .and_then(|handle| handle.close_frame())
            .unwrap_or((1006, "connection lost"));
        let mut context = self.request_context(
            "$disconnect",
            "DISCONNECT",
            connection_id,
            connected_at,
            identity,
        );
        context.insert("disconnectStatusCode".into(), json!(code));
        context.insert("disconnectReason".into(), json!(reason));
        json!({
            "headers": { "Host": self.domain, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": "" },
            "multiValueHeaders": {
                "Host": [self.domain], "x-api-key": [""], "X-Forwarded-For": [""], "x-restapi": [""],
            },
            "requestContext": context,
            "isBase64Encoded": false,
        })
    }
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

#[async_trait]
impl Backend for LambdaBackend {
    async fn connect(&self, handshake: &Handshake) -> Result<(), Refusal> {
        let mut event = self.connect_event(handshake);
        if let Some(authorizer) = &self.authorizer {
            let context = self.authorize(authorizer, &event).await?;
            event["requestContext"]["authorizer"] = context.clone();
            self.set_authorized_context(&handshake.connection_id, Some(context));
        }
        let Some(event) = to_request(event) else {
            self.set_authorized_context(&handshake.connection_id, None);
            return Err(Refusal {
                status: 500,
                message: "Internal server error".into(),
            });
        };
        let response = self.handlers.connect(event).await;
        if (200..300).contains(&response.status_code) {
            return Ok(());
        }
        self.set_authorized_context(&handshake.connection_id, None);
        // API Gateway answers the handshake with the function's status.
        let message = body_text(&response)
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|body| body.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "Forbidden".into());
        Err(Refusal {
            status: u16::try_from(response.status_code).unwrap_or(500),
            message,
        })
    }

    async fn message(&self, connection_id: &ConnectionId, inbound: Inbound<'_>) -> Option<Payload> {
        let event = to_request(self.message_event(connection_id, inbound))?;
        let response = self.handlers.message(event).await;
        // The route response sends the body back to the sender, whatever the status.
        body_text(&response).map(Payload::from_json)
    }

    async fn disconnect(&self, connection_id: &ConnectionId) {
        if let Some(event) = to_request(self.disconnect_event(connection_id)) {
            self.handlers.disconnect(event).await;
        }
        self.set_authorized_context(connection_id, None);
    }

    async fn shutdown(&self) {}
}

/// API Gateway's `requestTime`: `28/Nov/2026:09:20:57 +0000`.
fn request_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    // `2026-11-28T09:20:57Z`
    let iso = humantime::format_rfc3339_seconds(time).to_string();
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    format!(
        "{}/{month}/{}:{} +0000",
        iso.get(8..10).unwrap_or("01"),
        iso.get(0..4).unwrap_or("1970"),
        iso.get(11..19).unwrap_or("00:00:00"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_time_is_written_like_api_gateways() {
        // 2026-11-28T09:20:57.123Z
        assert_eq!(
            request_time(1_795_857_657_123),
            "28/Nov/2026:09:20:57 +0000"
        );
    }

    /// The authorizer's context is in every event of the connection it allowed, as on AWS, and
    /// forgotten at `$disconnect`.
    #[tokio::test]
    async fn the_authorizer_context_goes_into_every_event_of_the_connection() {
        use chat_core::memory::{MemoryConnections, MemoryMessages, RecordingNotifier};
        use chat_lambda::FixedNotifier;

        let secret = b"a secret for the lambda mode test";
        let backend = LambdaBackend {
            handlers: Handlers::new(
                Arc::new(MemoryConnections::new()),
                Arc::new(MemoryMessages::new()),
                Arc::new(FixedNotifier(Arc::new(RecordingNotifier::default()))),
                chat_core::ChatConfig::default(),
            ),
            authorizer: Some(Authorizer::with_verifier(chat_auth::Verifier::hs256(
                secret,
            ))),
            authorized: Mutex::new(HashMap::new()),
            registry: Arc::new(Registry::new(10, 10)),
            domain: "127.0.0.1:9".into(),
            stage: "dev".into(),
        };
        let claims = chat_auth::MintClaims {
            sub: "u-1".into(),
            name: Some("Ada".into()),
            exp: chat_auth::now_secs() + 600,
            iat: chat_auth::now_secs(),
            iss: None,
            aud: None,
        };
        let token = chat_auth::mint_hs256(secret, &claims).unwrap();
        let handshake = |token: &str| Handshake {
            connection_id: ConnectionId::random(),
            query: vec![("token".into(), token.into())],
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: None,
            connected_at_ms: now_ms(),
        };
        let refused = backend.connect(&handshake("forged")).await.unwrap_err();
        assert_eq!(refused.status, 401);

        let ada = handshake(&token);
        backend.connect(&ada).await.unwrap();
        let event =
            backend.message_event(&ada.connection_id, Inbound::Text(r#"{"action":"ping"}"#));
        let context = &event["requestContext"]["authorizer"];
        assert_eq!(context["userId"], "u-1");
        assert_eq!(context["name"], "Ada");
        assert_eq!(context["principalId"], "u-1");
        assert!(to_request(event).is_some(), "the handlers can read it");
        assert_eq!(
            backend.disconnect_event(&ada.connection_id)["requestContext"]["authorizer"]["userId"],
            "u-1"
        );
        backend.disconnect(&ada.connection_id).await;
        assert!(backend.authorized.lock().unwrap().is_empty());
    }

    #[test]
    fn management_calls_go_to_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(loopback(any).to_string(), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(loopback(any6).to_string(), "[::1]:8080");
    }
}
