//! [`Embedded`]: the chat core in process, with SQLite for messages, memory for connections,
//! and delivery straight into the gateway's connection queues (its [`Outbox`]).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use chat_auth::Verifier;
use chat_core::api::ApiResponse;
use chat_core::domain::ConnectionId;
use chat_core::memory::MemoryConnections;
use chat_core::ports::{Delivery, Notifier, NotifyError};
use chat_core::protocol::{Inbound, Payload};
use chat_core::service::authorizer_context;
use chat_core::{Chat, ConnectRequest};
use chat_sqlite::SqliteMessages;
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::gateway::registry::close_code;
use crate::gateway::{
    Accepted, ApiCall, Backend, Closed, Connection, Handshake, IntegrationError, Outbox, Posted,
    Refusal,
};

/// The chat core with the embedded store.
pub struct Embedded {
    chat: Chat,
    messages: Arc<SqliteMessages>,
    /// `None` when authentication is off.
    verifier: Option<Verifier>,
}

impl Embedded {
    pub fn open(settings: &Settings, outbox: Outbox) -> anyhow::Result<Self> {
        let path = settings.database_path();
        let messages = Arc::new(SqliteMessages::open(&path)?);
        tracing::info!(path = %path.display(), "embedded store open");
        let chat = Chat::new(
            Arc::new(MemoryConnections::new()),
            messages.clone(),
            Arc::new(LocalNotifier { outbox }),
            settings.chat_config(),
        );
        let verifier = settings.auth.verifier()?;
        if verifier.is_some() {
            tracing::info!("authentication on: connections need a valid token");
        }
        Ok(Self {
            chat,
            messages,
            verifier,
        })
    }
}

#[async_trait]
impl Backend for Embedded {
    /// The token check, in process: the same verifier and the same context as the Lambda
    /// authorizer's.
    async fn authorize(
        &self,
        _connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Option<Map<String, Value>>, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let identity = verifier
            .verify(handshake.first("token"))
            .map_err(|e| Refusal::new(401, e.to_string()))?;
        Ok(Some(authorizer_context::with_rooms(
            authorizer_context::of(&identity.user_id, identity.name.as_deref()),
            &identity.rooms,
        )))
    }

    async fn connect(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Accepted, Refusal> {
        let context = connection.authorizer.as_ref();
        let request = ConnectRequest::new(handshake.first("name"), |key| context?.get(key))
            .connected_at(connection.connected_at_ms);
        self.chat
            .connect(&connection.id, &request)
            .await
            .map(|_member| Accepted::default())
            .map_err(Refusal::from)
    }

    /// The chat core answers every frame itself (its errors are coded frames); a panic in it is
    /// the gateway's to catch.
    async fn message(
        &self,
        connection: &Connection,
        _request_id: &str,
        inbound: Inbound<'_>,
    ) -> Result<Option<Payload>, IntegrationError> {
        Ok(self
            .chat
            .handle(&connection.id, inbound)
            .await
            .map(|reply| reply.payload))
    }

    async fn disconnect(&self, connection: &Connection, _closed: &Closed) {
        self.chat.disconnect(&connection.id).await;
    }

    async fn api(&self, call: &ApiCall) -> ApiResponse {
        self.chat.serve_api(call.request()).await
    }

    async fn shutdown(&self) {
        let messages = self.messages.clone();
        // Joining the writer thread blocks; keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || messages.close()).await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

/// Delivers the chat core's frames through the gateway's outbox.
struct LocalNotifier {
    outbox: Outbox,
}

fn to_text(payload: &Payload) -> Result<Utf8Bytes, NotifyError> {
    Utf8Bytes::try_from(payload.bytes().clone()).map_err(|e| NotifyError(e.to_string()))
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError> {
        Ok(match self.outbox.post(to, to_text(payload)?) {
            Posted::Queued => Delivery::Delivered,
            Posted::Gone => Delivery::Gone,
        })
    }

    /// 1008 (policy violation), as PROTOCOL.md's server API says; on the Lambda path API
    /// Gateway's `DeleteConnection` can only close with 1000.
    async fn close(&self, to: &ConnectionId) -> Result<Delivery, NotifyError> {
        let closed = self
            .outbox
            .close(to, close_code::POLICY, "closed by the server API");
        Ok(match closed {
            Posted::Queued => Delivery::Delivered,
            Posted::Gone => Delivery::Gone,
        })
    }

    /// One conversion and one lock for the whole room.
    async fn broadcast(&self, to: &[ConnectionId], payload: &Payload) -> Vec<ConnectionId> {
        match to_text(payload) {
            Ok(text) => self.outbox.post_many(to, &text),
            Err(e) => {
                tracing::error!(error = %e, "a payload is not UTF-8");
                Vec::new()
            }
        }
    }
}

/// The embedded back end's notifier against the notifier conformance suite, over the
/// gateway's real connection queues (no sockets: what a socket's writer would take).
#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;

    use chat_core::clock::now_ms;
    use chat_core::testing::notifier::{Inbox, NotifierHarness};

    use super::*;
    use crate::gateway::registry::{Frames, Outbound, Registry};

    struct Queues {
        registry: Arc<Registry>,
        notifier: Arc<LocalNotifier>,
    }

    impl Default for Queues {
        fn default() -> Self {
            let registry = Arc::new(Registry::new(10_000, 1024));
            let notifier = Arc::new(LocalNotifier {
                outbox: Outbox::new(registry.clone()),
            });
            Self { registry, notifier }
        }
    }

    fn facts() -> Connection {
        Connection {
            id: ConnectionId::random(),
            connected_at_ms: now_ms(),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user_agent: None,
            authorizer: None,
        }
    }

    #[async_trait]
    impl NotifierHarness for Queues {
        fn notifier(&self) -> Arc<dyn Notifier> {
            self.notifier.clone()
        }

        async fn live(&self) -> (ConnectionId, Box<dyn Inbox>) {
            let (handle, frames) = self.registry.register(facts()).unwrap();
            handle.mark_connected();
            let frames: Mutex<Frames> = Mutex::new(frames);
            let received = Mutex::new(Vec::new());
            let inbox = move || {
                let mut received = received.lock().unwrap();
                while let Some(frame) = frames.lock().unwrap().try_recv() {
                    if let Outbound::Text(text) = frame {
                        received.push(text.to_string());
                    }
                }
                received.clone()
            };
            (handle.id().clone(), Box::new(inbox))
        }

        async fn gone(&self) -> ConnectionId {
            let (handle, _frames) = self.registry.register(facts()).unwrap();
            self.registry.remove(handle.id());
            handle.id().clone()
        }
    }

    chat_core::notifier_conformance!(Queues::default());
}
