//! [`Handlers`]: `$connect`, `$disconnect`, and every other route, over API Gateway's events.
//!
//! Each event gets a [`Chat`] over the container's stores and the notifier of the API that sent
//! it (the management endpoint is the event's `https://{domainName}/{stage}`, or a fixed
//! override). Building one is a few `Arc` clones; the SDK clients behind it are built once per
//! container.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use aws_config::SdkConfig;
use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
    ApiGatewayWebsocketProxyRequestContext,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::query_map::QueryMap;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chat_aws::fanout::Progress;
use chat_aws::{
    DynamoConnections, DynamoMessages, FanOutQueue, ManagementClients, QueuedFanOut, ShardJob,
    ShardWorker, Tables,
};
use chat_core::clock::{Clock, now_ms};
use chat_core::domain::ConnectionId;
use chat_core::ports::{ConnectionStore, MessageStore, Notifier};
use chat_core::protocol::{ChatError, Inbound, Payload, Rejection};
use chat_core::{Chat, ChatConfig, ConnectRequest};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::config::{Config, ManagementEndpoint};

/// The notifier for the API an event came from, by its management endpoint.
pub trait Notifiers: Send + Sync {
    fn for_endpoint(&self, endpoint: &str) -> Arc<dyn Notifier>;
}

impl Notifiers for ManagementClients {
    fn for_endpoint(&self, endpoint: &str) -> Arc<dyn Notifier> {
        self.notifier(endpoint)
    }
}

/// The same notifier whatever the endpoint (tests, and any single-API setup).
pub struct FixedNotifier(pub Arc<dyn Notifier>);

impl Notifiers for FixedNotifier {
    fn for_endpoint(&self, _endpoint: &str) -> Arc<dyn Notifier> {
        self.0.clone()
    }
}

/// The three functions' handlers, sharing one set of clients.
pub struct Handlers {
    connections: Arc<dyn ConnectionStore>,
    messages: Arc<dyn MessageStore>,
    notifiers: Arc<dyn Notifiers>,
    chat: ChatConfig,
    endpoint: ManagementEndpoint,
    clock: Clock,
    /// The sharded fan-out of large rooms, when a queue is configured.
    queued: Option<Arc<Queued>>,
}

/// What the sharded fan-out needs: the queue (to send to, and to hand a message back to), the
/// stores it reads, and the `fanout` function's worker.
pub struct Queued {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub tables: Tables,
    pub queue: FanOutQueue,
    pub worker: ShardWorker,
}

impl Handlers {
    pub fn new(
        connections: Arc<dyn ConnectionStore>,
        messages: Arc<dyn MessageStore>,
        notifiers: Arc<dyn Notifiers>,
        chat: ChatConfig,
    ) -> Self {
        Self {
            connections,
            messages,
            notifiers,
            chat,
            endpoint: ManagementEndpoint::default(),
            clock: Arc::new(now_ms),
            queued: None,
        }
    }

    /// Large rooms' events through the fan-out queue (`FANOUT_QUEUE_URL`).
    pub fn with_queued_fan_out(mut self, queued: Queued) -> Self {
        self.queued = Some(Arc::new(queued));
        self
    }

    pub fn with_management_endpoint(mut self, endpoint: ManagementEndpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The AWS adapters: DynamoDB stores and the management API, on one SDK configuration.
    pub fn on_aws(sdk: &SdkConfig, config: &Config) -> Self {
        Self::on_aws_with_clock(sdk, config, Arc::new(now_ms))
    }

    /// [`Handlers::on_aws`] in a container whose clock is `clock` (the local Lambda mode skews
    /// its containers' clocks, as different machines' are).
    pub fn on_aws_with_clock(sdk: &SdkConfig, config: &Config, clock: Clock) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let dynamodb_for_queue = dynamodb.clone();
        let connections = DynamoConnections::new(dynamodb.clone(), config.tables.clone())
            .with_ttl(config.connection_ttl);
        let messages =
            DynamoMessages::new(dynamodb, config.tables.clone()).with_clock(clock.clone());
        let notifiers = ManagementClients::new(sdk.clone(), config.fanout_concurrency);
        let handlers = Self::new(
            Arc::new(connections),
            Arc::new(messages),
            Arc::new(notifiers),
            config.chat.clone(),
        )
        .with_management_endpoint(config.management_endpoint.clone())
        .with_clock(clock);
        match &config.fanout_queue_url {
            None => handlers,
            Some(queue_url) => handlers.with_queued_fan_out(Queued {
                dynamodb: dynamodb_for_queue.clone(),
                tables: config.tables.clone(),
                queue: FanOutQueue {
                    sqs: aws_sdk_sqs::Client::new(sdk),
                    queue_url: queue_url.clone(),
                    shard_from: config.fanout_shard_from,
                },
                worker: ShardWorker::new(dynamodb_for_queue, config.tables.clone()),
            }),
        }
    }

    /// The clock of the chat (the rate limit, `connectedAt` when an event has none).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `$connect`: 200, or the status of the refusal (400 bad name, 500 store failure...).
    pub async fn connect(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let span = span("$connect", &event.request_context);
        guarded(
            async {
                let (id, chat) = match self.prepare(&event.request_context) {
                    Ok(prepared) => prepared,
                    Err(failure) => return failure.connect_response(),
                };
                // API Gateway puts every value of a repeated parameter in the multi-value map,
                // and only the last in the other: the first counts. With authentication on, the
                // authorizer has checked the token and put the user in the context; the `name`
                // parameter then does not count.
                let name = first_query_value(
                    &event.multi_value_query_string_parameters,
                    &event.query_string_parameters,
                    "name",
                );
                let context = &event.request_context.authorizer.fields;
                let request = ConnectRequest::new(name, |key| context.get(key))
                    .connected_at(u64::try_from(event.request_context.connected_at).unwrap_or(0));
                match chat.connect(&id, &request).await {
                    Ok(member) => {
                        tracing::info!(name = member.name.as_str(), "connected");
                        response(200, None)
                    }
                    Err(rejection) => {
                        tracing::info!(status = rejection.status(), reason = %rejection, "handshake refused");
                        refusal(rejection.status(), &rejection.to_string())
                    }
                }
            },
            || refusal(500, "the server failed to accept the connection"),
        )
        .instrument(span)
        .await
    }

    /// `$disconnect`: removes the connection and tells its rooms. Always 200 (API Gateway
    /// ignores the answer).
    pub async fn disconnect(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let span = span("$disconnect", &event.request_context);
        guarded(
            async {
                match self.prepare(&event.request_context) {
                    Ok((id, chat)) => {
                        chat.disconnect(&id).await;
                        response(200, None)
                    }
                    Err(failure) => failure.frame_response(),
                }
            },
            || response(500, None),
        )
        .instrument(span)
        .await
    }

    /// Every other route (`sendMessage`, `joinRoom`, ..., `$default`): the reply frame is the body,
    /// which the route response returns to the sender; no body when there is no reply (`typing`).
    pub async fn message(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let route = event
            .request_context
            .route_key
            .clone()
            .unwrap_or_else(|| "$default".into());
        let span = span(&route, &event.request_context);
        guarded(
            async {
                let (id, chat) = match self.prepare(&event.request_context) {
                    Ok(prepared) => prepared,
                    Err(failure) => return failure.frame_response(),
                };
                // API Gateway base64-encodes binary frames; the protocol refuses them.
                let inbound = if event.is_base64_encoded {
                    Inbound::Binary
                } else {
                    Inbound::Text(event.body.as_deref().unwrap_or_default())
                };
                match chat.handle(&id, inbound).await {
                    Some(reply) => response(reply.http_status(), Some(reply.payload.to_text())),
                    None => response(200, None),
                }
            },
            || frame(500, &internal_frame()),
        )
        .instrument(span)
        .await
    }

    /// The management endpoint when it does not come from events (`APIGW_MANAGEMENT_ENDPOINT`):
    /// the `api` function's events name the HTTP API, not the WebSocket API.
    pub(crate) fn management_endpoint_for_api(&self) -> Option<String> {
        match &self.endpoint {
            ManagementEndpoint::Fixed(url) => Some(url.clone()),
            ManagementEndpoint::FromEvent { .. } => None,
        }
    }

    /// A chat that notifies through `endpoint`.
    pub(crate) fn chat_for_endpoint(&self, endpoint: &str) -> Chat {
        let chat = Chat::new(
            self.connections.clone(),
            self.messages.clone(),
            self.notifiers.for_endpoint(endpoint),
            self.chat.clone(),
        )
        .with_clock(self.clock.clone());
        match &self.queued {
            None => chat,
            Some(queued) => chat.with_fan_out(Arc::new(QueuedFanOut::new(
                queued.dynamodb.clone(),
                queued.tables.clone(),
                queued.queue.clone(),
                endpoint.to_owned(),
            ))),
        }
    }

    /// The `fanout` function: each queue message is a shard's part of an event
    /// ([`ShardJob`]), posted page by page ([`ShardWorker`]).
    ///
    /// The batch's FIFO groups (shards) are worked on at once, each group's messages one after
    /// another in the batch's order: a batch holds messages of up to 10 groups (the Lambda
    /// Developer Guide, "Configuring scaling behavior for SQS event source mappings": for FIFO
    /// queues, "each batch may contain messages from more than one message group, but the order
    /// of the messages is maintained"), and working through them one at a time made the shards
    /// of one event wait for each other (docs/bench/FANOUT.md). FIFO's rule for a partial
    /// failure (the Lambda Developer Guide, "Handling errors for an SQS event source in Lambda":
    /// stop at the first failure and report it and every message after it, so that no later
    /// message of its group is taken before it) holds per group: a message out of time, or
    /// whose store failed, is reported with every later message of its group; other groups'
    /// messages are not held back by it. One out of time is also made visible again at once
    /// (`ChangeMessageVisibility` 0), with those after it, so that the next attempt goes on
    /// from its stored progress without waiting out the visibility timeout. A body that is no
    /// job (a bug, never a client's doing) is logged and dropped: retried, it would hold its
    /// shard's later events back until the dead-letter queue took it.
    pub async fn fanout(
        &self,
        event: SqsEvent,
        out_of_time: impl Fn() -> bool,
    ) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let Some(queued) = &self.queued else {
            tracing::error!(
                "a fan-out event, but FANOUT_QUEUE_URL is not set: every message fails"
            );
            response.batch_item_failures = event.records.iter().map(failure).collect();
            return response;
        };
        let records = &event.records;
        // The batch's groups in the order of their first message; a record without a group
        // (never, from a FIFO queue) is a group of its own kind, "".
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (n, record) in records.iter().enumerate() {
            let group = record
                .attributes
                .get("MessageGroupId")
                .map_or("", String::as_str);
            match groups.iter_mut().find(|(name, _)| *name == group) {
                Some((_, members)) => members.push(n),
                None => groups.push((group, vec![n])),
            }
        }
        let out_of_time = &out_of_time;
        let failed = futures_util::future::join_all(
            groups
                .iter()
                .map(|(_, group)| self.fanout_group(queued, records, group, out_of_time)),
        )
        .await;
        let mut failed: Vec<usize> = failed.into_iter().flatten().collect();
        failed.sort_unstable();
        response.batch_item_failures = failed.into_iter().map(|n| failure(&records[n])).collect();
        response
    }

    /// One FIFO group's messages of a batch (`group`: their places in `records`), in order; the
    /// places of those that failed (the first failure and every one after it).
    async fn fanout_group(
        &self,
        queued: &Queued,
        records: &[aws_lambda_events::sqs::SqsMessage],
        group: &[usize],
        out_of_time: &impl Fn() -> bool,
    ) -> Vec<usize> {
        for (k, &n) in group.iter().enumerate() {
            let record = &records[n];
            let body = record.body.as_deref().unwrap_or_default();
            let job = match ShardJob::from_body(body) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(error = %e, message = ?record.message_id, "a fan-out message that is no job: dropped");
                    continue;
                }
            };
            let chat = self.chat_for_endpoint(&job.endpoint);
            let delivered = AssertUnwindSafe(queued.worker.deliver(&chat, &job, out_of_time))
                .catch_unwind()
                .await;
            let outcome = match delivered {
                Ok(Ok(progress)) => progress,
                Ok(Err(e)) => {
                    tracing::error!(room = %job.room, shard = job.shard, error = %e, "a shard's fan-out failed; it is retried");
                    return group[k..].to_vec();
                }
                Err(_) => {
                    tracing::error!(room = %job.room, shard = job.shard, "a shard's fan-out panicked; it is retried");
                    return group[k..].to_vec();
                }
            };
            if outcome == Progress::OutOfTime {
                tracing::info!(room = %job.room, shard = job.shard, "out of time between two pages: handed back to the queue");
                for &later in &group[k..] {
                    let Some(receipt) = records[later].receipt_handle.as_deref() else {
                        continue;
                    };
                    let visible = queued
                        .queue
                        .sqs
                        .change_message_visibility()
                        .queue_url(&queued.queue.queue_url)
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .send()
                        .await;
                    if let Err(e) = visible {
                        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "ChangeMessageVisibility failed: the retry waits for the visibility timeout");
                    }
                }
                return group[k..].to_vec();
            }
        }
        Vec::new()
    }

    /// The connection id and a chat that notifies the event's API.
    fn prepare(
        &self,
        context: &ApiGatewayWebsocketProxyRequestContext,
    ) -> Result<(ConnectionId, Chat), Failure> {
        let id = context
            .connection_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(ConnectionId::new)
            .ok_or(Failure::NoConnectionId)?;
        let endpoint = self
            .endpoint
            .resolve(context.domain_name.as_deref(), context.stage.as_deref())
            .ok_or(Failure::NoEndpoint)?;
        Ok((id, self.chat_for_endpoint(&endpoint)))
    }
}

fn failure(record: &aws_lambda_events::sqs::SqsMessage) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = record.message_id.clone().unwrap_or_default();
    failure
}

/// A query parameter of an event, by the protocol's rule for repeated ones (the first counts):
/// API Gateway puts every value in the multi-value map and only the last in the other.
pub fn first_query_value<'a>(
    multi_value: &'a QueryMap,
    single: &'a QueryMap,
    name: &str,
) -> Option<&'a str> {
    multi_value.first(name).or_else(|| single.first(name))
}

/// An event that API Gateway would never send: no connection id, or no domain and stage.
#[derive(Debug, Clone, Copy)]
enum Failure {
    NoConnectionId,
    NoEndpoint,
}

impl Failure {
    fn describe(self) -> &'static str {
        match self {
            Self::NoConnectionId => "the event has no requestContext.connectionId",
            Self::NoEndpoint => {
                "the event has no requestContext.domainName and stage, and APIGW_MANAGEMENT_ENDPOINT is not set"
            }
        }
    }

    fn connect_response(self) -> ApiGatewayProxyResponse {
        tracing::error!(problem = self.describe(), "unusable $connect event");
        match self {
            Self::NoConnectionId => refusal(400, self.describe()),
            Self::NoEndpoint => refusal(500, "the server failed to accept the connection"),
        }
    }

    fn frame_response(self) -> ApiGatewayProxyResponse {
        tracing::error!(problem = self.describe(), "unusable event");
        match self {
            Self::NoConnectionId => frame(
                400,
                &Rejection {
                    request_id: None,
                    error: ChatError::bad_request(self.describe()),
                }
                .to_payload(),
            ),
            Self::NoEndpoint => frame(500, &internal_frame()),
        }
    }
}

fn span(route: &str, context: &ApiGatewayWebsocketProxyRequestContext) -> tracing::Span {
    tracing::info_span!(
        "event",
        route,
        connection = context.connection_id.as_deref().unwrap_or_default(),
        request = context.request_id.as_deref().unwrap_or_default(),
    )
}

/// Runs a handler; a panic (a bug: nothing a client sends should cause one) becomes `fallback`.
async fn guarded(
    handler: impl Future<Output = ApiGatewayProxyResponse>,
    fallback: impl FnOnce() -> ApiGatewayProxyResponse,
) -> ApiGatewayProxyResponse {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("the handler panicked");
            fallback()
        }
    }
}

fn internal_frame() -> Payload {
    Rejection {
        request_id: None,
        error: ChatError::internal(),
    }
    .to_payload()
}

fn response(status: u16, body: Option<String>) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(status);
    response.body = body.map(Body::Text);
    response
}

fn frame(status: u16, payload: &Payload) -> ApiGatewayProxyResponse {
    response(status, Some(payload.to_text()))
}

/// A refused `$connect`, with a body like API Gateway's own refusals.
fn refusal(status: u16, message: &str) -> ApiGatewayProxyResponse {
    response(
        status,
        Some(serde_json::json!({ "message": message }).to_string()),
    )
}
