//! `/api/...`: the server API (PROTOCOL.md, "The server API") on the WebSocket port.
//!
//! Its caller shows the key of `--api-key` as `Authorization: Bearer KEY`, compared in constant
//! time; without a key configured the API is off and every path answers 404, as a server without
//! it would. The call then goes to the back end: the chat core in process, or the `api` Lambda
//! function on an HTTP API event (where AWS checks a SigV4 signature instead of a key).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chat_core::api::{ApiError, ApiResponse, MAX_BODY_BYTES};
use subtle::ConstantTimeEq;

use super::AppState;
use super::backend::ApiCall;

pub async fn serve(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(key) = state.settings.api_key.as_deref() else {
        return answer(
            ApiError::not_found("the server API is off: start the server with --api-key")
                .response(),
        );
    };
    if !authorized(&headers, key) {
        let mut response = answer(ApiError::unauthorized().response());
        // RFC 6750 3: a 401 names the scheme it wants.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("a valid header"),
        );
        return response;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return answer(ApiError::payload_too_large().response());
    };
    let call = ApiCall {
        method: method.as_str().to_owned(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body,
        source_ip: peer.ip(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    answer(state.backend.api(&call).await)
}

/// Whether the request shows `Authorization: Bearer <key>` (the scheme in any case, RFC 7235
/// 2.1), the key compared in constant time.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(key.as_bytes()))
}

fn answer(response: ApiResponse) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match response.body {
        Some(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => status.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_bearer_key_itself_is_authorized() {
        assert!(authorized(&with("Bearer s3cret"), "s3cret"));
        assert!(authorized(&with("bearer s3cret"), "s3cret"));
        assert!(!authorized(&with("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with("Bearer s3cret!"), "s3cret"));
        assert!(!authorized(&with("Basic s3cret"), "s3cret"));
        assert!(!authorized(&with("s3cret"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
