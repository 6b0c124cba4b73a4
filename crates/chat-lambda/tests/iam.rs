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
use chat_lambda::Handlers;
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
    );
    (handlers, log)
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
    ];
    assert!(
        calls.iter().all(|&n| n > 0),
        "each function was logged: {calls:?}"
    );
}
