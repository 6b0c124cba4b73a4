//! Recovery while a room is busy (issue: "Recovery loses acknowledged messages"): five clients
//! send 24 messages each into one room at once, while a reader drops its connection and rejoins
//! every half second. On the Lambda back end the function containers' clocks are 50 ms apart.
//! Every acknowledged message must be recovered exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, TestServer};

const SENDERS: usize = 5;
const EACH: usize = 24;
const ROOM: &str = "busy";

async fn busy_server() -> TestServer {
    TestServer::start_with(|s| {
        // The senders send all at once: no rate limit gets in the way.
        s.rate_burst = 1_000;
        s.rate_per_second = 1_000;
        s.lambda_clock_skew_ms = 50;
    })
    .await
}

/// Each sender sends its messages without waiting for acks, one every 50 ms (so that sending
/// lasts over a second, through several of the reader's rejoins), then collects its acks: (seq,
/// id) of each.
async fn send_all(server: &TestServer) -> Vec<(u64, String)> {
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut client = server.client(&format!("sender{s}")).await;
        client.join(ROOM).await;
        senders.push(client);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut client)| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                for i in 0..EACH {
                    tick.tick().await;
                    client
                        .send(json!({"action":"sendMessage","room":ROOM,"text":format!("s{s}-{i}"),"requestId":format!("r{i}")}))
                        .await;
                }
                let mut acked = Vec::new();
                while acked.len() < EACH {
                    let frame = client.recv().await;
                    match frame["type"].as_str() {
                        Some("ack") => acked.push((
                            frame["seq"].as_u64().expect("an ack has its seq"),
                            frame["id"].as_str().unwrap().to_owned(),
                        )),
                        Some("message" | "presence") => {}
                        _ => panic!("sender {s}: {frame}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked
}

/// A reader that keeps every message by seq, and recovers as a client should: live events of a
/// room may arrive out of seq order (two senders' fan-outs interleave; on AWS they are separate
/// invocations), so when a connection drops, what it missed may lie below the newest seq it
/// saw. Seqs have no gap and become visible in order, so every seq below the newest seen is
/// stored: the reader joins with `sinceSeq` its newest, and fetches each gap below it with
/// `history` `afterSeq` and a `limit` of the gap's length. So it gets each message once, but for
/// the one repeat PROTOCOL allows (docs/protocol-notes.md, `joined`): an event stored while the
/// join takes effect can come in `joined`'s page and live too, the same event at the same seq.
#[derive(Default)]
struct Reader {
    seen: BTreeMap<u64, String>,
    /// Seqs that came again when nothing allows it, or with another id.
    duplicates: Vec<u64>,
    /// The seqs of this connection's `joined` page: one of them may come live too.
    joined_page: BTreeSet<u64>,
    /// How many came in `joined`'s page and live (allowed; counted to say so).
    joined_and_live: usize,
}

impl Reader {
    fn keep(&mut self, message: &Value) {
        self.keep_from(message, false);
    }

    /// A live event: it may repeat one of this connection's `joined` page, with the same id.
    fn keep_live(&mut self, message: &Value) {
        self.keep_from(message, true);
    }

    fn keep_from(&mut self, message: &Value, live: bool) {
        let seq = message["seq"].as_u64().expect("a message has its seq");
        let id = message["id"].as_str().unwrap().to_owned();
        match self.seen.get(&seq) {
            None => {
                self.seen.insert(seq, id);
            }
            Some(earlier) if live && *earlier == id && self.joined_page.contains(&seq) => {
                self.joined_and_live += 1;
            }
            Some(_) => self.duplicates.push(seq),
        }
    }

    fn newest(&self) -> u64 {
        self.seen.keys().next_back().copied().unwrap_or(0)
    }

    /// The seqs missing below the newest seen: (after, count) of each run.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut last = 0;
        for &seq in self.seen.keys() {
            if seq > last + 1 {
                gaps.push((last, seq - last - 1));
            }
            last = seq;
        }
        gaps
    }

    /// Keeps each event of `page`, all after `after`; whether more follow.
    fn keep_page(&mut self, page: &Value, after: u64) -> bool {
        for event in page["events"].as_array().expect("events") {
            assert_eq!(event["type"], "message");
            // A page holds only what follows its position: never a seq at or before it.
            assert!(event["seq"].as_u64().unwrap() > after, "{event}");
            self.keep(event);
        }
        page["hasMore"] == true
    }

    async fn rejoin(&mut self, client: &mut Client) {
        let gaps = self.gaps();
        let mut after = self.newest();
        let mut page = client
            .request(json!({"action":"joinRoom","room":ROOM,"sinceSeq":after}))
            .await;
        assert_eq!(page["type"], "joined", "{page}");
        self.joined_page = page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|event| event["seq"].as_u64().unwrap())
            .collect();
        while self.keep_page(&page, after) {
            after = page["events"].as_array().unwrap().last().unwrap()["seq"]
                .as_u64()
                .unwrap();
            page = client
                .request(json!({"action":"history","room":ROOM,"afterSeq":after,"limit":100}))
                .await;
        }
        for (after, count) in gaps {
            let mut done = 0;
            while done < count {
                let limit = (count - done).min(100);
                let page = client
                    .request(json!({"action":"history","room":ROOM,"afterSeq":after + done,"limit":limit}))
                    .await;
                assert_eq!(
                    page["events"].as_array().unwrap().len() as u64,
                    limit,
                    "{page}"
                );
                self.keep_page(&page, after + done);
                done += limit;
            }
        }
    }
}

#[tokio::test]
async fn a_reader_that_rejoins_with_since_seq_while_five_clients_send_recovers_every_message_once()
{
    let server = busy_server().await;
    let sending = send_all(&server);
    let reading = async {
        let mut reader = Reader::default();
        let mut rejoins = 0;
        // Until every message is held and the senders are done (checked after the join).
        let started = Instant::now();
        while reader.seen.len() < SENDERS * EACH {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the reader never got them all: has {} of {}, missing {:?}",
                reader.seen.len(),
                SENDERS * EACH,
                reader.gaps()
            );
            let mut client = server.client("reader").await;
            reader.rejoin(&mut client).await;
            rejoins += 1;
            // Live, for half a second, then the connection drops without a goodbye.
            let until = Instant::now() + Duration::from_millis(500);
            while let Some(frame) = client.recv_until(until).await {
                if frame["type"] == "message" && frame["room"] == ROOM {
                    reader.keep_live(&frame);
                }
            }
            drop(client);
        }
        (reader, rejoins)
    };
    let (acked, (reader, rejoins)) = tokio::join!(sending, reading);
    assert!(rejoins >= 2, "the reader rejoined while the others sent");
    assert_eq!(
        reader.duplicates,
        Vec::<u64>::new(),
        "each once (but an event of joined's page that came live too, the same event: {} here)",
        reader.joined_and_live
    );
    let acked: BTreeMap<u64, String> = acked.into_iter().collect();
    assert_eq!(acked.len(), SENDERS * EACH, "every seq acknowledged once");
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>(),
        "the room's seqs have no gap"
    );
    assert_eq!(reader.seen, acked, "what was acknowledged, recovered");
}

/// Version 1's `since` (a message id) reads the same order: after any acknowledged message, the
/// messages stored after it, each once, whatever the clocks of the containers that stored them.
#[tokio::test]
async fn joining_with_a_v1_since_id_gives_what_was_stored_after_it_in_order() {
    let server = busy_server().await;
    let mut acked = send_all(&server).await;
    acked.sort();
    let ids: Vec<&str> = acked.iter().map(|(_, id)| id.as_str()).collect();
    let sorted: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        sorted.into_iter().collect::<Vec<_>>(),
        ids,
        "ids sort in seq order"
    );
    let mut reader = server.client("reader").await;
    for start in [0, 7, 50, 99, SENDERS * EACH - 2] {
        let mut got = Vec::new();
        let mut since = ids[start].to_owned();
        loop {
            let joined = reader
                .request(json!({"action":"joinRoom","room":ROOM,"since":since}))
                .await;
            let history = joined["history"].as_array().unwrap();
            got.extend(history.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
            if joined["hasMore"] != true {
                break;
            }
            since = got.last().unwrap().clone();
        }
        assert_eq!(got, ids[start + 1..], "since message {start}");
    }
}
