//! Every action of PROTOCOL.md, and the events it sends.

use serde_json::{Value, json};

use crate::support::{Client, TestServer};

#[tokio::test]
async fn the_seed_flow_connect_send_and_everyone_sees_it() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.send(json!({"action":"sendMessage","text":"hello, world"}))
        .await;
    // The echo comes first, then the ack.
    let echo = ada.recv().await;
    let ack = ada.recv().await;
    assert_eq!(echo["type"], "message");
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["room"], "lobby");
    assert_eq!(echo["id"], ack["id"]);
    assert_eq!(echo["ts"], ack["ts"]);
    let seen = bob.recv_type("message").await;
    assert_eq!(seen, echo);
    assert_eq!(seen["sender"], json!({"name":"ada"}));
    assert_eq!(seen["text"], "hello, world");
    assert!(seen.get("clientMsgId").is_none());
    let id = uuid::Uuid::parse_str(ack["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(ack["id"].as_str().unwrap(), id.hyphenated().to_string());
    assert!(ack["ts"].is_u64());
}

#[tokio::test]
async fn text_is_delivered_exactly_as_sent() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let text = "  <img src=x onerror=alert(1)> \"quoted\" \\ \u{1F600} \n tabs\t ";
    let ack = ada
        .request(json!({"action":"sendMessage","text":text,"clientMsgId":"c-1"}))
        .await;
    assert_eq!(ack["clientMsgId"], "c-1");
    let history = ada
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(history["messages"][0]["text"], text);
    assert_eq!(history["messages"][0]["clientMsgId"], "c-1");
}

#[tokio::test]
async fn rooms_are_isolated_a_non_member_never_sees_their_events() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    let mut eve = server.client("eve").await;
    ada.join("secret").await;
    bob.join("secret").await;
    ada.recv_type("presence").await;
    ada.say("secret", "for members only").await;
    ada.send(json!({"action":"typing","room":"secret"})).await;
    ada.request(json!({"action":"leaveRoom","room":"secret"}))
        .await;
    let message = bob.recv_type("message").await;
    assert_eq!(message["room"], "secret");
    assert_eq!(bob.recv_type("typing").await["room"], "secret");
    assert_eq!(bob.recv_type("presence").await["event"], "leave");
    eve.expect_silence().await;
    let refused = eve
        .request(json!({"action":"history","room":"secret"}))
        .await;
    assert_eq!(refused["code"], "not_member");
}

#[tokio::test]
async fn join_sends_presence_to_the_others_and_answers_members_and_history() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join("r").await;
    ada.say("r", "first").await;
    let joined = bob.join("r").await;
    assert_eq!(joined["room"], "r");
    assert_eq!(joined["members"], json!([{"name":"ada"},{"name":"bob"}]));
    assert_eq!(joined["history"].as_array().unwrap().len(), 1);
    assert_eq!(joined["history"][0]["text"], "first");
    assert!(joined["history"][0].get("type").is_none());
    assert_eq!(joined["hasMore"], false);
    let presence = ada.recv_type("presence").await;
    assert_eq!(
        presence,
        json!({"type":"presence","room":"r","event":"join","member":{"name":"bob"}})
    );
    // Joining again answers `joined` and tells no one.
    let again = bob.join("r").await;
    assert_eq!(again["members"], joined["members"]);
    ada.expect_silence().await;
}

#[tokio::test]
async fn leave_answers_left_and_tells_the_remaining_members() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.recv_type("presence").await;
    let left = bob.request(json!({"action":"leaveRoom","room":"r"})).await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "r");
    let presence = ada.recv_type("presence").await;
    assert_eq!(presence["event"], "leave");
    assert_eq!(presence["member"], json!({"name":"bob"}));
    let members = ada.request(json!({"action":"members","room":"r"})).await;
    assert_eq!(members["members"], json!([{"name":"ada"}]));
}

#[tokio::test]
async fn lobby_can_be_left_and_joined_again_without_presence() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    bob.request(json!({"action":"leaveRoom","room":"lobby"}))
        .await;
    ada.say("lobby", "bob is not here").await;
    let refused = bob
        .request(json!({"action":"sendMessage","text":"x"}))
        .await;
    assert_eq!(refused["code"], "not_member");
    bob.join("lobby").await;
    ada.expect_silence().await;
    ada.say("lobby", "bob is back").await;
    let message = bob.recv_type("message").await;
    assert_eq!(message["text"], "bob is back");
}

#[tokio::test]
async fn a_disconnect_sends_leave_to_each_room_but_lobby() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    for room in ["r1", "r2"] {
        ada.join(room).await;
        bob.join(room).await;
        ada.recv_type("presence").await;
    }
    bob.ws.close(None).await.unwrap();
    let mut rooms = vec![];
    for _ in 0..2 {
        let presence = ada.recv_type("presence").await;
        assert_eq!(presence["event"], "leave");
        assert_eq!(presence["member"], json!({"name":"bob"}));
        rooms.push(presence["room"].as_str().unwrap().to_owned());
    }
    rooms.sort();
    assert_eq!(rooms, ["r1", "r2"]);
    ada.expect_silence().await;
}

#[tokio::test]
async fn a_dropped_socket_also_counts_as_a_disconnect() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.recv_type("presence").await;
    drop(bob); // no close frame: the TCP connection just goes away
    let presence = ada.recv_type("presence").await;
    assert_eq!(presence["event"], "leave");
}

#[tokio::test]
async fn members_lists_the_room() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let _bob = server.client("bob").await;
    let members = ada
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert_eq!(members["type"], "members");
    assert_eq!(members["room"], "lobby");
    assert_eq!(members["members"], json!([{"name":"ada"},{"name":"bob"}]));
}

#[tokio::test]
async fn typing_reaches_the_other_members_only_and_has_no_reply() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.send(json!({"action":"typing","room":"lobby","requestId":"t"}))
        .await;
    let typing = bob.recv().await;
    assert_eq!(
        typing,
        json!({"type":"typing","room":"lobby","member":{"name":"ada"}})
    );
    ada.expect_silence().await;
}

#[tokio::test]
async fn ping_answers_pong_with_the_request_id() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    ada.send(json!({"action":"ping","requestId":"p1"})).await;
    assert_eq!(ada.recv().await, json!({"type":"pong","requestId":"p1"}));
    ada.send(json!({"action":"ping"})).await;
    assert_eq!(ada.recv().await, json!({"type":"pong"}));
}

#[tokio::test]
async fn history_pages_with_before_after_and_has_more() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            ada.say("lobby", &format!("m{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let texts = |page: &Value, key: &str| -> Vec<String> {
        page[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let latest = ada
        .request(json!({"action":"history","room":"lobby","limit":10}))
        .await;
    assert_eq!(latest["type"], "history");
    assert_eq!(latest["room"], "lobby");
    assert_eq!(
        texts(&latest, "messages"),
        (20..30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(latest["hasMore"], true);
    let before = ada
        .request(json!({"action":"history","room":"lobby","limit":15,"before":ids[20]}))
        .await;
    assert_eq!(
        texts(&before, "messages"),
        (5..20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(before["hasMore"], true);
    let first = ada
        .request(json!({"action":"history","room":"lobby","limit":15,"before":ids[5]}))
        .await;
    assert_eq!(texts(&first, "messages").len(), 5);
    assert_eq!(first["hasMore"], false);
    let after = ada
        .request(json!({"action":"history","room":"lobby","limit":5,"after":ids[24]}))
        .await;
    assert_eq!(
        texts(&after, "messages"),
        ["m25", "m26", "m27", "m28", "m29"]
    );
    assert_eq!(after["hasMore"], false);
    let default = ada
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(texts(&default, "messages").len(), 30);
    // An id that names no stored message is still a position in the order.
    let unknown = "00000000-0000-7000-8000-000000000000";
    let none_before = ada
        .request(json!({"action":"history","room":"lobby","before":unknown}))
        .await;
    assert_eq!(texts(&none_before, "messages").len(), 0);
    assert_eq!(none_before["hasMore"], false);
    let all_after = ada
        .request(json!({"action":"history","room":"lobby","after":unknown,"limit":100}))
        .await;
    assert_eq!(texts(&all_after, "messages").len(), 30);
}

#[tokio::test]
async fn join_with_since_recovers_what_was_missed() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let seen = ada.say("r", "seen").await;
    for i in 0..130 {
        ada.say("r", &format!("missed {i}")).await;
    }
    let mut bob = server.client("bob").await;
    let joined = bob
        .request(json!({"action":"joinRoom","room":"r","since":seen["id"]}))
        .await;
    let history = joined["history"].as_array().unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(history[0]["text"], "missed 0");
    assert_eq!(history[99]["text"], "missed 99");
    assert_eq!(joined["hasMore"], true);
    let rest = bob
        .request(json!({"action":"history","room":"r","after":history[99]["id"],"limit":100}))
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 30);
    assert_eq!(rest["hasMore"], false);
    let plain = bob.join("r").await;
    assert_eq!(plain["history"].as_array().unwrap().len(), 50);
    assert_eq!(plain["history"][49]["text"], "missed 129");
}

#[tokio::test]
async fn a_retry_after_a_reconnect_gets_the_same_ack_and_is_not_sent_again() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    let frame = json!({"action":"sendMessage","text":"once","clientMsgId":"m-1"});
    let first = ada.request(frame.clone()).await;
    bob.recv_type("message").await;
    ada.ws.close(None).await.unwrap();
    let mut ada = server.client("ada").await;
    let retry = ada.request(frame.clone()).await;
    assert_eq!(retry["type"], "ack");
    assert_eq!((&retry["id"], &retry["ts"]), (&first["id"], &first["ts"]));
    assert_eq!(retry["clientMsgId"], "m-1");
    bob.expect_silence().await;
    let history = bob
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    // The same clientMsgId from someone else is a new message.
    let other = bob.request(frame).await;
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn the_rate_limit_refuses_past_the_burst_and_stores_nothing() {
    // The default burst (20), refilled at 1 a second rather than 10: a sender is refused only
    // when it sends faster than the refill, and through the Lambda mode (DynamoDB on moto, on a
    // busy machine) one message can take longer than a tenth of a second.
    let per_second = 1;
    let server = TestServer::start_with(|s| s.rate_per_second = per_second).await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    let started = std::time::Instant::now();
    let mut acked = Vec::new();
    let (refused, refused_text) = loop {
        let text = format!("m{}", acked.len());
        assert!(acked.len() < 200, "never refused");
        let reply = ada
            .request(json!({"action":"sendMessage","text":text}))
            .await;
        match reply["type"].as_str() {
            Some("ack") => acked.push(json!(text)),
            _ => break (reply, text),
        }
    };
    // The burst, and a token for each second the burst took: no more, no less.
    let refilled = started.elapsed().as_secs() as usize * per_second as usize;
    assert!(
        (20..=20 + refilled).contains(&acked.len()),
        "{} acks in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "rate_limited");
    let history = bob
        .request(json!({"action":"history","room":"lobby","limit":100}))
        .await;
    let texts: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, acked, "every acknowledged message is stored");
    assert!(
        !texts.contains(&json!(refused_text)),
        "the refused one is not"
    );
    // The allowance refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    ada.say("lobby", "later").await;
}

#[tokio::test]
async fn a_connection_is_in_at_most_50_rooms() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    for i in 0..49 {
        ada.join(&format!("room-{i}")).await;
    }
    let refused = ada
        .request(json!({"action":"joinRoom","room":"room-49"}))
        .await;
    assert_eq!(refused["code"], "limit_exceeded");
    ada.request(json!({"action":"leaveRoom","room":"room-0"}))
        .await;
    ada.join("room-49").await;
}

/// PROTOCOL.md's order on one connection, as it holds on API Gateway (where pipelined frames
/// run as concurrent invocations: see pipelined.rs): a message sent after the ack of another
/// reaches every member after it.
#[tokio::test]
async fn messages_sent_each_after_the_last_ack_arrive_in_that_order() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    for i in 0..50 {
        ada.say("lobby", &format!("{i}")).await;
    }
    let mut previous = (String::new(), 0);
    for i in 0..50 {
        let message = bob.recv_type("message").await;
        assert_eq!(message["text"], format!("{i}"));
        let id = message["id"].as_str().unwrap().to_owned();
        let seq = message["seq"].as_u64().unwrap();
        assert!(
            id > previous.0 && seq > previous.1,
            "ids and seqs grow in the order stored"
        );
        previous = (id, seq);
    }
}

#[tokio::test]
async fn guests_get_a_generated_name() {
    let server = TestServer::start().await;
    let mut guest = Client::connect(&server.url()).await;
    let ack = guest
        .request(json!({"action":"sendMessage","text":"hi"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let history = guest
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    let name = history["messages"][0]["sender"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        name.starts_with("guest-") && name.len() == "guest-0000".len(),
        "{name}"
    );
}

#[tokio::test]
async fn the_first_of_repeated_name_parameters_counts() {
    let server = TestServer::start().await;
    let mut ada = Client::connect(&format!("{}?name=first&name=second", server.url())).await;
    let members = ada
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert_eq!(members["members"], json!([{"name":"first"}]));
}

#[tokio::test]
async fn connection_ids_are_never_shown_to_clients() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join("r").await;
    let joined = bob.join("r").await;
    let presence = ada.recv_type("presence").await;
    ada.say("r", "x").await;
    let message = bob.recv_type("message").await;
    let members = bob.request(json!({"action":"members","room":"r"})).await;
    for id in server.connection_ids() {
        for frame in [&joined, &presence, &message, &members] {
            assert!(
                !frame.to_string().contains(id.as_str()),
                "{frame} shows {id}"
            );
        }
    }
}
