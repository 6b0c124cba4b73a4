//! What runs behind the gateway.
//!
//! The gateway plays API Gateway's part (sockets, routes, limits); a [`Backend`] plays the
//! integration's part (`$connect`, every frame, `$disconnect`). [`Embedded`] runs the chat core
//! directly, with SQLite for messages, memory for connections, and delivery straight into the
//! gateway's sockets.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chat_auth::Verifier;
use chat_core::domain::ConnectionId;
use chat_core::memory::MemoryConnections;
use chat_core::protocol::{Inbound, Payload};
use chat_core::{Chat, ConnectRejection, ConnectRequest};
use chat_sqlite::SqliteMessages;

use crate::config::Settings;
use crate::gateway::registry::{LocalNotifier, Registry};

/// What the gateway knows of a handshake, as API Gateway gives it to `$connect`.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub connection_id: ConnectionId,
    /// The query parameters in order, decoded; repeated names are kept.
    pub query: Vec<(String, String)>,
    pub source_ip: IpAddr,
    pub user_agent: Option<String>,
    pub connected_at_ms: u64,
}

impl Handshake {
    /// The first value of a query parameter (the protocol: "repeated, the first counts").
    pub fn first(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A refused handshake: the HTTP status and a message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl From<ConnectRejection> for Refusal {
    fn from(rejection: ConnectRejection) -> Self {
        Self {
            status: rejection.status(),
            message: rejection.to_string(),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `$connect`: accept or refuse the handshake.
    async fn connect(&self, handshake: &Handshake) -> Result<(), Refusal>;

    /// A frame from the client (routed on `action`); returns the reply to the sender.
    async fn message(&self, connection_id: &ConnectionId, inbound: Inbound<'_>) -> Option<Payload>;

    /// `$disconnect`, best effort.
    async fn disconnect(&self, connection_id: &ConnectionId);

    /// The server is stopping: flush what must be flushed.
    async fn shutdown(&self);
}

/// The chat core with the embedded store.
pub struct Embedded {
    chat: Chat,
    messages: Arc<SqliteMessages>,
    /// `None` when authentication is off.
    verifier: Option<Verifier>,
}

impl Embedded {
    pub fn open(settings: &Settings, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let path = settings.database_path();
        let messages = Arc::new(SqliteMessages::open(&path)?);
        tracing::info!(path = %path.display(), "embedded store open");
        let chat = Chat::new(
            Arc::new(MemoryConnections::new()),
            messages.clone(),
            Arc::new(LocalNotifier::new(registry)),
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
    async fn connect(&self, handshake: &Handshake) -> Result<(), Refusal> {
        let mut request = ConnectRequest {
            name: handshake.first("name").map(str::to_owned),
            ..ConnectRequest::default()
        };
        if let Some(verifier) = &self.verifier {
            let identity = verifier
                .verify(handshake.first("token"))
                .map_err(|e| Refusal {
                    status: 401,
                    message: e.to_string(),
                })?;
            request.user_id = Some(identity.user_id);
            request.token_name = identity.name;
        }
        self.chat
            .connect(&handshake.connection_id, &request)
            .await
            .map(|_member| ())
            .map_err(Refusal::from)
    }

    async fn message(&self, connection_id: &ConnectionId, inbound: Inbound<'_>) -> Option<Payload> {
        self.chat
            .handle(connection_id, inbound)
            .await
            .map(|reply| reply.payload)
    }

    async fn disconnect(&self, connection_id: &ConnectionId) {
        self.chat.disconnect(connection_id).await;
    }

    async fn shutdown(&self) {
        let messages = self.messages.clone();
        // Joining the writer thread blocks; keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || messages.close()).await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}
