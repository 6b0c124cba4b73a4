//! What one `sendMessage` costs on DynamoDB: calls and consumed capacity units
//! (`ReturnConsumedCapacity: TOTAL`), in a room of 10 members among 1,000 connections, through
//! the same `Chat` the Lambda function runs.
//!
//! `cargo run -p chat-aws --example send_cost` (moto at `AWS_ENDPOINT_URL_DYNAMODB`, or one
//! started for the run). Moto reports capacity units like DynamoDB does for small items; the
//! README has the arithmetic for AWS.
//!
//! Then the *sequential* requests before the ack: requests made at once cost one round trip,
//! so counting them says nothing about latency. The same sends go through a proxy in front of
//! moto that holds each request for a fixed delay (so that requests made together overlap
//! whatever moto's speed) and notes when each was sent and answered; the longest chain of
//! requests each sent after the one before was answered is the number of round trips on the
//! way to the ack.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_aws::testing::{dynamodb_client, dynamodb_endpoint, fresh_tables, sdk_config};
use chat_aws::{DynamoConnections, DynamoMessages, Meter};
use chat_core::domain::{ConnectionId, RoomName};
use chat_core::memory::RecordingNotifier;
use chat_core::ports::ConnectionStore;
use chat_core::protocol::Inbound;
use chat_core::{Chat, ChatConfig, ConnectRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 1000;
const ROOM_SIZE: usize = 10;

#[tokio::main]
async fn main() {
    let client = dynamodb_client().await;
    let tables = fresh_tables(&client, "cost").await;
    let meter = Arc::new(Meter::new());
    let connections =
        Arc::new(DynamoConnections::new(client.clone(), tables.clone()).with_meter(meter.clone()));
    let messages = Arc::new(DynamoMessages::new(client, tables.clone()).with_meter(meter.clone()));
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

    sequential_requests(&tables, &ids[..ROOM_SIZE]).await;
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

/// How long the proxy holds each request in the second part: far above moto's own time per
/// request, so that requests made at once overlap.
const DELAY: Duration = Duration::from_millis(50);
/// Sends measured per kind (each by another member: no rate limit is reached).
const ROUNDS: usize = 5;

/// When each request through the proxy was sent, and when its answer began.
type Log = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// The sequential DynamoDB requests of a `sendMessage` before its ack, through the proxy.
async fn sequential_requests(tables: &chat_aws::Tables, members: &[ConnectionId]) {
    let log: Log = Arc::default();
    let proxy = delay_proxy(log.clone()).await;
    let sdk = sdk_config().await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(format!("http://{proxy}"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let chat = Chat::new(
        Arc::new(DynamoConnections::new(client.clone(), tables.clone())),
        Arc::new(DynamoMessages::new(client, tables.clone())),
        Arc::new(RecordingNotifier::new()),
        ChatConfig::default(),
    );
    println!(
        "\nround trips to DynamoDB before the ack (each request held {} ms by a proxy; \
         {ROUNDS} sends each, by different members of a room at rest):",
        DELAY.as_millis()
    );
    let mut n = 0;
    for label in [
        "sendMessage without clientMsgId",
        "sendMessage with clientMsgId",
        "the same sendMessage retried",
    ] {
        let mut depths = Vec::new();
        let mut requests = Vec::new();
        for sender in members.iter().take(ROUNDS) {
            n += 1;
            let frame = match label {
                "sendMessage without clientMsgId" => {
                    format!(r#"{{"action":"sendMessage","room":"team","text":"t{n}"}}"#)
                }
                "sendMessage with clientMsgId" => format!(
                    r#"{{"action":"sendMessage","room":"team","text":"t{n}","clientMsgId":"s-{n}"}}"#
                ),
                // The previous label's frame of this sender, again.
                _ => format!(
                    r#"{{"action":"sendMessage","room":"team","text":"t{}","clientMsgId":"s-{}"}}"#,
                    n - ROUNDS,
                    n - ROUNDS
                ),
            };
            log.lock().unwrap().clear();
            let reply = chat
                .handle(sender, Inbound::Text(&frame))
                .await
                .expect("a reply");
            let text = reply.payload.to_text();
            assert!(text.contains(r#""type":"ack""#), "{text}");
            let sent = log.lock().unwrap().clone();
            requests.push(sent.len());
            depths.push(critical_path(&sent));
        }
        println!("{label}: round trips {depths:?}, requests {requests:?}");
    }
}

/// The longest chain of requests each sent after the previous one's answer had begun.
fn critical_path(requests: &[(Instant, Option<Instant>)]) -> usize {
    let mut sorted: Vec<_> = requests
        .iter()
        .map(|&(sent, answered)| (sent, answered.unwrap_or(sent)))
        .collect();
    sorted.sort();
    let mut chain = vec![1; sorted.len()];
    for i in 0..sorted.len() {
        for j in 0..i {
            if sorted[j].1 <= sorted[i].0 {
                chain[i] = chain[i].max(chain[j] + 1);
            }
        }
    }
    chain.into_iter().max().unwrap_or(0)
}

/// A TCP proxy to moto that holds each HTTP request for `DELAY` before passing it on. The
/// SDK sends one request at a time on a connection and waits for the answer (no pipelining), so
/// the first bytes from the client after an answer (or on a new connection) start a request.
async fn delay_proxy(log: Log) -> std::net::SocketAddr {
    let upstream = dynamodb_endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                relay(client, server, log).await;
            });
        }
    });
    addr
}

async fn relay(client: TcpStream, server: TcpStream, log: Log) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set by the answer's bytes, taken by the next request's first bytes; the request's place
    // in the log, for its answer to note when it began.
    let answered = Arc::new(AtomicBool::new(true));
    let answered_up = answered.clone();
    let current = Arc::new(Mutex::new(None::<usize>));
    let current_up = current.clone();
    let log_up = log.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if answered_up.swap(false, Ordering::SeqCst) {
                {
                    let mut log = log_up.lock().unwrap();
                    *current_up.lock().unwrap() = Some(log.len());
                    log.push((Instant::now(), None));
                }
                tokio::time::sleep(DELAY).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !answered.swap(true, Ordering::SeqCst)
                && let Some(i) = current.lock().unwrap().take()
                && let Some(entry) = log.lock().unwrap().get_mut(i)
            {
                entry.1 = Some(Instant::now());
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}
