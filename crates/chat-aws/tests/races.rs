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
        connection: chat_core::domain::ConnectionId::new("ada-connection"),
        text: MessageText::parse(text.into()).unwrap(),
        client_msg_id: client_msg_id.map(|id| ClientMsgId::parse(id).unwrap()),
    }
}

fn head_at(seq: u64, last_id: &str) -> Item {
    Item::from([
        ("room".into(), s("lobby")),
        ("sk".into(), s("~head")),
        ("headSeq".into(), n(seq)),
        ("lastId".into(), s(last_id)),
    ])
}

/// The answer to taking ticket `n_`: the head item, with the head at `head_seq`.
fn ticket(n_: u64, head_seq: u64) -> aws_sdk_dynamodb::operation::update_item::UpdateItemOutput {
    let mut item = head_at(head_seq, EARLIER);
    item.insert("nextTicket".into(), n(n_));
    UpdateItemOutput::builder()
        .set_attributes(Some(item))
        .build()
}

fn is_ticket(req: &aws_sdk_dynamodb::operation::update_item::UpdateItemInput) -> bool {
    req.update_expression() == Some("ADD #ticket :one")
}

/// The `:from` and `:to` of a transaction's head update (its first item).
fn head_move(
    req: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput,
) -> (Option<AttributeValue>, AttributeValue) {
    let update = req.transact_items()[0].update().unwrap();
    let values = update.expression_attribute_values().unwrap();
    (values.get(":from").cloned(), values[":to"].clone())
}

const EARLIER: &str = "0190a0b0-0000-7000-8000-0000000000aa";
const WINNER: &str = "0190a0b0-0000-7000-8000-0000000000bb";

/// Ticket 8 while the head is at 6: the seq before ours is being written by another container.
/// The append waits, reads the head again, and once it is at 7 writes at 8, after 7's id.
#[tokio::test(start_paused = true)]
async fn an_append_waits_for_the_ticket_before_its_own_and_goes_after_it() {
    let tickets = mock!(DynamoDb::update_item)
        .match_requests(is_ticket)
        .then_output(|| ticket(8, 6));
    let head = mock!(DynamoDb::get_item)
        .match_requests(is_head)
        .sequence()
        .output(|| {
            GetItemOutput::builder()
                .set_item(Some(head_at(6, EARLIER)))
                .build()
        })
        .times(2)
        .output(|| {
            GetItemOutput::builder()
                .set_item(Some(head_at(7, WINNER)))
                .build()
        })
        .repeatedly()
        .build();
    let commit = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            head_move(req) == (Some(n(7)), n(8))
                && req.transact_items()[1].put().unwrap().item()["seq"] == n(8)
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let store = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&tickets, &head, &commit]),
        Tables::default(),
    );
    let appended = store.append(ada_says("eighth", None)).await.unwrap();
    let Appended::New(stored) = appended else {
        panic!("expected a new message, got {appended:?}")
    };
    assert_eq!(stored.seq, 8);
    assert!(
        stored.id.to_string().as_str() > WINNER,
        "{} after {WINNER}",
        stored.id
    );
    assert_eq!((tickets.num_calls(), commit.num_calls()), (1, 1));
    assert!(
        head.num_calls() >= 3,
        "it read the head until its turn came"
    );
}

/// A writer that never writes its seq (its container died) holds up the room for
/// STALLED_AFTER; then the waiter passes that seq on, unused, and writes its own.
#[tokio::test(start_paused = true)]
async fn a_stalled_writer_is_skipped_after_a_while() {
    let tickets = mock!(DynamoDb::update_item)
        .match_requests(is_ticket)
        .then_output(|| ticket(8, 6));
    let head = mock!(DynamoDb::get_item)
        .match_requests(is_head)
        .then_output(|| {
            GetItemOutput::builder()
                .set_item(Some(head_at(6, EARLIER)))
                .build()
        });
    let skip = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            req.transact_items().len() == 1 && head_move(req) == (Some(n(6)), n(7))
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let commit = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            req.transact_items().len() == 2 && head_move(req) == (Some(n(7)), n(8))
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let store = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&tickets, &head, &skip, &commit]),
        Tables::default(),
    );
    let started = tokio::time::Instant::now();
    let appended = store.append(ada_says("eighth", None)).await.unwrap();
    assert!(
        matches!(appended, Appended::New(ref m) if m.seq == 8),
        "{appended:?}"
    );
    assert!(started.elapsed() >= chat_aws::messages::STALLED_AFTER);
    assert_eq!((skip.num_calls(), commit.num_calls()), (1, 1));
}

/// Our turn was passed on while we were slow (another container took us for a stalled
/// writer): the commit is refused and says the head is at our seq; the append takes a new
/// ticket and writes there. Nothing is lost, nothing written twice.
#[tokio::test(start_paused = true)]
async fn a_writer_whose_turn_was_passed_takes_a_new_ticket() {
    let tickets = mock!(DynamoDb::update_item)
        .match_requests(is_ticket)
        .sequence()
        .output(|| ticket(8, 7))
        .output(|| ticket(9, 8))
        .build();
    let refused = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| head_move(req) == (Some(n(7)), n(8)))
        .then_error(|| append_cancelled(0, Some(head_at(8, EARLIER))));
    let commit = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| head_move(req) == (Some(n(8)), n(9)))
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let store = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&tickets, &refused, &commit]),
        Tables::default(),
    );
    let appended = store.append(ada_says("late", None)).await.unwrap();
    assert!(
        matches!(appended, Appended::New(ref m) if m.seq == 9),
        "{appended:?}"
    );
    assert_eq!(
        (tickets.num_calls(), refused.num_calls(), commit.num_calls()),
        (2, 1, 1)
    );
}

/// Two sends with one clientMsgId at once: both found no key before their tickets; ours finds
/// it at its commit. It passes its turn on unused (so the room does not wait for a stalled
/// writer) and answers with the first message.
#[tokio::test(start_paused = true)]
async fn a_retry_that_lost_the_race_gets_the_first_message() {
    let id = EARLIER;
    let tickets = mock!(DynamoDb::update_item)
        .match_requests(is_ticket)
        .then_output(|| ticket(4, 3));
    let transact = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| req.transact_items().len() == 3)
        .then_error(|| append_cancelled(2, None));
    let pass = mock!(DynamoDb::transact_write_items)
        .match_requests(|req| {
            req.transact_items().len() == 1 && head_move(req) == (Some(n(3)), n(4))
        })
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let key = mock!(DynamoDb::get_item)
        .match_requests(|req| {
            req.key()
                .and_then(|k| k.get("sk"))
                .and_then(|sk| sk.as_s().ok())
                .is_some_and(|sk| sk.starts_with("~dedupe#"))
        })
        .sequence()
        .output(|| GetItemOutput::builder().build())
        .output(move || {
            GetItemOutput::builder()
                .set_item(Some(Item::from([
                    ("room".into(), s("lobby")),
                    ("sk".into(), s("~dedupe#5#n:ada#c-1")),
                    ("messageId".into(), s(id)),
                ])))
                .build()
        })
        .build();
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
        mocked::dynamodb(
            RuleMode::MatchAny,
            &[&tickets, &transact, &pass, &key, &message],
        ),
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
    assert_eq!((key.num_calls(), message.num_calls()), (2, 1));
    assert_eq!(pass.num_calls(), 1, "its turn was passed on");
}
