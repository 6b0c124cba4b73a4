//! The `fanout` handler on a batch of several FIFO groups (shards), on moto: the groups are
//! worked on at once, and a group's failure holds back only that group's later messages.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chat_aws::fanout::{SHARDS, shard_of};
use chat_aws::testing::{fresh_fifo_queue, fresh_tables, sdk_config, seed_members};
use chat_aws::{DynamoConnections, DynamoMessages, FanOutQueue, ShardJob, ShardWorker};
use chat_core::ChatConfig;
use chat_core::domain::ConnectionId;
use chat_core::ports::{Delivery, Notifier, NotifyError};
use chat_core::protocol::Payload;
use chat_lambda::{FixedNotifier, Handlers, Queued};

const ROOM: &str = "big";
const MEMBERS: usize = 64;

/// Posts what it is given, and records it; a post to a member of `blocked_shard` waits until a
/// member of `awaited_shard` has been posted to (or 5 s), and one to `panic_for` panics.
#[derive(Default)]
struct Scripted {
    posted: Mutex<Vec<(String, String)>>,
    blocked_shard: Option<usize>,
    awaited_shard: Option<usize>,
    awaited_posted: AtomicBool,
    /// Whether the wait ended with the awaited post (true) or the 5 s (false).
    waits: Mutex<Vec<bool>>,
    panic_for: Option<String>,
}

#[async_trait::async_trait]
impl Notifier for Scripted {
    async fn send(&self, to: &ConnectionId, payload: &Payload) -> Result<Delivery, NotifyError> {
        let shard = shard_of(to.as_str());
        if self.panic_for.as_deref() == Some(to.as_str()) {
            panic!("a bug in a post");
        }
        if Some(shard) == self.blocked_shard {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !self.awaited_posted.load(Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let came = self.awaited_posted.load(Ordering::SeqCst);
            self.waits.lock().unwrap().push(came);
        }
        self.posted
            .lock()
            .unwrap()
            .push((to.as_str().to_owned(), payload.to_text().to_owned()));
        if Some(shard) == self.awaited_shard {
            self.awaited_posted.store(true, Ordering::SeqCst);
        }
        Ok(Delivery::Delivered)
    }

    async fn close(&self, _: &ConnectionId) -> Result<Delivery, NotifyError> {
        Ok(Delivery::Delivered)
    }
}

/// The seeded members (`m-{n}`) by shard.
fn members_by_shard() -> HashMap<usize, Vec<String>> {
    let mut shards: HashMap<usize, Vec<String>> = HashMap::new();
    for n in 0..MEMBERS {
        let id = format!("m-{n}");
        shards.entry(shard_of(&id)).or_default().push(id);
    }
    shards
}

/// Handlers with the queued fan-out on fresh tables holding a room of [`MEMBERS`] members.
async fn setup(notifier: Arc<Scripted>) -> Handlers {
    let sdk = sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let tables = fresh_tables(&dynamodb, "fanout-groups").await;
    let queue_url = fresh_fifo_queue(&sqs, "fanout-groups", 30).await;
    seed_members(&dynamodb, &tables, ROOM, "m-", MEMBERS, 600)
        .await
        .unwrap();
    Handlers::new(
        Arc::new(DynamoConnections::new(dynamodb.clone(), tables.clone())),
        Arc::new(DynamoMessages::new(dynamodb.clone(), tables.clone())),
        Arc::new(FixedNotifier(notifier)),
        ChatConfig::default(),
    )
    .with_queued_fan_out(Queued {
        dynamodb: dynamodb.clone(),
        tables: tables.clone(),
        queue: FanOutQueue {
            sqs,
            queue_url,
            shard_from: 1,
        },
        worker: ShardWorker::new(dynamodb, tables),
    })
}

/// A record of the `fanout` function's event: a job of `shard` (its group), with `text`.
fn record(shard: usize, text: &str) -> SqsMessage {
    let job = ShardJob {
        room: ROOM.into(),
        shard,
        endpoint: "http://127.0.0.1:9/test".into(),
        except: None,
        event: uuid::Uuid::now_v7().to_string(),
        payload: format!(r#"{{"type":"message","text":"{text}"}}"#),
    };
    let mut record = SqsMessage::default();
    record.message_id = Some(format!("{text}-id"));
    record.receipt_handle = Some(format!("{text}-receipt"));
    record.body = Some(job.body());
    record
        .attributes
        .insert("MessageGroupId".into(), job.group());
    record
}

fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

/// Two shards that both have members.
fn two_shards(shards: &HashMap<usize, Vec<String>>) -> (usize, usize) {
    let mut with_members = (0..SHARDS).filter(|shard| shards.contains_key(shard));
    (with_members.next().unwrap(), with_members.next().unwrap())
}

#[tokio::test]
async fn a_batchs_shards_are_posted_to_at_once() {
    let shards = members_by_shard();
    let (first, second) = two_shards(&shards);
    // The first shard's posts wait for one of the second's: one shard after the other, they
    // would each wait the 5 s out.
    let notifier = Arc::new(Scripted {
        blocked_shard: Some(first),
        awaited_shard: Some(second),
        ..Scripted::default()
    });
    let handlers = setup(notifier.clone()).await;
    let response = handlers
        .fanout(
            event(vec![record(first, "one"), record(second, "two")]),
            || false,
        )
        .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    let waits = notifier.waits.lock().unwrap().clone();
    assert!(!waits.is_empty());
    assert!(
        waits.iter().all(|&came| came),
        "the first shard waited for the second in vain: {waits:?}"
    );
    let posted: HashSet<String> = notifier
        .posted
        .lock()
        .unwrap()
        .iter()
        .map(|(to, _)| to.clone())
        .collect();
    let expected: HashSet<String> = shards[&first]
        .iter()
        .chain(&shards[&second])
        .cloned()
        .collect();
    assert_eq!(posted, expected);
}

#[tokio::test]
async fn a_failure_holds_back_its_own_shards_later_messages_only() {
    let shards = members_by_shard();
    let (failing, other) = two_shards(&shards);
    let notifier = Arc::new(Scripted {
        panic_for: Some(shards[&failing][0].clone()),
        ..Scripted::default()
    });
    let handlers = setup(notifier.clone()).await;
    // In the batch's order: the failing shard's message, the other's, the failing shard's next.
    let response = handlers
        .fanout(
            event(vec![
                record(failing, "a1"),
                record(other, "b1"),
                record(failing, "a2"),
            ]),
            || false,
        )
        .await;
    let failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.clone())
        .collect();
    assert_eq!(failed, ["a1-id", "a2-id"]);
    let posted = notifier.posted.lock().unwrap().clone();
    // The other shard got its message; the failing one's next message was not posted.
    for member in &shards[&other] {
        assert!(
            posted
                .iter()
                .any(|(to, frame)| to == member && frame.contains("b1")),
            "{member} did not get b1"
        );
    }
    assert!(posted.iter().all(|(_, frame)| !frame.contains("a2")));
}
