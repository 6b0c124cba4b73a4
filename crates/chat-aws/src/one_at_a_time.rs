//! DynamoDB requests one at a time, for a local stand-in of DynamoDB that is not atomic per
//! request (moto). Never for AWS.
//!
//! moto checks a write's condition and then writes, in two steps, and undoes a cancelled
//! transaction by restoring a copy of each table it touched, taken when it began: two requests at
//! once on one table can both pass a condition, and a cancelled transaction throws away what
//! others wrote meanwhile (seen here: a sequential retry of an appended message stored it again,
//! its idempotency key lost to another append's rollback; and two sends of one connection to two
//! rooms at once, whose at-rest appends both take the sender's allowance, lost the message of the
//! one that committed to the other's rollback). DynamoDB makes each request atomic. One request at
//! a time, moto does too, while the stores' calls still interleave between requests as they do on
//! DynamoDB: concurrency tests race the stores' conditional writes for real.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use tokio::sync::Semaphore;

/// `config`, with its requests to `endpoint` (the DynamoDB stand-in's URL) sent one at a time:
/// each waits for the answer to the one before. Requests elsewhere go as they come. The
/// requests go through `config`'s own client (built once, by [`crate::sdk`]), wrapped.
pub fn dynamodb_requests_one_at_a_time(config: SdkConfig, endpoint: &str) -> SdkConfig {
    let inner = config
        .http_client()
        .unwrap_or_else(crate::sdk::https_client);
    let serial = OneAtATime::new(inner, endpoint.to_owned());
    config.into_builder().http_client(serial).build()
}

/// An HTTP client whose requests to `endpoint` share one turn: each waits for the one before.
#[derive(Debug)]
struct OneAtATime {
    inner: SharedHttpClient,
    endpoint: Arc<str>,
    turn: Arc<Semaphore>,
}

impl OneAtATime {
    fn new(inner: SharedHttpClient, endpoint: String) -> Self {
        Self {
            inner,
            endpoint: endpoint.into(),
            turn: Arc::new(Semaphore::new(1)),
        }
    }
}

impl HttpClient for OneAtATime {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(InTurn {
            inner: self.inner.http_connector(settings, components),
            endpoint: self.endpoint.clone(),
            turn: self.turn.clone(),
        })
    }
}

#[derive(Debug)]
struct InTurn {
    inner: SharedHttpConnector,
    endpoint: Arc<str>,
    turn: Arc<Semaphore>,
}

impl HttpConnector for InTurn {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        if !request.uri().starts_with(&*self.endpoint) {
            return self.inner.call(request);
        }
        let (inner, turn) = (self.inner.clone(), self.turn.clone());
        HttpConnectorFuture::new(async move {
            // moto answers once the request is done: the turn ends with the response head.
            let _turn = turn
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            inner.call(request).await
        })
    }
}
