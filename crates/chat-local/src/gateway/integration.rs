//! Calling the integration as API Gateway does: within its integration timeout, and a failure
//! (an error, a panic, a timeout) answered with API Gateway's own error frame.
//!
//! - The timeout: API Gateway waits at most 29 s for an integration ("Integration timeout:
//!   50 milliseconds - 29 seconds for all integration types", "Quotas for configuring and
//!   running a WebSocket in API Gateway",
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-execution-service-websocket-limits-table.html>);
//!   `--integration-timeout` sets it here.
//! - A failed integration of a message route: the client receives one text frame,
//!   `{"message": "Internal server error", "connectionId":"...", "requestId":"..."}`, byte for
//!   byte as API Gateway writes it (seen from a real API in aws-samples/simple-websockets-chat-app
//!   issue 46, <https://github.com/aws-samples/simple-websockets-chat-app/issues/46>, and in
//!   wscat sessions that show the spacing), `requestId` being API Gateway's id of the request,
//!   not the client's. The connection stays open. AWS documents neither the frame nor its form.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use super::backend::IntegrationError;

/// API Gateway's integration timeout, the most it allows.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(29);

/// Why an integration gave no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Error(String),
    Panicked,
    TimedOut,
}

/// Runs an integration call: its result, or why there is none. A panic is caught here, so that
/// no integration can take the connection (or the server) down with it.
pub async fn invoke<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, IntegrationError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(IntegrationError(error)))) => Err(Failure::Error(error)),
        Ok(Err(_panic)) => Err(Failure::Panicked),
        Err(_elapsed) => Err(Failure::TimedOut),
    }
}

/// API Gateway's frame for a failed integration, in its exact bytes.
pub fn internal_server_error(connection_id: &str, request_id: &str) -> String {
    format!(
        r#"{{"message": "Internal server error", "connectionId":{}, "requestId":{}}}"#,
        serde_json::Value::from(connection_id),
        serde_json::Value::from(request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_frame_is_api_gateways_to_the_byte() {
        assert_eq!(
            internal_server_error("Qyi07eCbtjMCJKw=", "Qyi3UG41tjMFlUg="),
            r#"{"message": "Internal server error", "connectionId":"Qyi07eCbtjMCJKw=", "requestId":"Qyi3UG41tjMFlUg="}"#
        );
    }

    #[tokio::test]
    async fn errors_panics_and_timeouts_are_failures() {
        let short = Duration::from_millis(50);
        assert_eq!(invoke(short, async { Ok(1) }).await, Ok(1));
        assert_eq!(
            invoke::<()>(short, async { Err(IntegrationError("no".into())) }).await,
            Err(Failure::Error("no".into()))
        );
        assert_eq!(
            invoke::<()>(short, async { panic!("a bug") }).await,
            Err(Failure::Panicked)
        );
        assert_eq!(
            invoke::<()>(short, std::future::pending()).await,
            Err(Failure::TimedOut)
        );
    }
}
