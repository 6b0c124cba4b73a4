//! What each function does on DynamoDB against what its role in `template.yaml` allows.
//!
//! moto allows every call; IAM refuses what the role does not name, and a refusal is an
//! `internal` error for every user on AWS. So the three functions run here on moto, each with a
//! client that logs every request, through every route (a fan-out that finds a connection gone
//! included); then each logged call, and each item of a transaction (IAM checks each item's own
//! action: `Put` needs `dynamodb:PutItem`, `Update` `dynamodb:UpdateItem`), must be allowed by
//! an `Allow` statement of that function's role on that table (or index).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_aws::testing::{CallLog, recorded_client, unique_tables};
use chat_aws::{DynamoConnections, DynamoMessages, Tables};
use chat_core::ChatConfig;
use chat_core::domain::ConnectionId;
use chat_lambda::{ApiGatewayV2httpRequest, Handlers, ManagementEndpoint};
use serde_json::Value;
use support::*;

/// A function's DynamoDB access: its handlers on a logging client.
async fn function(tables: &Tables, recorder: &Arc<Recorder>) -> (Handlers, CallLog) {
    let (client, log) = recorded_client().await;
    let handlers = Handlers::new(
        Arc::new(DynamoConnections::new(client.clone(), tables.clone())),
        Arc::new(DynamoMessages::new(client, tables.clone())),
        recorder.clone(),
        ChatConfig::default(),
    )
    // The api function's endpoint is configured: its events name the HTTP API.
    .with_management_endpoint(ManagementEndpoint::Fixed(ENDPOINT.into()));
    (handlers, log)
}

/// The server API's fixture event (an HTTP API's, IAM-signed) for this call.
fn api_call(method: &str, path: &str, body: &str) -> ApiGatewayV2httpRequest {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/api/request.json"
    );
    let text = std::fs::read_to_string(file).expect("the api fixture");
    let mut event: ApiGatewayV2httpRequest =
        serde_json::from_str(&text).expect("an HTTP API event");
    event.raw_path = Some(path.to_owned());
    event.request_context.http.method = method.parse().expect("a method");
    event.body = (!body.is_empty()).then(|| body.to_owned());
    event
}

/// (action, table or `table/index/NAME`) pairs that one logged request needs.
fn needs(operation: &str, body: &str) -> Vec<(String, String)> {
    let body: Value = serde_json::from_str(body).expect("a JSON request body");
    let table = |v: &Value| v["TableName"].as_str().expect("TableName").to_owned();
    match operation {
        "TransactWriteItems" => body["TransactItems"]
            .as_array()
            .expect("TransactItems")
            .iter()
            .map(|item| {
                let (kind, inner) = item
                    .as_object()
                    .and_then(|o| o.iter().next())
                    .expect("one kind per item");
                let action = match kind.as_str() {
                    "Put" => "PutItem",
                    "Update" => "UpdateItem",
                    "Delete" => "DeleteItem",
                    "ConditionCheck" => "ConditionCheckItem",
                    other => panic!("a transaction item of kind {other}"),
                };
                (format!("dynamodb:{action}"), table(inner))
            })
            .collect(),
        "BatchWriteItem" | "BatchGetItem" => body["RequestItems"]
            .as_object()
            .expect("RequestItems")
            .keys()
            .map(|table| (format!("dynamodb:{operation}"), table.clone()))
            .collect(),
        _ => {
            let mut resource = table(&body);
            if let Some(index) = body["IndexName"].as_str() {
                resource = format!("{resource}/index/{index}");
            }
            vec![(format!("dynamodb:{operation}"), resource)]
        }
    }
}

/// (action, table or `table/index/NAME`) pairs the role's `Allow` statements give, with the
/// template's logical table ids mapped to these tests' table names.
fn allowed(role: &str, tables: &Tables) -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml at the workspace root");
    let template: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let policies = template["Resources"][role]["Properties"]["Policies"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{role} has policies"));
    let name_of = |text: &str| -> String {
        // `!GetAtt MessagesTable.Arn` or `!Sub "${MessagesTable.Arn}/index/bySeq"`.
        let text = text.trim_start_matches("${");
        let (logical, rest) = text.split_once(".Arn").expect("a table's Arn");
        let rest = rest.trim_start_matches('}');
        let table = match logical {
            "MessagesTable" => &tables.messages,
            "ConnectionsTable" => &tables.connections,
            other => panic!("an Arn of {other}"),
        };
        format!("{table}{rest}")
    };
    let mut pairs = BTreeSet::new();
    for policy in policies {
        for statement in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
            assert_eq!(statement["Effect"].as_str(), Some("Allow"));
            let actions: Vec<String> = match &statement["Action"] {
                serde_norway::Value::Sequence(items) => items
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                single => vec![single.as_str().unwrap().to_owned()],
            };
            let resource = match &statement["Resource"] {
                serde_norway::Value::Tagged(tagged) => tagged.value.as_str().unwrap().to_owned(),
                other => other.as_str().unwrap_or_default().to_owned(),
            };
            if !actions.iter().any(|a| a.starts_with("dynamodb:")) {
                continue;
            }
            for action in actions {
                pairs.insert((action, name_of(&resource)));
            }
        }
    }
    pairs
}

fn assert_allowed(function: &str, role: &str, log: &CallLog, tables: &Tables) -> usize {
    let allowed = allowed(role, tables);
    let calls = log.take();
    for (operation, body) in &calls {
        for need in needs(operation, body) {
            assert!(
                allowed.contains(&need),
                "the {function} function calls {operation}, which needs {need:?}; {role} allows {allowed:?}"
            );
        }
    }
    calls.len()
}

fn naming(
    name: &str,
    connection: &str,
    id: &str,
) -> aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest {
    let mut event = fixture_from(name, connection);
    event.body = event.body.map(|body| body.replace("MESSAGE_ID", id));
    event
}

#[tokio::test]
async fn each_function_makes_only_the_dynamodb_calls_its_role_allows() {
    let (setup, _) = recorded_client().await;
    let tables = unique_tables("iam");
    chat_aws::tables::create_tables(&setup, &tables)
        .await
        .expect("tables on moto");
    let recorder = Arc::new(Recorder::default());
    let (connect, connect_log) = function(&tables, &recorder).await;
    let (message, message_log) = function(&tables, &recorder).await;
    let (disconnect, disconnect_log) = function(&tables, &recorder).await;
    let (api, api_log) = function(&tables, &recorder).await;

    for (fixture, id) in [
        ("connect.json", ADA),
        ("connect-repeated-name.json", BOB),
        ("connect-guest.json", CAT),
    ] {
        assert_eq!(
            connect.connect(fixture_from(fixture, id)).await.status_code,
            200
        );
    }
    let sent = body(&message.message(fixture("sendMessage.json")).await);
    let id = sent["id"].as_str().expect("an ack").to_owned();
    for (name, from) in [
        ("sendMessage.json", ADA), // a retry
        ("history.json", ADA),
        ("members.json", ADA),
        ("joinRoom.json", BOB),
        ("typing.json", ADA),
        ("ping.json", ADA),
        ("default.json", ADA),
        ("editMessage.json", ADA),
        ("react.json", BOB),
        ("unreact.json", BOB),
        ("markRead.json", BOB),
        ("rooms.json", BOB),
        ("leaveRoom.json", BOB),
    ] {
        let reply = message.message(naming(name, from, &id)).await;
        assert!(reply.status_code < 500, "{name}: {:?}", reply.body);
    }
    // A signed-in user opens a direct room (its pair is stored, read back at the join).
    let signed = "SigSSSSSSSSSSSS=";
    assert_eq!(
        connect
            .connect(fixture_from("connect-authorized.json", signed))
            .await
            .status_code,
        200
    );
    let direct = message
        .message(fixture_from("openDirect.json", signed))
        .await;
    assert_eq!(body(&direct)["type"], "joined", "{:?}", direct.body);
    // Every call of the server API: a system message to lobby (and its retry), deleted; the
    // signed-in user banned from its direct room (so taken out of it), then let back in.
    let notice = r#"{"text":"notice","clientMsgId":"n-1"}"#;
    let posted = api
        .api(api_call("POST", "/api/rooms/lobby/messages", notice))
        .await;
    assert_eq!(posted.status_code, 201, "{:?}", posted.body);
    let posted: Value = match &posted.body {
        Some(aws_lambda_events::encodings::Body::Text(text)) => serde_json::from_str(text).unwrap(),
        other => panic!("a JSON body: {other:?}"),
    };
    let dm = chat_core::domain::RoomName::direct("user-1", "user-bob");
    let ban = format!("/api/rooms/{dm}/bans/user-1");
    let grant = "/api/rooms/private.x/grants/user-1";
    for (method, path, body, status) in [
        ("POST", "/api/rooms/lobby/messages".to_owned(), notice, 201),
        ("GET", "/api/rooms/lobby/members".into(), "", 200),
        ("PUT", grant.into(), "", 204),
        ("DELETE", grant.into(), "", 204),
        ("PUT", ban.clone(), "", 204),
        ("DELETE", ban, "", 204),
        (
            "DELETE",
            format!(
                "/api/rooms/lobby/messages/{}",
                posted["id"].as_str().unwrap()
            ),
            "",
            204,
        ),
        ("DELETE", "/api/users/user-1/connections".into(), "", 204),
    ] {
        let response = api.api(api_call(method, &path, body)).await;
        assert_eq!(
            response.status_code, status,
            "{method} {path}: {:?}",
            response.body
        );
    }
    // A user whose connection is gone when the API closes it: removed by the api function.
    let again = connect
        .connect(fixture_from("connect-authorized.json", signed))
        .await;
    assert_eq!(again.status_code, 200);
    recorder.notifier.mark_gone(&ConnectionId::new(signed));
    let closed = api
        .api(api_call("DELETE", "/api/users/user-1/connections", ""))
        .await;
    assert_eq!(closed.status_code, 204);
    // A fan-out that finds a connection gone removes it (from the message function).
    recorder.notifier.mark_gone(&ConnectionId::new(CAT));
    let deleted = message
        .message(naming("deleteMessage.json", ADA, &id))
        .await;
    assert_eq!(body(&deleted)["type"], "deleted");
    assert_eq!(
        disconnect
            .disconnect(fixture("disconnect.json"))
            .await
            .status_code,
        200
    );

    let calls = [
        assert_allowed("connect", "ConnectRole", &connect_log, &tables),
        assert_allowed("message", "MessageRole", &message_log, &tables),
        assert_allowed("disconnect", "DisconnectRole", &disconnect_log, &tables),
        assert_allowed("api", "ApiRole", &api_log, &tables),
    ];
    assert!(
        calls.iter().all(|&n| n > 0),
        "each function was logged: {calls:?}"
    );
}
