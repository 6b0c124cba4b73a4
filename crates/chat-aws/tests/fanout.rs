//! The sharded fan-out against moto (DynamoDB and SQS on one server): which rooms are queued,
//! what goes to the queue, and a shard's delivery page by page, resumed where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chat_aws::fanout::{Progress, SHARDS, shard_of};
use chat_aws::testing::{fresh_fifo_queue, fresh_tables, sdk_config};
use chat_aws::{
    DynamoConnections, DynamoMessages, FanOutQueue, QueuedFanOut, ShardJob, ShardWorker, Tables,
};
use chat_core::domain::{ConnectionId, RoomName};
use chat_core::memory::RecordingNotifier;
use chat_core::ports::{ConnectionStore, FanOut, Recipients};
use chat_core::protocol::Payload;
use chat_core::testing::fixtures::guest;
use chat_core::{Chat, ChatConfig};

struct Setup {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    tables: Tables,
    connections: Arc<DynamoConnections>,
    queue_url: String,
}

async fn setup(label: &str) -> Setup {
    let sdk = sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let tables = fresh_tables(&dynamodb, label).await;
    let queue_url = fresh_fifo_queue(&sqs, label, 30).await;
    let connections = Arc::new(DynamoConnections::new(dynamodb.clone(), tables.clone()));
    Setup {
        dynamodb,
        sqs,
        tables,
        connections,
        queue_url,
    }
}

impl Setup {
    fn fan_out(&self, shard_from: usize) -> QueuedFanOut {
        let queue = FanOutQueue {
            sqs: self.sqs.clone(),
            queue_url: self.queue_url.clone(),
            shard_from,
        };
        QueuedFanOut::new(
            self.dynamodb.clone(),
            self.tables.clone(),
            queue,
            "http://127.0.0.1:9/test".into(),
        )
    }

    /// `count` new connections, each a member of `room`.
    async fn members(&self, room: &RoomName, count: usize) -> Vec<ConnectionId> {
        let mut ids = Vec::new();
        for n in 0..count {
            let id = ConnectionId::random();
            self.connections
                .insert(&id, &guest(&format!("m{n}")), &[], 0)
                .await
                .unwrap();
            self.connections.join(&id, room, 50).await.unwrap();
            ids.push(id);
        }
        ids
    }

    /// Every message in the queue now (each deleted), as jobs with their group.
    async fn drain(&self) -> Vec<(String, ShardJob)> {
        let mut jobs = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .message_system_attribute_names(
                    aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
                )
                .send()
                .await
                .unwrap();
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return jobs;
            }
            for message in messages {
                let group = message
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                    })
                    .cloned()
                    .unwrap_or_default();
                jobs.push((group, ShardJob::from_body(message.body().unwrap()).unwrap()));
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(message.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    fn chat(&self, notifier: Arc<RecordingNotifier>) -> Chat {
        Chat::new(
            self.connections.clone(),
            Arc::new(DynamoMessages::new(
                self.dynamodb.clone(),
                self.tables.clone(),
            )),
            notifier,
            ChatConfig::default(),
        )
    }
}

#[tokio::test]
async fn a_small_room_is_posted_to_now_and_a_large_one_is_queued_once_per_shard() {
    let setup = setup("fanout-plan").await;
    let room = RoomName::parse("big").unwrap();
    let fan_out = setup.fan_out(4);
    let payload = Payload::from_json(
        r#"{"type":"message","text":"a \ufffe b"}"#.replace("\\ufffe", "\u{fffe}"),
    );

    let first = setup.members(&room, 3).await;
    let Recipients::Now(mut now) = fan_out.recipients(&room, None, &payload).await.unwrap() else {
        panic!("3 connections, fewer than 4: posted to now");
    };
    let mut expected = first.clone();
    now.sort();
    expected.sort();
    assert_eq!(now, expected);
    assert!(setup.drain().await.is_empty());

    let fourth = setup.members(&room, 1).await;
    let except = &fourth[0];
    assert_eq!(
        fan_out
            .recipients(&room, Some(except), &payload)
            .await
            .unwrap(),
        Recipients::Queued
    );
    let jobs = setup.drain().await;
    assert_eq!(jobs.len(), SHARDS, "one queue message per shard");
    let mut shards: Vec<usize> = jobs.iter().map(|(_, job)| job.shard).collect();
    shards.sort();
    assert_eq!(shards, (0..SHARDS).collect::<Vec<_>>());
    for (group, job) in &jobs {
        assert_eq!(
            group,
            &format!("big#{:02}", job.shard),
            "the shard is the FIFO group"
        );
        assert_eq!(
            job.payload,
            payload.to_text(),
            "the frame as posted, U+FFFE too"
        );
        assert_eq!(job.except.as_deref(), Some(except.as_str()));
        assert_eq!(job.event, jobs[0].1.event, "one event");
        assert_eq!(job.endpoint, "http://127.0.0.1:9/test");
    }

    // Smaller again: still queued (its earlier events may wait in the queue).
    for id in &first {
        setup.connections.leave(id, &room).await.unwrap();
    }
    assert_eq!(
        fan_out.recipients(&room, None, &payload).await.unwrap(),
        Recipients::Queued
    );
    assert_eq!(setup.drain().await.len(), SHARDS);
    // Another room is not.
    let other = RoomName::parse("small").unwrap();
    setup.members(&other, 1).await;
    assert!(matches!(
        fan_out.recipients(&other, None, &payload).await.unwrap(),
        Recipients::Now(ids) if ids.len() == 1
    ));
}

#[tokio::test]
async fn each_shard_posts_to_its_members_page_by_page_resumes_where_it_stopped_and_never_twice() {
    let setup = setup("fanout-shard").await;
    let room = RoomName::parse("big").unwrap();
    let members = setup.members(&room, 40).await;
    let gone_one = members[5].clone();
    let left_one = members[6].clone();
    setup.connections.leave(&left_one, &room).await.unwrap();
    let notifier = Arc::new(RecordingNotifier::new());
    notifier.mark_gone(&gone_one);
    let chat = setup.chat(notifier.clone());
    let worker =
        ShardWorker::new(setup.dynamodb.clone(), setup.tables.clone()).with_page_size(Some(2));
    let job = |shard| ShardJob {
        room: "big".into(),
        shard,
        endpoint: String::new(),
        except: Some(members[0].as_str().to_owned()),
        event: "event-1".into(),
        payload: r#"{"type":"message"}"#.into(),
    };

    // The largest shard, stopped after its first page, then resumed.
    let mut by_shard: HashMap<usize, usize> = HashMap::new();
    for id in &members {
        *by_shard.entry(shard_of(id.as_str())).or_default() += 1;
    }
    let (&largest, &size) = by_shard.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(
        size >= 4,
        "40 connections over 16 shards: one has 4 or more"
    );
    let stop = AtomicBool::new(false);
    let progress = worker
        .deliver(&chat, &job(largest), || stop.swap(true, Ordering::SeqCst))
        .await
        .unwrap();
    assert_eq!(progress, Progress::OutOfTime);
    let first_page = notifier.take();
    assert!(
        first_page.len() <= 2 && !first_page.is_empty(),
        "{first_page:?}"
    );

    let mut posted: Vec<ConnectionId> = first_page.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        worker
            .deliver(&chat, &job(largest), || false)
            .await
            .unwrap(),
        Progress::Done
    );
    posted.extend(notifier.take().into_iter().map(|(id, _)| id));
    // Received again once done: nothing more.
    assert_eq!(
        worker
            .deliver(&chat, &job(largest), || false)
            .await
            .unwrap(),
        Progress::Done
    );
    assert!(
        notifier.take().is_empty(),
        "a retry of a done shard posts nothing"
    );

    for shard in (0..SHARDS).filter(|shard| *shard != largest) {
        assert_eq!(
            worker.deliver(&chat, &job(shard), || false).await.unwrap(),
            Progress::Done
        );
        posted.extend(notifier.take().into_iter().map(|(id, _)| id));
    }
    // Every member once, but the one excepted, the one that left and the gone one (which the
    // notifier does not record).
    let mut expected: Vec<ConnectionId> = members
        .iter()
        .filter(|id| ![&members[0], &gone_one, &left_one].contains(id))
        .cloned()
        .collect();
    posted.sort();
    expected.sort();
    assert_eq!(posted, expected);
    // The gone one was removed, with its memberships.
    assert!(setup.connections.get(&gone_one).await.unwrap().is_none());
    let again = ShardJob {
        event: "event-2".into(),
        ..job(shard_of(gone_one.as_str()))
    };
    worker.deliver(&chat, &again, || false).await.unwrap();
    assert!(notifier.take().iter().all(|(id, _)| id != &gone_one));
}

#[tokio::test]
async fn a_member_that_joined_well_after_an_event_was_queued_does_not_get_it() {
    let setup = setup("fanout-late").await;
    let room = RoomName::parse("big").unwrap();
    let members = setup.members(&room, 20).await;
    let notifier = Arc::new(RecordingNotifier::new());
    let chat = setup.chat(notifier.clone());
    let worker = ShardWorker::new(setup.dynamodb.clone(), setup.tables.clone());
    let queued_at = |ago: std::time::Duration| {
        let at = std::time::SystemTime::now() - ago;
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        uuid::Uuid::new_v7(ts).to_string()
    };
    let job = |shard, event: &str| ShardJob {
        room: "big".into(),
        shard,
        endpoint: String::new(),
        except: None,
        event: event.into(),
        payload: r#"{"type":"presence"}"#.into(),
    };
    // Queued 10 s before they all joined: nobody gets it.
    let old = queued_at(std::time::Duration::from_secs(10));
    for shard in 0..SHARDS {
        worker
            .deliver(&chat, &job(shard, &old), || false)
            .await
            .unwrap();
    }
    assert!(notifier.take().is_empty());
    // Queued just now (they joined within the margin): everyone.
    let new = queued_at(std::time::Duration::ZERO);
    for shard in 0..SHARDS {
        worker
            .deliver(&chat, &job(shard, &new), || false)
            .await
            .unwrap();
    }
    assert_eq!(notifier.take().len(), members.len());
}
