//! The [`Notifier`] suite: frames reach live connections exactly once and in order, and gone
//! connections are reported as gone.
//!
//! Run it with [`notifier_conformance!`](crate::notifier_conformance) over a [`NotifierHarness`]:
//! the notifier under test, and connections made for the test, live or gone. The harness of the
//! in-memory [`RecordingNotifier`](crate::memory::RecordingNotifier) is in chat-core's
//! `tests/memory_conformance.rs`; one of a real gateway opens a socket per live connection and
//! reads what arrives on it, in outline (not compiled: `open_socket` and the rest are the
//! gateway test's own):
//!
//! ```text
//! struct Gateway { /* a running server, its notifier */ }
//!
//! #[async_trait::async_trait]
//! impl NotifierHarness for Gateway {
//!     fn notifier(&self) -> Arc<dyn Notifier> { self.notifier.clone() }
//!     async fn live(&self) -> (ConnectionId, Box<dyn Inbox>) {
//!         let (id, frames) = self.open_socket().await; // frames: Arc<Mutex<Vec<String>>>, filled
//!                                                      // by a task reading the socket
//!         (id, Box::new(move || frames.lock().unwrap().clone()))
//!     }
//!     async fn gone(&self) -> ConnectionId { self.open_and_close_socket().await }
//! }
//!
//! chat_core::notifier_conformance!(Gateway::start().await);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::ConnectionId;
use crate::ports::{Delivery, Notifier};
use crate::protocol::Payload;

/// How long [`Inbox::frames`] waits, at most, for frames still in flight.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// What the notifier suite needs from an adapter's test: the notifier, and connections it can
/// deliver to (or not).
#[async_trait]
pub trait NotifierHarness: Send + Sync {
    /// The notifier under test.
    fn notifier(&self) -> Arc<dyn Notifier>;

    /// A new connection that exists and receives what the notifier sends it, with its inbox.
    async fn live(&self) -> (ConnectionId, Box<dyn Inbox>);

    /// A connection the notifier cannot reach because it does not exist (any more): a send to it
    /// must answer [`Delivery::Gone`].
    async fn gone(&self) -> ConnectionId;
}

/// The text frames one live connection received.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Every text frame received so far, in the order received, once at least `count` have
    /// arrived; after [`DELIVERY_WAIT`] without them, what has arrived (and the test fails).
    async fn frames(&self, count: usize) -> Vec<String>;
}

/// A closure that returns the frames received so far is an inbox: it is asked again every few
/// milliseconds until `count` frames have arrived.
#[async_trait]
impl<F> Inbox for F
where
    F: Fn() -> Vec<String> + Send + Sync,
{
    async fn frames(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + DELIVERY_WAIT;
        loop {
            let frames = self();
            if frames.len() >= count || Instant::now() >= deadline {
                return frames;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn payload(text: &str) -> Payload {
    Payload::from_json(text.to_owned())
}

/// The last frame [`assert_received_exactly`] sends to a connection.
fn end_of(to: &ConnectionId) -> String {
    serde_json::json!({"type": "pong", "requestId": format!("end of {to}")}).to_string()
}

/// Sends a last frame to `to` and checks that the connection received exactly `expected` and
/// then that frame: nothing twice, nothing else, nothing out of order.
async fn assert_received_exactly(
    harness: &dyn NotifierHarness,
    to: &ConnectionId,
    inbox: &dyn Inbox,
    expected: &[String],
) {
    let last = end_of(to);
    assert_eq!(
        harness.notifier().send(to, &payload(&last)).await.unwrap(),
        Delivery::Delivered
    );
    let mut want = expected.to_vec();
    want.push(last);
    assert_eq!(
        inbox.frames(want.len()).await,
        want,
        "frames received by {to}"
    );
}

pub async fn send_delivers_the_exact_text_once_and_in_order(harness: &dyn NotifierHarness) {
    let notifier = harness.notifier();
    let (ada, ada_inbox) = harness.live().await;
    let (bob, bob_inbox) = harness.live().await;
    let texts: Vec<String> = vec![
        r#"{"type":"pong"}"#.to_owned(),
        r#"{"type":"message","text":"  é 日本 😀👩‍👩‍👧 <b>\"\\</b>\n  "}"#.to_owned(),
        format!(
            r#"{{"type":"message","text":"{}"}}"#,
            "\u{1F600}".repeat(4000)
        ),
        r#"{"type":"pong","n":1}"#.to_owned(),
        r#"{"type":"pong","n":2}"#.to_owned(),
    ];
    for text in &texts {
        assert_eq!(
            notifier.send(&ada, &payload(text)).await.unwrap(),
            Delivery::Delivered
        );
    }
    assert_received_exactly(harness, &ada, &*ada_inbox, &texts).await;
    // Nothing reached the other connection.
    assert_received_exactly(harness, &bob, &*bob_inbox, &[]).await;
}

pub async fn send_to_a_gone_connection_is_gone_and_reaches_no_one(harness: &dyn NotifierHarness) {
    let notifier = harness.notifier();
    let (ada, ada_inbox) = harness.live().await;
    let gone = harness.gone().await;
    for _ in 0..2 {
        assert_eq!(
            notifier
                .send(&gone, &payload(r#"{"type":"pong"}"#))
                .await
                .unwrap(),
            Delivery::Gone
        );
    }
    assert_received_exactly(harness, &ada, &*ada_inbox, &[]).await;
}

pub async fn broadcast_delivers_to_every_live_connection_and_returns_the_gone_ones(
    harness: &dyn NotifierHarness,
) {
    let notifier = harness.notifier();
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(harness.live().await);
    }
    let gone = [harness.gone().await, harness.gone().await];
    let to = vec![
        live[0].0.clone(),
        gone[0].clone(),
        live[1].0.clone(),
        gone[1].clone(),
        live[2].0.clone(),
    ];
    let text = r#"{"type":"message","text":"to all"}"#.to_owned();
    let returned: BTreeSet<ConnectionId> = notifier
        .broadcast(&to, &payload(&text))
        .await
        .into_iter()
        .collect();
    assert_eq!(returned, gone.iter().cloned().collect::<BTreeSet<_>>());
    for (id, inbox) in &live {
        assert_received_exactly(harness, id, &**inbox, std::slice::from_ref(&text)).await;
    }
    // Broadcast to live connections only: none is gone.
    let ids: Vec<ConnectionId> = live.iter().map(|(id, _)| id.clone()).collect();
    let again = r#"{"type":"message","text":"again"}"#.to_owned();
    assert!(notifier.broadcast(&ids, &payload(&again)).await.is_empty());
    for (id, inbox) in &live {
        let expected = [text.clone(), end_of(id), again.clone()];
        assert_received_exactly(harness, id, &**inbox, &expected).await;
    }
}

pub async fn broadcast_to_200_connections_with_some_gone_reaches_each_live_one_once(
    harness: &dyn NotifierHarness,
) {
    let notifier = harness.notifier();
    let mut to = Vec::new();
    let mut live = Vec::new();
    let mut gone = BTreeSet::new();
    for i in 0..200 {
        // Every seventh is gone: more than one concurrent batch of sends has some.
        if i % 7 == 3 {
            let id = harness.gone().await;
            gone.insert(id.clone());
            to.push(id);
        } else {
            let (id, inbox) = harness.live().await;
            to.push(id.clone());
            live.push((id, inbox));
        }
    }
    let text = r#"{"type":"typing","room":"lobby","member":{"name":"ada"}}"#.to_owned();
    let returned = notifier.broadcast(&to, &payload(&text)).await;
    assert_eq!(
        returned.len(),
        gone.len(),
        "each gone one once: {returned:?}"
    );
    assert_eq!(returned.into_iter().collect::<BTreeSet<_>>(), gone);
    for (id, inbox) in &live {
        assert_received_exactly(harness, id, &**inbox, std::slice::from_ref(&text)).await;
    }
}

pub async fn broadcast_to_no_connection_returns_nothing(harness: &dyn NotifierHarness) {
    let notifier = harness.notifier();
    let (ada, inbox) = harness.live().await;
    assert!(
        notifier
            .broadcast(&[], &payload(r#"{"type":"pong"}"#))
            .await
            .is_empty()
    );
    assert_received_exactly(harness, &ada, &*inbox, &[]).await;
}
