//! What moto cannot do, with aws-smithy-mocks: API Gateway answering `GoneException` (the
//! connection is removed and the fan-out goes on), a post failing otherwise, and DynamoDB
//! failing or throttling (the sender gets `internal`, and nothing half-done reaches anyone).

mod support;

use std::sync::Arc;

use aws_sdk_apigatewaymanagement::operation::post_to_connection::{
    PostToConnectionError, PostToConnectionOutput,
};
use aws_sdk_apigatewaymanagement::types::error::GoneException;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput;
use aws_sdk_dynamodb::operation::get_item::{GetItemError, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;
use aws_smithy_mocks::{RuleMode, mock};
use chat_aws::testing::mocked;
use chat_aws::{DynamoConnections, DynamoMessages, ManagementNotifier, Tables};
use chat_core::ChatConfig;
use chat_core::domain::ConnectionId;
use chat_core::memory::{MemoryConnections, MemoryMessages};
use chat_core::ports::ConnectionStore;
use chat_lambda::{FixedNotifier, Handlers};
use serde_json::json;
use support::*;

type Management = aws_sdk_apigatewaymanagement::Client;
type DynamoDb = aws_sdk_dynamodb::Client;

#[tokio::test]
async fn a_gone_connection_is_removed_and_the_others_still_get_the_message() {
    let gone = mock!(Management::post_to_connection)
        .match_requests(|req| req.connection_id() == Some(CAT))
        .then_error(|| PostToConnectionError::GoneException(GoneException::builder().build()));
    let failing = mock!(Management::post_to_connection)
        .match_requests(|req| req.connection_id() == Some(BOB))
        .sequence()
        .http_status(500, None)
        .repeatedly()
        .build();
    let delivered = mock!(Management::post_to_connection)
        .then_output(|| PostToConnectionOutput::builder().build());
    let client = mocked::management(RuleMode::MatchAny, &[&gone, &failing, &delivered]);
    let connections = Arc::new(MemoryConnections::new());
    let handlers = Handlers::new(
        connections.clone(),
        Arc::new(MemoryMessages::new()),
        Arc::new(FixedNotifier(Arc::new(ManagementNotifier::new(client, 4)))),
        ChatConfig::default(),
    );
    for id in [ADA, BOB, CAT] {
        assert_eq!(
            handlers
                .connect(fixture_from("connect.json", id))
                .await
                .status_code,
            200
        );
    }

    let sent = handlers.message(fixture("sendMessage.json")).await;
    assert_eq!(sent.status_code, 200);
    assert_eq!(
        body(&sent)["type"],
        "ack",
        "a failed post never fails the send"
    );
    assert_eq!(gone.num_calls(), 1);
    assert_eq!(delivered.num_calls(), 1, "ada got her message");
    assert!(failing.num_calls() >= 1);
    let cat = ConnectionId::new(CAT);
    assert!(
        connections.get(&cat).await.unwrap().is_none(),
        "gone: removed"
    );
    assert!(
        connections
            .get(&ConnectionId::new(BOB))
            .await
            .unwrap()
            .is_some(),
        "a post that failed otherwise removes no one"
    );

    // The next message is not posted to the removed connection.
    let again = frame_from(ADA, r#"{"action":"sendMessage","text":"again"}"#);
    assert_eq!(body(&handlers.message(again).await)["type"], "ack");
    assert_eq!(gone.num_calls(), 1);
    assert_eq!(delivered.num_calls(), 2);
}

/// Memory connections (ada and bob in lobby) and DynamoDB messages on a mocked client.
fn with_failing_messages(rules: &[&aws_smithy_mocks::Rule]) -> (Handlers, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let messages = DynamoMessages::new(
        mocked::dynamodb(RuleMode::MatchAny, rules),
        Tables::default(),
    );
    let handlers = Handlers::new(
        Arc::new(MemoryConnections::new()),
        Arc::new(messages),
        recorder.clone(),
        ChatConfig::default(),
    );
    (handlers, recorder)
}

async fn connect_ada_and_bob(handlers: &Handlers) {
    assert_eq!(
        handlers.connect(fixture("connect.json")).await.status_code,
        200
    );
    assert_eq!(
        handlers
            .connect(fixture_from("connect.json", BOB))
            .await
            .status_code,
        200
    );
}

fn assert_internal(response: &chat_lambda::ApiGatewayProxyResponse, request_id: Option<&str>) {
    assert_eq!(response.status_code, 500);
    let frame = body(response);
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], "internal");
    assert_eq!(
        frame["message"],
        "the server failed to handle this request; try again"
    );
    assert_eq!(frame.get("requestId").and_then(|r| r.as_str()), request_id);
}

#[tokio::test]
async fn a_failing_message_store_answers_internal_and_shows_nothing_to_anyone() {
    // Every append starts with its one transaction (the head read ahead, then the allowance,
    // the head and the message at once): the first of them fail with a server error, the rest
    // with throttling.
    let transaction = mock!(DynamoDb::transact_write_items)
        .sequence()
        .http_status(500, Some(r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"boom"}"#.into()))
        .times(3)
        .http_status(400, Some(r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}"#.into()))
        .repeatedly()
        .build();
    let no_earlier = mock!(DynamoDb::get_item).then_output(|| GetItemOutput::builder().build());
    let query = mock!(DynamoDb::query)
        .sequence()
        .http_status(503, None)
        .repeatedly()
        .build();
    let (handlers, recorder) = with_failing_messages(&[&transaction, &no_earlier, &query]);
    connect_ada_and_bob(&handlers).await;

    let plain = frame_from(
        ADA,
        r#"{"action":"sendMessage","text":"lost?","requestId":"p"}"#,
    );
    assert_internal(&handlers.message(plain).await, Some("p"));
    assert_eq!(
        transaction.num_calls(),
        3,
        "the SDK retried before giving up"
    );
    let idempotent = handlers.message(fixture("sendMessage.json")).await;
    assert_internal(&idempotent, Some("r-send"));
    assert!(transaction.num_calls() > 4, "throttling is retried too");
    assert!(recorder.take().is_empty(), "nothing was shown to anyone");

    assert_internal(
        &handlers.message(fixture("history.json")).await,
        Some("r-history"),
    );
    // A join whose history cannot be read answers internal and tells no one.
    assert_internal(
        &handlers.message(fixture("joinRoom.json")).await,
        Some("r-join"),
    );
    assert!(recorder.take().is_empty());
    // What needs no store still works.
    assert_eq!(
        body(&handlers.message(fixture("ping.json")).await)["type"],
        "pong"
    );
}

#[tokio::test]
async fn a_throttled_connection_store_refuses_the_handshake_and_leaves_nothing_behind() {
    let put = mock!(DynamoDb::put_item).then_output(|| PutItemOutput::builder().build());
    let throttled = mock!(DynamoDb::get_item)
        .sequence()
        .error(|| {
            GetItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message("throttled")
                    .build(),
            )
        })
        .repeatedly()
        .build();
    let delete = mock!(DynamoDb::delete_item).then_output(|| DeleteItemOutput::builder().build());
    let recorder = Arc::new(Recorder::default());
    let connections = DynamoConnections::new(
        mocked::dynamodb(RuleMode::MatchAny, &[&put, &throttled, &delete]),
        Tables::default(),
    );
    let handlers = Handlers::new(
        Arc::new(connections),
        Arc::new(MemoryMessages::new()),
        recorder.clone(),
        ChatConfig::default(),
    );
    let refused = handlers.connect(fixture("connect.json")).await;
    assert_eq!(refused.status_code, 500);
    assert_eq!(
        body(&refused),
        json!({"message":"the server failed to accept the connection"})
    );
    assert_eq!(put.num_calls(), 1);
    assert_eq!(
        delete.num_calls(),
        1,
        "the half-made connection was removed"
    );
    // A frame whose connection cannot be read: internal.
    assert_internal(
        &handlers.message(fixture("sendMessage.json")).await,
        Some("r-send"),
    );
    assert!(recorder.take().is_empty());
}
