//! The `@connections` management API, as API Gateway serves it:
//! `POST` sends the body to the client as one frame, `GET` describes the connection, `DELETE`
//! closes it; an unknown or closed connection answers `410 GoneException`.
//!
//! The statuses and error types are those of AWS's service model of the API (botocore's
//! `apigatewaymanagementapi/2018-11-29/service-2.json`, which the SDKs are built from):
//! `GoneException` 410, `LimitExceededException` 429 ("the WebSocket client side buffer is
//! full"), `PayloadTooLargeException` 413, `ForbiddenException` 403. Each error names its type
//! in `x-amzn-ErrorType`, as the REST JSON protocol has the SDKs read it.
//!
//! It answers loopback clients only (on AWS the same calls need SigV4 and IAM; locally, being on
//! the machine is the credential). Signatures sent by the AWS SDK are accepted unchecked.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_core::domain::ConnectionId;
use serde_json::json;

use super::AppState;
use super::registry::{ConnectionHandle, Offered, Outbound, close_code};

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

/// What API Gateway answers for a stage or a path it does not serve (its body for a refused
/// call to execute-api; AWS does not document it for `@connections`).
pub fn forbidden() -> Response {
    aws_error(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden")
}

fn too_large() -> Response {
    aws_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLargeException",
        "the message is over 128 KiB",
    )
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
            Self::NoSuchStage => forbidden(),
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let handle = match live_connection(&state, peer, &stage, connection_id) {
        Ok(handle) => handle,
        Err(unreachable) => return unreachable.into_response(),
    };
    // A body over the router's limit is refused while it is read; one over 128 KiB within
    // it here: either way API Gateway's 413.
    let body = match body {
        Ok(body) if body.len() <= MAX_POST_BYTES => body,
        Ok(_) => return too_large(),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large();
        }
        Err(rejection) => return rejection.into_response(),
    };
    // Text when it is UTF-8 (every chat frame is), binary otherwise.
    let frame = match axum::extract::ws::Utf8Bytes::try_from(body.clone()) {
        Ok(text) => Outbound::Text(text),
        Err(_) => Outbound::Binary(body),
    };
    match handle.offer(frame) {
        Offered::Queued => StatusCode::OK.into_response(),
        // The client does not read fast enough: API Gateway answers 429 and keeps the
        // connection (the caller may retry); the gateway's own slow-consumer rules still apply.
        Offered::Full => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "LimitExceededException",
            "the client's buffer is full",
        ),
        Offered::Closing => gone(),
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
    // Both are required members of `Identity` in AWS's model; a client that sent no
    // User-Agent gets an empty one (what AWS returns then is not documented).
    let identity = json!({
        "sourceIp": handle.facts.source_ip.to_string(),
        "userAgent": handle.facts.user_agent.as_deref().unwrap_or_default(),
    });
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
