//! Version 2's private and direct rooms: `private.` rooms only for users whose token's `rooms`
//! claim covers them, `dm.` rooms for their two users (`openDirect`); on both back ends.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, urlencode};

const SECRET: &str = "e2e-private-secret-0123456789abcdef";

async fn signed_server() -> TestServer {
    TestServer::start_with(|settings| settings.auth.jwt_secret = Some(SECRET.to_owned())).await
}

async fn connect_as(server: &TestServer, sub: &str, rooms: Value) -> Client {
    let token = chat_auth::testing::hs256(
        SECRET.as_bytes(),
        &chat_auth::testing::claims(sub, json!({"sub": sub, "rooms": rooms})),
    );
    Client::connect(&format!("{}?token={}", server.url(), urlencode(&token))).await
}

async fn join(client: &mut Client, room: &str) -> Value {
    client
        .request(json!({"action":"joinRoom","room":room}))
        .await
}

#[tokio::test]
async fn a_private_room_is_for_the_users_its_grants_cover_and_nobody_else_sees_it() {
    let server = signed_server().await;
    let mut ada = connect_as(
        &server,
        "ada",
        json!(["private.team-42.*", "private.board"]),
    )
    .await;
    let mut eve = connect_as(&server, "eve", json!(["private.team-7.*"])).await;
    let mut nobody = connect_as(&server, "nobody", json!([])).await;

    for room in [
        "private.team-42.general",
        "private.team-42.",
        "private.board",
    ] {
        let joined = join(&mut ada, room).await;
        assert_eq!(joined["type"], "joined", "{room}: {joined}");
    }
    ada.say("private.team-42.general", "for the team only")
        .await;
    for room in ["private.board-2", "private.team-4", "private.team-42"] {
        let refused = join(&mut ada, room).await;
        assert_eq!(refused["code"], "forbidden", "{room}: {refused}");
    }
    for client in [&mut eve, &mut nobody] {
        let refused = join(client, "private.team-42.general").await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
    }
    // Refused everywhere: since, history, members, send, typing, and nothing reaches them.
    let refused = eve
        .request(json!({"action":"joinRoom","room":"private.team-42.general","sinceSeq":0}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    for frame in [
        json!({"action":"history","room":"private.team-42.general"}),
        json!({"action":"members","room":"private.team-42.general"}),
        json!({"action":"sendMessage","room":"private.team-42.general","text":"let me in"}),
        json!({"action":"typing","room":"private.team-42.general"}),
    ] {
        let refused = eve.request(frame.clone()).await;
        assert_eq!(refused["code"], "not_member", "{frame}: {refused}");
    }
    ada.say("private.team-42.general", "still private").await;
    eve.expect_silence().await;
    nobody.expect_silence().await;
    // A public room is everyone's.
    assert_eq!(join(&mut nobody, "general").await["type"], "joined");
}

#[tokio::test]
async fn without_authentication_private_and_direct_rooms_are_forbidden() {
    let server = TestServer::start().await;
    let mut guest = server.client("guest").await;
    for room in ["private.anything", "dm.anything"] {
        let refused = join(&mut guest, room).await;
        assert_eq!(refused["code"], "forbidden", "{room}: {refused}");
        assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        join(&mut guest, "privateer").await["type"],
        "joined",
        "no dot: public"
    );
}

#[tokio::test]
async fn a_direct_room_is_not_entered_by_a_grant_or_before_it_is_opened() {
    let server = signed_server().await;
    let mut ada = connect_as(&server, "ada", json!(["dm.*", "*"])).await;
    let refused = join(&mut ada, "dm.ada.bob").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // A grant of "*" covers every private room.
    assert_eq!(join(&mut ada, "private.x").await["type"], "joined");
}

#[tokio::test]
async fn two_users_open_the_same_direct_room_from_either_side_and_a_third_cannot_enter() {
    let server = signed_server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    let mut bob_phone = connect_as(&server, "bob", json!([])).await;
    let mut bob_laptop = connect_as(&server, "bob", json!([])).await;
    let mut cat = connect_as(&server, "cat", json!(["*"])).await;

    let opened = ada
        .request(json!({"action":"openDirect","userId":"bob"}))
        .await;
    assert_eq!(opened["type"], "joined", "{opened}");
    let room = opened["room"].as_str().unwrap().to_owned();
    assert!(room.starts_with("dm."), "{room}");
    // Bob's connections are told, with who opened it.
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let told = bob.recv_type("direct").await;
        assert_eq!(told["room"], room.as_str());
        assert_eq!(told["from"]["userId"], "ada");
    }
    // From Bob's side: the same room; he may also join it by its name.
    let from_bob = bob_phone
        .request(json!({"action":"openDirect","userId":"ada"}))
        .await;
    assert_eq!(from_bob["room"], room.as_str());
    assert_eq!(join(&mut bob_laptop, &room).await["type"], "joined");
    assert_eq!(ada.recv_type("direct").await["from"]["userId"], "bob");
    ada.say(&room, "just us").await;
    assert_eq!(bob_phone.recv_type("message").await["text"], "just us");
    // Nobody else, whatever their grants: not by its name, and another pair is another room.
    let refused = join(&mut cat, &room).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let theirs = cat
        .request(json!({"action":"openDirect","userId":"ada"}))
        .await;
    assert_eq!(theirs["type"], "joined");
    assert_ne!(theirs["room"], room.as_str());
    // Bad opens.
    let myself = ada
        .request(json!({"action":"openDirect","userId":"ada"}))
        .await;
    assert_eq!(myself["code"], "bad_request", "{myself}");
    for frame in [
        json!({"action":"openDirect"}),
        json!({"action":"openDirect","userId":""}),
        json!({"action":"openDirect","userId":7}),
    ] {
        let refused = ada.request(frame.clone()).await;
        assert_eq!(refused["code"], "bad_request", "{frame}: {refused}");
    }
}

#[tokio::test]
async fn a_guest_opens_no_direct_room() {
    let server = TestServer::start().await;
    let mut guest = server.client("guest").await;
    let refused = guest
        .request(json!({"action":"openDirect","userId":"someone"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}
