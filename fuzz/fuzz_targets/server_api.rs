//! Calls of the server API (`METHOD PATH` on a line, then the body), interleaved with frames of
//! two signed-in connections, through the chat core on in-memory stores: never panics, every
//! answer has a known status, and every body is JSON (an error's with its `code`).
#![no_main]

use std::sync::{Arc, OnceLock};

use chat_core::api::ApiRequest;
use chat_core::domain::ConnectionId;
use chat_core::memory::{MemoryConnections, MemoryMessages, RecordingNotifier};
use chat_core::protocol::Inbound;
use chat_core::{Chat, ChatConfig, ConnectRequest};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    runtime().block_on(async {
        let chat = Chat::new(
            Arc::new(MemoryConnections::new()),
            Arc::new(MemoryMessages::new()),
            Arc::new(RecordingNotifier::new()),
            ChatConfig::default(),
        );
        let ids = [ConnectionId::new("a"), ConnectionId::new("b")];
        for (id, user) in ids.iter().zip(["u1", "u2"]) {
            let request = ConnectRequest {
                user_id: Some(user.into()),
                rooms: vec!["private.*".into()],
                ..Default::default()
            };
            chat.connect(id, &request).await.expect("users connect");
        }
        // Blocks separated by blank lines: a call ("METHOD PATH" then its body), or a frame.
        for (i, block) in text.split("\n\n").take(32).enumerate() {
            let (first, body) = block.split_once('\n').unwrap_or((block, ""));
            match first.split_once(' ') {
                Some((method, path)) if path.starts_with('/') => {
                    let answer = chat
                        .serve_api(ApiRequest { method, path, body: body.as_bytes() })
                        .await;
                    assert!(
                        matches!(answer.status, 200 | 201 | 204 | 400 | 401 | 404 | 405 | 409 | 413 | 429 | 500),
                        "status {}",
                        answer.status
                    );
                    if let Some(body) = answer.body {
                        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                        if answer.status >= 400 {
                            assert!(json["code"].is_string() && json["message"].is_string());
                        }
                    } else {
                        assert_eq!(answer.status, 204);
                    }
                }
                _ => {
                    if let Some(reply) = chat.handle(&ids[i % 2], Inbound::Text(block)).await {
                        let frame: serde_json::Value =
                            serde_json::from_str(&reply.payload.to_text()).unwrap();
                        assert!(frame["type"].is_string());
                    }
                }
            }
        }
    });
});
