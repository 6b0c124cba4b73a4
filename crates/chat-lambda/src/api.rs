//! The `api` function: the server API ([`chat_core::api`]) behind an API Gateway HTTP API with
//! IAM authorization, on events of its payload format 2.0.
//!
//! API Gateway checks the caller's SigV4 signature and its `execute-api:Invoke` permission
//! before it invokes the function, and puts the caller in `requestContext.authorizer.iam`
//! ("Control access to HTTP APIs with IAM authorization", API Gateway Developer Guide). An event
//! without it comes from a route left without authorization: refused with 401 rather than served
//! to anyone. The function posts to, and closes, WebSocket connections through the management
//! endpoint of the WebSocket API (`APIGW_MANAGEMENT_ENDPOINT`), which no HTTP API event names.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, header};
use base64::Engine;
use chat_core::Chat;
use chat_core::api::{ApiError, ApiRequest, ApiResponse};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tracing::Instrument;

use crate::handlers::Handlers;

impl Handlers {
    /// One call of the server API: its status and JSON body, never an error.
    pub async fn api(&self, event: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let context = &event.request_context;
        let span = tracing::info_span!(
            "api",
            method = context.http.method.as_str(),
            path = event.raw_path.as_deref().unwrap_or_default(),
            request = context.request_id.as_deref().unwrap_or_default(),
        );
        let handled = AssertUnwindSafe(self.serve_api(&event)).catch_unwind();
        let response = match handled.instrument(span).await {
            Ok(response) => response,
            Err(_) => {
                tracing::error!("the api handler panicked");
                ApiError::from(chat_core::protocol::ChatError::internal()).response()
            }
        };
        http_response(response)
    }

    async fn serve_api(&self, event: &ApiGatewayV2httpRequest) -> ApiResponse {
        let signed = event
            .request_context
            .authorizer
            .as_ref()
            .is_some_and(|authorizer| authorizer.iam.is_some());
        if !signed {
            tracing::error!(
                "an api event without an IAM caller: is the route's authorization AWS_IAM?"
            );
            return ApiError::unauthorized().response();
        }
        let Some(endpoint) = self.management_endpoint_for_api() else {
            tracing::error!(
                "APIGW_MANAGEMENT_ENDPOINT is not set: the api function cannot reach connections"
            );
            return ApiError::from(chat_core::protocol::ChatError::internal()).response();
        };
        // HTTP APIs base64-encode bodies they take for binary ("Working with AWS Lambda proxy
        // integrations for HTTP APIs"): a JSON body is usually text, but either may come.
        let body = match (&event.body, event.is_base64_encoded) {
            (None, _) => Vec::new(),
            (Some(text), false) => text.clone().into_bytes(),
            (Some(encoded), true) => {
                match base64::engine::general_purpose::STANDARD.decode(encoded) {
                    Ok(bytes) => bytes,
                    Err(_) => {
                        return ApiError::bad_request("the body is not valid base64").response();
                    }
                }
            }
        };
        let path = match event.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
            Some(query) => format!("{}?{query}", event.raw_path.as_deref().unwrap_or_default()),
            None => event.raw_path.clone().unwrap_or_default(),
        };
        let chat: Chat = self.chat_for_endpoint(&endpoint);
        chat.serve_api(ApiRequest {
            method: event.request_context.http.method.as_str(),
            path: &path,
            body: &body,
        })
        .await
    }
}

fn http_response(response: ApiResponse) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(response.status);
    if let Some(body) = response.body {
        out.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        out.body = Some(Body::Text(body));
    }
    out
}
