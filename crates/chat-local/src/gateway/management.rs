//! The `@connections` management API, as API Gateway serves it:
//! `POST` sends the body to the client as one frame, `GET` describes the connection, `DELETE`
//! closes it; an unknown or closed connection answers `410 GoneException`.
//!
//! It answers loopback clients only (on AWS the same calls need SigV4 and IAM; locally, being on
//! the machine is the credential). Signatures sent by the AWS SDK are accepted unchecked.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_core::domain::ConnectionId;
use serde_json::json;

use super::AppState;
use super::registry::{ConnectionHandle, Outbound, close_code};

/// API Gateway's limit on a posted message.
pub const MAX_POST_BYTES: usize = 128 * 1024;

const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// An error as the AWS REST JSON protocol writes it, so that the SDK can tell which one it is.
fn aws_error(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    (
        status,
        [(ERROR_TYPE, error_type)],
        Json(json!({ "__type": error_type, "message": message })),
    )
        .into_response()
}

fn gone() -> Response {
    aws_error(StatusCode::GONE, "GoneException", "the connection is gone")
}

/// Why a management call cannot reach its connection.
enum Unreachable {
    NotLoopback,
    NoSuchStage,
    Gone,
}

impl IntoResponse for Unreachable {
    fn into_response(self) -> Response {
        match self {
            Self::NotLoopback => aws_error(
                StatusCode::FORBIDDEN,
                "ForbiddenException",
                "the management API answers loopback clients only",
            ),
            Self::NoSuchStage => {
                aws_error(StatusCode::NOT_FOUND, "NotFoundException", "no such stage")
            }
            Self::Gone => gone(),
        }
    }
}

/// The connection, if it is live, the caller may manage it, and the stage is right.
fn live_connection(
    state: &AppState,
    peer: SocketAddr,
    stage: &str,
    connection_id: String,
) -> Result<std::sync::Arc<ConnectionHandle>, Unreachable> {
    if !peer.ip().is_loopback() {
        return Err(Unreachable::NotLoopback);
    }
    if stage != state.settings.stage {
        return Err(Unreachable::NoSuchStage);
    }
    state
        .registry
        .get(&ConnectionId::new(connection_id))
        // Closing, or its `$connect` has not returned: 410, as on API Gateway.
        .filter(|handle| handle.is_reachable())
        .ok_or(Unreachable::Gone)
}

pub async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((stage, connection_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let handle = match live_connection(&state, peer, &stage, connection_id) {
        Ok(handle) => handle,
        Err(unreachable) => return unreachable.into_response(),
    };
    if body.len() > MAX_POST_BYTES {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "the message is over 128 KiB",
        );
    }
    // Text when it is UTF-8 (every chat frame is), binary otherwise.
    let frame = match axum::extract::ws::Utf8Bytes::try_from(body.clone()) {
        Ok(text) => Outbound::Text(text),
        Err(_) => Outbound::Binary(body),
    };
    if handle.push(frame) {
        StatusCode::OK.into_response()
    } else {
        gone()
    }
}

pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((stage, connection_id)): Path<(String, String)>,
) -> Response {
    let handle = match live_connection(&state, peer, &stage, connection_id) {
        Ok(handle) => handle,
        Err(unreachable) => return unreachable.into_response(),
    };
    let mut identity = json!({ "sourceIp": handle.facts.source_ip.to_string() });
    if let Some(user_agent) = &handle.facts.user_agent {
        identity["userAgent"] = json!(user_agent);
    }
    Json(json!({
        "connectedAt": iso8601(handle.facts.connected_at_ms),
        "lastActiveAt": iso8601(handle.last_active_ms()),
        "identity": identity,
    }))
    .into_response()
}

pub async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((stage, connection_id)): Path<(String, String)>,
) -> Response {
    match live_connection(&state, peer, &stage, connection_id) {
        Ok(handle) => {
            handle.close(close_code::NORMAL, "closed by the server");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(unreachable) => unreachable.into_response(),
    }
}

fn iso8601(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}
