//! A session of frames (one per line) from two connections through the whole chat core, on
//! in-memory stores: never panics, and every reply is a JSON object with a `type`.
#![no_main]

use std::sync::{Arc, OnceLock};

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
        let notifier = Arc::new(RecordingNotifier::new());
        let chat = Chat::new(
            Arc::new(MemoryConnections::new()),
            Arc::new(MemoryMessages::new()),
            notifier.clone(),
            ChatConfig::default(),
        );
        let ids = [ConnectionId::new("a"), ConnectionId::new("b")];
        for (id, name) in ids.iter().zip(["ada", "bob"]) {
            let request = ConnectRequest { name: Some(name.into()), ..Default::default() };
            chat.connect(id, &request).await.expect("valid names connect");
        }
        for (i, line) in text.lines().take(64).enumerate() {
            let from = &ids[i % 2];
            if let Some(reply) = chat.handle(from, Inbound::Text(line)).await {
                let frame: serde_json::Value = serde_json::from_str(&reply.payload.to_text()).unwrap();
                assert!(frame["type"].is_string());
            }
        }
        for (_, event) in notifier.take() {
            let frame: serde_json::Value = serde_json::from_str(&event).unwrap();
            assert!(frame["type"].is_string());
        }
        chat.disconnect(&ids[0]).await;
    });
});
