//! The DynamoDB stores against a real DynamoDB API: moto_server on loopback (the endpoint from
//! `AWS_ENDPOINT_URL_DYNAMODB`, or one started for this test process). Each test has its own
//! tables, so they run concurrently on one moto.
//!
//! The ports' conformance suites run here (the connection suite twice: with DynamoDB's own
//! Query pages, and with pages of two members); the tests below them are about DynamoDB itself:
//! expired items, Query pages, and two store instances (two Lambda containers) on one table.
//! Each test's requests reach moto one at a time ([`one_request_at_a_time`] says why), so that
//! the suites' concurrency tests race the stores' conditional writes as DynamoDB would.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_aws::testing::fresh_tables;
use chat_aws::{DynamoConnections, DynamoMessages, Tables};
use chat_core::domain::{ConnectionId, Cursor, RoomName};
use chat_core::memory::page_of;
use chat_core::ports::{Appended, ConnectionStore, JoinOutcome, MessageStore};
use chat_core::rate_limit::RateLimit;
use chat_core::testing::fixtures::{append_new, guest, message, names, room};
use chat_core::testing::message_store::assert_pages_match_the_reference;

chat_core::message_store_conformance!(|| async { stores("messages").await.messages });
chat_core::connection_store_conformance!(|| async { stores("connections").await.connections });

/// The message suite over three containers (three store instances on one table) whose clocks
/// are 50 ms apart, each call going to the next: appends race for a room's head across
/// containers, and ids are made by clocks behind and ahead of one another.
mod three_containers {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use chat_core::domain::{ClientMsgId, NewMessage, Page, StoredMessage};
    use chat_core::ports::StoreResult;

    use super::*;

    chat_core::message_store_conformance!(|| async {
        let s = stores("containers").await;
        let skewed = |offset: i64| {
            let clock: chat_core::clock::Clock =
                Arc::new(move || chat_core::clock::now_ms().saturating_add_signed(offset));
            DynamoMessages::new(s.client.clone(), s.tables.clone()).with_clock(clock)
        };
        Containers {
            containers: vec![skewed(0), skewed(50), skewed(-50)],
            next: AtomicUsize::new(0),
        }
    });

    struct Containers {
        containers: Vec<DynamoMessages>,
        next: AtomicUsize,
    }

    impl Containers {
        fn pick(&self) -> &DynamoMessages {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            &self.containers[i % self.containers.len()]
        }
    }

    #[async_trait]
    impl MessageStore for Containers {
        async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
            self.pick().append(message).await
        }
        async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64> {
            self.pick().latest_seq(room).await
        }
        async fn find_by_client_msg_id(
            &self,
            room: &RoomName,
            sender_key: &str,
            client_msg_id: &ClientMsgId,
        ) -> StoreResult<Option<StoredMessage>> {
            self.pick()
                .find_by_client_msg_id(room, sender_key, client_msg_id)
                .await
        }
        async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
            self.pick().page(room, cursor, limit).await
        }
        async fn get(
            &self,
            room: &RoomName,
            id: &chat_core::domain::MessageId,
        ) -> StoreResult<Option<StoredMessage>> {
            self.pick().get(room, id).await
        }
        async fn mark_read(
            &self,
            room: &RoomName,
            reader: &str,
            id: &chat_core::domain::MessageId,
        ) -> StoreResult<Option<chat_core::domain::MessageId>> {
            self.pick().mark_read(room, reader, id).await
        }
        async fn read_state(
            &self,
            room: &RoomName,
            reader: &str,
        ) -> StoreResult<chat_core::domain::ReadState> {
            self.pick().read_state(room, reader).await
        }
        async fn seq_and_read_state(
            &self,
            room: &RoomName,
            reader: &str,
        ) -> StoreResult<(u64, chat_core::domain::ReadState)> {
            self.pick().seq_and_read_state(room, reader).await
        }
        async fn open_direct(
            &self,
            room: &RoomName,
            users: &chat_core::ports::DirectUsers,
        ) -> StoreResult<()> {
            self.pick().open_direct(room, users).await
        }
        async fn direct_users(
            &self,
            room: &RoomName,
        ) -> StoreResult<Option<chat_core::ports::DirectUsers>> {
            self.pick().direct_users(room).await
        }
        async fn access(
            &self,
            room: &RoomName,
            user_id: &str,
        ) -> StoreResult<chat_core::domain::UserAccess> {
            self.pick().access(room, user_id).await
        }
        async fn set_access(
            &self,
            room: &RoomName,
            user_id: &str,
            change: chat_core::domain::AccessChange,
        ) -> StoreResult<()> {
            self.pick().set_access(room, user_id, change).await
        }
        async fn change(
            &self,
            room: &RoomName,
            id: &chat_core::domain::MessageId,
            change: chat_core::domain::Change,
        ) -> StoreResult<chat_core::ports::Changed> {
            self.pick().change(room, id, change).await
        }
    }
}

/// Every room's members read two at a time: the suite's rooms span several Query pages.
mod small_pages {
    use super::*;

    chat_core::connection_store_conformance!(|| async {
        let s = stores("small-pages").await;
        DynamoConnections::new(s.client, s.tables).with_page_size(Some(2))
    });
}

struct Stores {
    client: Client,
    tables: Tables,
    connections: DynamoConnections,
    messages: DynamoMessages,
}

async fn stores(label: &str) -> Stores {
    let client = one_request_at_a_time().await;
    let tables = fresh_tables(&client, label).await;
    Stores {
        connections: DynamoConnections::new(client.clone(), tables.clone()),
        messages: DynamoMessages::new(client.clone(), tables.clone()),
        client,
        tables,
    }
}

/// A guest's new connection, in the lobby.
async fn connect(store: &DynamoConnections, name: &str) -> ConnectionId {
    let id = chat_core::testing::fixtures::connect(store, &guest(name)).await;
    assert_eq!(
        store.join(&id, &RoomName::lobby(), 50).await.unwrap(),
        JoinOutcome::Joined
    );
    id
}

/// Sets `ttl` (epoch seconds) on a connection and on its memberships, as if it had expired and
/// DynamoDB had not deleted it yet (it takes up to a few days).
async fn expire(s: &Stores, id: &ConnectionId, rooms: &[RoomName]) {
    let past = AttributeValue::N("1000".into());
    s.client
        .update_item()
        .table_name(&s.tables.connections)
        .key("connectionId", AttributeValue::S(id.as_str().into()))
        .update_expression("SET #ttl = :past")
        .expression_attribute_names("#ttl", "ttl")
        .expression_attribute_values(":past", past.clone())
        .send()
        .await
        .unwrap();
    for room in rooms {
        let items = s
            .client
            .query()
            .table_name(&s.tables.messages)
            .key_condition_expression("#room = :room AND begins_with(#sk, :member)")
            .expression_attribute_names("#room", "room")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":room", AttributeValue::S(room.as_str().into()))
            .expression_attribute_values(":member", AttributeValue::S("~member#".into()))
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        for item in items {
            if item.get("connectionId") == Some(&AttributeValue::S(id.as_str().into())) {
                s.client
                    .update_item()
                    .table_name(&s.tables.messages)
                    .key("room", item["room"].clone())
                    .key("sk", item["sk"].clone())
                    .update_expression("SET #ttl = :past")
                    .expression_attribute_names("#ttl", "ttl")
                    .expression_attribute_values(":past", past.clone())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn connections_past_their_ttl_are_ignored_until_dynamodb_deletes_them() {
    let s = stores("ttl").await;
    let ada = connect(&s.connections, "ada").await;
    let ghost = connect(&s.connections, "ghost").await;
    let r = room("r");
    s.connections.join(&ghost, &r, 50).await.unwrap();
    s.connections.join(&ada, &r, 50).await.unwrap();
    expire(&s, &ghost, &[RoomName::lobby(), r.clone()]).await;

    assert!(s.connections.get(&ghost).await.unwrap().is_none());
    assert_eq!(
        s.connections.room_connections(&r).await.unwrap(),
        std::slice::from_ref(&ada)
    );
    assert_eq!(
        names(
            &s.connections
                .room_members(&RoomName::lobby(), 10)
                .await
                .unwrap()
        ),
        ["ada"]
    );
    assert_eq!(
        s.connections.join(&ghost, &room("new"), 50).await.unwrap(),
        JoinOutcome::NoConnection
    );
    assert!(!s.connections.leave(&ghost, &r).await.unwrap());
    assert!(
        !s.connections
            .take_send_allowance(&ghost, RateLimit::default(), 0)
            .await
            .unwrap(),
        "an expired connection sends nothing"
    );
    // A late `$disconnect` cleans up, and has nothing to tell the rooms.
    assert!(s.connections.remove(&ghost).await.unwrap().is_none());
    let raw = s
        .client
        .get_item()
        .table_name(&s.tables.connections)
        .key("connectionId", AttributeValue::S(ghost.as_str().into()))
        .send()
        .await
        .unwrap();
    assert!(raw.item.is_none());
}

#[tokio::test]
async fn membership_is_read_page_after_page_past_one_query_page() {
    let s = stores("paging").await;
    let connections =
        DynamoConnections::new(s.client.clone(), s.tables.clone()).with_page_size(Some(2));
    let r = room("big");
    let mut ids = Vec::new();
    for i in 0..7 {
        let id = connect(&connections, &format!("m{i}")).await;
        connections.join(&id, &r, 50).await.unwrap();
        ids.push(id);
    }
    // 7 members in pages of 2: four Query pages.
    assert_eq!(connections.room_connections(&r).await.unwrap(), ids);
    let listed = connections.room_members(&r, 5).await.unwrap();
    assert_eq!(names(&listed), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(connections.room_members(&r, 100).await.unwrap().len(), 7);
    // Membership items do not show up as messages of the room.
    let page = s.messages.page(&r, Cursor::Latest, 50).await.unwrap();
    assert!(page.messages.is_empty() && !page.has_more);
}

#[tokio::test]
async fn history_pages_skip_the_members_and_idempotency_keys_in_the_rooms_partition() {
    let s = stores("history").await;
    let r = room("h");
    // Members and idempotency keys share the room's partition; they must not get in the way.
    let ada = connect(&s.connections, "ada").await;
    s.connections.join(&ada, &r, 50).await.unwrap();
    let mut all = Vec::new();
    for i in 0..25 {
        let client_msg_id = (i % 2 == 0).then(|| format!("c{i}"));
        let new = message("h", "ada", &format!("m{i}"), client_msg_id.as_deref());
        all.push(append_new(&s.messages, new).await);
    }
    let bob = connect(&s.connections, "bob").await;
    s.connections.join(&bob, &r, 50).await.unwrap();
    assert_pages_match_the_reference(&s.messages, &r, &all).await;
}

#[tokio::test]
async fn long_messages_are_paged_past_dynamodbs_1_mb_query_pages() {
    let s = stores("long").await;
    let r = room("long");
    let text = "\u{1F600}".repeat(4000); // 16 KB of UTF-8
    let mut all = Vec::new();
    for _ in 0..70 {
        let Appended::New(message) = s
            .messages
            .append(message("long", "ada", &text, None))
            .await
            .unwrap()
        else {
            panic!("a new message")
        };
        all.push(message);
    }
    // 70 x 16 KB is more than a 1 MB Query page.
    let page = s.messages.page(&r, Cursor::Latest, 100).await.unwrap();
    assert_eq!(page, page_of(&all, Cursor::Latest, 100));
    assert_eq!(page.messages.len(), 70);
}

#[tokio::test]
async fn a_retry_through_another_container_finds_the_first_message() {
    let s = stores("retry").await;
    let other = DynamoMessages::new(s.client.clone(), s.tables.clone());
    let Appended::New(first) = s
        .messages
        .append(message("lobby", "ada", "hi", Some("same")))
        .await
        .unwrap()
    else {
        panic!("new")
    };
    let again = other
        .append(message("lobby", "ada", "hi", Some("same")))
        .await
        .unwrap();
    assert_eq!(again, Appended::Duplicate(first.clone()));
    let page = other
        .page(&RoomName::lobby(), Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(page.messages, [first]);
}

#[tokio::test]
async fn the_rate_limit_holds_across_two_store_instances() {
    let s = stores("rate").await;
    let ada = connect(&s.connections, "ada").await;
    let other = DynamoConnections::new(s.client.clone(), s.tables.clone());
    let limit = RateLimit {
        burst: 3,
        per_second: 10,
    };
    let now = 1_000_000;
    assert!(
        s.connections
            .take_send_allowance(&ada, limit, now)
            .await
            .unwrap()
    );
    assert!(other.take_send_allowance(&ada, limit, now).await.unwrap());
    assert!(
        s.connections
            .take_send_allowance(&ada, limit, now)
            .await
            .unwrap()
    );
    assert!(
        !other.take_send_allowance(&ada, limit, now).await.unwrap(),
        "the burst is used up"
    );
    assert!(
        !s.connections
            .take_send_allowance(&ada, limit, now + 99)
            .await
            .unwrap()
    );
    assert!(
        other
            .take_send_allowance(&ada, limit, now + 100)
            .await
            .unwrap(),
        "a token after 100 ms"
    );
}

/// A client of moto whose requests reach it one at a time
/// ([`chat_aws::testing::one_request_at_a_time`] says why).
async fn one_request_at_a_time() -> Client {
    Client::new(&chat_aws::testing::one_request_at_a_time().await)
}

/// Every item of the room's partition, as the table holds it.
async fn partition(
    s: &Stores,
    room: &str,
) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    let out = s
        .client
        .query()
        .table_name(&s.tables.messages)
        .key_condition_expression("#room = :room")
        .expression_attribute_names("#room", chat_aws::tables::ROOM_KEY)
        .expression_attribute_values(":room", AttributeValue::S(room.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("Query");
    out.items.unwrap_or_default()
}

#[tokio::test]
async fn a_deleted_text_is_in_no_item_of_the_table() {
    use chat_core::domain::{Change, Emoji, MessageText};
    let s = stores("deleted-text").await;
    let r = room("d");
    let first = append_new(
        &s.messages,
        message("d", "ada", "the first draft", Some("c1")),
    )
    .await;
    append_new(&s.messages, message("d", "ada", "a neighbour", None)).await;
    let edit = Change::Edit(MessageText::parse("a secret, edited in".into()).unwrap());
    s.messages.change(&r, &first.id, edit).await.unwrap();
    let react = Change::React {
        emoji: Emoji::parse("👀").unwrap(),
        by: "u:bob".into(),
        add: true,
    };
    s.messages.change(&r, &first.id, react).await.unwrap();
    let holds = |items: &[std::collections::HashMap<String, AttributeValue>], text: &str| {
        items.iter().any(|item| format!("{item:?}").contains(text))
    };
    let before = partition(&s, "d").await;
    assert!(holds(&before, "a secret, edited in"), "the edit is stored");
    s.messages
        .change(&r, &first.id, Change::Delete)
        .await
        .unwrap();
    let after = partition(&s, "d").await;
    for gone in ["a secret, edited in", "the first draft", "u:bob"] {
        assert!(!holds(&after, gone), "{gone:?} is still in {after:?}");
    }
    assert!(holds(&after, "a neighbour"));
    // The tombstone: the message item without its text, and one change item (the delete).
    let tombstone = after
        .iter()
        .find(|item| item.get("sk") == Some(&AttributeValue::S(first.id.to_string())))
        .expect("the message item stays");
    assert!(!tombstone.contains_key("text") && !tombstone.contains_key("reactions"));
    let changes = after
        .iter()
        .filter(|item| matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk.starts_with("~change#")))
        .count();
    assert_eq!(
        changes, 1,
        "the edit's and the reactions' change items went with the delete"
    );
}

/// A retry in the one-transaction append (the room at rest): the cancelled transaction brings
/// the idempotency key as stored, so the earlier message is one read away; the retry takes no
/// token of the allowance.
#[tokio::test]
async fn a_retry_at_rest_is_answered_from_its_cancelled_transaction() {
    use std::sync::Arc;

    use chat_aws::Meter;
    use chat_core::clock::now_ms;
    use chat_core::ports::AllowanceClaim;
    use chat_core::rate_limit::TokenBucket;

    let s = stores("retry-at-rest").await;
    let ada = connect(&s.connections, "ada").await;
    let meter = Arc::new(Meter::new());
    let metered = DynamoMessages::new(s.client.clone(), s.tables.clone()).with_meter(meter.clone());
    let limit = RateLimit {
        burst: 10,
        per_second: 10,
    };
    let now = now_ms();
    let claim = |before: Option<TokenBucket>| {
        let mut after = before.unwrap_or_else(|| TokenBucket::full(limit, now));
        assert!(after.try_take(limit, now));
        AllowanceClaim {
            connection: ada.clone(),
            before,
            after,
        }
    };
    let allowance = async || s.connections.get(&ada).await.unwrap().unwrap().allowance;
    let lobby = RoomName::lobby();

    metered.prepare_append(&lobby).await;
    let first_claim = claim(allowance().await);
    let sent = message("lobby", "ada", "hi", Some("same"));
    let Some(Appended::New(first)) = metered.append_taking(&sent, &first_claim).await.unwrap()
    else {
        panic!("a new message, in one transaction")
    };
    assert_eq!(allowance().await, Some(first_claim.after));

    meter.take();
    metered.prepare_append(&lobby).await;
    let again = metered
        .append_taking(&sent, &claim(allowance().await))
        .await
        .unwrap();
    assert_eq!(again, Some(Appended::Duplicate(first)));
    let tally = meter.take();
    assert_eq!(
        tally.calls.get("GetItem"),
        Some(&2),
        "the head read ahead, then the earlier message, and no lookup of the key: {tally:?}"
    );
    assert_eq!(allowance().await, Some(first_claim.after), "no token taken");
}
