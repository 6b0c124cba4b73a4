//! Version 2's read state: `markRead`, `lastRead` and `unread` in `joined`, `rooms`, the user's
//! other connections told, and lobby's `occupancy`; on both back ends.

use serde_json::json;

use crate::support::{Client, TestServer, urlencode};

const SECRET: &str = "e2e-reads-secret-0123456789abcdef";

async fn signed_server() -> TestServer {
    TestServer::start_with(|settings| settings.auth.jwt_secret = Some(SECRET.to_owned())).await
}

async fn connect_as(server: &TestServer, sub: &str, name: &str) -> Client {
    let token = chat_auth::testing::hs256(
        SECRET.as_bytes(),
        &chat_auth::testing::claims(name, json!({"sub": sub})),
    );
    Client::connect(&format!("{}?token={}", server.url(), urlencode(&token))).await
}

#[tokio::test]
async fn a_users_read_state_follows_it_to_every_connection() {
    let server = signed_server().await;
    let mut ada = connect_as(&server, "u-ada", "Ada").await;
    let mut phone = connect_as(&server, "u-bob", "Bob").await;
    let mut laptop = connect_as(&server, "u-bob", "Bob").await;
    for client in [&mut ada, &mut phone, &mut laptop] {
        let joined = client.join("news").await;
        assert_eq!(joined["unread"], 0, "an empty room: {joined}");
        assert!(joined.get("lastRead").is_none());
    }
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(ada.say("news", &format!("item {n}")).await);
    }
    let id = |n: usize| sent[n]["id"].as_str().unwrap().to_owned();

    let read = phone
        .request(json!({"action":"markRead","room":"news","id":id(1)}))
        .await;
    assert_eq!(
        read,
        json!({"type":"read","requestId":read["requestId"],"room":"news","id":id(1)})
    );
    // Bob's other connection hears of it; Ada does not.
    assert_eq!(
        laptop.recv_type("read").await,
        json!({"type":"read","room":"news","id":id(1)})
    );
    ada.expect_silence().await;

    // A new connection of Bob's joins with his state; one of Ada's with hers.
    let mut tablet = connect_as(&server, "u-bob", "Bob").await;
    let joined = tablet.join("news").await;
    assert_eq!(
        (&joined["lastRead"], &joined["unread"]),
        (&json!(id(1)), &json!(1))
    );
    let mut ada_again = connect_as(&server, "u-ada", "Ada").await;
    let joined = ada_again.join("news").await;
    assert!(joined.get("lastRead").is_none());
    assert_eq!(
        joined["unread"], 3,
        "her own messages too, until she marks them"
    );

    // Never back: an earlier message leaves the mark where it is.
    let read = laptop
        .request(json!({"action":"markRead","room":"news","id":id(0)}))
        .await;
    assert_eq!(read["id"], json!(id(1)));

    // rooms: each room of the connection, its unread count and its latest message.
    let rooms = tablet.request(json!({"action":"rooms"})).await;
    assert_eq!(rooms["type"], "rooms", "{rooms}");
    let listed = rooms["rooms"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{rooms}");
    assert_eq!(listed[0]["room"], "lobby");
    assert_eq!(listed[1]["room"], "news");
    assert_eq!(listed[1]["unread"], 1);
    assert_eq!(listed[1]["last"]["id"], json!(id(2)));
    assert_eq!(listed[1]["last"]["text"], "item 2");
    assert!(
        listed[0].get("last").is_none(),
        "lobby has no message: {rooms}"
    );

    // Read to the end: nothing unread anywhere of Bob's.
    phone
        .request(json!({"action":"markRead","room":"news","id":id(2)}))
        .await;
    assert_eq!(laptop.recv_type("read").await["id"], json!(id(2)));
    assert_eq!(tablet.recv_type("read").await["id"], json!(id(2)));
    let rooms = laptop.request(json!({"action":"rooms"})).await;
    assert_eq!(rooms["rooms"][1]["unread"], 0);
}

#[tokio::test]
async fn a_guests_read_state_is_its_connections_and_bad_marks_are_refused() {
    let server = TestServer::start().await;
    let mut ada = server.client("ada").await;
    let mut guest = server.client("guest").await;
    ada.join("board").await;
    guest.join("board").await;
    let first = ada.say("board", "one").await;
    ada.say("board", "two").await;
    let read = guest
        .request(json!({"action":"markRead","room":"board","id":first["id"]}))
        .await;
    assert_eq!(read["type"], "read", "{read}");
    // Another connection of the same name is another reader.
    let mut again = server.client("guest").await;
    let joined = again.join("board").await;
    assert!(joined.get("lastRead").is_none(), "{joined}");
    assert_eq!(joined["unread"], 2);
    assert_eq!(guest.recv_type("presence").await["event"], "join");
    guest.expect_silence().await;
    // Bad marks.
    let unknown = "01900000-0000-7000-8000-000000000000";
    let refused = guest
        .request(json!({"action":"markRead","room":"board","id":unknown}))
        .await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let refused = guest
        .request(json!({"action":"markRead","room":"elsewhere","id":first["id"]}))
        .await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    let rooms = guest.request(json!({"action":"rooms"})).await;
    assert_eq!(rooms["rooms"][1]["unread"], 1, "{rooms}");
}

#[tokio::test]
async fn lobby_shows_its_occupancy_and_other_rooms_do_not() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for n in 0..3 {
        clients.push(server.client(&format!("c{n}")).await);
    }
    let joined = clients[0].join("lobby").await;
    assert_eq!(joined["occupancy"], 3, "{joined}");
    let members = clients[1]
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert_eq!(members["occupancy"], 3, "{members}");
    clients.pop().unwrap().close().await;
    // The gateway's $disconnect runs after the close; wait for it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = clients[1]
            .request(json!({"action":"members","room":"lobby"}))
            .await;
        if members["occupancy"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{members}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let side = clients[0].join("side").await;
    assert!(side.get("occupancy").is_none(), "{side}");
    let members = clients[0]
        .request(json!({"action":"members","room":"side"}))
        .await;
    assert!(members.get("occupancy").is_none());
}
