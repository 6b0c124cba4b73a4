//! The server API (protocol version 2): HTTP and JSON, for the product's own back end.
//!
//! Routed and answered here, on the method, the raw path and the body, so that the local binary
//! (`/api/...` on its WebSocket port, behind a bearer key) and the `api` Lambda function (an API
//! Gateway HTTP API with IAM authorization) serve one API. Who may call it is theirs to check:
//! everything here is trusted, so it may post to, grant and ban in any room.
//!
//! | call | does | answers |
//! | --- | --- | --- |
//! | `POST /api/rooms/{room}/messages` | stores and delivers a message | `201`, the message |
//! | `DELETE /api/rooms/{room}/messages/{id}` | deletes it, as `deleteMessage` does | `204` |
//! | `PUT`, `DELETE /api/rooms/{room}/grants/{userId}` | grants, revokes a `private.` room | `204` |
//! | `PUT`, `DELETE /api/rooms/{room}/bans/{userId}` | bans, lifts the ban | `204` |
//! | `GET /api/rooms/{room}/members` | the members | `200` |
//! | `DELETE /api/users/{userId}/connections` | closes the user's connections | `204` |

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use crate::domain::{
    AccessChange, Change, ConnectionId, DisplayName, Member, MessageId, NewMessage, RoomAccess,
    RoomName,
};
use crate::ports::{Changed, Delivery, StoreError};
use crate::protocol::{
    ChangeEvent, ChatError, ErrorCode, MAX_USER_ID_CHARS, Payload, PresenceEvent, RemovedReason,
    ServerFrame, optional_str, required_text,
};
use crate::service::Chat;

/// The largest request body the API reads: a message of 4,000 characters of four bytes each,
/// with its JSON around it, fits many times over.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where a message posted by the server API comes from, for the stores: no connection has this
/// id (API Gateway's ids are 16 characters of base64), so none may edit or delete such a message
/// of a sender without a user id; the API may.
pub const API_CONNECTION: &str = "server-api";

/// The display name of a message posted without a sender.
pub const SYSTEM_NAME: &str = "system";

/// An HTTP request to the server API.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// `GET`, `POST`, ... (any case).
    pub method: &'a str,
    /// The path as the client sent it (percent-encoded), with or without its query.
    pub path: &'a str,
    pub body: &'a [u8],
}

/// The answer: a status and, but for `204`, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<String>,
}

impl ApiResponse {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body.to_string()),
        }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }
}

/// A refused call: its status, and the `code` and `message` of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, ErrorCode::BadRequest.as_str(), message)
    }

    /// No or wrong credentials (the local binary's bearer key).
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "the server API needs the header Authorization: Bearer <the server's API key>",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            413,
            ErrorCode::PayloadTooLarge.as_str(),
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    }

    pub fn response(&self) -> ApiResponse {
        ApiResponse::json(
            self.status,
            json!({"code": self.code, "message": self.message}),
        )
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        Self::new(e.code.http_status(), e.code.as_str(), e.message)
    }
}

fn store_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "a store failed (server API)");
    ChatError::internal().into()
}

/// The calls, read from the method and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    PostMessage(RoomName),
    DeleteMessage(RoomName, String),
    SetAccess(RoomName, String, AccessChange),
    Members(RoomName),
    CloseConnections(String),
}

/// The call a request makes: `404` for a path the API does not have, `405` for a method its path
/// does not take.
fn route(method: &str, path: &str) -> Result<Call, ApiError> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<String> = path
        .strip_prefix("/api/")
        .unwrap_or_default()
        .split('/')
        .map(|segment| percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = method.to_ascii_uppercase();
    let not_allowed = |allowed: &str| {
        Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{path} takes {allowed}"),
        ))
    };
    let room = |name: &str| RoomName::parse(name).map_err(|e| ApiError::bad_request(e.0));
    match segments.as_slice() {
        ["rooms", name, "messages"] => match method.as_str() {
            "POST" => Ok(Call::PostMessage(room(name)?)),
            _ => not_allowed("POST"),
        },
        ["rooms", name, "messages", id] => match method.as_str() {
            "DELETE" => Ok(Call::DeleteMessage(room(name)?, (*id).to_owned())),
            _ => not_allowed("DELETE"),
        },
        ["rooms", name, kind @ ("grants" | "bans"), user] => {
            let on = match method.as_str() {
                "PUT" => true,
                "DELETE" => false,
                _ => return not_allowed("PUT, DELETE"),
            };
            let change = if *kind == "grants" {
                AccessChange::Grant(on)
            } else {
                AccessChange::Ban(on)
            };
            Ok(Call::SetAccess(room(name)?, user_id(user)?, change))
        }
        ["rooms", name, "members"] => match method.as_str() {
            "GET" => Ok(Call::Members(room(name)?)),
            _ => not_allowed("GET"),
        },
        ["users", user, "connections"] => match method.as_str() {
            "DELETE" => Ok(Call::CloseConnections(user_id(user)?)),
            _ => not_allowed("DELETE"),
        },
        _ => Err(ApiError::not_found(format!("the server API has no {path}"))),
    }
}

/// A user id as tokens give it (`sub`): 1 to 256 characters, none of them a control character.
fn user_id(s: &str) -> Result<String, ApiError> {
    let chars = s.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a userId is 1 to {MAX_USER_ID_CHARS} characters, none of them a control character"
        )));
    }
    Ok(s.to_owned())
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// `sender`: absent or `null` for a system message, else `{"name", "userId"?}`.
fn sender(fields: &Map<String, Value>) -> Result<Member, ApiError> {
    let sender = match fields.get("sender") {
        None | Some(Value::Null) => {
            return Ok(Member {
                name: DisplayName::parse(SYSTEM_NAME).expect("a valid name"),
                user_id: None,
            });
        }
        Some(Value::Object(sender)) => sender,
        Some(_) => return Err(ApiError::bad_request("sender must be an object")),
    };
    let name = optional_str(sender, "name")?
        .ok_or_else(|| ApiError::bad_request("sender.name is required"))?;
    let name = DisplayName::parse(name).map_err(|e| ApiError::bad_request(e.0))?;
    let user_id = optional_str(sender, "userId")?.map(user_id).transpose()?;
    Ok(Member { name, user_id })
}

impl Chat {
    /// Answers one call of the server API. The caller has checked who is calling, and that the
    /// body is at most [`MAX_BODY_BYTES`].
    pub async fn serve_api(&self, request: ApiRequest<'_>) -> ApiResponse {
        if request.body.len() > MAX_BODY_BYTES {
            return ApiError::payload_too_large().response();
        }
        let answer = async {
            match route(request.method, request.path)? {
                Call::PostMessage(room) => self.api_post_message(room, request.body).await,
                Call::DeleteMessage(room, id) => self.api_delete_message(&room, &id).await,
                Call::SetAccess(room, user, change) => {
                    self.api_set_access(&room, &user, change).await
                }
                Call::Members(room) => self.api_members(&room).await,
                Call::CloseConnections(user) => self.api_close_connections(&user).await,
            }
        };
        answer.await.unwrap_or_else(|e| e.response())
    }

    /// `POST /api/rooms/{room}/messages`: like `sendMessage` (stored, then delivered; the same
    /// message again for a `clientMsgId` its sender used already), without a rate limit.
    async fn api_post_message(&self, room: RoomName, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let fields = object(body)?;
        let text = required_text(&fields)?;
        let sender = sender(&fields)?;
        let client_msg_id = optional_str(&fields, "clientMsgId")?
            .map(crate::domain::ClientMsgId::parse)
            .transpose()
            .map_err(ChatError::from)?;
        let new = NewMessage {
            room,
            sender,
            connection: ConnectionId::new(API_CONNECTION),
            text,
            client_msg_id,
        };
        let message = match self.earlier_send(&new).await? {
            Some(earlier) => earlier,
            None => self.store_and_deliver(new).await?,
        };
        // A retry gets what the first call got: an idempotent POST.
        Ok(ApiResponse::json(201, json!(message)))
    }

    /// `DELETE /api/rooms/{room}/messages/{id}`: any message, as its sender's `deleteMessage`
    /// would; one deleted already answers `204` again.
    async fn api_delete_message(&self, room: &RoomName, id: &str) -> Result<ApiResponse, ApiError> {
        let no_message = || ApiError::not_found(format!("room {room} has no message {id}"));
        let id = MessageId::parse(id).map_err(|_| no_message())?;
        let message = self
            .messages
            .get(room, &id)
            .await
            .map_err(store_failed)?
            .ok_or_else(no_message)?;
        if message.deleted {
            return Ok(ApiResponse::no_content());
        }
        let changed = self
            .messages
            .change(room, &id, Change::Delete)
            .await
            .map_err(store_failed)?;
        if let Changed::Done(event) = changed {
            let frame = ServerFrame::Change(ChangeEvent(&event));
            if let Err(e) = self.notify_room(room, None, &frame).await {
                // Stored: recovery by seq shows it to whoever missed it.
                tracing::error!(room = %room, error = %e, "fan-out failed after an API delete");
            }
        }
        Ok(ApiResponse::no_content())
    }

    /// `PUT`/`DELETE .../grants/{userId}` and `.../bans/{userId}`: stored first, then a revoked
    /// or banned user is taken out of the room on every connection.
    async fn api_set_access(
        &self,
        room: &RoomName,
        user_id: &str,
        change: AccessChange,
    ) -> Result<ApiResponse, ApiError> {
        match change {
            AccessChange::Grant(_) if room.access() != RoomAccess::Private => {
                return Err(ApiError::bad_request(format!(
                    "only private. rooms take grants; room {room} is not one"
                )));
            }
            AccessChange::Ban(_) if room.is_lobby() => {
                return Err(ApiError::bad_request(
                    "lobby has every connection: close the user's connections instead",
                ));
            }
            _ => {}
        }
        self.messages
            .set_access(room, user_id, change)
            .await
            .map_err(store_failed)?;
        let reason = match change {
            AccessChange::Grant(false) => Some(RemovedReason::Revoked),
            AccessChange::Ban(true) => Some(RemovedReason::Banned),
            AccessChange::Grant(true) | AccessChange::Ban(false) => None,
        };
        if let Some(reason) = reason {
            self.remove_user(room, user_id, reason)
                .await
                .map_err(store_failed)?;
        }
        Ok(ApiResponse::no_content())
    }

    /// Takes the user out of the room on each of its connections, but those a revoke leaves
    /// in (their token grants the room): each receives `removed`, the room a `presence` leave.
    async fn remove_user(
        &self,
        room: &RoomName,
        user_id: &str,
        reason: RemovedReason,
    ) -> Result<(), StoreError> {
        let removed = Payload::encode(&ServerFrame::Removed { room, reason });
        for id in self.connections.user_connections(room, user_id).await? {
            let Some(record) = self.connections.get(&id).await? else {
                continue;
            };
            if reason == RemovedReason::Revoked && record.token_grants(room) {
                continue;
            }
            if !self.connections.leave(&id, room).await? {
                continue;
            }
            // Gone already: its $disconnect (or expiry) removes the rest.
            if let Err(e) = self.notifier.send(&id, &removed).await {
                tracing::warn!(connection = %id, error = %e, "failed to send removed");
            }
            let leave = ServerFrame::Presence {
                room,
                event: PresenceEvent::Leave,
                member: &record.member,
            };
            self.notify_room(room, None, &leave).await?;
        }
        Ok(())
    }

    /// `GET /api/rooms/{room}/members`: as `members` answers a member of the room.
    async fn api_members(&self, room: &RoomName) -> Result<ApiResponse, ApiError> {
        let members = self
            .connections
            .room_members(room, self.config.max_members_listed)
            .await
            .map_err(store_failed)?;
        Ok(ApiResponse::json(200, json!({ "members": members })))
    }

    /// `DELETE /api/users/{userId}/connections`: closes each of them (their `$disconnect` does
    /// the rest, as for any close); one found gone already is removed here.
    async fn api_close_connections(&self, user_id: &str) -> Result<ApiResponse, ApiError> {
        // Every connection is in lobby: the user's are its members there.
        let ids = self
            .connections
            .user_connections(&RoomName::lobby(), user_id)
            .await
            .map_err(store_failed)?;
        for id in ids {
            match self.notifier.close(&id).await {
                Ok(Delivery::Delivered) => {}
                Ok(Delivery::Gone) => self.disconnect(&id).await,
                Err(e) => {
                    tracing::error!(connection = %id, error = %e, "failed to close a connection");
                    return Err(ChatError::internal().into());
                }
            }
        }
        Ok(ApiResponse::no_content())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str) -> Result<Call, ApiError> {
        route(method, path)
    }

    #[test]
    fn paths_route_to_their_calls_with_decoded_segments() {
        let room = |s: &str| RoomName::parse(s).unwrap();
        assert_eq!(
            call("POST", "/api/rooms/general/messages"),
            Ok(Call::PostMessage(room("general")))
        );
        assert_eq!(
            call("put", "/api/rooms/private.team/grants/user%7C42?x=1"),
            Ok(Call::SetAccess(
                room("private.team"),
                "user|42".into(),
                AccessChange::Grant(true)
            ))
        );
        assert_eq!(
            call("DELETE", "/api/rooms/general/bans/u1"),
            Ok(Call::SetAccess(
                room("general"),
                "u1".into(),
                AccessChange::Ban(false)
            ))
        );
        assert_eq!(
            call("DELETE", "/api/users/auth0%7Cabc/connections"),
            Ok(Call::CloseConnections("auth0|abc".into()))
        );
        assert_eq!(
            call("GET", "/api/rooms/general/members"),
            Ok(Call::Members(room("general")))
        );
        assert_eq!(
            call("DELETE", "/api/rooms/general/messages/abc"),
            Ok(Call::DeleteMessage(room("general"), "abc".into()))
        );
    }

    #[test]
    fn unknown_paths_methods_and_bad_names_are_refused_with_their_status() {
        let status = |method: &str, path: &str| call(method, path).unwrap_err().status;
        assert_eq!(status("GET", "/api/rooms/general"), 404);
        assert_eq!(status("GET", "/api/nothing"), 404);
        assert_eq!(status("GET", "/elsewhere"), 404);
        assert_eq!(status("GET", "/api/rooms/general/messages"), 405);
        assert_eq!(status("POST", "/api/users/u1/connections"), 405);
        assert_eq!(status("POST", "/api/rooms/bad%20name/messages"), 400);
        assert_eq!(status("PUT", "/api/rooms/private.a/grants/"), 400);
        assert_eq!(status("PUT", "/api/rooms/private.a/grants/a%0Ab"), 400);
    }
}
