//! The DynamoDB stores against a real DynamoDB API: moto_server on loopback (the endpoint from
//! `AWS_ENDPOINT_URL_DYNAMODB`, or one started for this test process). Each test has its own
//! tables, so they run concurrently on one moto.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_aws::testing::{dynamodb_client, fresh_tables};
use chat_aws::{DynamoConnections, DynamoMessages, Tables};
use chat_core::domain::{
    ClientMsgId, ConnectionId, Cursor, DisplayName, Member, MessageId, MessageText, NewMessage,
    RoomName, StoredMessage,
};
use chat_core::memory::page_of;
use chat_core::ports::{Appended, ConnectionStore, JoinOutcome, MessageStore};
use chat_core::rate_limit::RateLimit;

struct Stores {
    client: Client,
    tables: Tables,
    connections: DynamoConnections,
    messages: DynamoMessages,
}

async fn stores(label: &str) -> Stores {
    let client = dynamodb_client().await;
    let tables = fresh_tables(&client, label).await;
    Stores {
        connections: DynamoConnections::new(client.clone(), tables.clone()),
        messages: DynamoMessages::new(client.clone(), tables.clone()),
        client,
        tables,
    }
}

fn member(name: &str) -> Member {
    Member {
        name: DisplayName::parse(name).unwrap(),
        user_id: None,
    }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

async fn connect(store: &DynamoConnections, name: &str) -> ConnectionId {
    let id = ConnectionId::random();
    store.insert(&id, &member(name)).await.unwrap();
    assert_eq!(
        store.join(&id, &RoomName::lobby(), 50).await.unwrap(),
        JoinOutcome::Joined
    );
    id
}

fn new_message(
    room_name: &str,
    sender: &str,
    text: &str,
    client_msg_id: Option<&str>,
) -> NewMessage {
    NewMessage {
        room: room(room_name),
        sender: member(sender),
        text: MessageText::parse(text.to_owned()).unwrap(),
        client_msg_id: client_msg_id.map(|id| ClientMsgId::parse(id).unwrap()),
    }
}

fn names(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

#[tokio::test]
async fn a_connection_is_stored_joins_and_leaves_rooms_and_is_removed_with_its_memberships() {
    let s = stores("conn").await;
    let ada = connect(&s.connections, "ada").await;
    let bob = connect(&s.connections, "bob").await;
    let r = room("rust");

    let record = s.connections.get(&ada).await.unwrap().unwrap();
    assert_eq!(record.member, member("ada"));
    assert_eq!(record.rooms, [RoomName::lobby()]);
    assert!(
        s.connections
            .get(&ConnectionId::random())
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(
        s.connections.join(&ada, &r, 50).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(
        s.connections.join(&ada, &r, 50).await.unwrap(),
        JoinOutcome::AlreadyMember
    );
    assert_eq!(
        s.connections.join(&bob, &r, 50).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(
        s.connections.join(&bob, &room("third"), 2).await.unwrap(),
        JoinOutcome::LimitExceeded
    );
    assert_eq!(
        s.connections
            .join(&ConnectionId::random(), &r, 50)
            .await
            .unwrap(),
        JoinOutcome::NoConnection
    );
    // Rooms in the order joined; members in the order they joined.
    assert_eq!(
        s.connections.get(&ada).await.unwrap().unwrap().rooms,
        [RoomName::lobby(), r.clone()]
    );
    assert_eq!(
        s.connections.room_connections(&r).await.unwrap(),
        [ada.clone(), bob.clone()]
    );
    assert_eq!(
        names(&s.connections.room_members(&r, 1000).await.unwrap()),
        ["ada", "bob"]
    );

    assert!(s.connections.leave(&ada, &r).await.unwrap());
    assert!(
        !s.connections.leave(&ada, &r).await.unwrap(),
        "not a member any more"
    );
    assert_eq!(
        s.connections.room_connections(&r).await.unwrap(),
        std::slice::from_ref(&bob)
    );
    assert_eq!(
        s.connections.get(&ada).await.unwrap().unwrap().rooms,
        [RoomName::lobby()]
    );

    let removed = s.connections.remove(&bob).await.unwrap().unwrap();
    assert_eq!(removed.rooms, [RoomName::lobby(), r.clone()]);
    assert!(s.connections.get(&bob).await.unwrap().is_none());
    assert!(s.connections.room_connections(&r).await.unwrap().is_empty());
    assert_eq!(
        s.connections
            .room_connections(&RoomName::lobby())
            .await
            .unwrap(),
        std::slice::from_ref(&ada)
    );
    assert!(
        s.connections.remove(&bob).await.unwrap().is_none(),
        "removing twice is fine"
    );
    // A removed connection cannot join again (no item is resurrected by the update).
    assert_eq!(
        s.connections.join(&bob, &r, 50).await.unwrap(),
        JoinOutcome::NoConnection
    );
    assert!(s.connections.get(&bob).await.unwrap().is_none());
}

#[tokio::test]
async fn the_same_person_on_two_connections_is_listed_once() {
    let s = stores("twice").await;
    connect(&s.connections, "ada").await;
    connect(&s.connections, "ada").await;
    connect(&s.connections, "bob").await;
    let lobby = RoomName::lobby();
    assert_eq!(
        s.connections.room_connections(&lobby).await.unwrap().len(),
        3
    );
    assert_eq!(
        names(&s.connections.room_members(&lobby, 1000).await.unwrap()),
        ["ada", "bob"]
    );
    assert_eq!(
        names(&s.connections.room_members(&lobby, 1).await.unwrap()),
        ["ada"]
    );
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
async fn history_pages_match_the_reference_paging_in_every_direction() {
    let s = stores("history").await;
    let r = room("h");
    // Members and idempotency keys share the room's partition; they must not get in the way.
    let ada = connect(&s.connections, "ada").await;
    s.connections.join(&ada, &r, 50).await.unwrap();
    let mut all: Vec<StoredMessage> = Vec::new();
    for i in 0..25 {
        let client_msg_id = (i % 2 == 0).then(|| format!("c{i}"));
        let appended = s
            .messages
            .append(new_message(
                "h",
                "ada",
                &format!("m{i}"),
                client_msg_id.as_deref(),
            ))
            .await
            .unwrap();
        let Appended::New(message) = appended else {
            panic!("a new message")
        };
        all.push(message);
    }
    let unknown_low = MessageId::parse("00000000-0000-7000-8000-000000000000").unwrap();
    let unknown_high = MessageId::parse("ffffffff-ffff-7fff-bfff-ffffffffffff").unwrap();
    let mut cursors = vec![Cursor::Latest];
    for id in [all[0].id, all[7].id, all[24].id, unknown_low, unknown_high] {
        cursors.push(Cursor::Before(id));
        cursors.push(Cursor::After(id));
    }
    for cursor in cursors {
        for limit in [1, 5, 24, 25, 100] {
            let page = s.messages.page(&r, cursor, limit).await.unwrap();
            assert_eq!(
                page,
                page_of(&all, cursor, limit),
                "{cursor:?} limit {limit}"
            );
        }
    }
    // Another room's history is its own.
    let other = s
        .messages
        .page(&room("other"), Cursor::Latest, 50)
        .await
        .unwrap();
    assert!(other.messages.is_empty());
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
            .append(new_message("long", "ada", &text, None))
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
async fn a_client_msg_id_is_stored_once_per_sender_and_room() {
    let s = stores("dedupe").await;
    let first = s
        .messages
        .append(new_message("lobby", "ada", "once", Some("m-1")))
        .await
        .unwrap();
    let Appended::New(first) = first else {
        panic!("new")
    };
    let again = s
        .messages
        .append(new_message("lobby", "ada", "once", Some("m-1")))
        .await
        .unwrap();
    assert_eq!(again, Appended::Duplicate(first.clone()));
    let found = s
        .messages
        .find_by_client_msg_id(
            &RoomName::lobby(),
            &member("ada").sender_key(),
            &ClientMsgId::parse("m-1").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(found, Some(first.clone()));
    // Another sender, or another room: a new message.
    assert!(matches!(
        s.messages
            .append(new_message("lobby", "bob", "once", Some("m-1")))
            .await
            .unwrap(),
        Appended::New(_)
    ));
    assert!(matches!(
        s.messages
            .append(new_message("elsewhere", "ada", "once", Some("m-1")))
            .await
            .unwrap(),
        Appended::New(_)
    ));
    // Names that would run together in a naive key stay apart.
    assert!(matches!(
        s.messages
            .append(new_message("lobby", "a#m", "x", Some("1")))
            .await
            .unwrap(),
        Appended::New(_)
    ));
    assert!(matches!(
        s.messages
            .append(new_message("lobby", "a", "x", Some("m#1")))
            .await
            .unwrap(),
        Appended::New(_)
    ));
    let lobby = s
        .messages
        .page(&RoomName::lobby(), Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(lobby.messages.len(), 4, "the retry stored nothing");
}

#[tokio::test]
async fn a_retry_through_another_container_finds_the_first_message() {
    let s = stores("retry").await;
    let other = DynamoMessages::new(s.client.clone(), s.tables.clone());
    let Appended::New(first) = s
        .messages
        .append(new_message("lobby", "ada", "hi", Some("same")))
        .await
        .unwrap()
    else {
        panic!("new")
    };
    let again = other
        .append(new_message("lobby", "ada", "hi", Some("same")))
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
