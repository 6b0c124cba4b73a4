//! The handlers with events in API Gateway's exact JSON shape (tests/fixtures), for every route:
//! once over the in-memory ports, once over the DynamoDB stores on moto.

mod support;

use std::sync::Arc;

use chat_aws::testing::{dynamodb_client, fresh_tables};
use chat_aws::{DynamoConnections, DynamoMessages};
use chat_core::ChatConfig;
use chat_core::memory::{MemoryConnections, MemoryMessages};
use chat_core::ports::{ConnectionStore, MessageStore};
use chat_lambda::Handlers;
use serde_json::json;
use support::*;

fn handlers(
    connections: Arc<dyn ConnectionStore>,
    messages: Arc<dyn MessageStore>,
) -> (Handlers, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let handlers = Handlers::new(
        connections,
        messages,
        recorder.clone(),
        ChatConfig::default(),
    );
    (handlers, recorder)
}

#[tokio::test]
async fn every_route_in_memory() {
    let (handlers, recorder) = handlers(
        Arc::new(MemoryConnections::new()),
        Arc::new(MemoryMessages::new()),
    );
    every_route(&handlers, &recorder).await;
}

#[tokio::test]
async fn every_route_on_dynamodb() {
    let client = dynamodb_client().await;
    let tables = fresh_tables(&client, "handlers").await;
    let (handlers, recorder) = handlers(
        Arc::new(DynamoConnections::new(client.clone(), tables.clone())),
        Arc::new(DynamoMessages::new(client, tables)),
    );
    every_route(&handlers, &recorder).await;
}

/// `$connect`, `$disconnect`, `$default` and each action, with what each sends to whom.
async fn every_route(handlers: &Handlers, recorder: &Recorder) {
    // $connect: the name from the query string; repeated, the first counts.
    let connected = handlers.connect(fixture("connect.json")).await;
    assert_eq!(connected.status_code, 200);
    let bob = handlers
        .connect(fixture_from("connect-repeated-name.json", BOB))
        .await;
    assert_eq!(bob.status_code, 200);
    let guest = handlers
        .connect(fixture_from("connect-guest.json", CAT))
        .await;
    assert_eq!(guest.status_code, 200);
    let refused = handlers
        .connect(fixture_from("connect-bad-name.json", "Bad0000000000B="))
        .await;
    assert_eq!(refused.status_code, 400);
    assert!(body(&refused)["message"].as_str().unwrap().contains("name"));

    // ping
    let pong = handlers.message(fixture("ping.json")).await;
    assert_eq!(pong.status_code, 200);
    assert_eq!(body(&pong), json!({"type":"pong","requestId":"r-ping"}));

    // members: the first of the repeated names, a guest name, and no refused connection.
    let members = body(&handlers.message(fixture("members.json")).await);
    assert_eq!(members["type"], "members");
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..2], ["ada", "first"]);
    assert!(
        names[2].starts_with("guest-") && names.len() == 3,
        "{names:?}"
    );

    // sendMessage: the ack is the body; the message went to the room, the sender included,
    // through the management endpoint of the event's API.
    let sent = handlers.message(fixture("sendMessage.json")).await;
    assert_eq!(sent.status_code, 200);
    let ack = body(&sent);
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["requestId"], "r-send");
    assert_eq!(ack["clientMsgId"], "c-1");
    let delivered = recorder.take();
    let mut recipients: Vec<&str> = delivered.iter().map(|(to, _)| to.as_str()).collect();
    recipients.sort();
    assert_eq!(recipients, [ADA, BOB, CAT]);
    assert_eq!(delivered[0].1["type"], "message");
    assert_eq!(delivered[0].1["id"], ack["id"]);
    assert_eq!(delivered[0].1["text"], "hello, world");
    assert!(
        recorder
            .endpoints
            .lock()
            .unwrap()
            .iter()
            .all(|e| e == ENDPOINT)
    );
    // A retry: the same ack, nothing sent again.
    let retry = body(&handlers.message(fixture("sendMessage.json")).await);
    assert_eq!((&retry["id"], &retry["ts"]), (&ack["id"], &ack["ts"]));
    assert!(recorder.take().is_empty());

    // editMessage and deleteMessage (version 2), of the message just sent: by its sender only.
    let naming = |name: &str, connection: &str| {
        let mut event = fixture_from(name, connection);
        event.body = event
            .body
            .map(|body| body.replace("MESSAGE_ID", ack["id"].as_str().unwrap()));
        event
    };
    let refused = handlers.message(naming("editMessage.json", BOB)).await;
    assert_eq!(
        (refused.status_code, body(&refused)["code"].clone()),
        (403, json!("forbidden"))
    );
    assert!(recorder.take().is_empty());
    let updated = body(&handlers.message(naming("editMessage.json", ADA)).await);
    assert_eq!(updated["type"], "updated", "{updated}");
    assert_eq!(updated["requestId"], "r-edit");
    assert_eq!(updated["seq"], ack["seq"].as_u64().unwrap() + 1);
    let delivered = recorder.take();
    assert_eq!(delivered.len(), 3);
    assert!(
        delivered
            .iter()
            .all(|(_, frame)| frame["type"] == "messageUpdated"
                && frame["text"] == "hello, world!"
                && frame["seq"] == updated["seq"])
    );
    // react and unreact: anyone's; twice counts once.
    for who in [BOB, BOB, CAT] {
        let reacted = body(&handlers.message(naming("react.json", who)).await);
        assert_eq!(reacted["type"], "reacted", "{reacted}");
        assert_eq!(reacted["requestId"], "r-react");
    }
    let summaries: Vec<serde_json::Value> = recorder
        .take()
        .into_iter()
        .filter(|(to, _)| to == ADA)
        .map(|(_, frame)| frame["reactions"].clone())
        .collect();
    assert_eq!(
        summaries,
        [json!({"👍":{"count":1}}), json!({"👍":{"count":2}})],
        "two changes, not three"
    );
    // markRead and rooms: Bob has read it; lobby has nothing unread for him then.
    let read = body(&handlers.message(naming("markRead.json", BOB)).await);
    assert_eq!(
        read,
        json!({"type":"read","requestId":"r-read","room":"lobby","id":ack["id"]})
    );
    let rooms = body(&handlers.message(fixture_from("rooms.json", BOB)).await);
    assert_eq!(rooms["type"], "rooms", "{rooms}");
    assert_eq!(rooms["rooms"][0]["room"], "lobby");
    assert_eq!(rooms["rooms"][0]["unread"], 0);
    assert_eq!(rooms["rooms"][0]["last"]["id"], ack["id"]);
    let for_cat = body(&handlers.message(fixture_from("rooms.json", CAT)).await);
    assert_eq!(for_cat["rooms"][0]["unread"], 1, "{for_cat}");
    // openDirect: for signed-in users; these connections are guests.
    let direct = handlers.message(fixture("openDirect.json")).await;
    assert_eq!(
        (direct.status_code, body(&direct)["code"].clone()),
        (403, json!("forbidden"))
    );
    recorder.take();
    let unreacted = body(&handlers.message(naming("unreact.json", CAT)).await);
    assert_eq!(unreacted["type"], "reacted");
    let reactions = recorder.take_for(ADA);
    assert_eq!(reactions[0]["reactions"], json!({"👍":{"count":1}}));
    let deleted = body(&handlers.message(naming("deleteMessage.json", ADA)).await);
    assert_eq!(deleted["type"], "deleted", "{deleted}");
    // After the edit and the three changes of reactions (the reaction that changed nothing
    // took no seq).
    assert_eq!(deleted["seq"], updated["seq"].as_u64().unwrap() + 4);
    assert!(
        recorder
            .take()
            .iter()
            .all(|(_, frame)| frame["type"] == "messageDeleted")
    );
    let again = handlers.message(naming("deleteMessage.json", ADA)).await;
    assert_eq!(body(&again)["code"], "bad_request");

    // history
    let history = body(&handlers.message(fixture("history.json")).await);
    assert_eq!(history["type"], "history");
    assert_eq!(history["requestId"], "r-history");
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["deleted"], true, "the tombstone");
    assert_eq!(history["hasMore"], false);

    // joinRoom: bob first, then ada, whom bob hears join.
    let bob_joined = body(&handlers.message(fixture_from("joinRoom.json", BOB)).await);
    assert_eq!(bob_joined["type"], "joined");
    let joined = handlers.message(fixture("joinRoom.json")).await;
    assert_eq!(joined.status_code, 200);
    let joined = body(&joined);
    assert_eq!(joined["requestId"], "r-join");
    assert_eq!(joined["members"], json!([{"name":"first"},{"name":"ada"}]));
    assert_eq!(
        recorder.take_for(BOB),
        [json!({"type":"presence","room":"rust","event":"join","member":{"name":"ada"}})]
    );

    // leaveRoom, and join again.
    let left = body(&handlers.message(fixture("leaveRoom.json")).await);
    assert_eq!(
        left,
        json!({"type":"left","requestId":"r-leave","room":"rust"})
    );
    assert_eq!(recorder.take_for(BOB)[0]["event"], "leave");
    handlers.message(fixture("joinRoom.json")).await;
    recorder.take();

    // typing: no reply; the others hear it.
    let typing = handlers.message(fixture("typing.json")).await;
    assert_eq!(typing.status_code, 200);
    assert_eq!(body_text(&typing), None);
    let delivered = recorder.take();
    assert!(
        delivered
            .iter()
            .all(|(to, frame)| to != ADA && frame["type"] == "typing")
    );
    assert_eq!(delivered.len(), 2);

    // $default: unknown actions, frames that are not JSON, binary frames.
    let unknown = handlers.message(fixture("default.json")).await;
    assert_eq!(unknown.status_code, 400);
    assert_eq!(body(&unknown)["code"], "unknown_action");
    assert_eq!(body(&unknown)["requestId"], "r-default");
    let not_json = handlers.message(fixture("default-not-json.json")).await;
    assert_eq!(
        (not_json.status_code, body(&not_json)["code"].clone()),
        (400, json!("bad_request"))
    );
    let binary = handlers.message(fixture("binary.json")).await;
    assert_eq!(
        (binary.status_code, body(&binary)["code"].clone()),
        (400, json!("bad_request"))
    );
    // Each error has its status.
    let not_member = handlers
        .message(frame_from(
            ADA,
            r#"{"action":"history","room":"elsewhere"}"#,
        ))
        .await;
    assert_eq!(
        (not_member.status_code, body(&not_member)["code"].clone()),
        (403, json!("not_member"))
    );
    let too_long = format!(
        r#"{{"action":"sendMessage","text":"{}"}}"#,
        "x".repeat(4001)
    );
    let too_long = handlers.message(frame_from(ADA, &too_long)).await;
    assert_eq!(too_long.status_code, 413);

    // $disconnect: ada leaves; bob hears it in rust (not in lobby).
    let disconnected = handlers.disconnect(fixture("disconnect.json")).await;
    assert_eq!(disconnected.status_code, 200);
    assert_eq!(
        recorder.take_for(BOB),
        [json!({"type":"presence","room":"rust","event":"leave","member":{"name":"ada"}})]
    );
    // A frame from a connection that is not stored: internal, with status 500.
    let orphan = handlers.message(fixture("sendMessage.json")).await;
    assert_eq!(
        (orphan.status_code, body(&orphan)["code"].clone()),
        (500, json!("internal"))
    );
    // A second $disconnect is harmless.
    assert_eq!(
        handlers
            .disconnect(fixture("disconnect.json"))
            .await
            .status_code,
        200
    );
}

#[tokio::test]
async fn events_that_api_gateway_would_never_send_get_a_status_not_a_crash() {
    let (handlers, _recorder) = handlers(
        Arc::new(MemoryConnections::new()),
        Arc::new(MemoryMessages::new()),
    );
    let mut no_id = fixture("ping.json");
    no_id.request_context.connection_id = None;
    let answered = handlers.message(no_id.clone()).await;
    assert_eq!(
        (answered.status_code, body(&answered)["code"].clone()),
        (400, json!("bad_request"))
    );
    assert_eq!(handlers.connect(no_id.clone()).await.status_code, 400);
    let mut no_domain = fixture("connect.json");
    no_domain.request_context.domain_name = None;
    assert_eq!(handlers.connect(no_domain).await.status_code, 500);
    let mut no_body = fixture("ping.json");
    no_body.body = None;
    assert_eq!(
        body(&handlers.message(no_body).await)["code"],
        "bad_request"
    );
}

#[tokio::test]
async fn every_fixture_is_an_event_in_api_gateways_shape() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        // `authorizer/` holds the authorizer's events, another shape.
        if entry.file_type().unwrap().is_dir() {
            continue;
        }
        let name = entry.file_name().into_string().unwrap();
        let event = fixture(&name);
        let context = &event.request_context;
        assert!(
            context.connected_at > 0 && context.request_time_epoch > 0,
            "{name}"
        );
        assert!(
            context.connection_id.is_some() && context.domain_name.is_some(),
            "{name}"
        );
        assert_eq!(context.stage.as_deref(), Some("dev"), "{name}");
        let route = context.route_key.clone().unwrap();
        let expected_type = match route.as_str() {
            "$connect" => "CONNECT",
            "$disconnect" => "DISCONNECT",
            _ => "MESSAGE",
        };
        assert_eq!(context.event_type.as_deref(), Some(expected_type), "{name}");
        routes.push(route);
    }
    routes.sort();
    routes.dedup();
    let mut expected: Vec<String> = ["$connect", "$disconnect", "$default"]
        .into_iter()
        .chain(
            chat_core::protocol::ActionName::ALL
                .iter()
                .map(|a| a.as_str()),
        )
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(routes, expected, "a fixture for every route");
}

/// An invocation writes what it counted as EMF lines: the message stored, its deliveries, the
/// store's latency; an error by its code.
#[tokio::test]
async fn an_invocation_counts_in_embedded_metric_format() {
    use chat_lambda::emf::EmfRecorder;
    use chat_lambda::runtime::{Route, invoke};
    let (handlers, _recorder) = handlers(
        Arc::new(MemoryConnections::new()),
        Arc::new(MemoryMessages::new()),
    );
    let metrics = EmfRecorder::default();
    // This test's thread only (the runtime of `tokio::test` is single-threaded).
    let _local = metrics::set_default_local_recorder(&metrics);
    for (fixture, id) in [("connect.json", ADA), ("connect-repeated-name.json", BOB)] {
        let (connected, _) = invoke(
            &handlers,
            Route::Connect,
            fixture_from(fixture, id),
            &metrics,
            "chat-test",
        )
        .await;
        assert_eq!(connected.status_code, 200);
    }
    let (sent, lines) = invoke(
        &handlers,
        Route::Message,
        fixture("sendMessage.json"),
        &metrics,
        "chat-test",
    )
    .await;
    assert_eq!(sent.status_code, 200);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let document: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(document["Function"], "message");
    assert_eq!(
        document["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "chat-test"
    );
    assert_eq!(document["chat_messages_stored_total"], 1);
    assert_eq!(
        document["chat_deliveries_total"], 2,
        "ada and bob are in lobby"
    );
    assert_eq!(
        document["chat_message_store_seconds"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let (_, lines) = invoke(
        &handlers,
        Route::Message,
        fixture("default.json"),
        &metrics,
        "chat-test",
    )
    .await;
    let document: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (
            document["code"].clone(),
            document["chat_errors_total"].clone()
        ),
        (json!("unknown_action"), json!(1))
    );
}
