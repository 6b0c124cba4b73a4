//! A room past `--fanout-shard-from` connections (3 here). On the Lambda back end its events go
//! through the fan-out queue (SQS FIFO on moto, 16 shards, the `fanout` function fed by the
//! local event source mapping); the embedded back end posts to every member directly. The
//! contract is the same: every member gets every event once, in order.

use serde_json::Value;

use crate::metrics::{grew, scrape};
use crate::support::{TestServer, lambda_backend};

#[tokio::test]
async fn a_room_past_the_shard_size_gets_every_event_once_and_in_order() {
    let server = TestServer::start_with(|settings| settings.fanout_shard_from = 3).await;
    let before = scrape(&server).await;
    let mut clients = Vec::new();
    for name in ["ada", "bob", "cy", "dee", "eve", "fay"] {
        let mut client = server.client(name).await;
        client.join("big").await;
        clients.push(client);
    }
    // Ada and bob in turn, each after the other's ack: the order every member must see.
    for n in 0..6 {
        clients[n % 2].say("big", &format!("m{n}")).await;
    }
    let expected: Vec<String> = (0..6).map(|n| format!("m{n}")).collect();
    for (index, client) in clients.iter_mut().enumerate().skip(2) {
        let mut events = Vec::new();
        let mut texts = Vec::new();
        while texts.len() < expected.len() {
            let frame = client.recv().await;
            match frame["type"].as_str() {
                Some("message") => texts.push(frame["text"].as_str().unwrap().to_owned()),
                Some("presence") => events.push(frame["member"]["name"].clone()),
                _ => panic!("unexpected frame {frame}"),
            }
        }
        assert_eq!(texts, expected, "client {index}");
        // The joins after its own, each told once, before the messages. A join told through
        // the queue may also reach a member that joined within a second after it (its
        // `joined` lists that member already): chat_aws::fanout::JOINED_AFTER_MS.
        let names = ["cy", "dee", "eve", "fay"];
        for later in &names[index - 1..] {
            let told = events.iter().filter(|name| *name == later).count();
            assert_eq!(told, 1, "client {index} told of {later}: {events:?}");
        }
        let mut distinct = events.clone();
        distinct.dedup();
        assert_eq!(distinct, events, "client {index}: {events:?}");
        let own = Value::from(names[index - 2]);
        assert!(
            !events.contains(&own),
            "client {index} told of its own join: {events:?}"
        );
        // Nothing twice.
        client.expect_silence().await;
    }
    if lambda_backend() {
        let after = scrape(&server).await;
        let queued = grew(&before, &after, "chat_fanout_queued_total");
        assert!(
            queued >= 9.0,
            "the joins of dee, eve and fay and the 6 messages went through the queue: {queued}"
        );
    }
}
