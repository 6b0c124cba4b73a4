//! Replies over 128 KB (issue: "Replies over 128 KB"): API Gateway delivers no frame larger than
//! 128 KB, so a `joined` or `history` of long messages must be shortened to fit, and say there
//! is more.

use serde_json::{Value, json};

use crate::support::TestServer;

const LIMIT: usize = 128 * 1024;

fn seqs(list: &Value) -> Vec<u64> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn joined_and_history_of_long_messages_fit_in_128_kb_and_page_on() {
    let server = TestServer::start_with(|s| s.rate_burst = 1000).await;
    let mut ada = server.client("ada").await;
    ada.join("big").await;
    // 60 messages of 4000 four-byte characters: 16 KB each, about 1 MB together.
    for i in 0..60 {
        ada.say("big", &format!("{i:03}{}", "😀".repeat(3997)))
            .await;
    }
    let mut bob = server.client("bob").await;
    let joined = bob.join("big").await;
    let size = joined.to_string().len();
    assert!(size <= LIMIT, "joined is {size} bytes");
    let latest = seqs(&joined["history"]);
    assert!(latest.len() >= 7, "as many as fit: {latest:?}");
    assert_eq!(*latest.last().unwrap(), 60, "the newest are kept");
    assert_eq!(joined["hasMore"], true);

    // Recovery pages forward from the oldest, and every page fits.
    let mut after = 0;
    let mut recovered = Vec::new();
    let mut page = bob
        .request(json!({"action":"joinRoom","room":"big","sinceSeq":0}))
        .await;
    loop {
        assert!(page.to_string().len() <= LIMIT);
        let got = seqs(&page["events"]);
        assert!(
            !got.is_empty() && got[0] == after + 1,
            "{got:?} after {after}"
        );
        after = *got.last().unwrap();
        recovered.extend(got);
        if page["hasMore"] != true {
            break;
        }
        page = bob
            .request(json!({"action":"history","room":"big","afterSeq":after,"limit":100}))
            .await;
    }
    assert_eq!(recovered, (1..=60).collect::<Vec<_>>());

    let back = bob
        .request(json!({"action":"history","room":"big","limit":100}))
        .await;
    assert!(back.to_string().len() <= LIMIT);
    assert_eq!(*seqs(&back["messages"]).last().unwrap(), 60);
    assert_eq!(back["hasMore"], true);
}
