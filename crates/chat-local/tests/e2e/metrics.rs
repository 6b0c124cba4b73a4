//! `GET /metrics`: the Prometheus text the local binary renders, scraped around real traffic.
//!
//! The counters are the process's (every server of this test binary adds to them, and the tests
//! run at once), so the test asserts what it caused as a lower bound on each counter's growth.

use std::collections::HashMap;

use serde_json::json;

use crate::support::{Client, TestServer, http};

/// Every sample of a scrape: `name{labels}` to its value.
pub async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let response = http(server.addr, "GET", "/metrics", b"").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.headers.contains("content-type: text/plain"),
        "{}",
        response.headers
    );
    response
        .body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample is `name value`");
            (
                name.to_owned(),
                value.parse().expect("a sample's value is a number"),
            )
        })
        .collect()
}

pub fn grew(before: &HashMap<String, f64>, after: &HashMap<String, f64>, sample: &str) -> f64 {
    let value = |samples: &HashMap<String, f64>| samples.get(sample).copied().unwrap_or(0.0);
    assert!(
        after.contains_key(sample),
        "{sample} is not in the scrape: {:?}",
        after.keys().collect::<Vec<_>>()
    );
    value(after) - value(before)
}

#[tokio::test]
async fn metrics_count_connections_frames_messages_deliveries_errors_and_refusals() {
    let server = TestServer::start().await;
    let mut ann = server.client("ann").await;
    let mut bob = server.client("bob").await;
    ann.join("metrics").await;
    bob.join("metrics").await;
    ann.recv_type("presence").await;
    let before = scrape(&server).await;

    let during = scrape(&server).await;
    assert!(
        during["chat_connections"] >= 2.0,
        "both clients are open: {during:?}"
    );
    for n in 0..3 {
        ann.say("metrics", &format!("counted {n}")).await;
        bob.recv_type("message").await;
    }
    let error = ann.request(json!({"action":"dance"})).await;
    assert_eq!(error["code"], "unknown_action", "{error}");
    assert_eq!(
        Client::refused_status(&format!("ws://{}/not-the-stage", server.addr)).await,
        403
    );
    let after = scrape(&server).await;

    assert!(grew(&before, &after, "chat_messages_stored_total") >= 3.0);
    // Each message reaches both members.
    assert!(grew(&before, &after, "chat_deliveries_total") >= 6.0);
    assert!(grew(&before, &after, "chat_message_store_seconds_count") >= 3.0);
    // Three sends and the unknown action.
    assert!(grew(&before, &after, "chat_frames_received_total") >= 4.0);
    // Three acks, six messages, one error.
    assert!(grew(&before, &after, "chat_frames_sent_total") >= 10.0);
    assert!(
        grew(
            &before,
            &after,
            r#"chat_errors_total{code="unknown_action"}"#
        ) >= 1.0
    );
    assert!(
        grew(
            &before,
            &after,
            r#"chat_handshakes_refused_total{status="403"}"#
        ) >= 1.0
    );
    ann.close().await;
    bob.close().await;
}
