//! Lambda's SQS event source mapping, on the fan-out queue (`chat serve --backend lambda`): the
//! `fanout` function fed from SQS as on AWS, here from moto's SQS (or any SQS API at the SDK's
//! endpoint).
//!
//! As Lambda's poller does ("Using Lambda with Amazon SQS", Lambda Developer Guide): pollers
//! receive up to [`BATCH_SIZE`] messages at a time (the template's `BatchSize`), invoke the
//! function with them as one event in the `aws:sqs` shape (as AWS's sample
//! `example-sqs-event.json` in `aws_lambda_events`' fixtures, with the FIFO attributes
//! `MessageGroupId`, `MessageDeduplicationId` and `SequenceNumber`), and delete the messages
//! that the answer's `batchItemFailures` does not name ("Implementing partial batch
//! responses": `ReportBatchItemFailures`); a failed one stays in the queue and comes back after
//! its visibility timeout (or sooner, if the function made it visible). A FIFO queue hands out
//! no message of a group while another of that group is in flight, so several pollers keep
//! each group's order, as Lambda does. An invocation that fails altogether (it panicked) counts
//! as every message failing. The function's timeout is [`FUNCTION_TIMEOUT`], the template's.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use chat_lambda::Handlers;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// Messages per event: the template's `BatchSize` (10, the most for a FIFO queue).
pub const BATCH_SIZE: i32 = 10;
/// The `fanout` function's timeout in the template.
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);
/// The queue's visibility timeout when it is created here: how long a failed message waits
/// before it is received again (the template's is longer, as AWS advises for Lambda: 6 times
/// the function's timeout; here a shorter one keeps a failure's retry within a test's patience).
pub const LOCAL_VISIBILITY_TIMEOUT_SECS: u32 = 10;
/// A receive's long poll (`WaitTimeSeconds`): Lambda's pollers long-poll too. Short, so that a
/// stop does not wait long.
const LONG_POLL_SECS: i32 = 1;

/// The queue's URL: created (FIFO) when missing and `create` is set, else looked up.
pub async fn open_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    create: bool,
) -> anyhow::Result<String> {
    use anyhow::Context;
    if create {
        let created = sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                LOCAL_VISIBILITY_TIMEOUT_SECS.to_string(),
            )
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)
            .with_context(|| format!("cannot create the fan-out queue {name}"))?;
        return created.queue_url.context("CreateQueue gave no URL");
    }
    let found = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(aws_sdk_sqs::Error::from)
        .with_context(|| {
            format!("cannot use the fan-out queue {name} (to create it, pass --create-tables)")
        })?;
    found.queue_url.context("GetQueueUrl gave no URL")
}

/// The running pollers.
pub struct EventSourceMapping {
    stop: CancellationToken,
    pollers: tokio::task::JoinSet<()>,
}

impl EventSourceMapping {
    /// Starts `pollers` pollers of the queue, each with its own function container
    /// (`container(n)`): Lambda's concurrency for the queue.
    pub fn start(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        pollers: usize,
        container: impl Fn(usize) -> Handlers,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        for n in 0..pollers.max(1) {
            let poller = Poller {
                sqs: sqs.clone(),
                queue_url: queue_url.clone(),
                arn: queue_arn(&queue_url),
                handlers: container(n),
            };
            let stop = stop.clone();
            set.spawn(async move { poller.run(stop).await });
        }
        Self { stop, pollers: set }
    }

    /// Stops polling; the batches being handled finish first.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.pollers.join_next().await.is_some() {}
    }
}

struct Poller {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    arn: String,
    handlers: Handlers,
}

impl Poller {
    async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(BATCH_SIZE)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(LONG_POLL_SECS)
                .send();
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = received => received,
            };
            let messages = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "fan-out queue: ReceiveMessage failed");
                    Vec::new()
                }
            };
            if messages.is_empty() {
                continue;
            }
            self.invoke(&messages).await;
        }
    }

    /// One invocation of the function with these messages, and the deletes of those it did
    /// not report failed.
    async fn invoke(&self, messages: &[aws_sdk_sqs::types::Message]) {
        let event = event(messages, &self.arn);
        let event: SqsEvent = match serde_json::from_value(event) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "an SQS event that the function cannot read");
                return;
            }
        };
        let deadline = chat_core::clock::now_ms() + FUNCTION_TIMEOUT.as_millis() as u64;
        let out_of_time =
            move || chat_core::clock::now_ms() + chat_lambda::runtime::FANOUT_MARGIN_MS >= deadline;
        let response: SqsBatchResponse = self.handlers.fanout(event, out_of_time).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|failure| failure.item_identifier.as_str())
            .collect();
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .filter(|message| !failed.contains(&message.message_id().unwrap_or_default()))
            .enumerate()
            .filter_map(|(n, message)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .receipt_handle(message.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        if done.is_empty() {
            return;
        }
        let deleted = self
            .sqs
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(done))
            .send()
            .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "fan-out queue: DeleteMessageBatch failed; those messages come again");
        }
    }
}

/// The event Lambda's poller would send for these messages.
fn event(messages: &[aws_sdk_sqs::types::Message], arn: &str) -> Value {
    let region = arn.split(':').nth(3).unwrap_or("us-east-1");
    let records: Vec<Value> = messages
        .iter()
        .map(|message| {
            let attributes: Map<String, Value> = message
                .attributes()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.as_str().to_owned(), Value::String(value.clone())))
                .collect();
            json!({
                "messageId": message.message_id(),
                "receiptHandle": message.receipt_handle(),
                "body": message.body(),
                "md5OfBody": message.md5_of_body(),
                "attributes": attributes,
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": region,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The queue's ARN from its URL (`{endpoint}/{account}/{name}`): `arn:aws:sqs:{region}:{account}:{name}`.
fn queue_arn(url: &str) -> String {
    let mut parts = url.trim_end_matches('/').rsplit('/');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or("000000000000");
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    format!("arn:aws:sqs:{region}:{account}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_the_sqs_events_of_aws_samples() {
        let message = aws_sdk_sqs::types::Message::builder()
            .message_id("m-1")
            .receipt_handle("r-1")
            .body("{}")
            .md5_of_body("99914b932bd37a50b983c5e7c90ae93b")
            .attributes(MessageSystemAttributeName::MessageGroupId, "room#03")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "1")
            .build();
        let arn = queue_arn("http://127.0.0.1:5055/123456789012/chat-fanout.fifo");
        assert_eq!(
            arn,
            format!(
                "arn:aws:sqs:{}:123456789012:chat-fanout.fifo",
                std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
            )
        );
        let json = event(std::slice::from_ref(&message), &arn);
        // Every field of AWS's sample (`example-sqs-event.json`) but `md5OfMessageAttributes`
        // (there are no message attributes).
        let mut keys: Vec<&str> = json["Records"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "attributes",
                "awsRegion",
                "body",
                "eventSource",
                "eventSourceARN",
                "md5OfBody",
                "messageAttributes",
                "messageId",
                "receiptHandle"
            ]
        );
        let event: SqsEvent = serde_json::from_value(json).unwrap();
        let record = &event.records[0];
        assert_eq!(record.message_id.as_deref(), Some("m-1"));
        assert_eq!(record.receipt_handle.as_deref(), Some("r-1"));
        assert_eq!(record.body.as_deref(), Some("{}"));
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
        assert_eq!(
            record.attributes.get("MessageGroupId").map(String::as_str),
            Some("room#03")
        );
    }
}
