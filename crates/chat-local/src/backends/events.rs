//! The events API Gateway sends a WebSocket API's integrations, in their exact JSON shapes:
//! `$connect` (and the REQUEST authorizer's event before it), each message, `$disconnect`.
//!
//! AWS's reference for the shapes is its published sample events, which the `aws_lambda_events`
//! crate ships in `src/fixtures/` (`example-apigw-websocket-request*.json`,
//! `example-apigw-v2-custom-authorizer-websocket-request.json`); the tests below compare what is
//! built here with them, field by field and type by type.

use std::time::Duration;

use chat_core::clock::now_ms;
use chat_core::domain::ConnectionId;
use chat_core::protocol::{Inbound, route_key};
use serde_json::{Map, Value, json};

use crate::gateway::{ApiCall, Closed, Connection, Handshake};

/// The API id the local events carry.
pub const API_ID: &str = "local";

/// The API whose events these are: where its `@connections` answers (`domainName`, `stage`).
#[derive(Debug, Clone)]
pub struct Api {
    /// `127.0.0.1:PORT`: the gateway's own address, so that the handlers post back to it.
    pub domain: String,
    pub stage: String,
}

impl Api {
    /// The `requestContext` API Gateway sends with every event.
    fn request_context(
        &self,
        route: &str,
        event_type: &str,
        connection: &Connection,
        request_id: &str,
    ) -> Map<String, Value> {
        let now = now_ms();
        let mut identity = json!({ "sourceIp": connection.source_ip.to_string() });
        if let Some(user_agent) = &connection.user_agent {
            identity["userAgent"] = json!(user_agent);
        }
        let context = json!({
            "routeKey": route,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": connection.connected_at_ms,
            "requestTimeEpoch": now,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain,
            "connectionId": connection.id.as_str(),
            "apiId": API_ID,
        });
        let Value::Object(mut map) = context else {
            unreachable!("a JSON object literal")
        };
        if let Some(authorizer) = &connection.authorizer {
            map.insert("authorizer".into(), Value::Object(authorizer.clone()));
        }
        map
    }

    /// `$connect`: every header of the handshake and its query string.
    pub fn connect(&self, connection: &Connection, handshake: &Handshake) -> Value {
        // As API Gateway: every value in the multi-value map, the last in the other (AWS's
        // sample events in aws_lambda_events' fixtures show both maps). The headers API Gateway
        // adds come after the client's and replace any of the same name.
        let mut headers = Map::new();
        let mut multi_value_headers: Map<String, Value> = Map::new();
        let mut add = |name: String, value: &str| {
            headers.insert(name.clone(), json!(value));
            let values = multi_value_headers.entry(name).or_insert_with(|| json!([]));
            if let Value::Array(values) = values {
                values.push(json!(value));
            }
        };
        let forwarded = ["x-forwarded-for", "x-forwarded-port", "x-forwarded-proto"];
        for (name, value) in &handshake.headers {
            if !forwarded.contains(&name.as_str()) {
                add(header_case(name), value);
            }
        }
        if handshake.header("host").is_none() {
            add("Host".into(), &self.domain);
        }
        add("X-Amzn-Trace-Id".into(), &trace_id());
        add("X-Forwarded-For".into(), &connection.source_ip.to_string());
        add(
            "X-Forwarded-Port".into(),
            self.domain.rsplit(':').next().unwrap_or_default(),
        );
        add("X-Forwarded-Proto".into(), "http");
        let request_id = ConnectionId::random();
        let mut event = json!({
            "headers": headers,
            "multiValueHeaders": multi_value_headers,
            "requestContext": self.request_context("$connect", "CONNECT", connection, request_id.as_str()),
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

    /// The event API Gateway gives a REQUEST authorizer on `$connect`: the handshake's headers,
    /// query string and request context, and the route's ARN.
    pub fn authorizer(&self, connect_event: &Value) -> Value {
        let mut event = connect_event.clone();
        event["type"] = json!("REQUEST");
        event["methodArn"] = json!(self.method_arn("$connect"));
        event["stageVariables"] = json!({});
        if let Some(fields) = event.as_object_mut() {
            fields.remove("isBase64Encoded");
        }
        event
    }

    /// The ARN of one of this API's routes, as an authorizer's policy names it.
    pub fn method_arn(&self, route: &str) -> String {
        format!(
            "arn:aws:execute-api:us-east-1:000000000000:{API_ID}/{}/{route}",
            self.stage
        )
    }

    /// A frame from the client, routed as API Gateway's route selection on
    /// `$request.body.action` does: the action when the body is a JSON object whose `action`
    /// names a route, else `$default`.
    pub fn message(
        &self,
        connection: &Connection,
        request_id: &str,
        inbound: Inbound<'_>,
    ) -> Value {
        let (route, body, base64) = match inbound {
            Inbound::Text(text) => {
                let route = serde_json::from_str::<Map<String, Value>>(text)
                    .ok()
                    .and_then(|fields| route_key(&fields))
                    .map_or("$default", |action| action.as_str());
                (route, text, false)
            }
            // The gateway keeps no bytes of a binary frame (the protocol refuses them); API
            // Gateway would send them base64-encoded.
            Inbound::Binary => ("$default", "", true),
        };
        let mut context = self.request_context(route, "MESSAGE", connection, request_id);
        context.insert("messageId".into(), json!(ConnectionId::random().as_str()));
        json!({
            "requestContext": context,
            "body": body,
            "isBase64Encoded": base64,
        })
    }

    /// `$disconnect`, with how the connection ended.
    pub fn disconnect(&self, connection: &Connection, closed: &Closed) -> Value {
        let request_id = ConnectionId::random();
        let mut context =
            self.request_context("$disconnect", "DISCONNECT", connection, request_id.as_str());
        context.insert("disconnectStatusCode".into(), json!(closed.status_code));
        context.insert("disconnectReason".into(), json!(closed.reason));
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

/// The route of the server API in `template.yaml`'s HTTP API: every method under `/api/`.
pub const SERVER_API_ROUTE: &str = "ANY /api/{proxy+}";

/// The IAM caller the local HTTP API events name: API Gateway puts the signer of the request in
/// `requestContext.authorizer.iam`; locally the caller showed the server's bearer key instead.
const LOCAL_CALLER: &str = "local-api-key";

/// A server API call as an HTTP API's Lambda proxy integration receives it (payload format
/// 2.0, "Working with AWS Lambda proxy integrations for HTTP APIs", API Gateway Developer
/// Guide): repeated headers and query parameters joined with commas, cookies apart, the route
/// `ANY /api/{proxy+}` with its `proxy` path parameter, the body as text (JSON is not binary).
pub fn http_api(call: &ApiCall, domain: &str) -> Value {
    let now = now_ms();
    let (path, query) = call
        .path_and_query
        .split_once('?')
        .unwrap_or((call.path_and_query.as_str(), ""));
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &call.headers {
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        match headers.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => {
                headers.insert(name.clone(), json!(value));
            }
        }
    }
    let mut parameters = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match parameters.get_mut(name.as_ref()) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => {
                parameters.insert(name.into_owned(), json!(value));
            }
        }
    }
    let proxy = path.strip_prefix("/api/").unwrap_or_default();
    let request_id = ConnectionId::random();
    let mut event = json!({
        "version": "2.0",
        "routeKey": SERVER_API_ROUTE,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": API_ID,
            "authorizer": {
                "iam": {
                    "accessKey": LOCAL_CALLER,
                    "accountId": "000000000000",
                    "callerId": LOCAL_CALLER,
                    "cognitoIdentity": null,
                    "principalOrgId": null,
                    "userArn": format!("arn:aws:iam::000000000000:user/{LOCAL_CALLER}"),
                    "userId": LOCAL_CALLER,
                }
            },
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap_or(domain),
            "http": {
                "method": call.method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": call.source_ip.to_string(),
                "userAgent": call.user_agent.clone().unwrap_or_default(),
            },
            "requestId": request_id.as_str(),
            "routeKey": SERVER_API_ROUTE,
            "stage": "$default",
            "time": request_time(now),
            "timeEpoch": now,
        },
        "pathParameters": { "proxy": proxy },
        "body": String::from_utf8_lossy(&call.body),
        "isBase64Encoded": false,
    });
    if !parameters.is_empty() {
        event["queryStringParameters"] = Value::Object(parameters);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    event
}

/// A header name as browsers write it (`Sec-WebSocket-Key`, `User-Agent`). API Gateway passes
/// the client's own spelling; HTTP/1.1 names are case-insensitive and the server here sees them
/// lowercased, so this is the spelling a browser's request would have had on AWS. Handlers
/// should compare names case-insensitively, as AWS's own samples do.
fn header_case(name: &str) -> String {
    name.split('-')
        .map(|word| match word {
            "websocket" => "WebSocket".to_owned(),
            _ => {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An X-Ray trace header as API Gateway adds it: `Root=1-{epoch seconds, hex}-{24 hex digits}`.
fn trace_id() -> String {
    let random: String = (0..24)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect();
    format!("Root=1-{:08x}-{random}", now_ms() / 1000)
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
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn request_time_is_written_like_api_gateways() {
        // 2026-11-28T09:20:57.123Z
        assert_eq!(
            request_time(1_795_857_657_123),
            "28/Nov/2026:09:20:57 +0000"
        );
    }

    fn api() -> Api {
        Api {
            domain: "127.0.0.1:8080".into(),
            stage: "dev".into(),
        }
    }

    fn connection() -> Connection {
        Connection {
            id: ConnectionId::random(),
            connected_at_ms: now_ms(),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: Some("test-agent/1".into()),
            authorizer: None,
        }
    }

    /// The `aws_lambda_events` crate's published sample events (AWS's own), in the crate's
    /// `src/fixtures/`, found once through `cargo metadata` as its manifest directory.
    fn aws_fixture(name: &str) -> Value {
        static FIXTURES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let dir = FIXTURES.get_or_init(|| {
            // Offline, the packages of other platforms (never downloaded by a build here) are
            // missing: ask about this host's only.
            let rustc = std::process::Command::new("rustc")
                .arg("-vV")
                .output()
                .expect("rustc -vV runs");
            let host = String::from_utf8_lossy(&rustc.stdout)
                .lines()
                .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
                .expect("rustc -vV names the host");
            let out = std::process::Command::new(env!("CARGO"))
                .args(["metadata", "--format-version", "1", "--offline"])
                .args(["--filter-platform", &host])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .expect("cargo metadata runs");
            let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
            let manifest = metadata["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "aws_lambda_events")
                .and_then(|p| p["manifest_path"].as_str())
                .expect("aws_lambda_events is a dependency");
            PathBuf::from(manifest)
                .parent()
                .unwrap()
                .join("src/fixtures")
        });
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Every field of AWS's sample at `path` that `ours` has must have the same JSON type, and
    /// every field of AWS's in `required` must be in ours. Returns the fields compared.
    fn same_shape(aws: &Value, ours: &Value, path: &str, compared: &mut Vec<String>) {
        assert_eq!(kind(aws), kind(ours), "{path}: AWS {aws} vs ours {ours}");
        if let (Value::Object(aws), Value::Object(ours)) = (aws, ours) {
            for (key, theirs) in aws {
                if let Some(mine) = ours.get(key) {
                    compared.push(format!("{path}.{key}"));
                    // Header and parameter maps hold the client's own names: compare the map.
                    if matches!(
                        key.as_str(),
                        "headers"
                            | "multiValueHeaders"
                            | "queryStringParameters"
                            | "multiValueQueryStringParameters"
                            | "authorizer"
                            | "stageVariables"
                    ) {
                        assert_eq!(kind(theirs), kind(mine), "{path}.{key}");
                        continue;
                    }
                    same_shape(theirs, mine, &format!("{path}.{key}"), compared);
                }
            }
        }
    }

    fn assert_has(ours: &Value, fields: &[&str], what: &str) {
        for field in fields {
            let mut value = ours;
            for part in field.split('.') {
                value = &value[part];
            }
            assert!(!value.is_null(), "{what} lacks {field}");
        }
    }

    const CONTEXT_FIELDS: [&str; 13] = [
        "requestContext.routeKey",
        "requestContext.eventType",
        "requestContext.extendedRequestId",
        "requestContext.requestTime",
        "requestContext.messageDirection",
        "requestContext.stage",
        "requestContext.connectedAt",
        "requestContext.requestTimeEpoch",
        "requestContext.identity.sourceIp",
        "requestContext.requestId",
        "requestContext.domainName",
        "requestContext.connectionId",
        "requestContext.apiId",
    ];

    #[test]
    fn the_connect_event_has_the_fields_and_types_of_aws_sample() {
        let handshake = Handshake {
            query: vec![("name".into(), "ada".into()), ("name".into(), "bob".into())],
            ..Handshake::default()
        };
        let ours = api().connect(&connection(), &handshake);
        let aws = aws_fixture("example-apigw-websocket-request.json");
        let mut compared = Vec::new();
        same_shape(&aws, &ours, "", &mut compared);
        assert!(compared.len() > 15, "{compared:?}");
        assert_has(&ours, &CONTEXT_FIELDS, "$connect");
        assert_has(&ours, &["headers.Host", "isBase64Encoded"], "$connect");
        assert_eq!(ours["requestContext"]["eventType"], "CONNECT");
        assert_eq!(ours["queryStringParameters"]["name"], "bob", "the last");
        assert_eq!(
            ours["multiValueQueryStringParameters"]["name"],
            json!(["ada", "bob"])
        );
    }

    #[test]
    fn the_message_event_has_the_fields_and_types_of_aws_sample() {
        let ours = api().message(
            &connection(),
            "req-1",
            Inbound::Text(r#"{"action":"ping"}"#),
        );
        let aws = aws_fixture("example-apigw-websocket-request-without-method.json");
        let mut compared = Vec::new();
        same_shape(&aws, &ours, "", &mut compared);
        assert!(compared.len() > 10, "{compared:?}");
        assert_has(&ours, &CONTEXT_FIELDS, "a message");
        assert_has(&ours, &["requestContext.messageId", "body"], "a message");
        assert_eq!(ours["requestContext"]["routeKey"], "ping");
        let default = api().message(&connection(), "req-1", Inbound::Text(r#"{"action":"fly"}"#));
        assert_eq!(default["requestContext"]["routeKey"], "$default");
    }

    #[test]
    fn the_disconnect_event_has_the_fields_and_types_of_aws_sample() {
        let closed = Closed {
            status_code: 1001,
            reason: "going away".into(),
        };
        let ours = api().disconnect(&connection(), &closed);
        let aws = aws_fixture("example-apigw-websocket-request-disconnect-route.json");
        let mut compared = Vec::new();
        same_shape(&aws, &ours, "", &mut compared);
        assert!(compared.len() > 10, "{compared:?}");
        assert_has(&ours, &CONTEXT_FIELDS, "$disconnect");
        assert_eq!(ours["requestContext"]["disconnectStatusCode"], 1001);
        assert_eq!(ours["requestContext"]["disconnectReason"], "going away");
    }

    #[test]
    fn the_server_api_event_has_the_fields_and_types_of_aws_sample() {
        let call = ApiCall {
            method: "PUT".into(),
            path_and_query: "/api/rooms/private.a/grants/u%7C1?x=1&x=2".into(),
            headers: vec![
                ("host".into(), "127.0.0.1:8080".into()),
                ("x-tag".into(), "a".into()),
                ("x-tag".into(), "b".into()),
                ("cookie".into(), "c1=1; c2=2".into()),
            ],
            body: bytes::Bytes::from_static(b"{}"),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: Some("curl/8".into()),
        };
        let ours = http_api(&call, "127.0.0.1:8080");
        let aws = aws_fixture("example-apigw-v2-request-iam.json");
        let mut compared = Vec::new();
        same_shape(&aws, &ours, "", &mut compared);
        assert!(compared.len() > 20, "{compared:?}");
        assert_eq!(ours["rawPath"], "/api/rooms/private.a/grants/u%7C1");
        assert_eq!(ours["rawQueryString"], "x=1&x=2");
        assert_eq!(ours["queryStringParameters"]["x"], "1,2");
        assert_eq!(ours["headers"]["x-tag"], "a,b");
        assert_eq!(ours["cookies"], json!(["c1=1", "c2=2"]));
        assert_eq!(ours["requestContext"]["http"]["method"], "PUT");
        assert_eq!(
            ours["pathParameters"]["proxy"],
            "rooms/private.a/grants/u%7C1"
        );
        let request: aws_lambda_events::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(ours).expect("the runtime reads it");
        assert!(request.request_context.authorizer.unwrap().iam.is_some());
    }

    #[test]
    fn the_authorizer_event_has_the_fields_and_types_of_aws_sample() {
        let handshake = Handshake {
            query: vec![("token".into(), "t".into())],
            ..Handshake::default()
        };
        let connect = api().connect(&connection(), &handshake);
        let ours = api().authorizer(&connect);
        let aws = aws_fixture("example-apigw-v2-custom-authorizer-websocket-request.json");
        let mut compared = Vec::new();
        same_shape(&aws, &ours, "", &mut compared);
        assert!(compared.len() > 10, "{compared:?}");
        assert_eq!(ours["type"], "REQUEST");
        assert_eq!(ours["queryStringParameters"]["token"], "t");
        assert!(
            ours["methodArn"]
                .as_str()
                .unwrap()
                .ends_with("/dev/$connect")
        );
    }

    #[test]
    fn every_client_header_is_in_the_connect_and_authorizer_events() {
        let handshake = Handshake {
            query: Vec::new(),
            headers: [
                ("host", "127.0.0.1:8080"),
                ("user-agent", "ua/1"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-protocol", "chat.v1, other"),
                ("x-custom", "a"),
                ("x-custom", "b"),
                ("x-forwarded-for", "6.6.6.6"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec(),
        };
        let connect = api().connect(&connection(), &handshake);
        for event in [connect.clone(), api().authorizer(&connect)] {
            let headers = &event["headers"];
            let multi = &event["multiValueHeaders"];
            assert_eq!(headers["User-Agent"], "ua/1");
            assert_eq!(headers["Sec-WebSocket-Key"], "dGhlIHNhbXBsZSBub25jZQ==");
            assert_eq!(headers["Sec-WebSocket-Protocol"], "chat.v1, other");
            assert_eq!(headers["Host"], "127.0.0.1:8080");
            // The last value in one map, every value in the other.
            assert_eq!(headers["X-Custom"], "b");
            assert_eq!(multi["X-Custom"], json!(["a", "b"]));
            // What API Gateway adds, the client cannot forge.
            assert_eq!(headers["X-Forwarded-For"], "127.0.0.1");
            assert_eq!(multi["X-Forwarded-For"], json!(["127.0.0.1"]));
            assert!(
                headers["X-Amzn-Trace-Id"]
                    .as_str()
                    .unwrap()
                    .starts_with("Root=1-")
            );
        }
    }

    #[test]
    fn header_names_are_spelt_as_browsers_send_them() {
        assert_eq!(
            header_case("sec-websocket-extensions"),
            "Sec-WebSocket-Extensions"
        );
        assert_eq!(header_case("user-agent"), "User-Agent");
        assert_eq!(header_case("x-amzn-trace-id"), "X-Amzn-Trace-Id");
        assert_eq!(header_case("origin"), "Origin");
    }

    #[test]
    fn a_message_event_carries_the_gateways_request_id() {
        let event = api().message(&connection(), "Qyi3UG41tjMFlUg=", Inbound::Text("{}"));
        assert_eq!(event["requestContext"]["requestId"], "Qyi3UG41tjMFlUg=");
    }
}
