//! The chat core against in-memory fakes of its ports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_core::domain::ConnectionId;
use chat_core::memory::{MemoryConnections, MemoryMessages, RecordingNotifier};
use chat_core::ports::ConnectionStore;
use chat_core::protocol::Inbound;
use chat_core::{Chat, ChatConfig, ConnectRejection, ConnectRequest};
use serde_json::{Value, json};

struct Harness {
    chat: Chat,
    notifier: Arc<RecordingNotifier>,
    connections: Arc<MemoryConnections>,
    clock: Arc<AtomicU64>,
}

impl Harness {
    fn new() -> Self {
        let connections = Arc::new(MemoryConnections::new());
        let notifier = Arc::new(RecordingNotifier::new());
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let clock_reader = clock.clone();
        let chat = Chat::new(
            connections.clone(),
            Arc::new(MemoryMessages::new()),
            notifier.clone(),
            ChatConfig::default(),
        )
        .with_clock(Arc::new(move || clock_reader.load(Ordering::SeqCst)));
        Self {
            chat,
            notifier,
            connections,
            clock,
        }
    }

    async fn connect(&self, name: &str) -> ConnectionId {
        let id = ConnectionId::random();
        self.chat
            .connect(
                &id,
                &ConnectRequest {
                    name: Some(name.into()),
                    ..Default::default()
                },
            )
            .await
            .expect("connect");
        id
    }

    async fn send(&self, from: &ConnectionId, frame: Value) -> Option<Value> {
        let text = frame.to_string();
        self.chat
            .handle(from, Inbound::Text(&text))
            .await
            .map(|reply| {
                let frame: Value = serde_json::from_str(&reply.payload.to_text()).unwrap();
                // The reply's code is the one its frame shows, so that gateways need not read it.
                assert_eq!(
                    reply.error.map(|code| code.as_str()),
                    frame.get("code").and_then(Value::as_str),
                    "{frame}"
                );
                frame
            })
    }

    /// Events delivered through the notifier since the last call, per recipient.
    fn events_for(&self, to: &ConnectionId) -> Vec<Value> {
        self.notifier
            .take()
            .into_iter()
            .filter(|(id, _)| id == to)
            .map(|(_, text)| serde_json::from_str(&text).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_message_in_lobby_reaches_everyone_including_the_sender_and_is_acknowledged() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    let reply = h
        .send(
            &ada,
            json!({"action":"sendMessage","text":"hi","requestId":"r1","clientMsgId":"c1"}),
        )
        .await
        .unwrap();
    assert_eq!(reply["type"], "ack");
    assert_eq!(reply["requestId"], "r1");
    assert_eq!(reply["room"], "lobby");
    assert_eq!(reply["clientMsgId"], "c1");
    let sent = h.notifier.take();
    let recipients: Vec<_> = sent.iter().map(|(id, _)| id.clone()).collect();
    assert!(recipients.contains(&ada) && recipients.contains(&bob));
    let event: Value = serde_json::from_str(&sent[0].1).unwrap();
    assert_eq!(event["type"], "message");
    assert_eq!(event["id"], reply["id"]);
    assert_eq!(event["ts"], reply["ts"]);
    assert_eq!(event["text"], "hi");
    assert_eq!(event["sender"], json!({"name":"ada"}));
    assert_eq!(event["clientMsgId"], "c1");
}

#[tokio::test]
async fn the_ack_id_is_a_uuid_v7_and_ts_is_its_time() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let ack = h
        .send(&ada, json!({"action":"sendMessage","text":"x"}))
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str(ack["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!(
        ack["ts"].as_u64().unwrap(),
        secs * 1000 + u64::from(nanos) / 1_000_000
    );
    assert!(
        ack.get("clientMsgId").is_none(),
        "absent fields are left out"
    );
}

#[tokio::test]
async fn a_retry_with_the_same_client_msg_id_gets_the_same_ack_and_is_not_sent_again() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let frame = json!({"action":"sendMessage","text":"once","clientMsgId":"c1"});
    let first = h.send(&ada, frame.clone()).await.unwrap();
    h.notifier.take();
    // A new connection of the same person (a reconnect) retries.
    h.chat.disconnect(&ada).await;
    let ada2 = h.connect("ada").await;
    let retry = h.send(&ada2, frame).await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["ts"], first["ts"]);
    assert!(h.notifier.take().is_empty(), "a retry is not fanned out");
    let history = h
        .send(&ada2, json!({"action":"history","room":"lobby"}))
        .await
        .unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_client_msg_id_from_another_sender_or_room_is_a_new_message() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    let a = h
        .send(
            &ada,
            json!({"action":"sendMessage","text":"1","clientMsgId":"c"}),
        )
        .await
        .unwrap();
    let b = h
        .send(
            &bob,
            json!({"action":"sendMessage","text":"2","clientMsgId":"c"}),
        )
        .await
        .unwrap();
    let c = h
        .send(
            &ada,
            json!({"action":"sendMessage","room":"r","text":"3","clientMsgId":"c"}),
        )
        .await
        .unwrap();
    assert_ne!(a["id"], b["id"]);
    assert_ne!(a["id"], c["id"]);
}

#[tokio::test]
async fn room_events_reach_only_members() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    let eve = h.connect("eve").await;
    h.send(&ada, json!({"action":"joinRoom","room":"secret"}))
        .await;
    h.send(&bob, json!({"action":"joinRoom","room":"secret"}))
        .await;
    h.notifier.take();
    h.send(
        &ada,
        json!({"action":"sendMessage","room":"secret","text":"psst"}),
    )
    .await;
    h.send(&ada, json!({"action":"typing","room":"secret"}))
        .await;
    let sent = h.notifier.take();
    assert!(sent.iter().all(|(to, _)| to != &eve), "eve saw {sent:?}");
    assert!(sent.iter().any(|(to, _)| to == &bob));
}

#[tokio::test]
async fn joining_sends_presence_to_the_others_and_answers_members_and_history() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    h.send(
        &ada,
        json!({"action":"sendMessage","room":"r","text":"before bob"}),
    )
    .await;
    h.notifier.take();
    let joined = h
        .send(
            &bob,
            json!({"action":"joinRoom","room":"r","requestId":"j"}),
        )
        .await
        .unwrap();
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["requestId"], "j");
    assert_eq!(joined["members"], json!([{"name":"ada"},{"name":"bob"}]));
    assert_eq!(joined["history"][0]["text"], "before bob");
    assert!(joined["history"][0].get("type").is_none());
    assert_eq!(joined["hasMore"], false);
    let to_ada = h.events_for(&ada);
    assert_eq!(
        to_ada,
        vec![json!({"type":"presence","room":"r","event":"join","member":{"name":"bob"}})]
    );
}

#[tokio::test]
async fn joining_a_room_twice_answers_joined_again_without_presence() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    h.send(&bob, json!({"action":"joinRoom","room":"r"})).await;
    h.notifier.take();
    let again = h
        .send(&bob, json!({"action":"joinRoom","room":"r"}))
        .await
        .unwrap();
    assert_eq!(again["type"], "joined");
    assert!(h.notifier.take().is_empty());
}

#[tokio::test]
async fn lobby_has_no_presence_events() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    h.send(&bob, json!({"action":"leaveRoom","room":"lobby"}))
        .await;
    h.send(&bob, json!({"action":"joinRoom","room":"lobby"}))
        .await;
    h.chat.disconnect(&bob).await;
    assert!(h.events_for(&ada).is_empty());
}

#[tokio::test]
async fn leaving_tells_the_remaining_members_and_ends_membership() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    h.send(&bob, json!({"action":"joinRoom","room":"r"})).await;
    h.notifier.take();
    let left = h
        .send(
            &bob,
            json!({"action":"leaveRoom","room":"r","requestId":"l"}),
        )
        .await
        .unwrap();
    assert_eq!(left, json!({"type":"left","requestId":"l","room":"r"}));
    assert_eq!(
        h.events_for(&ada),
        vec![json!({"type":"presence","room":"r","event":"leave","member":{"name":"bob"}})]
    );
    let again = h
        .send(&bob, json!({"action":"leaveRoom","room":"r"}))
        .await
        .unwrap();
    assert_eq!(again["code"], "not_member");
}

#[tokio::test]
async fn a_disconnect_sends_leave_to_each_room_but_lobby() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    for room in ["r1", "r2"] {
        h.send(&ada, json!({"action":"joinRoom","room":room})).await;
        h.send(&bob, json!({"action":"joinRoom","room":room})).await;
    }
    h.notifier.take();
    h.chat.disconnect(&bob).await;
    let events = h.events_for(&ada);
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["event"] == "leave" && e["room"] != "lobby")
    );
    assert!(h.connections.get(&bob).await.unwrap().is_none());
}

#[tokio::test]
async fn actions_on_a_room_need_membership() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    for frame in [
        json!({"action":"sendMessage","room":"other","text":"x","requestId":"q"}),
        json!({"action":"history","room":"other","requestId":"q"}),
        json!({"action":"members","room":"other","requestId":"q"}),
        json!({"action":"typing","room":"other","requestId":"q"}),
        json!({"action":"leaveRoom","room":"other","requestId":"q"}),
    ] {
        let reply = h.send(&ada, frame.clone()).await.unwrap();
        assert_eq!(reply["code"], "not_member", "{frame}");
        assert_eq!(reply["requestId"], "q");
    }
}

#[tokio::test]
async fn field_errors_come_before_membership_and_membership_before_the_rate_limit() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let long = "x".repeat(4001);
    let reply = h
        .send(
            &ada,
            json!({"action":"sendMessage","room":"other","text":long}),
        )
        .await
        .unwrap();
    assert_eq!(reply["code"], "payload_too_large");
    for i in 0..20 {
        h.send(&ada, json!({"action":"sendMessage","text":format!("{i}")}))
            .await;
    }
    let reply = h
        .send(
            &ada,
            json!({"action":"sendMessage","room":"other","text":"x"}),
        )
        .await
        .unwrap();
    assert_eq!(reply["code"], "not_member");
}

#[tokio::test]
async fn the_rate_limit_allows_a_burst_of_20_then_10_a_second_and_stores_nothing_past_it() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    for i in 0..20 {
        let ack = h
            .send(&ada, json!({"action":"sendMessage","text":format!("{i}")}))
            .await
            .unwrap();
        assert_eq!(ack["type"], "ack", "message {i}");
    }
    h.notifier.take();
    let refused = h
        .send(
            &ada,
            json!({"action":"sendMessage","text":"21st","requestId":"r"}),
        )
        .await
        .unwrap();
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["requestId"], "r");
    assert!(
        h.notifier.take().is_empty(),
        "nothing is sent past the limit"
    );
    h.clock.fetch_add(100, Ordering::SeqCst);
    let ack = h
        .send(&ada, json!({"action":"sendMessage","text":"later"}))
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack");
    let history = h
        .send(&ada, json!({"action":"history","room":"lobby","limit":100}))
        .await
        .unwrap();
    let texts: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts.len(), 21);
    assert!(!texts.contains(&json!("21st")));
}

#[tokio::test]
async fn a_retry_is_answered_even_when_the_allowance_is_used_up() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let first = h
        .send(
            &ada,
            json!({"action":"sendMessage","text":"x","clientMsgId":"keep"}),
        )
        .await
        .unwrap();
    for i in 0..19 {
        h.send(&ada, json!({"action":"sendMessage","text":format!("{i}")}))
            .await;
    }
    let retry = h
        .send(
            &ada,
            json!({"action":"sendMessage","text":"x","clientMsgId":"keep"}),
        )
        .await
        .unwrap();
    assert_eq!(retry["type"], "ack");
    assert_eq!(retry["id"], first["id"]);
}

#[tokio::test]
async fn history_pages_backwards_with_before_and_forwards_with_after() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        h.clock.fetch_add(1000, Ordering::SeqCst);
        let ack = h
            .send(&ada, json!({"action":"sendMessage","text":format!("m{i}")}))
            .await
            .unwrap();
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    let latest = h
        .send(&ada, json!({"action":"history","room":"lobby","limit":10}))
        .await
        .unwrap();
    let texts = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        texts(&latest, "messages"),
        (15..25).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(latest["hasMore"], true);
    let older = h
        .send(
            &ada,
            json!({"action":"history","room":"lobby","limit":10,"before":ids[15]}),
        )
        .await
        .unwrap();
    assert_eq!(
        texts(&older, "messages"),
        (5..15).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(older["hasMore"], true);
    let oldest = h
        .send(
            &ada,
            json!({"action":"history","room":"lobby","limit":10,"before":ids[5]}),
        )
        .await
        .unwrap();
    assert_eq!(texts(&oldest, "messages").len(), 5);
    assert_eq!(oldest["hasMore"], false);
    let after = h
        .send(
            &ada,
            json!({"action":"history","room":"lobby","limit":20,"after":ids[9]}),
        )
        .await
        .unwrap();
    assert_eq!(texts(&after, "messages").first().unwrap(), "m10");
    assert_eq!(texts(&after, "messages").len(), 15);
    assert_eq!(after["hasMore"], false);
}

#[tokio::test]
async fn joining_with_since_recovers_the_first_100_messages_after_it() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    let first = h
        .send(&ada, json!({"action":"sendMessage","text":"seen"}))
        .await
        .unwrap();
    for i in 0..120 {
        h.clock.fetch_add(1000, Ordering::SeqCst);
        h.send(
            &ada,
            json!({"action":"sendMessage","text":format!("missed {i}")}),
        )
        .await;
    }
    let joined = h
        .send(
            &bob,
            json!({"action":"joinRoom","room":"lobby","since":first["id"]}),
        )
        .await
        .unwrap();
    let history = joined["history"].as_array().unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0]["text"], "missed 0");
    assert_eq!(joined["hasMore"], true);
    let plain = h
        .send(&bob, json!({"action":"joinRoom","room":"lobby"}))
        .await
        .unwrap();
    assert_eq!(plain["history"].as_array().unwrap().len(), 50);
    assert_eq!(plain["history"][49]["text"], "missed 119");
}

#[tokio::test]
async fn a_connection_can_be_in_at_most_50_rooms_lobby_included() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    for i in 0..49 {
        let reply = h
            .send(&ada, json!({"action":"joinRoom","room":format!("r{i}")}))
            .await
            .unwrap();
        assert_eq!(reply["type"], "joined");
    }
    let refused = h
        .send(&ada, json!({"action":"joinRoom","room":"one-more"}))
        .await
        .unwrap();
    assert_eq!(refused["code"], "limit_exceeded");
    let again = h
        .send(&ada, json!({"action":"joinRoom","room":"r3"}))
        .await
        .unwrap();
    assert_eq!(
        again["type"], "joined",
        "re-joining a room it is in is fine"
    );
}

#[tokio::test]
async fn members_lists_each_person_once() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    h.connect("ada").await;
    h.connect("bob").await;
    let reply = h
        .send(
            &ada,
            json!({"action":"members","room":"lobby","requestId":"m"}),
        )
        .await
        .unwrap();
    assert_eq!(
        reply,
        // Version 2: lobby's members reply also carries its number of connections.
        json!({"type":"members","requestId":"m","room":"lobby","members":[{"name":"ada"},{"name":"bob"}],"occupancy":3})
    );
}

#[tokio::test]
async fn typing_reaches_the_others_but_not_the_typist_and_has_no_reply() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let bob = h.connect("bob").await;
    assert!(
        h.send(&ada, json!({"action":"typing","room":"lobby"}))
            .await
            .is_none()
    );
    let sent = h.notifier.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, bob);
    assert_eq!(
        serde_json::from_str::<Value>(&sent[0].1).unwrap(),
        json!({"type":"typing","room":"lobby","member":{"name":"ada"}})
    );
}

#[tokio::test]
async fn ping_answers_pong() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    assert_eq!(
        h.send(&ada, json!({"action":"ping","requestId":"p"}))
            .await
            .unwrap(),
        json!({"type":"pong","requestId":"p"})
    );
    assert_eq!(
        h.send(&ada, json!({"action":"ping"})).await.unwrap(),
        json!({"type":"pong"})
    );
}

#[tokio::test]
async fn a_connection_found_gone_during_fan_out_is_removed() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let ghost = h.connect("ghost").await;
    h.notifier.mark_gone(&ghost);
    // Past the window in which its `$connect` could still be running.
    h.clock
        .fetch_add(chat_core::service::CONNECTING_WINDOW_MS, Ordering::SeqCst);
    let ack = h
        .send(&ada, json!({"action":"sendMessage","text":"x"}))
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack");
    assert!(h.connections.get(&ghost).await.unwrap().is_none());
}

/// API Gateway answers 410 to a post for a connection whose `$connect` has not returned, and the
/// connection is in `lobby` from the start of its `$connect`: a fan-out in that window must not
/// remove it.
#[tokio::test]
async fn a_connection_gone_while_it_may_still_be_connecting_is_kept() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let newcomer = h.connect("newcomer").await;
    h.notifier.mark_gone(&newcomer);
    h.clock.fetch_add(
        chat_core::service::CONNECTING_WINDOW_MS - 1,
        Ordering::SeqCst,
    );
    let ack = h
        .send(&ada, json!({"action":"sendMessage","text":"x"}))
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack");
    let kept = h.connections.get(&newcomer).await.unwrap();
    assert!(kept.is_some_and(|record| record.is_member_of(&chat_core::domain::RoomName::lobby())));
}

#[tokio::test]
async fn connect_refuses_invalid_names_and_names_guests() {
    let h = Harness::new();
    let id = ConnectionId::random();
    for bad in ["", "   ", "a\u{7}", &"x".repeat(33)] {
        let result = h
            .chat
            .connect(
                &id,
                &ConnectRequest {
                    name: Some(bad.into()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(result, Err(ConnectRejection::BadRequest(_))),
            "{bad:?}"
        );
        assert_eq!(result.unwrap_err().status(), 400);
    }
    assert!(
        h.connections.is_empty(),
        "a refused connection is not stored"
    );
    let guest = h
        .chat
        .connect(&id, &ConnectRequest::default())
        .await
        .unwrap();
    assert!(guest.name.as_str().starts_with("guest-"));
}

#[tokio::test]
async fn an_authenticated_connection_takes_its_name_from_the_token() {
    let h = Harness::new();
    let id = ConnectionId::random();
    let member = h
        .chat
        .connect(
            &id,
            &ConnectRequest {
                name: Some("ignored".into()),
                user_id: Some("u-1".into()),
                token_name: Some("Ada".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(member.name.as_str(), "Ada");
    let ack = h
        .send(&id, json!({"action":"sendMessage","text":"x"}))
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack");
    let event: Value = serde_json::from_str(&h.notifier.take()[0].1).unwrap();
    assert_eq!(event["sender"], json!({"name":"Ada","userId":"u-1"}));
}

#[tokio::test]
async fn bad_frames_get_coded_errors() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let reply = |text: &'static str| {
        let chat = h.chat.clone();
        let ada = ada.clone();
        async move {
            let payload = chat.handle(&ada, Inbound::Text(text)).await.unwrap();
            serde_json::from_str::<Value>(&payload.payload.to_text()).unwrap()
        }
    };
    assert_eq!(reply("nope").await["code"], "bad_request");
    assert_eq!(
        reply(r#"{"requestId":"x","action":"dance"}"#).await["code"],
        "unknown_action"
    );
    assert_eq!(
        reply(r#"{"requestId":"x","action":"dance"}"#).await["requestId"],
        "x"
    );
    let binary = h.chat.handle(&ada, Inbound::Binary).await.unwrap();
    assert!(binary.payload.to_text().contains("bad_request"));
}

/// A message store that fails every call, as a broken disk or a throttled table would.
struct FailingMessages;

#[async_trait::async_trait]
impl chat_core::ports::MessageStore for FailingMessages {
    async fn append(
        &self,
        _: chat_core::domain::NewMessage,
    ) -> chat_core::ports::StoreResult<chat_core::ports::Appended> {
        Err(chat_core::ports::StoreError::new(
            "disk on fire at /var/secret/path",
        ))
    }
    async fn find_by_client_msg_id(
        &self,
        _: &chat_core::domain::RoomName,
        _: &str,
        _: &chat_core::domain::ClientMsgId,
    ) -> chat_core::ports::StoreResult<Option<chat_core::domain::StoredMessage>> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn latest_seq(
        &self,
        _: &chat_core::domain::RoomName,
    ) -> chat_core::ports::StoreResult<u64> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn page(
        &self,
        _: &chat_core::domain::RoomName,
        _: chat_core::domain::Cursor,
        _: usize,
    ) -> chat_core::ports::StoreResult<chat_core::domain::Page> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn get(
        &self,
        _: &chat_core::domain::RoomName,
        _: &chat_core::domain::MessageId,
    ) -> chat_core::ports::StoreResult<Option<chat_core::domain::StoredMessage>> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn mark_read(
        &self,
        _: &chat_core::domain::RoomName,
        _: &str,
        _: &chat_core::domain::MessageId,
    ) -> chat_core::ports::StoreResult<Option<chat_core::domain::MessageId>> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn read_state(
        &self,
        _: &chat_core::domain::RoomName,
        _: &str,
    ) -> chat_core::ports::StoreResult<chat_core::domain::ReadState> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn open_direct(
        &self,
        _: &chat_core::domain::RoomName,
        _: &chat_core::ports::DirectUsers,
    ) -> chat_core::ports::StoreResult<()> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn access(
        &self,
        _: &chat_core::domain::RoomName,
        _: &str,
    ) -> chat_core::ports::StoreResult<chat_core::domain::UserAccess> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn set_access(
        &self,
        _: &chat_core::domain::RoomName,
        _: &str,
        _: chat_core::domain::AccessChange,
    ) -> chat_core::ports::StoreResult<()> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn direct_users(
        &self,
        _: &chat_core::domain::RoomName,
    ) -> chat_core::ports::StoreResult<Option<chat_core::ports::DirectUsers>> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
    async fn change(
        &self,
        _: &chat_core::domain::RoomName,
        _: &chat_core::domain::MessageId,
        _: chat_core::domain::Change,
    ) -> chat_core::ports::StoreResult<chat_core::ports::Changed> {
        Err(chat_core::ports::StoreError::new("disk on fire"))
    }
}

#[tokio::test]
async fn a_failing_store_answers_internal_shows_nothing_to_others_and_keeps_serving() {
    let connections = Arc::new(MemoryConnections::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let chat = Chat::new(
        connections,
        Arc::new(FailingMessages),
        notifier.clone(),
        ChatConfig::default(),
    );
    let ada = ConnectionId::random();
    let bob = ConnectionId::random();
    for (id, name) in [(&ada, "ada"), (&bob, "bob")] {
        chat.connect(
            id,
            &ConnectRequest {
                name: Some(name.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    for frame in [
        json!({"action":"sendMessage","text":"lost?","requestId":"s"}),
        json!({"action":"sendMessage","text":"lost?","clientMsgId":"c","requestId":"s"}),
        json!({"action":"history","room":"lobby","requestId":"s"}),
        json!({"action":"joinRoom","room":"r","requestId":"s"}),
    ] {
        let text = frame.to_string();
        let reply = chat.handle(&ada, Inbound::Text(&text)).await.unwrap();
        assert_eq!(reply.error, Some(chat_core::protocol::ErrorCode::Internal));
        let reply = reply.payload.to_text();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["code"], "internal", "{frame}");
        assert_eq!(reply["requestId"], "s");
        assert!(
            !reply["message"].as_str().unwrap().contains("/var/secret"),
            "no internals shown"
        );
    }
    assert!(
        notifier.take().is_empty(),
        "nothing half-written reached the room"
    );
    let members = chat
        .handle(&ada, Inbound::Text(r#"{"action":"members","room":"r"}"#))
        .await
        .unwrap();
    assert!(
        members.payload.to_text().contains("not_member"),
        "a failed join is undone"
    );
    let pong = chat
        .handle(&ada, Inbound::Text(r#"{"action":"ping"}"#))
        .await
        .unwrap();
    assert!(pong.payload.to_text().contains("pong"), "it keeps serving");
}

#[tokio::test]
async fn every_message_carries_its_rooms_seq_and_joined_the_latest() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let joined = h
        .send(&ada, json!({"action":"joinRoom","room":"r"}))
        .await
        .unwrap();
    assert_eq!(joined["seq"], 0, "a room with no message yet");
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let ack = h
            .send(&ada, json!({"action":"sendMessage","room":"r","text":text}))
            .await
            .unwrap();
        assert_eq!(ack["seq"], i + 1);
        let events = h.events_for(&ada);
        assert_eq!(events[0]["type"], "message");
        assert_eq!(events[0]["seq"], i + 1);
    }
    // Each room counts its own.
    let ack = h
        .send(&ada, json!({"action":"sendMessage","text":"in lobby"}))
        .await
        .unwrap();
    assert_eq!(ack["seq"], 1);
    let joined = h
        .send(&ada, json!({"action":"joinRoom","room":"r"}))
        .await
        .unwrap();
    assert_eq!(joined["seq"], 3);
    let seqs: Vec<&Value> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[tokio::test]
async fn joining_with_since_seq_answers_the_events_after_it_and_history_pages_on_with_after_seq() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    for i in 1..=130 {
        h.send(
            &ada,
            json!({"action":"sendMessage","room":"r","text":format!("m{i}")}),
        )
        .await;
        h.clock.fetch_add(100, Ordering::SeqCst);
    }
    let bob = h.connect("bob").await;
    let joined = h
        .send(
            &bob,
            json!({"action":"joinRoom","room":"r","sinceSeq":20,"requestId":"j"}),
        )
        .await
        .unwrap();
    assert_eq!(joined["requestId"], "j");
    assert_eq!(joined["seq"], 130);
    assert!(joined.get("history").is_none(), "events, not history");
    let events = joined["events"].as_array().unwrap();
    assert_eq!(events.len(), 100, "at most 100");
    assert_eq!(joined["hasMore"], true);
    assert_eq!(events[0]["type"], "message");
    assert_eq!(events[0]["seq"], 21);
    assert_eq!(events[0]["text"], "m21");
    assert_eq!(events[99]["seq"], 120);
    let rest = h
        .send(
            &bob,
            json!({"action":"history","room":"r","afterSeq":120,"limit":100}),
        )
        .await
        .unwrap();
    assert!(rest.get("messages").is_none());
    let rest_events = rest["events"].as_array().unwrap();
    let seqs: Vec<u64> = rest_events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (121..=130).collect::<Vec<_>>());
    assert_eq!(rest["hasMore"], false);
    // Past the latest: nothing, and no more.
    let none = h
        .send(&bob, json!({"action":"joinRoom","room":"r","sinceSeq":130}))
        .await
        .unwrap();
    assert_eq!(
        (none["events"].as_array().unwrap().len(), &none["hasMore"]),
        (0, &json!(false))
    );
    // Both ways of recovering at once, or every cursor of history at once, is not a position.
    for frame in [
        json!({"action":"joinRoom","room":"r","sinceSeq":1,"since":events[0]["id"]}),
        json!({"action":"history","room":"r","afterSeq":1,"after":events[0]["id"]}),
        json!({"action":"history","room":"r","afterSeq":1,"before":events[0]["id"]}),
        json!({"action":"joinRoom","room":"r","sinceSeq":-1}),
        json!({"action":"joinRoom","room":"r","sinceSeq":1.5}),
        json!({"action":"history","room":"r","afterSeq":"3"}),
    ] {
        let reply = h.send(&bob, frame.clone()).await.unwrap();
        assert_eq!(reply["code"], "bad_request", "{frame}");
    }
}

/// API Gateway delivers no frame over 128 KB: a page of long messages is shortened to fit, from
/// its far end, and says there is more.
#[tokio::test]
async fn joined_and_history_replies_fit_in_128_kb_and_say_there_is_more() {
    const LIMIT: usize = 128 * 1024;
    let h = Harness::new();
    let ada = h.connect("ada").await;
    h.send(&ada, json!({"action":"joinRoom","room":"r"})).await;
    // 60 messages of 4000 four-byte characters: 16 KB each, about 1 MB together.
    for i in 0..60 {
        h.clock.fetch_add(1000, Ordering::SeqCst);
        let text = format!("{i:03}{}", "😀".repeat(3997));
        h.send(&ada, json!({"action":"sendMessage","room":"r","text":text}))
            .await
            .unwrap();
    }
    let size = |frame: &Value| frame.to_string().len();
    let seqs = |list: &Value| -> Vec<u64> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    // The latest: the newest that fit, oldest first, hasMore for the older ones.
    let joined = h
        .send(&ada, json!({"action":"joinRoom","room":"r"}))
        .await
        .unwrap();
    assert!(size(&joined) <= LIMIT, "{} bytes", size(&joined));
    let latest = seqs(&joined["history"]);
    assert!(latest.len() >= 7, "as many as fit: {latest:?}");
    assert_eq!(*latest.last().unwrap(), 60, "the newest kept");
    assert_eq!(joined["hasMore"], true);
    // Forward pages keep the oldest: the client reads on from its last.
    let recovered = h
        .send(&ada, json!({"action":"joinRoom","room":"r","sinceSeq":0}))
        .await
        .unwrap();
    assert!(size(&recovered) <= LIMIT);
    let first = seqs(&recovered["events"]);
    assert_eq!(first[0], 1);
    assert_eq!(recovered["hasMore"], true);
    let next = h
        .send(
            &ada,
            json!({"action":"history","room":"r","afterSeq":first.last().unwrap(),"limit":100}),
        )
        .await
        .unwrap();
    assert!(size(&next) <= LIMIT);
    assert_eq!(seqs(&next["events"])[0], first.last().unwrap() + 1);
    let back = h
        .send(&ada, json!({"action":"history","room":"r","limit":100}))
        .await
        .unwrap();
    assert!(size(&back) <= LIMIT);
    assert_eq!(*seqs(&back["messages"]).last().unwrap(), 60);
    assert_eq!(back["hasMore"], true);
}

/// Reactions and read marks have an allowance of their own: used up, messages still go, and
/// the other way round; edits and deletes count as messages.
#[tokio::test]
async fn reactions_have_their_own_allowance_and_edits_share_the_messages() {
    let h = Harness::new();
    let ada = h.connect("ada").await;
    let sent = h
        .send(&ada, json!({"action":"sendMessage","text":"react to me"}))
        .await
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    let burst = ChatConfig::default().reaction_rate_limit.burst as usize;
    let mut taken = 0;
    for n in 0..burst + 5 {
        let frame = json!({"action":"react","room":"lobby","id":id,"emoji":format!("e{}", n % 20)});
        let reply = h.send(&ada, frame).await.unwrap();
        match reply["type"].as_str() {
            Some("reacted") => taken += 1,
            _ => assert_eq!(reply["code"], "rate_limited", "{reply}"),
        }
    }
    assert_eq!(taken, burst, "the reactions' burst, no more");
    // Messages are untouched by it.
    let reply = h
        .send(&ada, json!({"action":"sendMessage","text":"still sending"}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "ack", "{reply}");
    let read = h
        .send(&ada, json!({"action":"markRead","room":"lobby","id":id}))
        .await
        .unwrap();
    assert_eq!(
        read["code"], "rate_limited",
        "markRead shares the reactions' allowance"
    );
    // Edits use the messages' allowance: the burst of 20, two of which are spent.
    let burst = ChatConfig::default().rate_limit.burst as usize;
    let mut edits = 0;
    for n in 0..burst {
        let frame = json!({"action":"editMessage","room":"lobby","id":id,"text":format!("v{n}")});
        if h.send(&ada, frame).await.unwrap()["type"] == "updated" {
            edits += 1;
        }
    }
    assert_eq!(edits, burst - 2);
}

/// A fan-out that queues `sendMessage`'s events (it keeps them, with whom they skip) and names
/// the room's connections for every other event.
struct QueuesMessages {
    connections: Arc<MemoryConnections>,
    queued: std::sync::Mutex<Vec<(String, Option<ConnectionId>, String)>>,
}

#[async_trait::async_trait]
impl chat_core::ports::FanOut for QueuesMessages {
    async fn recipients(
        &self,
        room: &chat_core::domain::RoomName,
        except: Option<&ConnectionId>,
        payload: &chat_core::protocol::Payload,
    ) -> chat_core::ports::StoreResult<chat_core::ports::Recipients> {
        let text = payload.to_text().to_string();
        if text.contains(r#""type":"message""#) {
            let entry = (room.as_str().to_owned(), except.cloned(), text);
            self.queued.lock().unwrap().push(entry);
            return Ok(chat_core::ports::Recipients::Queued);
        }
        Ok(chat_core::ports::Recipients::Now(
            self.connections.room_connections(room).await?,
        ))
    }
}

#[tokio::test]
async fn a_queued_event_is_posted_to_nobody_and_the_others_to_whom_the_fan_out_names() {
    let harness = Harness::new();
    let fan_out = Arc::new(QueuesMessages {
        connections: harness.connections.clone(),
        queued: Default::default(),
    });
    let chat = Chat::new(
        harness.connections.clone(),
        Arc::new(MemoryMessages::new()),
        harness.notifier.clone(),
        ChatConfig::default(),
    )
    .with_fan_out(fan_out.clone());
    let harness = Harness { chat, ..harness };
    let ada = harness.connect("ada").await;
    let bob = harness.connect("bob").await;
    for id in [&ada, &bob] {
        let joined = harness
            .send(
                id,
                json!({"action": "joinRoom", "room": "big", "requestId": "j"}),
            )
            .await
            .unwrap();
        assert_eq!(joined["type"], "joined");
    }
    // Bob's join was told to ada, through the recipients the fan-out named.
    let presence = harness.events_for(&ada);
    assert_eq!(presence.len(), 1, "{presence:?}");
    assert_eq!(presence[0]["type"], "presence");

    let ack = harness
        .send(
            &ada,
            json!({"action": "sendMessage", "room": "big", "text": "hi", "requestId": "s"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack");
    assert!(harness.events_for(&bob).is_empty(), "queued: posted later");
    let queued = fan_out.queued.lock().unwrap().clone();
    assert_eq!(queued.len(), 1);
    let (room, except, text) = &queued[0];
    assert_eq!(room, "big");
    assert_eq!(except, &None, "the sender gets its own message too");
    let message: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        (message["text"].as_str(), message["id"].clone()),
        (Some("hi"), ack["id"].clone())
    );
}
