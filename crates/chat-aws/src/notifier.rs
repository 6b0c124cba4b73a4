//! The [`Notifier`] on API Gateway's management API: `PostToConnection` (and `DeleteConnection`)
//! to `https://{domain}/{stage}/@connections/{id}`.
//!
//! `GoneException` (410) means the connection is gone: the core then removes it. Any other failure
//! is logged and that one recipient misses the frame; the send itself never fails for it.
//!
//! Retries are few and quick: `LimitExceededException` (429) is what API Gateway answers when
//! the client's buffer is full (its service model: "the WebSocket client side buffer is
//! full"), and the SDK's standard retries (3 attempts, backoff up to seconds) would hold up the
//! whole fan-out, and the sender's reply behind it, for a client that is not reading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::error::DisplayErrorContext;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use chat_core::domain::ConnectionId;
use chat_core::ports::{Delivery, Notifier, NotifyError};
use chat_core::protocol::Payload;

/// Delivers frames with `PostToConnection` on one endpoint (one API and stage).
pub struct ManagementNotifier {
    client: Client,
    concurrency: usize,
}

impl ManagementNotifier {
    /// Posts run `concurrency` at a time in a broadcast (the port's default `broadcast`, bounded
    /// by `broadcast_concurrency`): enough to hide the latency of each, few enough to stay under
    /// API Gateway's rate of management calls.
    pub const DEFAULT_CONCURRENCY: usize = 32;

    pub fn new(client: Client, concurrency: usize) -> Self {
        Self {
            client,
            concurrency: concurrency.max(1),
        }
    }
}

#[async_trait]
impl Notifier for ManagementNotifier {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError> {
        let result = self
            .client
            .post_to_connection()
            .connection_id(to.as_str())
            .data(Blob::new(payload.bytes().to_vec()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Delivery::Delivered),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => {
                Ok(Delivery::Gone)
            }
            Err(e) => Err(NotifyError(DisplayErrorContext(&e).to_string())),
        }
    }

    /// `DeleteConnection`. API Gateway closes the socket with 1000 and takes no code: its
    /// model has only `ConnectionId` ("DeleteConnection", Amazon API Gateway Management API
    /// Reference), and aws/aws-sdk-js#3636 asks in vain for one.
    async fn close(&self, to: &ConnectionId) -> Result<Delivery, NotifyError> {
        let result = self
            .client
            .delete_connection()
            .connection_id(to.as_str())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Delivery::Delivered),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => {
                Ok(Delivery::Gone)
            }
            Err(e) => Err(NotifyError(DisplayErrorContext(&e).to_string())),
        }
    }

    /// The default `broadcast` posts this many at once.
    fn broadcast_concurrency(&self) -> usize {
        self.concurrency
    }
}

/// One management client per endpoint, built on first use and kept for the container's life
/// (a Lambda container serves one API, so in practice one).
pub struct ManagementClients {
    sdk: SdkConfig,
    concurrency: usize,
    // A plain mutex: held only to look up or insert, never across an await.
    clients: Mutex<HashMap<String, Client>>,
}

impl ManagementClients {
    pub fn new(sdk: SdkConfig, concurrency: usize) -> Self {
        Self {
            sdk,
            concurrency,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The notifier for `endpoint` (`https://{domain}/{stage}`, or an override).
    pub fn notifier(&self, endpoint: &str) -> Arc<ManagementNotifier> {
        let client = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                tracing::debug!(endpoint, "new management API client");
                let retries = aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(2)
                    .with_initial_backoff(std::time::Duration::from_millis(20))
                    .with_max_backoff(std::time::Duration::from_millis(100));
                let config = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk)
                    .endpoint_url(endpoint)
                    .retry_config(retries)
                    .build();
                Client::from_conf(config)
            })
            .clone();
        Arc::new(ManagementNotifier::new(client, self.concurrency))
    }
}
