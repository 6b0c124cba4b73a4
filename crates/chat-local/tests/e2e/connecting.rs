//! A busy `lobby` while clients connect: API Gateway answers 410 to a post for a connection whose
//! `$connect` has not returned, and the chat stores a connection in `lobby` during its
//! `$connect`. The gateway reproduces the 410 (on both back ends); the chat must not remove a
//! newcomer for it. A `$connect` here takes 300 ms more after the chat stored the connection (a
//! cold start, a slow authorizer, a slow network to DynamoDB), so that the flood's fan-outs
//! reach every newcomer inside that window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::strict::{Seen, faulty};
use crate::support::{Client, PATIENCE, TestServer};

/// A client whose socket is read in the background (so that a flood never makes it a slow
/// consumer), its frames waiting in a channel.
struct Reading {
    sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    frames: mpsc::UnboundedReceiver<Value>,
    /// Every frame taken from `frames` so far.
    seen: Vec<Value>,
}

impl Reading {
    fn new(client: Client) -> Self {
        let (sink, mut stream) = client.ws.split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message
                    && let Ok(frame) = serde_json::from_str::<Value>(&text)
                    && tx.send(frame).is_err()
                {
                    return;
                }
            }
        });
        Self {
            sink,
            frames,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        self.sink
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    /// The first frame that `matches`, among those seen already or those to come.
    async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(frame) = self.seen.iter().find(|f| matches(f)) {
            return frame.clone();
        }
        let (frames, seen) = (&mut self.frames, &mut self.seen);
        let found = tokio::time::timeout(PATIENCE * 3, async {
            while let Some(frame) = frames.recv().await {
                seen.push(frame.clone());
                if matches(&frame) {
                    return Some(frame);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(frame)) => frame,
            _ => panic!("no {what} came"),
        }
    }
}

#[tokio::test]
async fn clients_connecting_while_lobby_is_flooded_can_all_send_and_receive() {
    const NEWCOMERS: usize = 50;
    let server = TestServer::start_wrapped(
        |settings| {
            settings.rate_burst = 1_000_000;
            settings.rate_per_second = 1_000_000;
            settings.ip_connect_burst = 1_000;
            settings.send_queue = 100_000;
        },
        faulty(&Arc::new(Seen::default())),
    )
    .await;
    let mut flooder = Reading::new(server.client("flooder").await);
    let flooding = Arc::new(AtomicBool::new(true));
    let still_flooding = flooding.clone();
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        while still_flooding.load(Ordering::Relaxed) {
            let request_id = format!("flood-{sent}");
            flooder
                .send(json!({"action":"sendMessage","text":"flood","requestId":request_id}))
                .await;
            // One in flight at a time: a steady stream of fan-outs, each to every member of
            // lobby, newcomers included.
            flooder
                .wait_for("the flood's ack", |f| f["requestId"] == request_id.as_str())
                .await;
            sent += 1;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `slow`: the `$connect` returns 300 ms after the chat stored the connection.
    let url = format!("{}?name=slow", server.url());
    let connecting = (0..NEWCOMERS).map(|_| Client::connect(&url));
    let newcomers = futures_util::future::join_all(connecting).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    flooding.store(false, Ordering::Relaxed);
    let floods = flood.await.unwrap();
    assert!(floods > 0, "the lobby was flooded while they connected");

    let mut newcomers: Vec<Reading> = newcomers.into_iter().map(Reading::new).collect();
    for (i, newcomer) in newcomers.iter_mut().enumerate() {
        let request_id = format!("hello-{i}");
        newcomer
            .send(json!({"action":"sendMessage","text":format!("hello from {i}"),"requestId":request_id}))
            .await;
        let reply = newcomer
            .wait_for("the reply", |f| f["requestId"] == request_id.as_str())
            .await;
        assert_eq!(reply["type"], "ack", "newcomer {i} could not send: {reply}");
    }
    // Each receives what the others said after they had all connected.
    for newcomer in newcomers.iter_mut() {
        for j in 0..NEWCOMERS {
            let text = format!("hello from {j}");
            newcomer
                .wait_for("another newcomer's message", |f| {
                    f["type"] == "message" && f["text"] == text.as_str()
                })
                .await;
        }
    }
}
