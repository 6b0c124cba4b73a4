//! API Gateway's behaviour: handshakes, limits, timeouts, the management API, slow consumers,
//! shutdown and restart.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, TestServer, http, urlencode};

#[tokio::test]
async fn bad_names_are_refused_at_the_handshake_with_400() {
    let server = TestServer::start().await;
    for name in ["", "   ", "a\u{7}b", "zero\u{200b}width", &"n".repeat(33)] {
        let url = format!("{}?name={}", server.url(), urlencode(name));
        assert_eq!(Client::refused_status(&url).await, 400, "{name:?}");
    }
    assert!(
        server.connection_ids().is_empty(),
        "refused handshakes leave nothing behind"
    );
    // 32 characters of any script is fine.
    let _ok = Client::connect(&format!(
        "{}?name={}",
        server.url(),
        urlencode(&"é".repeat(32))
    ))
    .await;
}

#[tokio::test]
async fn a_wrong_stage_is_refused_with_403() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/prod", server.addr);
    assert_eq!(Client::refused_status(&url).await, 403);
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_with_429() {
    let server = TestServer::start_with(|s| s.max_connections = 2).await;
    let _a = server.client("a").await;
    let b = server.client("b").await;
    assert_eq!(Client::refused_status(&server.url()).await, 429);
    drop(b);
    // Once one leaves, there is room again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.connection_ids().len() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _c = server.client("c").await;
}

#[tokio::test]
async fn handshakes_past_the_per_ip_rate_are_refused_with_429() {
    let server = TestServer::start_with(|s| {
        s.ip_connect_burst = 3;
        s.ip_connect_per_second = 1;
    })
    .await;
    let mut open = Vec::new();
    for name in ["a", "b", "c"] {
        open.push(server.client(name).await);
    }
    assert_eq!(Client::refused_status(&server.url()).await, 429);
    // The allowance refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    open.push(server.client("d").await);
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001() {
    let server = TestServer::start_with(|s| s.idle_timeout = Duration::from_millis(400)).await;
    let mut ada = server.client("ada").await;
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
}

#[tokio::test]
async fn frames_and_websocket_pings_keep_a_connection_open() {
    let server = TestServer::start_with(|s| s.idle_timeout = Duration::from_millis(600)).await;
    let mut ada = server.client("ada").await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if i % 2 == 0 {
            ada.send_raw(Message::Ping(b"hi".to_vec().into())).await;
        } else {
            assert_eq!(ada.request(json!({"action":"ping"})).await["type"], "pong");
        }
    }
    assert_eq!(ada.request(json!({"action":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_connection_is_closed_with_1001_at_the_end_of_its_lifetime() {
    let server = TestServer::start_with(|s| s.max_lifetime = Duration::from_millis(500)).await;
    let mut ada = server.client("ada").await;
    // Activity does not extend the lifetime.
    for _ in 0..3 {
        ada.request(json!({"action":"ping"})).await;
    }
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
}

/// The connection id of the only connection of `name`, found as a back end would from `$connect`.
async fn only_connection(server: &TestServer) -> String {
    let ids = server.connection_ids();
    assert_eq!(ids.len(), 1);
    ids[0].as_str().to_owned()
}

#[tokio::test]
async fn the_management_api_posts_describes_and_deletes_a_connection() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let id = only_connection(&server).await;
    let path = format!("/dev/@connections/{}", urlencode(&id));

    let posted = http(
        server.addr,
        "POST",
        &path,
        br#"{"type":"notice","text":"from the back end"}"#,
    )
    .await;
    assert_eq!(posted.status, 200);
    assert_eq!(
        ada.recv().await,
        json!({"type":"notice","text":"from the back end"})
    );

    let described = http(server.addr, "GET", &path, b"").await;
    assert_eq!(described.status, 200);
    let info: Value = serde_json::from_str(&described.body).unwrap();
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
    for key in ["connectedAt", "lastActiveAt"] {
        let at = info[key].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{key} {at}");
    }

    let deleted = http(server.addr, "DELETE", &path, b"").await;
    assert_eq!(deleted.status, 204);
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1000);

    for method in ["POST", "GET", "DELETE"] {
        let gone = http(server.addr, method, &path, b"{}").await;
        assert_eq!(gone.status, 410, "{method} after close");
        assert!(gone.body.contains("GoneException"));
        assert!(gone.headers.contains("x-amzn-errortype: goneexception"));
    }
}

#[tokio::test]
async fn the_management_api_answers_410_for_an_unknown_connection() {
    let server = TestServer::start().await;
    let gone = http(
        server.addr,
        "POST",
        "/dev/@connections/bm90aGVyZQ%3D",
        b"hi",
    )
    .await;
    assert_eq!(gone.status, 410);
    let body: Value = serde_json::from_str(&gone.body).unwrap();
    assert_eq!(body["__type"], "GoneException");
}

#[tokio::test]
async fn a_posted_message_over_128_kib_is_refused() {
    let server = TestServer::start().await;
    let _ada = server.client("ada").await;
    let id = only_connection(&server).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    let refused = http(
        server.addr,
        "POST",
        &format!("/dev/@connections/{}", urlencode(&id)),
        &big,
    )
    .await;
    assert_eq!(refused.status, 413);
}

#[tokio::test]
async fn a_presence_leave_follows_a_management_delete() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let ids_before = server.connection_ids();
    let mut bob = server.client("bob").await;
    bob.join("r").await;
    ada.recv_type("presence").await;
    let bob_id = server
        .connection_ids()
        .into_iter()
        .find(|id| !ids_before.contains(id))
        .unwrap();
    let deleted = http(
        server.addr,
        "DELETE",
        &format!("/dev/@connections/{}", urlencode(bob_id.as_str())),
        b"",
    )
    .await;
    assert_eq!(deleted.status, 204);
    let presence = ada.recv_type("presence").await;
    assert_eq!(presence["event"], "leave");
    assert_eq!(presence["member"]["name"], "bob");
}

/// Reads a connection's frames in the background, as a live client would, so that it never
/// falls behind however long the test's own steps take; forwards them as JSON.
fn keep_reading<S>(mut frames: S) -> tokio::sync::mpsc::UnboundedReceiver<Value>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut frames).await {
            if let Message::Text(text) = frame
                && let Ok(json) = serde_json::from_str::<Value>(&text)
                && tx.send(json).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits for a frame with this `clientMsgId` and this type among those read in the background.
async fn frame_with(
    frames: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    kind: &str,
    client_msg_id: &str,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), frames.recv())
            .await
            .expect("the frame within 10 s")
            .expect("the connection is open");
        if frame["type"] == kind && frame["clientMsgId"] == client_msg_id {
            return frame;
        }
    }
}

/// Ada publishes into the lobby for Bob and a client that never reads. Ada and Bob read all the
/// time (in the background); `slow` is dropped, and Ada and Bob go on.
async fn slow_client_is_dropped(server: &TestServer, messages: usize) {
    let counted_before = crate::metrics::scrape(server).await;
    let slow = server.client("slow").await; // never reads
    let (mut ada_send, ada_frames) = futures_util::StreamExt::split(server.client("ada").await.ws);
    let mut ada_frames = keep_reading(ada_frames);
    let mut bob_frames = keep_reading(server.client("bob").await.ws);
    let big = "y".repeat(3900);
    let started = tokio::time::Instant::now();
    for i in 0..messages {
        let frame = json!({"action":"sendMessage","text":format!("{i} {big}")});
        futures_util::SinkExt::send(&mut ada_send, Message::text(frame.to_string()))
            .await
            .expect("ada can send");
        // Let the background readers run (the test runtime has one thread).
        tokio::task::yield_now().await;
        if server.connection_ids().len() == 2 {
            break;
        }
    }
    while server.connection_ids().len() == 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow consumer was not disconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(slow);
    let counted = crate::metrics::scrape(server).await;
    assert!(
        crate::metrics::grew(&counted_before, &counted, "chat_slow_consumers_total") >= 1.0,
        "the slow consumer is counted"
    );
    // The others are unaffected.
    let end = json!({"action":"sendMessage","text":"still here","clientMsgId":"end"});
    futures_util::SinkExt::send(&mut ada_send, Message::text(end.to_string()))
        .await
        .expect("ada can send");
    frame_with(&mut ada_frames, "ack", "end").await;
    frame_with(&mut bob_frames, "message", "end").await;
}

/// A full send queue: the in-process back end drops the client as a slow consumer (1008); the
/// Lambda one posts over `@connections`, where a full buffer is API Gateway's 429 and the
/// connection stays (see `strict::a_full_client_buffer_is_429_and_the_connection_stays_open`).
/// Either way the others keep receiving.
#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_the_others_keep_receiving() {
    // A short queue, and a write timeout too long to be what drops it.
    let server = TestServer::start_with(|s| {
        s.send_queue = 16;
        s.write_timeout = Duration::from_secs(3600);
        s.rate_burst = 1_000_000;
        s.rate_per_second = 1_000_000;
    })
    .await;
    if crate::support::lambda_backend() {
        slow_client_stays_and_the_others_receive(&server).await;
    } else {
        // Enough to fill the slow client's socket buffers and then its queue.
        slow_client_is_dropped(&server, 3000).await;
    }
}

/// Ada publishes into the lobby for Bob and a client that never reads, far more than the slow
/// one's socket buffers and queue hold; its connection stays, and Ada and Bob go on.
async fn slow_client_stays_and_the_others_receive(server: &TestServer) {
    let slow = server.client("slow").await; // never reads
    let (mut ada_send, ada_frames) = futures_util::StreamExt::split(server.client("ada").await.ws);
    let mut ada_frames = keep_reading(ada_frames);
    let mut bob_frames = keep_reading(server.client("bob").await.ws);
    let big = "y".repeat(3900);
    for i in 0..150 {
        let id = format!("m{i}");
        let frame = json!({"action":"sendMessage","text":format!("{i} {big}"),"clientMsgId":id});
        futures_util::SinkExt::send(&mut ada_send, Message::text(frame.to_string()))
            .await
            .expect("ada can send");
        frame_with(&mut ada_frames, "ack", &id).await;
    }
    frame_with(&mut bob_frames, "message", "m149").await;
    assert_eq!(
        server.connection_ids().len(),
        3,
        "the slow one is still connected"
    );
    drop(slow);
}

/// With room left in its queue, a client whose socket has taken nothing for the write timeout
/// is closed all the same: it holds kernel memory (its send buffer) and never catches up.
#[tokio::test]
async fn a_client_that_accepts_nothing_for_the_write_timeout_is_disconnected() {
    let server = TestServer::start_with(|s| {
        s.send_queue = 1_000_000;
        s.write_timeout = Duration::from_secs(2);
        s.send_buffer = 16 * 1024;
        s.rate_burst = 1_000_000;
        s.rate_per_second = 1_000_000;
    })
    .await;
    // About 1 MB for `slow`: far more than its socket buffers hold, far less than its queue.
    slow_client_is_dropped(&server, 250).await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001_and_keeps_the_messages() {
    let mut server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    ada.say("lobby", "before shutdown").await;
    let settings = server.settings.clone();
    let stop = async { server.stop().await };
    let close = async { ada.expect_close().await };
    let ((), close) = tokio::join!(stop, close);
    assert_eq!(u16::from(close.expect("a close frame").code), 1001);
    let restarted = TestServer::start_on(settings).await;
    let mut bob = restarted.client("bob").await;
    let history = bob
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(history["messages"][0]["text"], "before shutdown");
}

#[tokio::test]
async fn a_restart_on_the_same_data_directory_keeps_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = chat_local::Settings::for_tests(dir.path().to_path_buf());
    let mut first = TestServer::start_on(settings.clone()).await;
    let mut ada = first.client("ada").await;
    ada.join("kept").await;
    let mut acks = Vec::new();
    for i in 0..5 {
        let ack = ada
            .request(json!({"action":"sendMessage","room":"kept","text":format!("m{i}"),"clientMsgId":format!("k{i}")}))
            .await;
        assert_eq!(ack["type"], "ack");
        acks.push(ack);
    }
    first.stop().await;
    // Same port too, as a browser reconnecting to the same URL would need.
    settings.addr = first.addr;
    let second = TestServer::start_on(settings).await;
    let mut ada = second.client("ada").await;
    let joined = ada
        .request(json!({"action":"joinRoom","room":"kept","since":acks[1]["id"]}))
        .await;
    let texts: Vec<_> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("m2"), json!("m3"), json!("m4")]);
    // A retry of a message sent before the restart is still recognised.
    let retry = ada
        .request(json!({"action":"sendMessage","room":"kept","text":"m4","clientMsgId":"k4"}))
        .await;
    assert_eq!(
        (&retry["id"], &retry["ts"]),
        (&acks[4]["id"], &acks[4]["ts"])
    );
}

#[tokio::test]
async fn the_web_client_is_served_at_the_root() {
    let server = TestServer::start().await;
    let index = http(server.addr, "GET", "/", b"").await;
    assert_eq!(index.status, 200);
    assert!(index.headers.contains("content-type: text/html"));
    assert!(index.body.contains("/app.js"));
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let asset = http(server.addr, "GET", path, b"").await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.headers.contains(kind), "{path}");
    }
}
