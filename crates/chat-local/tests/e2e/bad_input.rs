//! Bad input over a real socket: each malformed frame gets its coded error and the connection
//! goes on; the frames PROTOCOL.md says close it, close it with the right code.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::TestServer;

/// (frame, expected code, whether the reply echoes requestId "q")
fn catalogue() -> Vec<(String, &'static str, bool)> {
    let long = |n: usize| "x".repeat(n);
    let uuid = "0190a0b0-0000-7000-8000-000000000000";
    let mut cases: Vec<(String, &'static str, bool)> = vec![
        ("".into(), "bad_request", false),
        ("not json".into(), "bad_request", false),
        ("{".into(), "bad_request", false),
        ("[]".into(), "bad_request", false),
        (r#"["sendMessage"]"#.into(), "bad_request", false),
        ("42".into(), "bad_request", false),
        ("\"ping\"".into(), "bad_request", false),
        ("null".into(), "bad_request", false),
        ("true".into(), "bad_request", false),
        (r#"{"action":"ping"} trailing"#.into(), "bad_request", false),
        (r#"{"action":"ping","requestId":7}"#.into(), "bad_request", false),
        (format!(r#"{{"action":"ping","requestId":"{}"}}"#, long(65)), "bad_request", false),
        (r#"{"requestId":"q"}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":null}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":"nope"}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":"$default"}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":"$connect"}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":42}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":"Ping"}"#.into(), "unknown_action", true),
        (r#"{"requestId":"q","action":"sendMessage"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":null}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":""}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":" \n\t "}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":["a"]}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":{"a":1}}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":12}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","room":""}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","room":"a b"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","room":"lobby\n"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","room":"caf\u00e9"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","room":5}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"sendMessage","text":"x","room":"{}"}}"#, long(65)), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"sendMessage","text":"x","clientMsgId":"{}"}}"#, long(65)), "bad_request", true),
        (r#"{"requestId":"q","action":"sendMessage","text":"x","clientMsgId":5}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"sendMessage","text":"{}"}}"#, long(4001)), "payload_too_large", true),
        (format!(r#"{{"requestId":"q","action":"sendMessage","text":"{}"}}"#, "\u{e9}".repeat(4001)), "payload_too_large", true),
        (r#"{"requestId":"q","action":"joinRoom"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"joinRoom","room":null}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"joinRoom","room":"../etc"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"joinRoom","room":"ok","since":"yesterday"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"joinRoom","room":"ok","since":42}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"joinRoom","room":"ok","since":"{}"}}"#, uuid.to_uppercase()), "bad_request", true),
        (r#"{"requestId":"q","action":"leaveRoom"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":0}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":101}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":-5}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":2.5}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":"10"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":1e999}"#.into(), "bad_request", false),
        (r#"{"requestId":"q","action":"history","room":"lobby","limit":123456789012345678901234567890}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"history","room":"lobby","before":"x"}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"history","room":"lobby","before":"{uuid}","after":"{uuid}"}}"#), "bad_request", true),
        (r#"{"requestId":"q","action":"members"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"members","room":true}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"typing"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"typing","room":"elsewhere"}"#.into(), "not_member", true),
        (r#"{"requestId":"q","action":"sendMessage","room":"elsewhere","text":"x"}"#.into(), "not_member", true),
        (r#"{"requestId":"q","action":"history","room":"elsewhere"}"#.into(), "not_member", true),
        (r#"{"requestId":"q","action":"members","room":"elsewhere"}"#.into(), "not_member", true),
        (r#"{"requestId":"q","action":"leaveRoom","room":"elsewhere"}"#.into(), "not_member", true),
        // Version 2: editMessage and deleteMessage.
        (r#"{"requestId":"q","action":"editMessage","room":"lobby","text":"x"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"editMessage","room":"lobby","id":"x","text":"x"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"editMessage","room":"lobby","id":7,"text":"x"}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"lobby","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"lobby","id":"{uuid}","text":" "}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"lobby","id":"{uuid}","text":["x"]}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"lobby","id":"{uuid}","text":"{}"}}"#, long(4001)), "payload_too_large", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","id":"{uuid}","text":"x"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"lobby","id":"{uuid}","text":"no such message"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"editMessage","room":"elsewhere","id":"{uuid}","text":"x"}}"#), "not_member", true),
        (r#"{"requestId":"q","action":"deleteMessage","room":"lobby"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"deleteMessage","room":"lobby","id":null}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"deleteMessage","room":"lobby","id":"0190A0B0-0000-7000-8000-00000000000"}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"deleteMessage","room":"a b","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"deleteMessage","room":"lobby","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"deleteMessage","room":"elsewhere","id":"{uuid}"}}"#), "not_member", true),
        // react and unreact.
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}","emoji":""}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}","emoji":"{}"}}"#, long(17)), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}","emoji":"a\n"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}","emoji":1}}"#), "bad_request", true),
        (r#"{"requestId":"q","action":"react","room":"lobby","emoji":"x"}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"lobby","id":"{uuid}","emoji":"x"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"react","room":"elsewhere","id":"{uuid}","emoji":"x"}}"#), "not_member", true),
        (format!(r#"{{"requestId":"q","action":"unreact","id":"{uuid}","emoji":"x"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"unreact","room":"lobby","id":"{uuid}","emoji":["x"]}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"unreact","room":"elsewhere","id":"{uuid}","emoji":"x"}}"#), "not_member", true),
        // markRead.
        (r#"{"requestId":"q","action":"markRead","room":"lobby"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"markRead","room":"lobby","id":"yesterday"}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"markRead","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"markRead","room":"lobby","id":"{uuid}"}}"#), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"markRead","room":"elsewhere","id":"{uuid}"}}"#), "not_member", true),
        // openDirect (a guest is forbidden; a malformed frame is refused before that).
        (r#"{"requestId":"q","action":"openDirect"}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"openDirect","userId":""}"#.into(), "bad_request", true),
        (r#"{"requestId":"q","action":"openDirect","userId":["u"]}"#.into(), "bad_request", true),
        (format!(r#"{{"requestId":"q","action":"openDirect","userId":"{}"}}"#, long(257)), "bad_request", true),
        (r#"{"requestId":"q","action":"openDirect","userId":"someone"}"#.into(), "forbidden", true),
        (r#"{"requestId":"q","action":"joinRoom","room":"private.x"}"#.into(), "forbidden", true),
        (r#"{"requestId":"q","action":"joinRoom","room":"dm.x","sinceSeq":0}"#.into(), "forbidden", true),
    ];
    // Deep nesting is refused by the JSON reader's depth limit, not by the stack.
    cases.push((
        format!(
            r#"{{"action":"ping","x":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        ),
        "bad_request",
        false,
    ));
    cases
}

#[tokio::test]
async fn every_malformed_frame_gets_its_coded_error_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let cases = catalogue();
    assert!(cases.len() >= 60);
    for (frame, code, echoes) in cases {
        ada.send_text(&frame).await;
        let reply = ada.recv().await;
        let shown: String = frame.chars().take(80).collect();
        assert_eq!(reply["type"], "error", "{shown}");
        assert_eq!(reply["code"], code, "{shown} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        if echoes {
            assert_eq!(reply["requestId"], "q", "{shown}");
        } else {
            assert!(reply.get("requestId").is_none(), "{shown} -> {reply}");
        }
        let pong = ada.request(json!({"action":"ping"})).await;
        assert_eq!(pong["type"], "pong", "the connection goes on after {shown}");
    }
}

#[tokio::test]
async fn null_fields_are_absent_and_unknown_fields_are_ignored() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let ack = ada
        .request(json!({"action":"sendMessage","text":"x","room":null,"clientMsgId":null,"colour":"red","nested":{"a":[1,2]}}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["room"], "lobby");
    assert!(ack.get("clientMsgId").is_none());
}

/// PROTOCOL.md: "a binary frame, which closes it with 1003, as API Gateway does".
#[tokio::test]
async fn a_binary_frame_closes_the_connection_with_1003_and_loses_nothing_acknowledged() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let ack = ada.say("lobby", "before the binary frame").await;
    ada.send_raw(Message::binary(b"{\"action\":\"ping\"}".to_vec()))
        .await;
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1003);
    let mut bob = server.client("bob").await;
    let history = bob
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(history["messages"][0]["id"], ack["id"]);
}

#[tokio::test]
async fn a_frame_over_32_kib_closes_the_connection_with_1009() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let text = format!(
        r#"{{"action":"sendMessage","text":"{}"}}"#,
        "x".repeat(33 * 1024)
    );
    ada.send_text(&text).await;
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    // Nothing was stored, and the server is fine.
    let mut bob = server.client("bob").await;
    let history = bob
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(history["messages"], json!([]));
}

#[tokio::test]
async fn a_frame_of_exactly_32_kib_is_read() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let skeleton = r#"{"action":"ping","pad":""}"#;
    let frame = format!(
        r#"{{"action":"ping","pad":"{}"}}"#,
        "x".repeat(32 * 1024 - skeleton.len())
    );
    assert_eq!(frame.len(), 32 * 1024);
    ada.send_text(&frame).await;
    assert_eq!(ada.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_fragmented_message_over_128_kib_closes_with_1009() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    // Five fragments of 30 KiB: each frame is within the limit, the message is not.
    let chunk = vec![b'x'; 30 * 1024];
    ada.send_raw(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    for i in 1..5 {
        let last = i == 4;
        ada.send_raw(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            last,
        )))
        .await;
    }
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
}

#[tokio::test]
async fn a_fragmented_message_within_the_limits_is_read() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let parts = [r#"{"action":"pi"#, r#"ng","requestId":"frag"}"#];
    ada.send_raw(Message::Frame(Frame::message(
        parts[0].as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    ada.send_raw(Message::Frame(Frame::message(
        parts[1].as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(ada.recv().await, json!({"type":"pong","requestId":"frag"}));
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let bytes = b"{\"action\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec();
    ada.send_raw(Message::Frame(Frame::message(
        bytes,
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    let close = ada.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1007);
}

/// A small deterministic generator, so that a failure names its seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test]
async fn mutated_frames_never_break_the_server() {
    let server = TestServer::start_with(|s| s.rate_burst = 100_000).await;
    let mut ada = server.client("ada").await;
    let seeds = [
        json!({"action":"sendMessage","room":"lobby","text":"hello","clientMsgId":"c","requestId":"r"}),
        json!({"action":"joinRoom","room":"r","since":"0190a0b0-0000-7000-8000-000000000000"}),
        json!({"action":"history","room":"lobby","before":"0190a0b0-0000-7000-8000-000000000000","limit":5}),
        json!({"action":"leaveRoom","room":"r"}),
        json!({"action":"members","room":"lobby"}),
        json!({"action":"typing","room":"lobby"}),
        json!({"action":"editMessage","room":"lobby","id":"0190a0b0-0000-7000-8000-000000000000","text":"x"}),
        json!({"action":"deleteMessage","room":"lobby","id":"0190a0b0-0000-7000-8000-000000000000"}),
        json!({"action":"react","room":"lobby","id":"0190a0b0-0000-7000-8000-000000000000","emoji":"👍"}),
        json!({"action":"markRead","room":"lobby","id":"0190a0b0-0000-7000-8000-000000000000"}),
        json!({"action":"rooms"}),
        json!({"action":"openDirect","userId":"someone"}),
    ];
    let alphabet: &[u8] = b"{}[]\":,\\ 0123456789.-eE+nulltruefalseabc\xc3\xa9\x00\x1f";
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..600 {
        let base = seeds[round % seeds.len()].to_string().into_bytes();
        let mut bytes = base.clone();
        for _ in 0..1 + next(&mut seed) % 4 {
            let at = (next(&mut seed) as usize) % (bytes.len() + 1);
            let byte = alphabet[(next(&mut seed) as usize) % alphabet.len()];
            match next(&mut seed) % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        // Keep to text frames: invalid UTF-8 would (rightly) close the connection.
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        ada.send_text(&text).await;
        let pong = ada.request(json!({"action":"ping"})).await;
        assert_eq!(pong["type"], "pong", "round {round}: {text}");
    }
    let mut bob = server.client("bob").await;
    assert_eq!(bob.request(json!({"action":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn every_error_frame_has_only_the_documented_fields() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    ada.send_text(r#"{"action":"nope","requestId":"q"}"#).await;
    let reply: Value = ada.recv().await;
    let mut keys: Vec<_> = reply.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "requestId", "type"]);
}
