//! The gateway as strict as API Gateway: failed integrations, route responses, the real close
//! in `$disconnect`, `$connect`'s headers and subprotocol, `@connections` errors, and closes
//! that reach the client. Each runs on both back ends (a [`Faulty`] integration in front of the
//! real one where a test needs a handler that fails or a record of what it was given).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::protocol::{Inbound, Payload};
use chat_local::gateway::{
    Accepted, Backend, Closed, Connection, Handshake, IntegrationError, Refusal,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, PATIENCE, TestServer, http, urlencode};

/// What [`Faulty`] was given.
#[derive(Default)]
pub struct Seen {
    handshakes: Mutex<Vec<Handshake>>,
    disconnects: Mutex<Vec<Closed>>,
}

/// In front of the real back end: a frame whose action is `explode`, `stall` or `fail` makes
/// the integration panic, hang or fail (as a Lambda function would), and so does a `$connect`
/// with `?name=explode` or `?name=stall`; one with `?name=slow` returns 300 ms after the real
/// one stored the connection (a cold start, a slow authorizer); a `$connect` whose client offers the subprotocol
/// `chat.v1` names it in its response. Records every `$connect`
/// handshake and `$disconnect`.
struct Faulty {
    inner: Arc<dyn Backend>,
    seen: Arc<Seen>,
}

pub fn faulty(seen: &Arc<Seen>) -> impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> {
    let seen = seen.clone();
    move |inner| Arc::new(Faulty { inner, seen })
}

#[async_trait]
impl Backend for Faulty {
    async fn authorize(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Option<Map<String, Value>>, Refusal> {
        self.inner.authorize(connection, handshake).await
    }

    async fn connect(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Accepted, Refusal> {
        self.seen.handshakes.lock().unwrap().push(handshake.clone());
        match handshake.first("name") {
            Some("explode") => panic!("a bug in $connect"),
            Some("stall") => std::future::pending().await,
            _ => {}
        }
        let mut accepted = self.inner.connect(connection, handshake).await?;
        if handshake.first("name") == Some("slow") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let offered = handshake
            .header("sec-websocket-protocol")
            .unwrap_or_default();
        if offered.split(',').any(|p| p.trim() == "chat.v1") {
            accepted.subprotocol = Some("chat.v1".into());
        }
        Ok(accepted)
    }

    async fn message(
        &self,
        connection: &Connection,
        request_id: &str,
        inbound: Inbound<'_>,
    ) -> Result<Option<Payload>, IntegrationError> {
        let action = match inbound {
            Inbound::Text(text) => serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["action"].as_str().map(str::to_owned)),
            Inbound::Binary => None,
        };
        match action.as_deref() {
            Some("explode") => panic!("a bug in the handler"),
            Some("stall") => std::future::pending().await,
            Some("fail") => Err(IntegrationError("a function error".into())),
            // A route response over API Gateway's 128 KB.
            Some("huge") => Ok(Some(Payload::from_json(format!(
                r#"{{"type":"pong","pad":"{}"}}"#,
                "x".repeat(130 * 1024)
            )))),
            _ => self.inner.message(connection, request_id, inbound).await,
        }
    }

    fn frames_at_once(&self) -> usize {
        self.inner.frames_at_once()
    }

    async fn api(&self, call: &chat_local::gateway::ApiCall) -> chat_core::api::ApiResponse {
        self.inner.api(call).await
    }

    async fn disconnect(&self, connection: &Connection, closed: &Closed) {
        self.seen.disconnects.lock().unwrap().push(closed.clone());
        self.inner.disconnect(connection, closed).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// The next text frame, as sent.
async fn recv_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("readable");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_failed_integration_gets_api_gateways_error_frame_and_the_connection_stays_open() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_wrapped(
        |s| s.integration_timeout = Duration::from_millis(300),
        faulty(&seen),
    )
    .await;
    let mut ada = server.client("ada").await;
    let connection_id = server.connection_ids()[0].as_str().to_owned();
    let mut request_ids = Vec::new();
    for action in ["explode", "fail", "stall", "huge"] {
        ada.send(json!({"action": action, "requestId": "mine"}))
            .await;
        let text = recv_text(&mut ada).await;
        // API Gateway's own bytes, spacing included.
        let prefix = format!(
            r#"{{"message": "Internal server error", "connectionId":"{connection_id}", "requestId":""#
        );
        assert!(text.starts_with(&prefix), "{action}: {text}");
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame.as_object().unwrap().len(), 3, "{text}");
        let request_id = frame["requestId"].as_str().unwrap();
        assert_ne!(
            request_id, "mine",
            "API Gateway's request id, not the client's"
        );
        request_ids.push(request_id.to_owned());
    }
    request_ids.dedup();
    assert_eq!(request_ids.len(), 4);
    assert_eq!(ada.request(json!({"action":"ping"})).await["type"], "pong");
    ada.say("lobby", "still here").await;
}

#[tokio::test]
async fn a_failed_connect_is_a_502_and_leaves_no_connection() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_wrapped(
        |s| s.integration_timeout = Duration::from_millis(300),
        faulty(&seen),
    )
    .await;
    for name in ["explode", "stall"] {
        let url = format!("{}?name={name}", server.url());
        assert_eq!(Client::refused_status(&url).await, 502, "{name}");
    }
    assert!(server.connection_ids().is_empty());
    let mut ada = server.client("ada").await;
    assert_eq!(ada.request(json!({"action":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_route_response_is_its_body_only_and_nothing_without_one() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    // `typing` answers no body: the sender gets nothing.
    ada.send(json!({"action":"typing","room":"r","requestId":"t"}))
        .await;
    ada.expect_silence().await;
    // An error reply (a 4xx integration response on Lambda) is the body alone: no status, no
    // headers.
    let reply = ada.request(json!({"action":"nope"})).await;
    let keys: Vec<&str> = reply
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(reply["type"], "error", "{reply}");
    for key in ["statusCode", "headers", "body", "isBase64Encoded"] {
        assert!(!keys.contains(&key), "{reply}");
    }
}

/// Waits until `$disconnect` has run `n` times; returns what it reported.
async fn disconnects(seen: &Seen, n: usize) -> Vec<Closed> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = seen.disconnects.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disconnect_carries_the_clients_close_code_and_reason() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_wrapped(|_| {}, faulty(&seen)).await;

    let mut ada = server.client("ada").await;
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "done for today".into(),
    };
    ada.ws.close(Some(frame)).await.unwrap();
    assert_eq!(
        disconnects(&seen, 1).await[0],
        Closed {
            status_code: 4000,
            reason: "done for today".into()
        }
    );

    let mut bob = server.client("bob").await;
    bob.ws.close(None).await.unwrap();
    assert_eq!(disconnects(&seen, 2).await[1].status_code, 1005);

    // The TCP connection dropped, without a close frame.
    let cyd = server.client("cyd").await;
    drop(cyd);
    assert_eq!(disconnects(&seen, 3).await[2].status_code, 1006);
}

/// An upgrade request written by hand, with these extra header lines; returns the response's
/// status and its head (lowercase).
async fn upgrade(server: &TestServer, extra: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /{}?name=ada HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        server.settings.stage, server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        assert_eq!(n, 1, "the response ended early: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head)
}

#[tokio::test]
async fn connect_sees_every_header_and_only_the_subprotocol_it_names_is_negotiated() {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_wrapped(|_| {}, faulty(&seen)).await;
    let (status, head) = upgrade(
        &server,
        "User-Agent: e2e/1\r\nX-Custom: one\r\nX-Custom: two\r\nSec-WebSocket-Protocol: other, chat.v1\r\n",
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("sec-websocket-protocol: chat.v1\r\n"),
        "{head}"
    );
    let handshake = seen.handshakes.lock().unwrap()[0].clone();
    let customs: Vec<&str> = handshake
        .headers
        .iter()
        .filter(|(name, _)| name == "x-custom")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(customs, ["one", "two"]);
    assert_eq!(handshake.header("user-agent"), Some("e2e/1"));
    assert!(handshake.header("sec-websocket-key").is_some());

    // A subprotocol that `$connect` does not name is not negotiated.
    let (status, head) = upgrade(&server, "Sec-WebSocket-Protocol: other\r\n").await;
    assert_eq!(status, 101, "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

#[tokio::test]
async fn without_a_subprotocol_in_the_connect_response_none_is_negotiated() {
    let server = TestServer::start().await;
    let (status, head) = upgrade(&server, "Sec-WebSocket-Protocol: chat.v1\r\n").await;
    assert_eq!(status, 101, "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

fn only_id(server: &TestServer) -> String {
    let ids = server.connection_ids();
    assert_eq!(ids.len(), 1);
    ids[0].as_str().to_owned()
}

#[tokio::test]
async fn management_errors_are_api_gateways() {
    let server = TestServer::start().await;
    let _ada = server.client("ada").await;
    let path = format!("/dev/@connections/{}", urlencode(&only_id(&server)));

    // Over 128 KiB, and far over it (past what the router reads): 413 with its error type.
    for size in [128 * 1024 + 1, 200 * 1024, 1024 * 1024] {
        let refused = http(server.addr, "POST", &path, &vec![b'x'; size]).await;
        assert_eq!(refused.status, 413, "{size}");
        assert!(
            refused
                .headers
                .contains("x-amzn-errortype: payloadtoolargeexception"),
            "{size}: {}",
            refused.headers
        );
    }

    // An unknown stage or path: 403 ForbiddenException.
    for (method, forbidden) in [
        ("POST", "/prod/@connections/abc"),
        ("GET", "/prod/@connections/abc"),
        ("GET", "/dev/@connections"),
        ("POST", "/dev/@connections/a/b"),
        ("GET", "/dev/no/such/path"),
    ] {
        let refused = http(server.addr, method, forbidden, b"hi").await;
        assert_eq!(refused.status, 403, "{method} {forbidden}");
        assert!(
            refused
                .headers
                .contains("x-amzn-errortype: forbiddenexception"),
            "{forbidden}"
        );
        let body: Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["message"], "Forbidden");
    }

    // The WebSocket client sent no User-Agent: the field is there all the same.
    let described = http(server.addr, "GET", &path, b"").await;
    let info: Value = serde_json::from_str(&described.body).unwrap();
    assert_eq!(info["identity"]["userAgent"], "", "{info}");
}

#[tokio::test]
async fn a_full_client_buffer_is_429_and_the_connection_stays_open() {
    let server = TestServer::start_with(|s| {
        s.send_queue = 4;
        s.write_timeout = Duration::from_secs(60);
    })
    .await;
    // Ada reads nothing until the end.
    let mut ada = server.client("ada").await;
    let path = format!("/dev/@connections/{}", urlencode(&only_id(&server)));
    let body = format!(r#"{{"type":"notice","text":"{}"}}"#, "x".repeat(100 * 1024));
    let mut posted = 0;
    let limited = loop {
        let response = http(server.addr, "POST", &path, body.as_bytes()).await;
        match response.status {
            200 => posted += 1,
            429 => break response,
            other => panic!("POST {posted}: {other} {}", response.body),
        }
        assert!(posted < 2000, "the buffer never filled");
    };
    assert!(
        limited
            .headers
            .contains("x-amzn-errortype: limitexceededexception")
    );
    assert!(limited.body.contains("LimitExceededException"));
    // Not closed, not gone: it still answers, and Ada gets every accepted frame.
    assert_eq!(http(server.addr, "GET", &path, b"").await.status, 200);
    for _ in 0..posted {
        assert_eq!(ada.recv().await["type"], "notice");
    }
    assert_eq!(ada.request(json!({"action":"ping"})).await["type"], "pong");
}

/// Five 30 KiB fragments make a 150 KiB message: over 128 KiB, so the gateway closes with
/// 1009; a single 150 KiB frame is over 32 KiB, closed with 1009 too. The client must see that
/// close frame every time, not a reset (1006) because the socket was closed with data unread
/// (the rest of the frame, or what the client sent after the fifth fragment).
#[tokio::test]
async fn a_message_over_128_kib_always_gets_close_1009_whatever_follows() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start().await;
    let chunk = vec![b'x'; 30 * 1024];
    for attempt in 0..5 {
        // In fragments, then more frames the gateway will not read before it closes.
        let mut ada = server.client("ada").await;
        for i in 0..5 {
            let opcode = if i == 0 { Data::Text } else { Data::Continue };
            let frame = Frame::message(chunk.clone(), OpCode::Data(opcode), i == 4);
            ada.send_raw(Message::Frame(frame)).await;
        }
        let ping = Message::text(r#"{"action":"ping"}"#);
        let _ = tokio::time::timeout(PATIENCE, ada.ws.send(ping)).await;
        let close = expect_close_reading_slowly(&mut ada).await;
        assert_eq!(u16::from(close.code), 1009, "fragments, attempt {attempt}");

        // In one frame, most of which the gateway never reads.
        let mut bob = server.client("bob").await;
        let big = Message::text("y".repeat(150 * 1024));
        let _ = tokio::time::timeout(Duration::from_secs(1), bob.ws.send(big)).await;
        let close = expect_close_reading_slowly(&mut bob).await;
        assert_eq!(u16::from(close.code), 1009, "one frame, attempt {attempt}");
    }
}

/// Reads as a client busy with other work would (a frame every few milliseconds), so that what
/// the gateway sent waits in the sockets when it closes; returns the close frame, once the
/// server has closed the TCP connection cleanly after it. A reset, then or before, is what
/// loses the close frame whenever it is still in the server's send queue (the timing makes it
/// a sometimes), so any reset fails.
async fn expect_close_reading_slowly(client: &mut Client) -> CloseFrame {
    let mut close = None;
    loop {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let next = tokio::time::timeout(PATIENCE, client.ws.next())
            .await
            .expect("the server closes within the patience");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => close = Some(frame),
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            None => return close.expect("closed without a close frame"),
            Some(Err(e)) => panic!("the connection was reset (close frame: {close:?}): {e}"),
        }
    }
}

/// API Gateway's idle timer counts messages either way: frames posted to a client that sends
/// nothing keep it connected; once they stop, it is closed with 1001.
#[tokio::test]
async fn frames_sent_to_a_silent_client_keep_it_connected() {
    let idle = Duration::from_millis(600);
    let server = TestServer::start_with(|s| s.idle_timeout = idle).await;
    let mut ada = server.client("ada").await;
    let path = format!("/dev/@connections/{}", urlencode(&only_id(&server)));
    let started = tokio::time::Instant::now();
    while started.elapsed() < idle * 3 {
        let posted = http(server.addr, "POST", &path, br#"{"type":"notice"}"#).await;
        assert_eq!(
            posted.status,
            200,
            "still connected after {:?}",
            started.elapsed()
        );
        assert_eq!(ada.recv().await["type"], "notice");
        tokio::time::sleep(idle / 4).await;
    }
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
}

/// API Gateway's ids hold `-`, `_` and a final `=`: `@connections` finds a connection by its id
/// whether the `=` is sent as is or percent-encoded (as the AWS SDK sends it).
#[tokio::test]
async fn connection_ids_in_api_gateways_alphabet_reach_the_management_api() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    // Connect until an id has a `-` or a `_` (about one in three does).
    let (mut client, id) = loop {
        let before = server.connection_ids();
        let client = server.client("ada").await;
        let id = server
            .connection_ids()
            .into_iter()
            .find(|id| !before.contains(id))
            .unwrap()
            .as_str()
            .to_owned();
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.ends_with('='), "{id}");
        if id.contains(['-', '_']) {
            break (client, id);
        }
        clients.push(client);
        assert!(clients.len() < 100, "no id with - or _ in 100");
    };
    for path in [
        format!("/dev/@connections/{id}"),
        format!("/dev/@connections/{}", urlencode(&id)),
    ] {
        let posted = http(server.addr, "POST", &path, br#"{"type":"notice"}"#).await;
        assert_eq!(posted.status, 200, "{path}");
        assert_eq!(client.recv().await["type"], "notice");
        assert_eq!(
            http(server.addr, "GET", &path, b"").await.status,
            200,
            "{path}"
        );
    }
}
