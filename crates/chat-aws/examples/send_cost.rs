//! What one `sendMessage` costs on DynamoDB: calls and consumed capacity units
//! (`ReturnConsumedCapacity: TOTAL`), in a room of 10 members among 1,000 connections, through
//! the same `Chat` the Lambda function runs.
//!
//! `cargo run -p chat-aws --example send_cost` (moto at `AWS_ENDPOINT_URL_DYNAMODB`, or one
//! started for the run). Moto reports capacity units like DynamoDB does for small items; the
//! README has the arithmetic for AWS.

use std::sync::Arc;

use chat_aws::testing::{dynamodb_client, fresh_tables};
use chat_aws::{DynamoConnections, DynamoMessages, Meter};
use chat_core::domain::{ConnectionId, RoomName};
use chat_core::memory::RecordingNotifier;
use chat_core::ports::ConnectionStore;
use chat_core::protocol::Inbound;
use chat_core::{Chat, ChatConfig, ConnectRequest};

const CONNECTIONS: usize = 1000;
const ROOM_SIZE: usize = 10;

#[tokio::main]
async fn main() {
    let client = dynamodb_client().await;
    let tables = fresh_tables(&client, "cost").await;
    let meter = Arc::new(Meter::new());
    let connections =
        Arc::new(DynamoConnections::new(client.clone(), tables.clone()).with_meter(meter.clone()));
    let messages = Arc::new(DynamoMessages::new(client, tables).with_meter(meter.clone()));
    let notifier = Arc::new(RecordingNotifier::new());
    let chat = Chat::new(
        connections.clone(),
        messages,
        notifier.clone(),
        ChatConfig::default(),
    );

    eprintln!("connecting {CONNECTIONS} connections (each in lobby)...");
    let mut ids = Vec::new();
    for i in 0..CONNECTIONS {
        let id = ConnectionId::random();
        let request = ConnectRequest {
            name: Some(format!("user-{i}")),
            ..ConnectRequest::default()
        };
        chat.connect(&id, &request).await.expect("connect");
        ids.push(id);
    }
    println!(
        "$connect, per connection: {}",
        per(meter.take(), CONNECTIONS)
    );
    for id in &ids[..ROOM_SIZE] {
        let reply = chat
            .handle(id, Inbound::Text(r#"{"action":"joinRoom","room":"team"}"#))
            .await
            .expect("joined");
        assert!(reply.payload.to_text().contains(r#""type":"joined""#));
    }
    println!(
        "joinRoom, per join (room growing to {ROOM_SIZE}): {}",
        per(meter.take(), ROOM_SIZE)
    );
    notifier.take();
    let team = RoomName::parse("team").unwrap();
    assert_eq!(
        connections.room_connections(&team).await.unwrap().len(),
        ROOM_SIZE
    );
    meter.take();

    let sender = &ids[0];
    let mut first_id = None;
    for (label, frame) in [
        (
            "sendMessage without clientMsgId",
            r#"{"action":"sendMessage","room":"team","text":"hello, team"}"#,
        ),
        (
            "sendMessage with clientMsgId",
            r#"{"action":"sendMessage","room":"team","text":"hello again","clientMsgId":"c-1"}"#,
        ),
        (
            "the same sendMessage retried",
            r#"{"action":"sendMessage","room":"team","text":"hello again","clientMsgId":"c-1"}"#,
        ),
    ] {
        let reply = chat
            .handle(sender, Inbound::Text(frame))
            .await
            .expect("a reply");
        assert!(
            reply.payload.to_text().contains(r#""type":"ack""#),
            "{}",
            reply.payload.to_text()
        );
        let posts = notifier.take().len();
        println!(
            "{label}: DynamoDB {}; PostToConnection x{posts}",
            meter.take()
        );
        if first_id.is_none() {
            // The ack's `"id":"..."`: a UUID, no escapes to mind.
            let ack = reply.payload.to_text();
            first_id = ack
                .split_once(r#""id":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(id, _)| id.to_owned());
        }
    }
    // Version 2: an edit, a reaction (twice) and a delete of the first message.
    let id = first_id.expect("the first message's id");
    for (label, frame, answer) in [
        (
            "editMessage",
            format!(r#"{{"action":"editMessage","room":"team","id":"{id}","text":"hello, all"}}"#),
            "updated",
        ),
        (
            "react",
            format!(r#"{{"action":"react","room":"team","id":"{id}","emoji":"+1"}}"#),
            "reacted",
        ),
        (
            "the same react again (changes nothing)",
            format!(r#"{{"action":"react","room":"team","id":"{id}","emoji":"+1"}}"#),
            "reacted",
        ),
        (
            "markRead",
            format!(r#"{{"action":"markRead","room":"team","id":"{id}"}}"#),
            "read",
        ),
        (
            "rooms (a connection in lobby and team)",
            r#"{"action":"rooms"}"#.to_owned(),
            "rooms",
        ),
        (
            "deleteMessage (of a message edited once, with a reaction)",
            format!(r#"{{"action":"deleteMessage","room":"team","id":"{id}"}}"#),
            "deleted",
        ),
    ] {
        let reply = chat
            .handle(sender, Inbound::Text(&frame))
            .await
            .expect("a reply");
        let text = reply.payload.to_text();
        assert!(text.contains(&format!(r#""type":"{answer}""#)), "{text}");
        let posts = notifier.take().len();
        println!(
            "{label}: DynamoDB {}; PostToConnection x{posts}",
            meter.take()
        );
    }
}

fn per(tally: chat_aws::Tally, n: usize) -> String {
    let n = n as f64;
    format!(
        "{:.1} calls ({}), {:.2} RCU, {:.2} WCU",
        f64::from(tally.total_calls()) / n,
        tally
            .calls
            .iter()
            .map(|(op, c)| format!("{op} {:.1}", f64::from(*c) / n))
            .collect::<Vec<_>>()
            .join(", "),
        tally.read_units / n,
        tally.write_units / n
    )
}
