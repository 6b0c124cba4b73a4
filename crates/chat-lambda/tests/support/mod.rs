//! Shared by the handler tests: fixtures (events as API Gateway sends them), and a notifier that
//! records what it delivers and for which endpoint.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use aws_lambda_events::encodings::Body;
use chat_core::memory::RecordingNotifier;
use chat_core::ports::Notifier;
use chat_lambda::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest, Notifiers};
use serde_json::Value;

pub const ADA: &str = "AdaAAAAAAAAAAAA=";
pub const BOB: &str = "BobBBBBBBBBBBBB=";
pub const CAT: &str = "CatCCCCCCCCCCCC=";
/// The management endpoint of the API the fixtures come from.
pub const ENDPOINT: &str = "https://abc123defg.execute-api.us-east-1.amazonaws.com/dev";

/// A fixture event from `tests/fixtures`, as API Gateway sends it.
pub fn fixture(name: &str) -> ApiGatewayWebsocketProxyRequest {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{path} is not an API Gateway event: {e}"))
}

/// The fixture, from another connection.
pub fn fixture_from(name: &str, connection_id: &str) -> ApiGatewayWebsocketProxyRequest {
    let mut event = fixture(name);
    event.request_context.connection_id = Some(connection_id.to_owned());
    event
}

/// A message event with this body, from this connection.
pub fn frame_from(connection_id: &str, body: &str) -> ApiGatewayWebsocketProxyRequest {
    let mut event = fixture_from("ping.json", connection_id);
    event.body = Some(body.to_owned());
    event
}

pub fn body_text(response: &ApiGatewayProxyResponse) -> Option<&str> {
    match &response.body {
        None | Some(Body::Empty) => None,
        Some(Body::Text(text)) => Some(text),
        Some(other) => panic!("not a text body: {other:?}"),
    }
}

/// The body as JSON.
pub fn body(response: &ApiGatewayProxyResponse) -> Value {
    let text = body_text(response).expect("a body");
    serde_json::from_str(text).expect("the body is JSON")
}

/// Records frames (through a [`RecordingNotifier`]) and the endpoints asked for.
#[derive(Default)]
pub struct Recorder {
    pub notifier: Arc<RecordingNotifier>,
    pub endpoints: Mutex<Vec<String>>,
}

impl Recorder {
    /// Frames delivered since the last call, as JSON, with their recipient.
    pub fn take(&self) -> Vec<(String, Value)> {
        self.notifier
            .take()
            .into_iter()
            .map(|(id, text)| (id.as_str().to_owned(), serde_json::from_str(&text).unwrap()))
            .collect()
    }

    /// Frames delivered to `to` since the last call (the others are dropped).
    pub fn take_for(&self, to: &str) -> Vec<Value> {
        self.take()
            .into_iter()
            .filter(|(id, _)| id == to)
            .map(|(_, frame)| frame)
            .collect()
    }
}

impl Notifiers for Recorder {
    fn for_endpoint(&self, endpoint: &str) -> Arc<dyn Notifier> {
        self.endpoints.lock().unwrap().push(endpoint.to_owned());
        self.notifier.clone()
    }
}
