//! Version 2's messages that change: `editMessage` and `deleteMessage`, live, in history and in
//! recovery by `sinceSeq`, and who may make them; on both back ends.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, urlencode};

/// Two members of `room`: Ada (who sends) and Bob (who watches), with Ada's first frames read.
async fn ada_and_bob(server: &TestServer, room: &str) -> (Client, Client) {
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join(room).await;
    bob.join(room).await;
    ada.recv_type("presence").await;
    (ada, bob)
}

fn events(joined: &Value) -> &Vec<Value> {
    joined["events"].as_array().expect("events")
}

#[tokio::test]
async fn an_edit_reaches_the_room_and_history_shows_the_latest_text() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "edits").await;
    let sent = ada.say("edits", "helo").await;
    let message = bob.recv_type("message").await;
    let id = sent["id"].as_str().unwrap();

    let updated = ada
        .request(json!({"action":"editMessage","room":"edits","id":id,"text":"hello"}))
        .await;
    assert_eq!(updated["type"], "updated", "{updated}");
    assert_eq!(updated["room"], "edits");
    assert_eq!(updated["id"], id);
    let seq = updated["seq"].as_u64().expect("seq");
    assert_eq!(
        seq,
        message["seq"].as_u64().unwrap() + 1,
        "the room's next event"
    );

    // (The sender's own copy came before its reply: `request` read past it.)
    {
        let live = bob.recv_type("messageUpdated").await;
        let fields: Vec<&str> = live
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            live,
            json!({"type":"messageUpdated","room":"edits","id":id,"text":"hello",
                   "editedAt":live["editedAt"],"seq":seq}),
            "{fields:?}"
        );
        assert!(live["editedAt"].as_u64().unwrap() >= message["ts"].as_u64().unwrap());
    }
    let history = bob
        .request(json!({"action":"history","room":"edits"}))
        .await;
    let shown = &history["messages"][0];
    assert_eq!(shown["id"], id);
    assert_eq!(shown["text"], "hello");
    assert_eq!(shown["seq"], message["seq"], "it keeps its place");
    assert!(shown["editedAt"].is_u64(), "{shown}");
    assert!(
        message.get("editedAt").is_none(),
        "a message never edited has none"
    );
}

#[tokio::test]
async fn a_delete_reaches_the_room_and_leaves_a_tombstone_in_history() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "deletes").await;
    let sent = ada.say("deletes", "oops, wrong room").await;
    let kept = ada.say("deletes", "this one stays").await;
    bob.recv_type("message").await;
    bob.recv_type("message").await;
    let id = sent["id"].as_str().unwrap();

    let deleted = ada
        .request(json!({"action":"deleteMessage","room":"deletes","id":id}))
        .await;
    assert_eq!(
        deleted,
        json!({"type":"deleted","requestId":deleted["requestId"],"room":"deletes","id":id,"seq":3})
    );
    assert_eq!(
        bob.recv_type("messageDeleted").await,
        json!({"type":"messageDeleted","room":"deletes","id":id,"seq":3})
    );
    let history = bob
        .request(json!({"action":"history","room":"deletes"}))
        .await;
    assert_eq!(
        history["messages"][0],
        json!({"room":"deletes","id":id,"ts":sent["ts"],"seq":1,"deleted":true}),
        "no text, no sender"
    );
    assert_eq!(history["messages"][1]["id"], kept["id"]);
    if !crate::support::lambda_backend() {
        // The text is gone from the files on disk, not only from the frames (the DynamoDB
        // store's items: chat-aws's `a_deleted_text_is_in_no_item_of_the_table`).
        let db = server.settings.database_path();
        let mut bytes = std::fs::read(&db).expect("chat.db");
        bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
        let text = b"oops, wrong room";
        assert!(
            !bytes.windows(text.len()).any(|w| w == text),
            "the text is on disk"
        );
        let stays = b"this one stays";
        assert!(bytes.windows(stays.len()).any(|w| w == stays));
    }
    // Deleted is deleted: no edit, no second delete.
    for frame in [
        json!({"action":"editMessage","room":"deletes","id":id,"text":"back"}),
        json!({"action":"deleteMessage","room":"deletes","id":id}),
    ] {
        let refused = ada.request(frame).await;
        assert_eq!(refused["code"], "bad_request", "{refused}");
    }
    bob.expect_silence().await;
}

#[tokio::test]
async fn only_the_sender_may_edit_or_delete_and_nobody_else_sees_a_refusal() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "mine").await;
    let sent = ada.say("mine", "ada's words").await;
    bob.recv_type("message").await;
    let id = sent["id"].as_str().unwrap();
    // Another guest, even with Ada's name, is another connection.
    let mut other_ada = server.client("ada").await;
    other_ada.join("mine").await;
    ada.recv_type("presence").await;
    bob.recv_type("presence").await;
    for intruder in [&mut bob, &mut other_ada] {
        for frame in [
            json!({"action":"editMessage","room":"mine","id":id,"text":"bob's words"}),
            json!({"action":"deleteMessage","room":"mine","id":id}),
        ] {
            let refused = intruder.request(frame).await;
            assert_eq!(refused["code"], "forbidden", "{refused}");
        }
    }
    ada.expect_silence().await;
    // An id of no message, and a room the sender is not in.
    let unknown = "01900000-0000-7000-8000-000000000000";
    let refused = ada
        .request(json!({"action":"editMessage","room":"mine","id":unknown,"text":"x"}))
        .await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let refused = ada
        .request(json!({"action":"deleteMessage","room":"elsewhere","id":id}))
        .await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    let history = bob.request(json!({"action":"history","room":"mine"})).await;
    assert_eq!(history["messages"][0]["text"], "ada's words");
}

#[tokio::test]
async fn an_authenticated_user_changes_their_message_from_any_of_their_connections() {
    let secret = "e2e-changes-secret-0123456789abcdef";
    let server = TestServer::start_with(|settings| {
        settings.auth.jwt_secret = Some(secret.to_owned());
    })
    .await;
    let token = |sub: &str, name: &str| {
        chat_auth::testing::hs256(
            secret.as_bytes(),
            &chat_auth::testing::claims(name, json!({"sub": sub})),
        )
    };
    let connect = |sub: &str, name: &str| {
        let url = format!("{}?token={}", server.url(), urlencode(&token(sub, name)));
        async move { Client::connect(&url).await }
    };
    let mut phone = connect("user-ada", "Ada").await;
    let mut laptop = connect("user-ada", "Ada").await;
    let mut mallory = connect("user-mallory", "Ada").await;
    for client in [&mut phone, &mut laptop, &mut mallory] {
        client.join("signed").await;
    }
    let sent = phone.say("signed", "from my phone").await;
    let id = sent["id"].as_str().unwrap();
    let refused = mallory
        .request(json!({"action":"editMessage","room":"signed","id":id,"text":"mine now"}))
        .await;
    assert_eq!(
        refused["code"], "forbidden",
        "same name, another user: {refused}"
    );
    let updated = laptop
        .request(json!({"action":"editMessage","room":"signed","id":id,"text":"from my laptop"}))
        .await;
    assert_eq!(updated["type"], "updated", "{updated}");
    let live = mallory.recv_type("messageUpdated").await;
    assert_eq!(live["text"], "from my laptop");
}

#[tokio::test]
async fn a_reader_that_rejoins_with_since_seq_gets_every_missed_message_edit_and_delete_once() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "catch-up").await;
    let first = ada.say("catch-up", "before").await;
    let seen = bob.recv_type("message").await["seq"].as_u64().unwrap();
    let first_id = first["id"].as_str().unwrap();
    bob.request(json!({"action":"leaveRoom","room":"catch-up"}))
        .await;
    ada.recv_type("presence").await;

    // While Bob is away: a message, edits of an old one and of the new one, a delete.
    let second = ada.say("catch-up", "while away").await;
    let second_id = second["id"].as_str().unwrap();
    let edit = |id: &str, text: &str| json!({"action":"editMessage","room":"catch-up","id":id,"text":text});
    assert_eq!(
        ada.request(edit(first_id, "before, edited")).await["type"],
        "updated"
    );
    assert_eq!(
        ada.request(edit(second_id, "while away, edited")).await["type"],
        "updated"
    );
    let third = ada.say("catch-up", "short-lived").await;
    let third_id = third["id"].as_str().unwrap();
    assert_eq!(
        ada.request(edit(third_id, "short-lived, edited")).await["type"],
        "updated"
    );
    let gone = ada
        .request(json!({"action":"deleteMessage","room":"catch-up","id":third_id}))
        .await;
    assert_eq!(gone["type"], "deleted");

    let joined = bob
        .request(json!({"action":"joinRoom","room":"catch-up","sinceSeq":seen}))
        .await;
    let got: Vec<(String, String, u64)> = events(&joined)
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["id"].as_str().unwrap().to_owned(),
                event["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = seen;
    assert_eq!(
        got,
        [
            ("message".into(), second_id.to_owned(), s + 1),
            ("messageUpdated".into(), first_id.to_owned(), s + 2),
            ("messageUpdated".into(), second_id.to_owned(), s + 3),
            // The third message shows as its tombstone; its edit is no event any more.
            ("message".into(), third_id.to_owned(), s + 4),
            ("messageDeleted".into(), third_id.to_owned(), s + 6),
        ],
        "{joined}"
    );
    let events = events(&joined);
    assert_eq!(
        events[0]["text"], "while away, edited",
        "a message shows its latest text"
    );
    assert_eq!(events[1]["text"], "before, edited");
    assert!(events[1]["editedAt"].is_u64());
    assert_eq!(events[3]["deleted"], true);
    assert!(events[3].get("text").is_none() && events[3].get("sender").is_none());
    assert_eq!(joined["seq"].as_u64(), Some(s + 6));
    assert_eq!(joined["hasMore"], false);
    // Paging on with afterSeq, one event at a time, gives the same events.
    let mut after = seen;
    let mut paged = Vec::new();
    loop {
        let page = bob
            .request(json!({"action":"history","room":"catch-up","afterSeq":after,"limit":1}))
            .await;
        let page_events = page["events"].as_array().unwrap().clone();
        if let Some(last) = page_events.last() {
            after = last["seq"].as_u64().unwrap();
        }
        paged.extend(page_events);
        if page["hasMore"] == false {
            break;
        }
    }
    assert_eq!(&paged, events);
}

#[tokio::test]
async fn reactions_count_once_per_user_reach_the_room_and_show_in_history_and_recovery() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "reacts").await;
    let sent = ada.say("reacts", "lunch?").await;
    bob.recv_type("message").await;
    let id = sent["id"].as_str().unwrap();
    let react = |emoji: &str| json!({"action":"react","room":"reacts","id":id,"emoji":emoji});

    let reacted = bob.request(react("👍")).await;
    assert_eq!(
        reacted,
        json!({"type":"reacted","requestId":reacted["requestId"],"room":"reacts","id":id})
    );
    let live = ada.recv_type("reactions").await;
    assert_eq!(
        live,
        json!({"type":"reactions","room":"reacts","id":id,"reactions":{"👍":{"count":1}},
               "seq":sent["seq"].as_u64().unwrap() + 1})
    );
    // Twice by the same user counts once, and tells nobody.
    assert_eq!(bob.request(react("👍")).await["type"], "reacted");
    ada.expect_silence().await;
    // Another user, and another kind; the sender may react to its own message.
    assert_eq!(ada.request(react("👍")).await["type"], "reacted");
    assert_eq!(
        bob.recv_type("reactions").await["reactions"],
        json!({"👍":{"count":2}})
    );
    assert_eq!(ada.request(react("🍕")).await["type"], "reacted");
    let both = bob.recv_type("reactions").await;
    assert_eq!(
        both["reactions"],
        json!({"👍":{"count":2},"🍕":{"count":1}})
    );
    // unreact takes one's own away; the last of a kind takes the kind away.
    let unreact = json!({"action":"unreact","room":"reacts","id":id,"emoji":"🍕"});
    assert_eq!(ada.request(unreact.clone()).await["type"], "reacted");
    let after = bob.recv_type("reactions").await;
    assert_eq!(after["reactions"], json!({"👍":{"count":2}}));
    assert_eq!(
        ada.request(unreact).await["type"],
        "reacted",
        "nothing to take away: fine"
    );

    // History carries them; a message without any has none.
    let other = ada.say("reacts", "no reactions here").await;
    let history = bob
        .request(json!({"action":"history","room":"reacts"}))
        .await;
    assert_eq!(
        history["messages"][0]["reactions"],
        json!({"👍":{"count":2}})
    );
    assert_eq!(history["messages"][1]["id"], other["id"]);
    assert!(history["messages"][1].get("reactions").is_none());
    // Recovery from before the first reaction: the message's latest summary, once.
    let joined = bob
        .request(json!({"action":"history","room":"reacts","afterSeq":sent["seq"]}))
        .await;
    let reaction_events: Vec<&Value> = joined["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "reactions")
        .collect();
    assert_eq!(reaction_events.len(), 1, "{joined}");
    assert_eq!(reaction_events[0]["reactions"], json!({"👍":{"count":2}}));
    assert_eq!(reaction_events[0]["seq"], after["seq"]);
}

#[tokio::test]
async fn bad_reactions_are_refused_and_a_message_holds_twenty_kinds() {
    let server = TestServer::start().await;
    let (mut ada, mut bob) = ada_and_bob(&server, "kinds").await;
    let sent = ada.say("kinds", "react to me").await;
    bob.recv_type("message").await;
    let id = sent["id"].as_str().unwrap();
    let react = |emoji: &str| json!({"action":"react","room":"kinds","id":id,"emoji":emoji});
    for emoji in ["", "seventeen chars!!", "a\u{7}"] {
        let refused = bob.request(react(emoji)).await;
        assert_eq!(refused["code"], "bad_request", "{emoji:?}: {refused}");
    }
    assert_eq!(
        bob.request(react(&"é".repeat(16))).await["type"],
        "reacted",
        "16 characters"
    );
    for kind in 1..20 {
        assert_eq!(
            bob.request(react(&format!("k{kind}"))).await["type"],
            "reacted"
        );
    }
    let refused = bob.request(react("one-more")).await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    assert_eq!(
        ada.request(react("k1")).await["type"],
        "reacted",
        "a kind it has is fine"
    );
    let unknown = "01900000-0000-7000-8000-000000000000";
    let refused = bob
        .request(json!({"action":"react","room":"kinds","id":unknown,"emoji":"x"}))
        .await;
    assert_eq!(refused["code"], "bad_request");
    // A deleted message takes no reaction, and its tombstone shows none.
    ada.request(json!({"action":"deleteMessage","room":"kinds","id":id}))
        .await;
    let refused = bob.request(react("k1")).await;
    assert_eq!(refused["code"], "bad_request");
    let history = bob
        .request(json!({"action":"history","room":"kinds"}))
        .await;
    assert!(
        history["messages"][0].get("reactions").is_none(),
        "{history}"
    );
}
