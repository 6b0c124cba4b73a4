//! Frames sent without waiting for replies (issue: "Concurrent invocations for one
//! connection"). On the Lambda back end, as on API Gateway, each frame is its own invocation and
//! up to `--lambda-concurrency` of one connection run at once; the embedded back end handles a
//! connection's frames one after another. Whatever the back end, the rate limit, idempotent
//! retries, the room limit and presence are exact; only the order of pipelined messages is not
//! promised on the Lambda path (PROTOCOL.md's order holds for a sender that waits for each ack:
//! actions.rs).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::{Client, TestServer, lambda_backend};

/// Sends every frame at once (each with a requestId), then reads until each has its reply.
async fn pipeline(client: &mut Client, frames: Vec<Value>) -> Vec<Value> {
    let count = frames.len();
    for (i, mut frame) in frames.into_iter().enumerate() {
        frame["requestId"] = json!(format!("p{i}"));
        client.send(frame).await;
    }
    let mut replies: Vec<Option<Value>> = vec![None; count];
    let mut got = 0;
    while got < count {
        let frame = client.recv().await;
        let Some(i) = frame["requestId"]
            .as_str()
            .and_then(|id| id.strip_prefix('p'))
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        assert!(replies[i].is_none(), "one reply per frame: {frame}");
        replies[i] = Some(frame);
        got += 1;
    }
    replies.into_iter().map(Option::unwrap).collect()
}

fn count_of(replies: &[Value], kind: &str, code: Option<&str>) -> usize {
    replies
        .iter()
        .filter(|r| r["type"] == kind && code.is_none_or(|c| r["code"] == c))
        .count()
}

#[tokio::test]
async fn pipelined_messages_are_each_stored_acknowledged_and_delivered_once() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    let frames = (0..60)
        .map(|i| json!({"action":"sendMessage","text":format!("{i}")}))
        .collect();
    let acks = pipeline(&mut ada, frames).await;
    assert_eq!(count_of(&acks, "ack", None), 60, "{acks:?}");
    let seqs: BTreeSet<u64> = acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=60).collect(), "each stored once, no seq lost");
    let mut texts = Vec::new();
    for _ in 0..60 {
        texts.push(
            bob.recv_type("message").await["text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    bob.expect_silence().await;
    let distinct: BTreeSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), 60, "each delivered once");
    if !lambda_backend() {
        // One after another: in the order sent, as a long-lived server can promise.
        let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
        assert_eq!(texts, expected);
    }
}

#[tokio::test]
async fn pipelined_sends_past_the_allowance_are_refused_exactly() {
    // A burst of 20 that never refills: concurrent invocations must not grant a 21st.
    let server = TestServer::start_with(|s| s.rate_per_second = 0).await;
    let mut ada = server.client("ada").await;
    let frames = (0..32)
        .map(|i| json!({"action":"sendMessage","text":format!("{i}")}))
        .collect();
    let replies = pipeline(&mut ada, frames).await;
    assert_eq!(count_of(&replies, "ack", None), 20, "{replies:?}");
    assert_eq!(count_of(&replies, "error", Some("rate_limited")), 12);
    let history = ada
        .request(json!({"action":"history","room":"lobby","limit":100}))
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        20,
        "nothing else stored"
    );
}

#[tokio::test]
async fn pipelined_retries_of_one_client_msg_id_store_and_deliver_one_message() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    let frames = (0..8)
        .map(|_| json!({"action":"sendMessage","text":"once","clientMsgId":"same"}))
        .collect();
    let acks = pipeline(&mut ada, frames).await;
    assert_eq!(count_of(&acks, "ack", None), 8, "{acks:?}");
    let ids: BTreeSet<&str> = acks.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "the same ack for every retry: {acks:?}");
    assert_eq!(bob.recv_type("message").await["text"], "once");
    bob.expect_silence().await;
}

#[tokio::test]
async fn pipelined_joins_never_pass_the_room_limit() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let frames = (0..60)
        .map(|i| json!({"action":"joinRoom","room":format!("room-{i}")}))
        .collect();
    let replies = pipeline(&mut ada, frames).await;
    // 50 rooms, lobby included.
    assert_eq!(count_of(&replies, "joined", None), 49, "{replies:?}");
    assert_eq!(count_of(&replies, "error", Some("limit_exceeded")), 11);
}

#[tokio::test]
async fn pipelined_joins_of_one_room_tell_the_room_once() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").await;
    bob.join("r").await;
    let mut ada = server.client("ada").await;
    let frames = (0..8)
        .map(|_| json!({"action":"joinRoom","room":"r"}))
        .collect();
    let replies = pipeline(&mut ada, frames).await;
    assert_eq!(count_of(&replies, "joined", None), 8, "{replies:?}");
    let presence = bob.recv_type("presence").await;
    assert_eq!(
        (&presence["event"], &presence["member"]["name"]),
        (&json!("join"), &json!("ada"))
    );
    bob.expect_silence().await;
}
