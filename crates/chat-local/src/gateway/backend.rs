//! What the gateway hands to the integration behind it, and the one trait it calls.
//!
//! API Gateway knows every fact of a connection (when it connected, from where, what the
//! authorizer said) and puts them in each event; the integration never asks it. So here: the
//! gateway builds a [`Connection`] once, at the handshake, and passes it with every call, so
//! that no [`Backend`] reads the gateway's own state.

use std::net::IpAddr;

use async_trait::async_trait;
use chat_core::api::{ApiRequest, ApiResponse};
use chat_core::domain::ConnectionId;
use chat_core::protocol::{Inbound, Payload};
use serde_json::{Map, Value};

/// The client's upgrade request, as `$connect` (and its authorizer) see it.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The query parameters in order, decoded; repeated names are kept.
    pub query: Vec<(String, String)>,
    /// Every header of the upgrade request, in order (names lowercase, as HTTP/1.1 leaves them
    /// case-insensitive); repeated names are kept. Values that are not visible ASCII are
    /// decoded lossily.
    pub headers: Vec<(String, String)>,
}

impl Handshake {
    /// The first value of a header (`name` in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of a query parameter (the protocol: "repeated, the first counts").
    pub fn first(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What the gateway knows of a connection, in every call about it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: ConnectionId,
    /// When the handshake arrived (API Gateway's `connectedAt`), ms since the epoch.
    pub connected_at_ms: u64,
    pub source_ip: IpAddr,
    pub user_agent: Option<String>,
    /// What the `$connect` authorizer returned (`requestContext.authorizer`); `None` when
    /// authentication is off.
    pub authorizer: Option<Map<String, Value>>,
}

/// How a connection ended, as `$disconnect` reports it (`disconnectStatusCode`,
/// `disconnectReason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub status_code: u16,
    pub reason: String,
}

/// What an accepted `$connect` tells the gateway: the subprotocol its response names
/// (`Sec-WebSocket-Protocol`), which the handshake then negotiates; nothing else of the
/// response reaches the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub subprotocol: Option<String>,
}

/// The integration failed (an error, a Lambda function error): API Gateway answers the frame
/// with its own error frame, and the connection goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationError(pub String);

/// A refused handshake: the HTTP status and a message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<chat_core::ConnectRejection> for Refusal {
    fn from(rejection: chat_core::ConnectRejection) -> Self {
        Self::new(rejection.status(), rejection.to_string())
    }
}

/// A server API request, as the gateway read it.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: String,
    /// The path and query as the client sent them (percent-encoded).
    pub path_and_query: String,
    /// Every header (names lowercase), in order.
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub source_ip: IpAddr,
    pub user_agent: Option<String>,
}

impl ApiCall {
    /// What the chat core's server API reads of it.
    pub fn request(&self) -> ApiRequest<'_> {
        ApiRequest {
            method: &self.method,
            path: &self.path_and_query,
            body: &self.body,
        }
    }
}

/// The integration behind the gateway: the chat core in process, or the Lambda handlers.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The `$connect` authorizer: the context to attach to the connection, `None` when
    /// authentication is off, or the handshake's refusal.
    async fn authorize(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Option<Map<String, Value>>, Refusal>;

    /// `$connect`: accept or refuse the handshake. `connection.authorizer` holds what
    /// [`Backend::authorize`] returned.
    async fn connect(
        &self,
        connection: &Connection,
        handshake: &Handshake,
    ) -> Result<Accepted, Refusal>;

    /// A frame from the client (routed on `action`); returns the route response to the sender
    /// (`None`: nothing is sent). `request_id` is API Gateway's id of this request
    /// (`requestContext.requestId`), which its error frame names.
    async fn message(
        &self,
        connection: &Connection,
        request_id: &str,
        inbound: Inbound<'_>,
    ) -> Result<Option<Payload>, IntegrationError>;

    /// How many frames of one connection [`Backend::message`] may handle at once: API Gateway
    /// invokes the integration for each frame as it arrives (1: one after another).
    fn frames_at_once(&self) -> usize {
        1
    }

    /// `$disconnect`, best effort.
    async fn disconnect(&self, connection: &Connection, closed: &Closed);

    /// (Version 2) A call of the server API, whose caller the gateway has let in (its bearer
    /// key; on AWS, IAM).
    async fn api(&self, call: &ApiCall) -> ApiResponse;

    /// The server is stopping: flush what must be flushed.
    async fn shutdown(&self);
}
