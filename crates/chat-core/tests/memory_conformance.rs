//! The in-memory adapters against the conformance suites of their ports.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_core::domain::ConnectionId;
use chat_core::memory::{MemoryConnections, MemoryMessages, RecordingNotifier};
use chat_core::ports::Notifier;
use chat_core::testing::notifier::{Inbox, NotifierHarness};

chat_core::message_store_conformance!(|| async { MemoryMessages::new() });
chat_core::connection_store_conformance!(|| async { MemoryConnections::new() });
chat_core::notifier_conformance!(Recording::default());

/// The recording notifier, and every frame it delivered: its `take` drains them, so the harness
/// keeps them for every inbox to read its own.
#[derive(Default)]
struct Recording {
    notifier: Arc<RecordingNotifier>,
    delivered: Arc<Mutex<Vec<(ConnectionId, String)>>>,
}

#[async_trait]
impl NotifierHarness for Recording {
    fn notifier(&self) -> Arc<dyn Notifier> {
        self.notifier.clone()
    }

    async fn live(&self) -> (ConnectionId, Box<dyn Inbox>) {
        let id = ConnectionId::random();
        let (me, notifier, delivered) = (id.clone(), self.notifier.clone(), self.delivered.clone());
        let inbox = move || {
            let mut delivered = delivered.lock().unwrap();
            delivered.extend(notifier.take());
            delivered
                .iter()
                .filter(|(to, _)| *to == me)
                .map(|(_, text)| text.clone())
                .collect::<Vec<_>>()
        };
        (id, Box::new(inbox))
    }

    async fn gone(&self) -> ConnectionId {
        let id = ConnectionId::random();
        self.notifier.mark_gone(&id);
        id
    }
}

#[tokio::test]
async fn unread_counts_reach_past_what_a_frame_shows() {
    chat_core::testing::message_store::unread_counts_reach_past_what_a_frame_shows(&|| async {
        chat_core::memory::MemoryMessages::new()
    })
    .await;
}
