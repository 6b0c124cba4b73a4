//! The conditional writes when another invocation wins the race, made deterministic with
//! aws-smithy-mocks: the stores must read again and decide again. (moto cannot show this: its
//! condition checks are not atomic with their writes under concurrent requests, so a race run
//! against it proves nothing; on DynamoDB a condition and its write are one atomic step.)

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::error::{
    ConditionalCheckFailedException, TransactionCanceledException,
};
use aws_sdk_dynamodb::types::{AttributeValue, CancellationReason};
use aws_smithy_mocks::{RuleMode, mock};
use chat_aws::testing::mocked;
use chat_aws::{DynamoConnections, DynamoMessages, Tables};
use chat_core::domain::{
    ClientMsgId, ConnectionId, DisplayName, Member, MessageText, NewMessage, RoomName,
};
use chat_core::ports::{Appended, ConnectionStore, JoinOutcome, MessageStore};
use chat_core::rate_limit::RateLimit;

type DynamoDb = aws_sdk_dynamodb::Client;
type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A connection item as the store writes it: in `rooms`, with this allowance.
fn connection(rooms: &[&str], allowance: Option<(u64, u64)>) -> Item {
    let mut item = Item::from([
        ("connectionId".into(), s("AdaAAAAAAAAAAAA=")),
        (
            "member".into(),
            AttributeValue::M(Item::from([("name".into(), s("ada"))])),
        ),
        (
            "rooms".into(),
            AttributeValue::M(
                rooms
                    .iter()
                    .enumerate()
                    .map(|(i, room)| {
                        (
                            room.to_string(),
                            s(&format!("0190a0b0-0000-7000-8000-00000000000{i}")),
                        )
                    })
                    .collect(),
            ),
        ),
        ("ttl".into(), n(u64::MAX / 2)),
        ("connectedAt".into(), n(1)),
    ]);
    if let Some((milli_tokens, updated_ms)) = allowance {
        item.insert(
            "allowance".into(),
            AttributeValue::M(Item::from([
                ("milli_tokens".into(), n(milli_tokens)),
                ("updated_ms".into(), n(updated_ms)),
            ])),
        );
    }
    item
}

fn read(item: Item) -> impl Fn() -> GetItemOutput + Send + Sync + 'static {
    move || {
        GetItemOutput::builder()
            .set_item(Some(item.clone()))
            .build()
    }
}

fn cancelled() -> TransactWriteItemsError {
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .cancellation_reasons(
                CancellationReason::builder()
                    .code("ConditionalCheckFailed")
                    .build(),
            )
            .cancellation_reasons(CancellationReason::builder().code("None").build())
            .build(),
    )
}

fn ada() -> ConnectionId {
    ConnectionId::new("AdaAAAAAAAAAAAA=")
}

#[tokio::test]
async fn a_token_taken_meanwhile_elsewhere_is_seen_and_not_spent_twice() {
    // Ada had 5 tokens; another container spent 4 between our read and our write.
    let reads = mock!(DynamoDb::get_item)
        .sequence()
        .output(read(connection(&["lobby"], Some((5000, 1000)))))
        .output(read(connection(&["lobby"], Some((1000, 1000)))))
        .output(read(connection(&["lobby"], Some((0, 1000)))))
        .build();
    let stale = mock!(DynamoDb::update_item)
        .match_requests(|req| {
            req.expression_attribute_values()
                .and_then(|values| values.get(":tokens"))
                == Some(&n(5000))
        })
        .then_error(|| {
            UpdateItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder().build(),
            )
        });
    let fresh = mock!(DynamoDb::update_item)
        .match_requests(|req| {
            let values = req.expression_attribute_values().unwrap();
            let after = values[":after"].as_m().unwrap();
            values.get(":tokens") == Some(&n(1000)) && after["milli_tokens"] == n(0)
        })
        .then_output(|| UpdateItemOutput::builder().build());
    let store = DynamoConnections::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&reads, &stale, &fresh]),
        Tables::default(),
    );
    let limit = RateLimit {
        burst: 5,
        per_second: 1,
    };
    assert!(
        store
            .take_send_allowance(&ada(), limit, 1000)
            .await
            .unwrap()
    );
    assert_eq!((stale.num_calls(), fresh.num_calls()), (1, 1));
    // The last token is gone: refused, and nothing written.
    assert!(
        !store
            .take_send_allowance(&ada(), limit, 1000)
            .await
            .unwrap()
    );
    assert_eq!(reads.num_calls(), 3);
    assert_eq!((stale.num_calls(), fresh.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_join_that_lost_a_race_for_the_last_room_is_limit_exceeded() {
    // Read: 3 rooms of 4; meanwhile another join took the fourth.
    let reads = mock!(DynamoDb::get_item)
        .sequence()
        .output(read(connection(&["lobby", "a", "b"], None)))
        .output(read(connection(&["lobby", "a", "b", "c"], None)))
        .build();
    let transact = mock!(DynamoDb::transact_write_items).then_error(cancelled);
    let store = DynamoConnections::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&reads, &transact]),
        Tables::default(),
    );
    let room = RoomName::parse("d").unwrap();
    assert_eq!(
        store.join(&ada(), &room, 4).await.unwrap(),
        JoinOutcome::LimitExceeded
    );
    assert_eq!(transact.num_calls(), 1);
}

#[tokio::test]
async fn a_join_whose_transaction_goes_through_is_joined() {
    let reads = mock!(DynamoDb::get_item).then_output(read(connection(&["lobby"], None)));
    let transact = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            let items = req.transact_items();
            let update = items[0].update().unwrap();
            let put = items[1].put().unwrap();
            update
                .condition_expression()
                .is_some_and(|c| c.contains("size(#rooms) < :max"))
                && put.item()["sk"].as_s().unwrap().starts_with("~member#")
                && put.item()["room"] == s("d")
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let store = DynamoConnections::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&reads, &transact]),
        Tables::default(),
    );
    let room = RoomName::parse("d").unwrap();
    assert_eq!(
        store.join(&ada(), &room, 50).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(transact.num_calls(), 1);
}

/// An append's transaction cancelled for one of its items (head, message, idempotency key):
/// `failed` names the one whose condition failed, and `item` is what DynamoDB returns of it.
fn append_cancelled(failed: usize, item: Option<Item>) -> TransactWriteItemsError {
    let reasons = (0..3).map(|i| {
        if i == failed {
            CancellationReason::builder()
                .code("ConditionalCheckFailed")
                .set_item(item.clone())
                .build()
        } else {
            CancellationReason::builder().code("None").build()
        }
    });
    TransactWriteItemsError::TransactionCanceledException(
        TransactionCanceledException::builder()
            .set_cancellation_reasons(Some(reasons.collect()))
            .build(),
    )
}

fn is_head(req: &aws_sdk_dynamodb::operation::get_item::GetItemInput) -> bool {
    req.key().and_then(|k| k.get("sk")) == Some(&s("~head"))
}

fn ada_says(text: &str, client_msg_id: Option<&str>) -> NewMessage {
    NewMessage {
        room: RoomName::lobby(),
        sender: Member {
            name: DisplayName::parse("ada").unwrap(),
            user_id: None,
        },
        text: MessageText::parse(text.into()).unwrap(),
        client_msg_id: client_msg_id.map(|id| ClientMsgId::parse(id).unwrap()),
    }
}

/// Another container appended between our read of the room's head and our write: the
/// transaction is cancelled, and says where the head is now; the append goes after it, with the
/// next `seq` and an id after that container's, without reading the head again.
#[tokio::test]
async fn an_append_that_lost_the_race_for_the_head_goes_after_the_winner() {
    let winner = "0190a0b0-0000-7000-8000-0000000000bb";
    let head = mock!(DynamoDb::get_item)
        .match_requests(is_head)
        .then_output(|| {
            GetItemOutput::builder()
                .set_item(Some(Item::from([
                    ("room".into(), s("lobby")),
                    ("sk".into(), s("~head")),
                    ("headSeq".into(), n(6)),
                    ("lastId".into(), s("0190a0b0-0000-7000-8000-0000000000aa")),
                ])))
                .build()
        });
    let lost = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            req.transact_items()[0]
                .put()
                .unwrap()
                .expression_attribute_values()
                .unwrap()[":read"]
                == n(6)
        })
        .then_error(move || {
            append_cancelled(
                0,
                Some(Item::from([
                    ("room".into(), s("lobby")),
                    ("sk".into(), s("~head")),
                    ("headSeq".into(), n(7)),
                    ("lastId".into(), s(winner)),
                ])),
            )
        });
    let won = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            let put = req.transact_items()[0].put().unwrap();
            put.expression_attribute_values().unwrap()[":read"] == n(7)
                && put.item()["headSeq"] == n(8)
                && req.transact_items()[1].put().unwrap().item()["seq"] == n(8)
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let next = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            req.transact_items()[0]
                .put()
                .unwrap()
                .expression_attribute_values()
                .unwrap()[":read"]
                == n(8)
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let store = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&head, &lost, &won, &next]),
        Tables::default(),
    );
    let appended = store.append(ada_says("second", None)).await.unwrap();
    let Appended::New(stored) = appended else {
        panic!("expected a new message, got {appended:?}")
    };
    assert_eq!(stored.seq, 8);
    assert!(
        stored.id.to_string().as_str() > winner,
        "{} after {winner}",
        stored.id
    );
    assert_eq!(
        (head.num_calls(), lost.num_calls(), won.num_calls()),
        (1, 1, 1)
    );
    // The next append of this container starts from the head it left: no read.
    let appended = store.append(ada_says("third", None)).await.unwrap();
    assert!(
        matches!(appended, Appended::New(ref m) if m.seq == 9),
        "{appended:?}"
    );
    assert_eq!((head.num_calls(), next.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_retry_that_lost_the_race_gets_the_first_message() {
    let id = "0190a0b0-0000-7000-8000-0000000000aa";
    let head = mock!(DynamoDb::get_item)
        .match_requests(is_head)
        .then_output(|| GetItemOutput::builder().build());
    let transact = mock!(DynamoDb::transact_write_items).then_error(|| append_cancelled(2, None));
    let key = mock!(DynamoDb::get_item)
        .match_requests(|req| {
            req.key()
                .and_then(|k| k.get("sk"))
                .and_then(|sk| sk.as_s().ok())
                .is_some_and(|sk| sk.starts_with("~dedupe#"))
        })
        .then_output(move || {
            GetItemOutput::builder()
                .set_item(Some(Item::from([
                    ("room".into(), s("lobby")),
                    ("sk".into(), s("~dedupe#5#n:ada#c-1")),
                    ("messageId".into(), s(id)),
                ])))
                .build()
        });
    let message = mock!(DynamoDb::get_item)
        .match_requests(move |req| req.key().and_then(|k| k.get("sk")) == Some(&s(id)))
        .then_output(move || {
            GetItemOutput::builder()
                .set_item(Some(Item::from([
                    ("room".into(), s("lobby")),
                    ("sk".into(), s(id)),
                    ("ts".into(), n(1_721_000_000_000)),
                    ("seq".into(), n(3)),
                    (
                        "sender".into(),
                        AttributeValue::M(Item::from([("name".into(), s("ada"))])),
                    ),
                    ("text".into(), s("first")),
                    ("clientMsgId".into(), s("c-1")),
                ])))
                .build()
        });
    let store = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&head, &transact, &key, &message]),
        Tables::default(),
    );
    let appended = store.append(ada_says("first", Some("c-1"))).await.unwrap();
    let Appended::Duplicate(earlier) = appended else {
        panic!("expected the earlier message, got {appended:?}")
    };
    assert_eq!(earlier.id.to_string(), id);
    assert_eq!(earlier.ts, 1_721_000_000_000);
    assert_eq!(earlier.text, "first");
    assert_eq!(earlier.seq, 3);
    assert_eq!((key.num_calls(), message.num_calls()), (1, 1));
}
