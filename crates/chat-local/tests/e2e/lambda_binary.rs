//! `chat serve --backend lambda` as a process: the flags, the SDK's variables (DynamoDB on moto),
//! `--create-tables`, and a short chat through the Lambda handlers. The rest of the suite drives
//! the Lambda mode in process (CHAT_TEST_BACKEND=lambda); this checks the binary's own wiring.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::Client;

#[tokio::test]
async fn the_binary_serves_the_lambda_handlers_on_dynamodb() {
    let endpoint = chat_aws::testing::dynamodb_endpoint();
    let tables = chat_aws::testing::unique_tables("binary");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            "lambda",
            "--create-tables",
        ])
        .args(["--websocket-table", &tables.connections])
        .args(["--messages-table", &tables.messages])
        .current_dir(dir.path())
        .env("AWS_ENDPOINT_URL_DYNAMODB", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("CHAT_STAGE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

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
    assert!(!dir.path().join("data").exists());
    let _ = child.kill();
    let _ = child.wait();
}
