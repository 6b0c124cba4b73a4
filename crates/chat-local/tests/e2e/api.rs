//! Version 2's server API (`/api/...` behind a bearer key), on both back ends: system messages,
//! grants and revokes, bans, closing a user's connections, members, deletes, and its errors.

use serde_json::{Value, json};

use crate::support::{Client, HttpResponse, TestServer, http_with, lambda_backend, urlencode};

const SECRET: &str = "e2e-api-secret-0123456789abcdef0123";
const KEY: &str = "e2e-server-api-key";

async fn server() -> TestServer {
    TestServer::start_with(|settings| {
        settings.auth.jwt_secret = Some(SECRET.to_owned());
        settings.api_key = Some(KEY.to_owned());
    })
    .await
}

async fn connect_as(server: &TestServer, sub: &str, rooms: Value) -> Client {
    let token = chat_auth::testing::hs256(
        SECRET.as_bytes(),
        &chat_auth::testing::claims(sub, json!({"sub": sub, "name": sub, "rooms": rooms})),
    );
    Client::connect(&format!("{}?token={}", server.url(), urlencode(&token))).await
}

/// A call with the right key.
async fn call(server: &TestServer, method: &str, path: &str, body: Value) -> HttpResponse {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    http_with(
        server.addr,
        method,
        path,
        &[&format!("Authorization: Bearer {KEY}")],
        &body,
    )
    .await
}

fn json_of(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", response.status, response.body))
}

async fn join(client: &mut Client, room: &str) -> Value {
    client
        .request(json!({"action":"joinRoom","room":room}))
        .await
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_401_and_without_a_key_configured_the_api_is_404() {
    let server = server().await;
    let path = "/api/rooms/general/members";
    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-key".to_owned()],
        vec![format!("Authorization: Bearer {KEY}x")],
        vec![format!("Authorization: Basic {KEY}")],
        vec![KEY.to_owned().replace("e2e", "X-Api-Key: e2e")],
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let refused = http_with(server.addr, "GET", path, &headers, b"").await;
        assert_eq!(refused.status, 401, "{headers:?}: {}", refused.body);
        assert_eq!(json_of(&refused)["code"], "unauthorized");
        assert!(refused.headers.contains("www-authenticate: bearer"));
    }
    // Not even a message gets in without the key.
    let refused = http_with(
        server.addr,
        "POST",
        "/api/rooms/general/messages",
        &[],
        br#"{"text":"spoofed"}"#,
    )
    .await;
    assert_eq!(refused.status, 401);
    let history = call(&server, "GET", path, Value::Null).await;
    assert_eq!(history.status, 200, "{}", history.body);

    let off = TestServer::start().await;
    let response = http_with(
        off.addr,
        "GET",
        path,
        &[&format!("Authorization: Bearer {KEY}")],
        b"",
    )
    .await;
    assert_eq!(response.status, 404, "{}", response.body);
    assert_eq!(json_of(&response)["code"], "not_found");
}

#[tokio::test]
async fn a_system_message_from_the_api_reaches_the_room_and_its_history_once() {
    let server = server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    join(&mut ada, "general").await;
    let body = json!({"text":"maintenance at five","clientMsgId":"notice-1"});
    let posted = call(&server, "POST", "/api/rooms/general/messages", body.clone()).await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    assert!(posted.headers.contains("content-type: application/json"));
    let message = json_of(&posted);
    assert_eq!(message["sender"], json!({"name":"system"}));
    assert_eq!(message["text"], "maintenance at five");
    assert_eq!(message["room"], "general");
    assert_eq!(message["clientMsgId"], "notice-1");
    assert!(message["seq"].as_u64().is_some_and(|seq| seq >= 1));
    let live = ada.recv_type("message").await;
    assert_eq!(live["id"], message["id"]);
    assert_eq!(live["sender"], json!({"name":"system"}));
    // A retry is answered with the same message, and nobody receives it twice.
    let again = call(&server, "POST", "/api/rooms/general/messages", body).await;
    assert_eq!(again.status, 201);
    assert_eq!(json_of(&again)["id"], message["id"]);
    ada.expect_silence().await;
    // A sender the product names, with its user id.
    let bot = call(
        &server,
        "POST",
        "/api/rooms/general/messages",
        json!({"text":"hello from the bot","sender":{"name":"Helper","userId":"bot-1"}}),
    )
    .await;
    assert_eq!(bot.status, 201, "{}", bot.body);
    assert_eq!(
        ada.recv_type("message").await["sender"],
        json!({"name":"Helper","userId":"bot-1"})
    );
    let history = ada
        .request(json!({"action":"history","room":"general"}))
        .await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["maintenance at five", "hello from the bot"]);
}

#[tokio::test]
async fn a_grant_from_the_api_lets_a_user_in_and_its_revoke_removes_it_at_once() {
    let server = server().await;
    let room = "private.support-7";
    let mut ada = connect_as(&server, "ada", json!(["private.support-*"])).await;
    let mut bob_phone = connect_as(&server, "bob", json!([])).await;
    let mut bob_laptop = connect_as(&server, "bob", json!([])).await;
    assert_eq!(join(&mut ada, room).await["type"], "joined");
    assert_eq!(join(&mut bob_phone, room).await["code"], "forbidden");

    let granted = call(
        &server,
        "PUT",
        &format!("/api/rooms/{room}/grants/bob"),
        Value::Null,
    )
    .await;
    assert_eq!(granted.status, 204, "{}", granted.body);
    assert!(granted.body.is_empty());
    for bob in [&mut bob_phone, &mut bob_laptop] {
        assert_eq!(join(bob, room).await["type"], "joined");
        ada.recv_type("presence").await;
    }
    ada.say(room, "hi bob").await;
    for bob in [&mut bob_phone, &mut bob_laptop] {
        assert_eq!(bob.recv_type("message").await["text"], "hi bob");
    }

    let revoked = call(
        &server,
        "DELETE",
        &format!("/api/rooms/{room}/grants/bob"),
        Value::Null,
    )
    .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let removed = bob.recv_type("removed").await;
        assert_eq!(
            removed,
            json!({"type":"removed","room":room,"reason":"revoked"})
        );
    }
    for _ in 0..2 {
        let leave = ada.recv_type("presence").await;
        assert_eq!(leave["event"], "leave");
        assert_eq!(leave["member"]["userId"], "bob");
    }
    // Out at once: nothing of the room reaches bob, and he may not come back.
    ada.say(room, "after the revoke").await;
    bob_phone.expect_silence().await;
    bob_laptop.expect_silence().await;
    let refused = bob_phone
        .request(json!({"action":"sendMessage","room":room,"text":"still here?"}))
        .await;
    assert_eq!(refused["code"], "not_member");
    assert_eq!(join(&mut bob_phone, room).await["code"], "forbidden");
    // A grant from the token is the token's: a revoke through the API leaves ada in.
    let kept = call(
        &server,
        "DELETE",
        &format!("/api/rooms/{room}/grants/ada"),
        Value::Null,
    )
    .await;
    assert_eq!(kept.status, 204);
    ada.say(room, "still in").await;
    // Grants are for private rooms only.
    let public = call(&server, "PUT", "/api/rooms/general/grants/bob", Value::Null).await;
    assert_eq!(public.status, 400, "{}", public.body);
    assert_eq!(json_of(&public)["code"], "bad_request");
}

#[tokio::test]
async fn a_ban_removes_the_user_on_every_connection_until_it_is_lifted() {
    let server = server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    let mut bob = connect_as(&server, "bob", json!(["private.team"])).await;
    let mut bob_tab = connect_as(&server, "bob", json!(["private.team"])).await;
    for room in ["general", "elsewhere"] {
        join(&mut ada, room).await;
        for client in [&mut bob, &mut bob_tab] {
            assert_eq!(join(client, room).await["type"], "joined");
        }
    }
    assert_eq!(join(&mut bob, "private.team").await["type"], "joined");
    let banned = call(&server, "PUT", "/api/rooms/general/bans/bob", Value::Null).await;
    assert_eq!(banned.status, 204, "{}", banned.body);
    for client in [&mut bob, &mut bob_tab] {
        let removed = client.recv_type("removed").await;
        assert_eq!(
            removed,
            json!({"type":"removed","room":"general","reason":"banned"})
        );
    }
    let mut leaves = 0;
    while leaves < 2 {
        let frame = ada.recv_type("presence").await;
        if frame["room"] == "general" && frame["event"] == "leave" {
            leaves += 1;
        }
    }
    let refused = join(&mut bob, "general").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    ada.say("general", "without bob").await;
    bob.expect_silence().await;
    // Only that room: bob is still in the others.
    assert_eq!(bob.say("elsewhere", "still here").await["type"], "ack");
    // A ban is stronger than a token's grant.
    let banned = call(
        &server,
        "PUT",
        "/api/rooms/private.team/bans/bob",
        Value::Null,
    )
    .await;
    assert_eq!(banned.status, 204);
    assert_eq!(bob.recv_type("removed").await["room"], "private.team");
    assert_eq!(join(&mut bob, "private.team").await["code"], "forbidden");
    // Lifted: he may join again.
    let lifted = call(
        &server,
        "DELETE",
        "/api/rooms/general/bans/bob",
        Value::Null,
    )
    .await;
    assert_eq!(lifted.status, 204);
    assert_eq!(join(&mut bob, "general").await["type"], "joined");
    let lobby = call(&server, "PUT", "/api/rooms/lobby/bans/bob", Value::Null).await;
    assert_eq!(lobby.status, 400, "{}", lobby.body);
}

#[tokio::test]
async fn grants_and_bans_are_kept_across_a_restart_and_new_connections() {
    let mut server = server().await;
    let granted = call(
        &server,
        "PUT",
        "/api/rooms/private.kept/grants/bob",
        Value::Null,
    )
    .await;
    assert_eq!(granted.status, 204);
    let banned = call(&server, "PUT", "/api/rooms/kept-out/bans/bob", Value::Null).await;
    assert_eq!(banned.status, 204);
    let settings = server.settings.clone();
    server.stop().await;
    let server = TestServer::start_on(settings).await;
    let mut bob = connect_as(&server, "bob", json!([])).await;
    assert_eq!(join(&mut bob, "private.kept").await["type"], "joined");
    assert_eq!(join(&mut bob, "kept-out").await["code"], "forbidden");
}

#[tokio::test]
async fn closing_a_users_connections_closes_each_of_them_and_no_one_else() {
    let server = server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    let mut bob = connect_as(&server, "bob", json!([])).await;
    let mut bob_tab = connect_as(&server, "bob", json!([])).await;
    join(&mut ada, "general").await;
    join(&mut bob, "general").await;
    ada.recv_type("presence").await;
    let closed = call(&server, "DELETE", "/api/users/bob/connections", Value::Null).await;
    assert_eq!(closed.status, 204, "{}", closed.body);
    // 1008 locally; API Gateway's DeleteConnection can only close with 1000.
    let code = if lambda_backend() { 1000 } else { 1008 };
    for client in [&mut bob, &mut bob_tab] {
        let frame = client.expect_close().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), code);
    }
    let leave = ada.recv_type("presence").await;
    assert_eq!(leave["event"], "leave");
    assert_eq!(leave["member"]["userId"], "bob");
    assert_eq!(ada.say("general", "ada stays").await["type"], "ack");
    // A user without connections: nothing to close.
    let none = call(
        &server,
        "DELETE",
        "/api/users/nobody/connections",
        Value::Null,
    )
    .await;
    assert_eq!(none.status, 204);
}

#[tokio::test]
async fn the_api_lists_members_and_deletes_any_message() {
    let server = server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    let mut bob = connect_as(&server, "bob", json!([])).await;
    join(&mut ada, "general").await;
    join(&mut bob, "general").await;
    let members = call(&server, "GET", "/api/rooms/general/members", Value::Null).await;
    assert_eq!(members.status, 200, "{}", members.body);
    let mut ids: Vec<String> = json_of(&members)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ada", "bob"]);

    let ack = bob.say("general", "something to take down").await;
    let id = ack["id"].as_str().unwrap().to_owned();
    ada.recv_type("message").await;
    let path = format!("/api/rooms/general/messages/{id}");
    let deleted = call(&server, "DELETE", &path, Value::Null).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    for client in [&mut ada, &mut bob] {
        let event = client.recv_type("messageDeleted").await;
        assert_eq!(event["id"], id.as_str());
    }
    let history = ada
        .request(json!({"action":"history","room":"general"}))
        .await;
    let tombstone = &history["messages"][0];
    assert_eq!(tombstone["deleted"], true);
    assert!(tombstone.get("text").is_none());
    // Again: gone already, still 204; an id of no message: 404.
    assert_eq!(
        call(&server, "DELETE", &path, Value::Null).await.status,
        204
    );
    let unknown = "/api/rooms/general/messages/0190f0f0-0000-7000-8000-000000000000";
    let missing = call(&server, "DELETE", unknown, Value::Null).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(json_of(&missing)["code"], "not_found");
    let garbled = call(
        &server,
        "DELETE",
        "/api/rooms/general/messages/nope",
        Value::Null,
    )
    .await;
    assert_eq!(garbled.status, 404);
}

#[tokio::test]
async fn bad_calls_get_coded_json_errors_and_change_nothing() {
    let server = server().await;
    let mut ada = connect_as(&server, "ada", json!([])).await;
    join(&mut ada, "general").await;
    let post = |body: &'static [u8]| {
        let addr = server.addr;
        async move {
            http_with(
                addr,
                "POST",
                "/api/rooms/general/messages",
                &[&format!("Authorization: Bearer {KEY}")],
                body,
            )
            .await
        }
    };
    for (body, status, code) in [
        (&b"not json"[..], 400, "bad_request"),
        (b"[1,2]", 400, "bad_request"),
        (b"{}", 400, "bad_request"),
        (br#"{"text":"   "}"#, 400, "bad_request"),
        (br#"{"text":7}"#, 400, "bad_request"),
        (br#"{"text":"x","sender":"me"}"#, 400, "bad_request"),
        (br#"{"text":"x","sender":{}}"#, 400, "bad_request"),
    ] {
        let refused = post(body).await;
        assert_eq!(
            refused.status,
            status,
            "{}: {}",
            String::from_utf8_lossy(body),
            refused.body
        );
        let error = json_of(&refused);
        assert_eq!(error["code"], code);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long = json!({"text": "x".repeat(4001)}).to_string();
    let too_long = call(
        &server,
        "POST",
        "/api/rooms/general/messages",
        serde_json::from_str(&long).unwrap(),
    )
    .await;
    assert_eq!(too_long.status, 413, "{}", too_long.body);
    assert_eq!(json_of(&too_long)["code"], "payload_too_large");
    let huge = json!({"text": "x", "pad": "y".repeat(70 * 1024)});
    let huge = call(&server, "POST", "/api/rooms/general/messages", huge).await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    for (method, path, status) in [
        ("GET", "/api/rooms/general/messages", 405),
        ("GET", "/api/nothing/here", 404),
        ("POST", "/api/rooms/bad%20room/messages", 400),
        ("PUT", "/api/rooms/private.a/grants/", 400),
    ] {
        let refused = call(&server, method, path, Value::Null).await;
        assert_eq!(refused.status, status, "{method} {path}: {}", refused.body);
        assert!(json_of(&refused)["code"].is_string());
    }
    ada.expect_silence().await;
}
