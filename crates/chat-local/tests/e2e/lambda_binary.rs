//! `chat serve --backend lambda` as a process: the flags, the SDK's variables (DynamoDB on moto),
//! `--create-tables`, and a short chat through the Lambda handlers. The rest of the suite drives
//! the Lambda mode in process (CHAT_TEST_BACKEND=lambda); this checks the binary's own wiring.

use serde_json::json;

use chat_aws::Tables;

use crate::binary::{Process, bad_tokens_are_refused_with_401, mint};
use crate::support::Client;

/// `chat serve --backend lambda --create-tables` on fresh tables in moto, with `extra` flags.
/// The data directory is returned to outlive the process.
fn start_lambda_mode(tag: &str, extra: &[&str]) -> (Process, Tables, tempfile::TempDir) {
    let endpoint = chat_aws::testing::dynamodb_endpoint();
    let tables = chat_aws::testing::unique_tables(tag);
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--backend",
        "lambda",
        "--create-tables",
        "--websocket-table",
        &tables.connections,
        "--messages-table",
        &tables.messages,
    ];
    args.extend_from_slice(extra);
    let env = [
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let process = Process::start(dir.path(), &args, &env);
    (process, tables, dir)
}

#[tokio::test]
async fn the_binary_serves_the_lambda_handlers_on_dynamodb() {
    let (process, tables, dir) = start_lambda_mode("binary", &[]);
    let addr = &process.addr;

    let mut ada = Client::connect(&format!("ws://{addr}/dev?name=ada")).await;
    let mut bob = Client::connect(&format!("ws://{addr}/dev?name=bob")).await;
    let ack = ada
        .request(json!({"action":"sendMessage","text":"via Lambda","clientMsgId":"b-1"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let seen = bob.recv_type("message").await;
    assert_eq!(
        (&seen["id"], &seen["text"]),
        (&ack["id"], &json!("via Lambda"))
    );
    let members = bob
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert_eq!(members["members"], json!([{"name":"ada"},{"name":"bob"}]));

    // The messages are in DynamoDB, not in the data directory.
    let client = chat_aws::testing::dynamodb_client().await;
    let stored = client
        .get_item()
        .table_name(&tables.messages)
        .key(
            "room",
            aws_sdk_dynamodb::types::AttributeValue::S("lobby".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(ack["id"].as_str().unwrap().into()),
        )
        .send()
        .await
        .unwrap();
    assert!(stored.item.is_some());
    assert!(!dir.path().join("chat.db").exists());
}

/// With a JWT secret, the Lambda mode runs the `$connect` authorizer of `chat-lambda` before the
/// `connect` function, as API Gateway would: 401 without a valid token, and the user it names
/// stored with the connection in DynamoDB.
#[tokio::test]
async fn with_auth_the_authorizer_runs_before_connect() {
    let secret = "lambda-mode-secret-0123456789abcdef";
    let (process, _tables, _dir) = start_lambda_mode("authz", &["--jwt-secret", secret]);
    let url = format!("ws://{}/dev", process.addr);
    bad_tokens_are_refused_with_401(&url).await;

    let token = mint(secret, "u-1", Some("Ada"), "1h");
    let mut ada = Client::connect(&format!("{url}?token={token}&name=Mallory")).await;
    let ack = ada
        .request(json!({"action":"sendMessage","text":"authorized","clientMsgId":"z1"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let members = ada
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert_eq!(members["members"], json!([{"name":"Ada","userId":"u-1"}]));
    // Retries are keyed by the user across connections, through the connections table.
    let other = mint(secret, "u-1", Some("Ada L."), "1h");
    let mut again = Client::connect(&format!("{url}?token={other}")).await;
    let retry = again
        .request(json!({"action":"sendMessage","text":"authorized","clientMsgId":"z1"}))
        .await;
    assert_eq!(retry["id"], ack["id"]);
    let message = again
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(
        message["messages"][0]["sender"],
        json!({"name":"Ada","userId":"u-1"})
    );
}
