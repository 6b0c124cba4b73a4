//! The [`MessageStore`] suite: what every message store must do, whatever it stores in.
//!
//! Run it with [`message_store_conformance!`](crate::message_store_conformance); each test takes
//! a fresh store from a [`MessageStoreFactory`]. Paging is checked against
//! [`page_of`], the in-memory reference.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use super::fixtures::{
    append_new, client_msg_id, guest, highest_id, id_after, lowest_id, message, message_from, room,
    texts, user, wall_clock_ms,
};
use crate::domain::{
    Change, ChangeKind, Cursor, MessageChange, MessageId, MessageText, Page, RoomName,
    StoredMessage,
};
use crate::memory::page_of;
use crate::ports::{Appended, Changed, MessageStore};

/// Makes the store each test runs against.
///
/// Any `Fn() -> impl Future<Output = impl MessageStore>` is one; implement it on a type of your
/// own when the store needs something kept alive while it is used (a temporary directory).
#[async_trait]
pub trait MessageStoreFactory: Send + Sync {
    /// A store that holds no message (at least in the rooms a test uses: every test may use any
    /// room name).
    async fn fresh(&self) -> Arc<dyn MessageStore>;
}

#[async_trait]
impl<F, Fut, S> MessageStoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = S> + Send,
    S: MessageStore + 'static,
{
    async fn fresh(&self) -> Arc<dyn MessageStore> {
        Arc::new(self().await)
    }
}

/// Appends `count` messages `m0`, `m1`, … to the room (every second one with a `clientMsgId`);
/// returns them as stored, in order.
async fn fill(store: &dyn MessageStore, room_name: &str, count: usize) -> Vec<StoredMessage> {
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        let id = (i % 2 == 0).then(|| format!("c{i}"));
        all.push(
            append_new(
                store,
                message(room_name, "ada", &format!("m{i}"), id.as_deref()),
            )
            .await,
        );
    }
    all
}

/// Checks every page of the room against [`page_of`] over `all` (the room's messages in id
/// order): `Latest`, and `Before` and `After` the first, an early, the middle and the last
/// message, an id between two messages, and ids below and above every message; for limits from
/// 1 to 100 around the room's size. Adapter tests may call it on a room they prepared (with other
/// items of their own beside the messages).
pub async fn assert_pages_match_the_reference(
    store: &dyn MessageStore,
    room: &RoomName,
    all: &[StoredMessage],
) {
    assert!(all.len() >= 8, "the check needs at least 8 messages");
    let n = all.len();
    let mut cursors = vec![Cursor::Latest];
    for id in [
        all[0].id,
        all[7].id,
        all[n / 2].id,
        all[n - 1].id,
        id_after(all[n / 2].id),
        lowest_id(),
        highest_id(),
    ] {
        cursors.push(Cursor::Before(id));
        cursors.push(Cursor::After(id));
    }
    let first_seq = all[0].seq;
    for seq in [
        0,
        first_seq,
        first_seq + 6,
        all[n / 2].seq,
        all[n - 1].seq - 1,
    ] {
        cursors.push(Cursor::AfterSeq(seq));
    }
    cursors.extend([all[n - 1].seq, all[n - 1].seq + 5, u64::MAX].map(Cursor::AfterSeq));
    let mut limits = vec![1, 5, n - 1, n, 100];
    if n < 100 {
        limits.push(n + 1);
    } else {
        limits.push(99);
    }
    for cursor in cursors {
        for &limit in &limits {
            let page = store.page(room, cursor, limit).await.expect("page");
            assert_eq!(
                page,
                page_of(all, cursor, limit),
                "{cursor:?} limit {limit} of {n} messages"
            );
        }
    }
}

pub async fn append_stores_every_field_and_ts_is_the_time_of_the_id(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = user("Ada Lovelace", "user-1");
    let before = wall_clock_ms();
    let stored = append_new(&*store, message_from("r", &ada, "hello", Some("c-1"))).await;
    let after = wall_clock_ms();
    assert_eq!(stored.room, room("r"));
    assert_eq!(stored.sender, ada, "the sender, user id included");
    assert_eq!(stored.text, "hello");
    assert_eq!(stored.client_msg_id, Some(client_msg_id("c-1")));
    assert_eq!(stored.id.as_uuid().get_version_num(), 7, "a UUID v7");
    assert_eq!(
        Some(stored.ts),
        stored.id.timestamp_ms(),
        "ts is the id's time"
    );
    // The store's clock may not be this process's: a few seconds either way.
    assert!(
        before.saturating_sub(5_000) <= stored.ts && stored.ts <= after + 5_000,
        "ts {} is the time of the append ({before}..{after})",
        stored.ts
    );
    let bob = append_new(&*store, message("r", "bob", "no id", None)).await;
    assert_eq!((&bob.sender, &bob.client_msg_id), (&guest("bob"), &None));
    // What is read back is what append returned.
    let page = store.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert_eq!(page.messages, [stored, bob]);
    assert!(!page.has_more);
}

pub async fn appends_get_increasing_ids_in_the_order_they_are_stored(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let all = fill(&*store, "r", 20).await;
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(
        all.windows(2).all(|w| w[0].ts <= w[1].ts),
        "and so do times"
    );
    assert!(all.iter().all(|m| Some(m.ts) == m.id.timestamp_ms()));
    let page = store.page(&room("r"), Cursor::Latest, 100).await.unwrap();
    assert_eq!(page.messages, all, "history is in id order, oldest first");
    assert!(!page.has_more);
}

pub async fn each_rooms_messages_are_numbered_from_1_without_gaps(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    assert_eq!(
        store.latest_seq(&room("r")).await.unwrap(),
        0,
        "no event yet"
    );
    let all = fill(&*store, "r", 12).await;
    let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(store.latest_seq(&room("r")).await.unwrap(), 12);
    // A retry is the first message, its seq included, and takes no number.
    let again = store
        .append(message("r", "ada", "m0", Some("c0")))
        .await
        .unwrap();
    assert_eq!(again, Appended::Duplicate(all[0].clone()));
    assert_eq!(store.latest_seq(&room("r")).await.unwrap(), 12);
    // Each room counts its own.
    let other = append_new(&*store, message("r2", "ada", "x", None)).await;
    assert_eq!(other.seq, 1);
    assert_eq!(store.latest_seq(&room("r")).await.unwrap(), 12);
    let next = append_new(&*store, message("r", "ada", "y", None)).await;
    assert_eq!(next.seq, 13);
    // Read back, a page after a seq holds the messages after it, with their seq.
    let page = store
        .page(&room("r"), Cursor::AfterSeq(10), 100)
        .await
        .unwrap();
    assert_eq!(page.messages, [all[10].clone(), all[11].clone(), next]);
    assert!(!page.has_more);
}

pub async fn a_client_msg_id_is_stored_once_per_sender_and_room(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    let first = append_new(&*store, message("lobby", "ada", "once", Some("m-1"))).await;
    let again = store
        .append(message("lobby", "ada", "once", Some("m-1")))
        .await
        .unwrap();
    assert_eq!(again, Appended::Duplicate(first.clone()));
    // A retry with another text is still the retry: the first message stands.
    let changed = store
        .append(message("lobby", "ada", "twice", Some("m-1")))
        .await
        .unwrap();
    assert_eq!(changed, Appended::Duplicate(first.clone()));
    let found = store
        .find_by_client_msg_id(
            &RoomName::lobby(),
            &guest("ada").sender_key(),
            &client_msg_id("m-1"),
        )
        .await
        .unwrap();
    assert_eq!(found, Some(first.clone()));
    // Another sender, or another room: a new message.
    append_new(&*store, message("lobby", "bob", "once", Some("m-1"))).await;
    let elsewhere = append_new(&*store, message("elsewhere", "ada", "once", Some("m-1"))).await;
    assert_eq!(
        store
            .append(message("elsewhere", "ada", "once", Some("m-1")))
            .await
            .unwrap(),
        Appended::Duplicate(elsewhere),
        "and that one is remembered in its own room"
    );
    // Names that would run together in a naive key stay apart.
    append_new(&*store, message("lobby", "a#m", "x", Some("1"))).await;
    append_new(&*store, message("lobby", "a", "x", Some("m#1"))).await;
    let lobby = store
        .page(&RoomName::lobby(), Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(lobby.messages.len(), 4, "the retries stored nothing");
    assert_eq!(lobby.messages[0], first);
}

pub async fn an_authenticated_sender_is_known_by_user_id_not_by_name(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let first = append_new(
        &*store,
        message_from("r", &user("ada", "u1"), "hi", Some("c")),
    )
    .await;
    // The same user under another name (another tab, renamed): the same sender.
    let renamed = store
        .append(message_from("r", &user("Ada L", "u1"), "hi", Some("c")))
        .await
        .unwrap();
    assert_eq!(renamed, Appended::Duplicate(first.clone()));
    // A guest of the same name, and another user of the same name: other senders.
    let guest = append_new(&*store, message("r", "ada", "hi", Some("c"))).await;
    let other = append_new(
        &*store,
        message_from("r", &user("ada", "u2"), "hi", Some("c")),
    )
    .await;
    let find = |key: String| {
        let store = store.clone();
        async move {
            store
                .find_by_client_msg_id(&room("r"), &key, &client_msg_id("c"))
                .await
                .unwrap()
        }
    };
    assert_eq!(find(user("anyone", "u1").sender_key()).await, Some(first));
    assert_eq!(find(self::guest("ada").sender_key()).await, Some(guest));
    assert_eq!(find(user("ada", "u2").sender_key()).await, Some(other));
    assert_eq!(find(user("ada", "u3").sender_key()).await, None);
}

pub async fn messages_without_a_client_msg_id_are_never_duplicates(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let a = append_new(&*store, message("r", "ada", "same", None)).await;
    let b = append_new(&*store, message("r", "ada", "same", None)).await;
    assert_ne!(a.id, b.id);
    let page = store.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert_eq!(page.messages, [a, b]);
}

pub async fn find_by_client_msg_id_finds_only_that_senders_message_in_that_room(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = guest("ada").sender_key();
    let find = |room_name: &'static str, sender_key: String, id: &'static str| {
        let store = store.clone();
        async move {
            store
                .find_by_client_msg_id(&room(room_name), &sender_key, &client_msg_id(id))
                .await
                .unwrap()
        }
    };
    assert_eq!(find("r", ada.clone(), "c1").await, None, "nothing sent yet");
    let sent = append_new(&*store, message("r", "ada", "hi", Some("c1"))).await;
    append_new(&*store, message("r", "ada", "no id", None)).await;
    assert_eq!(find("r", ada.clone(), "c1").await, Some(sent));
    assert_eq!(
        find("r", ada.clone(), "c2").await,
        None,
        "another clientMsgId"
    );
    assert_eq!(
        find("r", guest("bob").sender_key(), "c1").await,
        None,
        "another sender"
    );
    assert_eq!(
        find("r", user("ada", "ada").sender_key(), "c1").await,
        None,
        "a user, not the guest"
    );
    assert_eq!(find("other", ada.clone(), "c1").await, None, "another room");
    assert_eq!(
        find("R", ada, "c1").await,
        None,
        "room names are case-sensitive"
    );
}

pub async fn pages_go_backwards_with_before_and_forwards_with_after(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let r = room("r");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            append_new(&*store, message("r", "ada", &format!("m{i}"), None))
                .await
                .id,
        );
    }
    append_new(&*store, message("elsewhere", "ada", "not here", None)).await;
    let latest = store.page(&r, Cursor::Latest, 3).await.unwrap();
    assert_eq!(
        (texts(&latest), latest.has_more),
        (vec!["m7", "m8", "m9"], true)
    );
    let before = store.page(&r, Cursor::Before(ids[3]), 5).await.unwrap();
    assert_eq!(
        (texts(&before), before.has_more),
        (vec!["m0", "m1", "m2"], false)
    );
    let before = store.page(&r, Cursor::Before(ids[7]), 3).await.unwrap();
    assert_eq!(
        (texts(&before), before.has_more),
        (vec!["m4", "m5", "m6"], true)
    );
    let after = store.page(&r, Cursor::After(ids[2]), 3).await.unwrap();
    assert_eq!(
        (texts(&after), after.has_more),
        (vec!["m3", "m4", "m5"], true)
    );
    let tail = store.page(&r, Cursor::After(ids[6]), 5).await.unwrap();
    assert_eq!(
        (texts(&tail), tail.has_more),
        (vec!["m7", "m8", "m9"], false)
    );
    // Exactly as many as are left: no more.
    let exact = store.page(&r, Cursor::After(ids[6]), 3).await.unwrap();
    assert_eq!(
        (texts(&exact), exact.has_more),
        (vec!["m7", "m8", "m9"], false)
    );
    let exact = store.page(&r, Cursor::Before(ids[3]), 3).await.unwrap();
    assert_eq!(
        (texts(&exact), exact.has_more),
        (vec!["m0", "m1", "m2"], false)
    );
    let all = store.page(&r, Cursor::Latest, 10).await.unwrap();
    assert_eq!((all.messages.len(), all.has_more), (10, false));
    // Nothing before the first or after the last.
    let none = store.page(&r, Cursor::Before(ids[0]), 5).await.unwrap();
    assert_eq!((none.messages.len(), none.has_more), (0, false));
    let none = store.page(&r, Cursor::After(ids[9]), 5).await.unwrap();
    assert_eq!((none.messages.len(), none.has_more), (0, false));
    let empty = store.page(&room("none"), Cursor::Latest, 5).await.unwrap();
    assert_eq!((empty.messages.len(), empty.has_more), (0, false));
}

pub async fn an_id_that_names_no_message_is_still_a_position(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 6).await;
    let between = id_after(all[2].id);
    assert!(all[2].id < between && between < all[3].id);
    let before = store.page(&r, Cursor::Before(between), 2).await.unwrap();
    assert_eq!((texts(&before), before.has_more), (vec!["m1", "m2"], true));
    let after = store.page(&r, Cursor::After(between), 2).await.unwrap();
    assert_eq!((texts(&after), after.has_more), (vec!["m3", "m4"], true));
    let older = store
        .page(&r, Cursor::Before(lowest_id()), 10)
        .await
        .unwrap();
    assert_eq!((older.messages.len(), older.has_more), (0, false));
    let newer = store
        .page(&r, Cursor::After(lowest_id()), 10)
        .await
        .unwrap();
    assert_eq!((newer.messages, newer.has_more), (all.clone(), false));
    let older = store
        .page(&r, Cursor::Before(highest_id()), 4)
        .await
        .unwrap();
    assert_eq!((older.messages, older.has_more), (all[2..].to_vec(), true));
    let newer = store
        .page(&r, Cursor::After(highest_id()), 10)
        .await
        .unwrap();
    assert_eq!((newer.messages.len(), newer.has_more), (0, false));
}

pub async fn pages_match_the_reference_paging_in_every_direction(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    // More than the largest page, so that has_more is true in both directions at the limit.
    let all = fill(&*store, "h", 130).await;
    // Another room's messages beside them change nothing.
    fill(&*store, "h2", 3).await;
    assert_pages_match_the_reference(&*store, &room("h"), &all).await;
    // And a room of 25, as small pages see it.
    let small = fill(&*store, "small", 25).await;
    assert_pages_match_the_reference(&*store, &room("small"), &small).await;
    // Another room's history is its own.
    let other = store
        .page(&room("other"), Cursor::Latest, 50)
        .await
        .unwrap();
    assert!(other.messages.is_empty());
}

pub async fn an_empty_room_has_an_empty_page_in_every_direction(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    let check = |store: Arc<dyn MessageStore>, room_name: &'static str| async move {
        for cursor in [
            Cursor::Latest,
            Cursor::Before(lowest_id()),
            Cursor::After(lowest_id()),
            Cursor::Before(highest_id()),
            Cursor::After(highest_id()),
            Cursor::AfterSeq(0),
            Cursor::AfterSeq(7),
        ] {
            for limit in [1, 50, 100] {
                let page = store.page(&room(room_name), cursor, limit).await.unwrap();
                assert!(
                    page.messages.is_empty() && !page.has_more,
                    "{room_name} {cursor:?} {limit}: {page:?}"
                );
            }
        }
    };
    check(store.clone(), "empty").await;
    // Messages in other rooms, some whose names start like this one's, change nothing.
    for name in ["empty1", "empt", "Empty", "empty.x"] {
        append_new(&*store, message(name, "ada", "elsewhere", Some("c"))).await;
    }
    check(store.clone(), "empty").await;
    assert_eq!(
        store
            .find_by_client_msg_id(
                &room("empty"),
                &guest("ada").sender_key(),
                &client_msg_id("c")
            )
            .await
            .unwrap(),
        None
    );
}

pub async fn rooms_are_independent_of_each_other(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    // Case-sensitive names, and names that are prefixes of one another.
    let names = ["r", "R", "r1", "r-", "r.r", "lobby"];
    let mut expected: Vec<Vec<StoredMessage>> = vec![Vec::new(); names.len()];
    for i in 0..30 {
        let k = (i * 7) % names.len();
        let stored = append_new(
            &*store,
            message(names[k], "ada", &format!("{}#{i}", names[k]), None),
        )
        .await;
        expected[k].push(stored);
    }
    for (name, expected) in names.iter().zip(&expected) {
        let page = store.page(&room(name), Cursor::Latest, 100).await.unwrap();
        assert_eq!(&page.messages, expected, "room {name}");
        assert!(!page.has_more);
    }
    // An id from another room is a position here too, nothing more.
    for (k, name) in names.iter().enumerate() {
        let elsewhere = expected[(k + 1) % names.len()][2].id;
        for cursor in [Cursor::Before(elsewhere), Cursor::After(elsewhere)] {
            let page = store.page(&room(name), cursor, 100).await.unwrap();
            assert_eq!(
                page,
                page_of(&expected[k], cursor, 100),
                "room {name} {cursor:?}"
            );
        }
    }
}

pub async fn long_messages_of_multi_byte_text_are_kept_verbatim(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    // 4000 characters (the limit) of one to four bytes each, with what a store might be tempted
    // to trim, escape or normalize.
    let pieces = [
        "  leading and trailing  ",
        "\n\ttabs and\r\nnewlines\n",
        "<b>html</b> & \"quotes\" 'single' \\backslash\\ %s {} ${x} '; DROP TABLE messages; --",
        "é e\u{301} ñ ß ﬁ Å Å",
        "日本語の文 中文 한국어",
        "😀👩‍👩‍👧‍👦🏳️‍🌈 🇫🇷",
        "\u{200b}\u{feff}\u{202e}rtl\u{202c}",
    ];
    let mut text: String = pieces.concat();
    let mut chars = text.chars().count();
    while chars < 4000 {
        let c = ['😀', 'é', '語', 'a', ' '][chars % 5];
        text.push(c);
        chars += 1;
    }
    assert_eq!(text.chars().count(), 4000);
    let all_emoji = "\u{1F600}".repeat(4000); // 16 KB of UTF-8
    let mut all = Vec::new();
    for (i, text) in [&text, &all_emoji, &text].into_iter().enumerate() {
        let stored = append_new(
            &*store,
            message("long", "ada", text, Some(&format!("c{i}"))),
        )
        .await;
        assert_eq!(&stored.text, text);
        all.push(stored);
    }
    let page = store
        .page(&room("long"), Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(page.messages, all);
    assert_eq!(page.messages[0].text, text, "byte for byte");
    let found = store
        .find_by_client_msg_id(
            &room("long"),
            &guest("ada").sender_key(),
            &client_msg_id("c1"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.text, all_emoji);
}

pub async fn concurrent_appends_are_all_stored_once_in_id_order(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            // Every tenth one is sent twice with the same clientMsgId.
            let client_msg_id = (i % 10 == 0).then(|| format!("c{i}"));
            tokio::spawn(async move {
                let text = format!("m{i}");
                let first = store
                    .append(message("r", "ada", &text, client_msg_id.as_deref()))
                    .await
                    .unwrap();
                if client_msg_id.is_some() {
                    let again = store
                        .append(message("r", "ada", &text, client_msg_id.as_deref()))
                        .await
                        .unwrap();
                    let Appended::New(stored) = &first else {
                        panic!("expected a new message, got {first:?}")
                    };
                    assert_eq!(again, Appended::Duplicate(stored.clone()));
                }
                first
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Appended::New(_)));
    }
    let page = store.page(&room("r"), Cursor::Latest, 100).await.unwrap();
    assert!(page.has_more);
    let mut all = page.messages.clone();
    let older = store
        .page(&room("r"), Cursor::Before(all[0].id), 100)
        .await
        .unwrap();
    assert!(!older.has_more);
    all.splice(0..0, older.messages);
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "seq follows id, no gap"
    );
    let stored: BTreeSet<&str> = all.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(stored.len(), 200, "each message once");
}

/// Recovery as a client does it, while others write: a reader that asks, again and again, for
/// what follows the last `seq` it saw never misses a message and never sees one twice, whatever
/// order the concurrent appends finish in.
pub async fn a_reader_following_seq_during_concurrent_appends_misses_nothing(
    factory: &dyn MessageStoreFactory,
) {
    const WRITERS: usize = 5;
    const EACH: usize = 12;
    let store = factory.fresh().await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..EACH {
                    let text = format!("w{w}-{i}");
                    acked.push(
                        append_new(&*store, message("r", &format!("w{w}"), &text, None)).await,
                    );
                }
                acked
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: Vec<StoredMessage> = Vec::new();
            let mut idle_rounds = 0;
            while idle_rounds < 3 {
                let after = seen.last().map_or(0, |m| m.seq);
                let page = store
                    .page(&room("r"), Cursor::AfterSeq(after), 7)
                    .await
                    .unwrap();
                if page.messages.is_empty() && seen.len() == WRITERS * EACH {
                    idle_rounds += 1;
                }
                seen.extend(page.messages);
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the reader sees every message within a minute")
        .unwrap();
    let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=(WRITERS * EACH) as u64).collect::<Vec<_>>(),
        "in order, each once"
    );
    acked.sort_by_key(|m| m.seq);
    assert_eq!(seen, acked, "what was acknowledged is what the reader saw");
}

pub async fn concurrent_appends_with_the_same_client_msg_id_store_one_message(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    // A client retrying over several connections (or Lambda containers) at once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(message("r", "ada", "once", Some("same")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = Vec::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Appended::New(m) => new.push(m),
            Appended::Duplicate(m) => duplicates.push(m),
        }
    }
    assert_eq!(new.len(), 1, "exactly one append stores it: {new:?}");
    assert!(
        duplicates.iter().all(|m| *m == new[0]),
        "the others get that one"
    );
    let page = store.page(&room("r"), Cursor::Latest, 100).await.unwrap();
    assert_eq!(page.messages, new);
}

fn edit_to(text: &str) -> Change {
    Change::Edit(MessageText::parse(text.to_owned()).expect("a valid text"))
}

fn done(changed: Changed) -> MessageChange {
    match changed {
        Changed::Done(event) => event,
        other => panic!("expected the change to be stored, not {other:?}"),
    }
}

pub async fn edits_and_deletes_are_events_with_the_rooms_next_seq(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 3).await;
    let before = wall_clock_ms();
    let edit = done(
        store
            .change(&r, &all[0].id, edit_to("m0, fixed"))
            .await
            .unwrap(),
    );
    assert_eq!(
        (edit.room.clone(), edit.id, edit.seq),
        (r.clone(), all[0].id, 4)
    );
    let ChangeKind::Edited { text, edited_at } = &edit.kind else {
        panic!("an edit: {edit:?}")
    };
    assert_eq!(text, "m0, fixed");
    assert!(*edited_at >= before && *edited_at <= wall_clock_ms() + 1);
    let delete = done(store.change(&r, &all[1].id, Change::Delete).await.unwrap());
    assert_eq!((delete.seq, delete.kind.clone()), (5, ChangeKind::Deleted));
    assert_eq!(store.latest_seq(&r).await.unwrap(), 5);
    // The next message follows the changes.
    let next = append_new(&*store, message("r", "ada", "m3", None)).await;
    assert_eq!(next.seq, 6);

    // The messages as they are now: the latest text, the tombstone without its text.
    let edited = store.get(&r, &all[0].id).await.unwrap().expect("stored");
    assert_eq!(
        (edited.text.as_str(), edited.edited_at, edited.deleted),
        ("m0, fixed", Some(*edited_at), false)
    );
    assert_eq!(
        (edited.seq, edited.ts),
        (all[0].seq, all[0].ts),
        "it keeps its place"
    );
    let deleted = store
        .get(&r, &all[1].id)
        .await
        .unwrap()
        .expect("a tombstone");
    assert!(deleted.deleted);
    assert_eq!(deleted.text, "", "the text is gone from the store");
    assert_eq!(
        store.get(&r, &all[2].id).await.unwrap(),
        Some(all[2].clone())
    );
    // History by id shows messages only, as they are now.
    let page = store.page(&r, Cursor::Latest, 10).await.unwrap();
    assert_eq!(
        page.messages,
        [
            edited.clone(),
            deleted.clone(),
            all[2].clone(),
            next.clone()
        ]
    );
    assert!(page.changes.is_empty());
}

pub async fn a_change_to_a_missing_or_deleted_message_is_gone_and_adds_no_event(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 2).await;
    let unknown = id_after(all[1].id);
    assert_eq!(
        store.change(&r, &unknown, Change::Delete).await.unwrap(),
        Changed::Gone
    );
    assert_eq!(
        store
            .change(&room("elsewhere"), &all[0].id, edit_to("x"))
            .await
            .unwrap(),
        Changed::Gone,
        "a message of another room"
    );
    assert_eq!(
        store.get(&room("elsewhere"), &all[0].id).await.unwrap(),
        None
    );
    let delete = done(store.change(&r, &all[0].id, Change::Delete).await.unwrap());
    let tombstone = store.get(&r, &all[0].id).await.unwrap();
    assert_eq!(
        store.change(&r, &all[0].id, edit_to("back")).await.unwrap(),
        Changed::Gone
    );
    assert_eq!(
        store.change(&r, &all[0].id, Change::Delete).await.unwrap(),
        Changed::Gone
    );
    // Nothing changed, and no event was added. (A store that reads the message at the room's
    // turn, as DynamoDB's does, passes that turn on unused: its seq is a hole.)
    assert_eq!(store.get(&r, &all[0].id).await.unwrap(), tombstone);
    let after = store
        .page(&r, Cursor::AfterSeq(delete.seq), 10)
        .await
        .unwrap();
    assert_eq!(after, Page::default(), "no event after the delete");
    assert_eq!(store.get(&r, &unknown).await.unwrap(), None);
}

pub async fn events_after_a_seq_hold_messages_and_changes_in_seq_order(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 4).await; // seq 1..=4
    done(
        store
            .change(&r, &all[0].id, edit_to("first edit"))
            .await
            .unwrap(),
    ); // 5
    let m4 = append_new(&*store, message("r", "ada", "m4", None)).await; // 6
    done(
        store
            .change(&r, &all[0].id, edit_to("second edit"))
            .await
            .unwrap(),
    ); // 7
    done(
        store
            .change(&r, &m4.id, edit_to("m4 edited"))
            .await
            .unwrap(),
    ); // 8
    done(
        store
            .change(&r, &all[2].id, edit_to("soon gone"))
            .await
            .unwrap(),
    ); // 9
    done(store.change(&r, &all[2].id, Change::Delete).await.unwrap()); // 10

    let seqs = |page: &Page| {
        let mut seqs: Vec<u64> = page
            .messages
            .iter()
            .map(|m| m.seq)
            .chain(page.changes.iter().map(|c| c.seq))
            .collect();
        seqs.sort_unstable();
        seqs
    };
    let page = store.page(&r, Cursor::AfterSeq(3), 100).await.unwrap();
    // A message keeps one event of each kind, its latest: seq 5 (an edit that seq 7 superseded)
    // and seq 9 (an edit of a message deleted since) are no events any more; the later ones
    // say all, and no page is made of such holes.
    assert_eq!(seqs(&page), [4, 6, 7, 8, 10]);
    assert!(!page.has_more);
    let edited = |seq: u64, id: MessageId, text: &str, message: &StoredMessage| MessageChange {
        room: r.clone(),
        id,
        seq,
        kind: ChangeKind::Edited {
            text: text.to_owned(),
            edited_at: message.edited_at.expect("edited"),
        },
    };
    let m0_now = store.get(&r, &all[0].id).await.unwrap().unwrap();
    let m4_now = store.get(&r, &m4.id).await.unwrap().unwrap();
    assert_eq!(page.messages, [all[3].clone(), m4_now.clone()]);
    assert_eq!(
        page.changes,
        [
            // An edit shows the text as it is now.
            edited(7, all[0].id, "second edit", &m0_now),
            edited(8, m4.id, "m4 edited", &m4_now),
            MessageChange {
                room: r.clone(),
                id: all[2].id,
                seq: 10,
                kind: ChangeKind::Deleted,
            },
        ]
    );
    // The limit counts both; a page ends where its limit does.
    let first = store.page(&r, Cursor::AfterSeq(3), 3).await.unwrap();
    assert_eq!(seqs(&first), [4, 6, 7]);
    assert!(first.has_more);
    let rest = store.page(&r, Cursor::AfterSeq(7), 2).await.unwrap();
    assert_eq!(seqs(&rest), [8, 10]);
    assert!(!rest.has_more, "seq 9 is not an event any more");
    let after_the_hole = store.page(&r, Cursor::AfterSeq(8), 1).await.unwrap();
    assert_eq!(
        (seqs(&after_the_hole), after_the_hole.has_more),
        (vec![10], false)
    );
    let none = store.page(&r, Cursor::AfterSeq(10), 3).await.unwrap();
    assert_eq!((seqs(&none), none.has_more), (vec![], false));
    // A page of the whole room, from the start: the deleted message as its tombstone.
    let everything = store.page(&r, Cursor::AfterSeq(0), 100).await.unwrap();
    assert_eq!(everything.messages.len(), 5);
    assert!(everything.messages[2].deleted);
    assert_eq!(seqs(&everything), [1, 2, 3, 4, 6, 7, 8, 10]);
}

fn react(emoji: &str, by: &str, add: bool) -> Change {
    Change::React {
        emoji: crate::domain::Emoji::parse(emoji).expect("a valid emoji"),
        by: by.to_owned(),
        add,
    }
}

fn summary(message: &StoredMessage) -> Vec<(String, usize)> {
    message
        .reactions
        .iter()
        .map(|(emoji, users)| (emoji.clone(), users.len()))
        .collect()
}

pub async fn a_reaction_counts_once_per_user_and_kind_and_is_an_event(
    factory: &dyn MessageStoreFactory,
) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 2).await;
    let id = all[0].id;
    let first = done(
        store
            .change(&r, &id, react("👍", "u:ada", true))
            .await
            .unwrap(),
    );
    assert_eq!(first.seq, 3);
    let ChangeKind::Reactions { reactions } = &first.kind else {
        panic!("reactions: {first:?}")
    };
    assert_eq!(reactions.get("👍").map(|users| users.len()), Some(1));
    // Twice by the same user: nothing changes, no event.
    assert_eq!(
        store
            .change(&r, &id, react("👍", "u:ada", true))
            .await
            .unwrap(),
        Changed::Unchanged
    );
    assert_eq!(
        store
            .change(&r, &id, react("🎉", "u:ada", false))
            .await
            .unwrap(),
        Changed::Unchanged,
        "unreact of a reaction never made"
    );
    done(
        store
            .change(&r, &id, react("👍", "u:bob", true))
            .await
            .unwrap(),
    );
    let last = done(
        store
            .change(&r, &id, react("🎉", "c:guest", true))
            .await
            .unwrap(),
    );
    let now = store.get(&r, &id).await.unwrap().unwrap();
    assert_eq!(summary(&now), [("🎉".into(), 1), ("👍".into(), 2)]);
    assert_eq!(now.text, all[0].text, "the text stays");
    // The events: one for the message's reactions, the latest, showing them as they are now.
    let page = store.page(&r, Cursor::AfterSeq(2), 100).await.unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(
        page.changes,
        [MessageChange {
            room: r.clone(),
            id,
            seq: last.seq,
            kind: ChangeKind::Reactions {
                reactions: now.reactions.clone()
            },
        }]
    );
    // History shows a message with its reactions.
    let history = store.page(&r, Cursor::Latest, 10).await.unwrap();
    assert_eq!(history.messages[0].reactions, now.reactions);
    // Unreact takes one away; the last one takes the kind away.
    done(
        store
            .change(&r, &id, react("🎉", "c:guest", false))
            .await
            .unwrap(),
    );
    let now = store.get(&r, &id).await.unwrap().unwrap();
    assert_eq!(summary(&now), [("👍".into(), 2)]);
    // A delete takes the reactions with it, and their event out of the sequence.
    let delete = done(store.change(&r, &id, Change::Delete).await.unwrap());
    let tombstone = store.get(&r, &id).await.unwrap().unwrap();
    assert!(tombstone.deleted && tombstone.reactions.is_empty());
    let page = store.page(&r, Cursor::AfterSeq(2), 100).await.unwrap();
    assert_eq!(page.changes.len(), 1, "{page:?}");
    assert_eq!(page.changes[0].seq, delete.seq);
    assert_eq!(
        store
            .change(&r, &id, react("👍", "u:cat", true))
            .await
            .unwrap(),
        Changed::Gone
    );
}

pub async fn a_message_holds_at_most_twenty_kinds_of_reaction(factory: &dyn MessageStoreFactory) {
    let store = factory.fresh().await;
    let r = room("r");
    let all = fill(&*store, "r", 1).await;
    let id = all[0].id;
    for kind in 0..crate::domain::MAX_REACTION_KINDS {
        done(
            store
                .change(&r, &id, react(&format!("k{kind}"), "u:ada", true))
                .await
                .unwrap(),
        );
    }
    let seq = store.latest_seq(&r).await.unwrap();
    assert_eq!(
        store
            .change(&r, &id, react("one-more", "u:ada", true))
            .await
            .unwrap(),
        Changed::TooManyReactions
    );
    // A kind it has already is always fine.
    done(
        store
            .change(&r, &id, react("k0", "u:bob", true))
            .await
            .unwrap(),
    );
    let now = store.get(&r, &id).await.unwrap().unwrap();
    assert_eq!(now.reactions.len(), crate::domain::MAX_REACTION_KINDS);
    assert!(store.latest_seq(&r).await.unwrap() > seq);
}

pub async fn only_the_sender_may_change_a_message(factory: &dyn MessageStoreFactory) {
    use crate::domain::{ConnectionId, Editor};
    let store = factory.fresh().await;
    let ada = user("Ada", "user-1");
    let by_user = append_new(&*store, message_from("r", &ada, "signed", None)).await;
    let by_guest = append_new(&*store, message("r", "guest", "anonymous", None)).await;
    // As stored and read back: what decides who may change it survives the store.
    let by_user = store.get(&room("r"), &by_user.id).await.unwrap().unwrap();
    let by_guest = store.get(&room("r"), &by_guest.id).await.unwrap().unwrap();
    let other = ConnectionId::new("another-connection");
    let guest_connection = super::fixtures::connection_of(&guest("guest"));
    let connection = |id, user_id| Editor::Connection { id, user_id };
    assert!(
        by_user.may_be_changed_by(connection(&other, Some("user-1"))),
        "any of its user's connections"
    );
    assert!(!by_user.may_be_changed_by(connection(&other, Some("user-2"))));
    assert!(!by_user.may_be_changed_by(connection(&other, None)));
    assert!(
        by_guest.may_be_changed_by(connection(&guest_connection, None)),
        "its connection"
    );
    assert!(
        !by_guest.may_be_changed_by(connection(&other, None)),
        "another guest, same name or not"
    );
    assert!(!by_guest.may_be_changed_by(connection(&guest_connection, Some("user-1"))));
    assert!(
        by_user.may_be_changed_by(Editor::Server) && by_guest.may_be_changed_by(Editor::Server)
    );
}

pub async fn read_state_moves_forward_only_and_counts_the_messages_after_it(
    factory: &dyn MessageStoreFactory,
) {
    use crate::domain::ReadState;
    let store = factory.fresh().await;
    let r = room("r");
    assert_eq!(
        store.read_state(&r, "u:ada").await.unwrap(),
        ReadState::default(),
        "an empty room: nothing to read"
    );
    let all = fill(&*store, "r", 6).await;
    assert_eq!(
        store.read_state(&r, "u:ada").await.unwrap(),
        ReadState {
            last_read: None,
            unread: 6
        },
        "no mark: every message is unread"
    );
    assert_eq!(
        store.mark_read(&r, "u:ada", &all[3].id).await.unwrap(),
        Some(all[3].id)
    );
    assert_eq!(
        store.read_state(&r, "u:ada").await.unwrap(),
        ReadState {
            last_read: Some(all[3].id),
            unread: 2
        }
    );
    // Never back: a mark of an earlier message keeps the later one.
    assert_eq!(
        store.mark_read(&r, "u:ada", &all[1].id).await.unwrap(),
        Some(all[3].id)
    );
    // An id of no message of the room is refused, and changes nothing.
    assert_eq!(
        store
            .mark_read(&r, "u:ada", &id_after(all[5].id))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .mark_read(&room("other"), "u:ada", &all[5].id)
            .await
            .unwrap(),
        None
    );
    // Edits and reactions are not messages; a new message is.
    done(
        store
            .change(&r, &all[5].id, edit_to("changed"))
            .await
            .unwrap(),
    );
    assert_eq!(store.read_state(&r, "u:ada").await.unwrap().unread, 2);
    let next = append_new(&*store, message("r", "bob", "new", None)).await;
    assert_eq!(store.read_state(&r, "u:ada").await.unwrap().unread, 3);
    // Each reader has its own; the last message read: none unread.
    assert_eq!(store.read_state(&r, "c:guest").await.unwrap().unread, 7);
    store.mark_read(&r, "c:guest", &next.id).await.unwrap();
    assert_eq!(
        store.read_state(&r, "c:guest").await.unwrap(),
        ReadState {
            last_read: Some(next.id),
            unread: 0
        }
    );
    assert_eq!(store.read_state(&r, "u:ada").await.unwrap().unread, 3);
    // Read together (for `joined`), the same as read apart.
    assert_eq!(
        store.seq_and_read_state(&r, "u:ada").await.unwrap(),
        (
            store.latest_seq(&r).await.unwrap(),
            store.read_state(&r, "u:ada").await.unwrap()
        )
    );
}

/// Not in the suite's macro (a thousand appends are slow on moto, and DynamoDB's count is a
/// difference of two numbers): run it on stores that count in an index, as SQLite's does.
pub async fn unread_counts_reach_past_what_a_frame_shows(factory: &dyn MessageStoreFactory) {
    use crate::domain::MAX_UNREAD;
    let store = factory.fresh().await;
    let r = room("busy");
    let first = append_new(&*store, message("busy", "ada", "first", None)).await;
    store.mark_read(&r, "u:bob", &first.id).await.unwrap();
    for i in 0..(MAX_UNREAD + 5) {
        append_new(&*store, message("busy", "ada", &format!("m{i}"), None)).await;
    }
    let unread = store.read_state(&r, "u:bob").await.unwrap().unread;
    assert!(unread >= MAX_UNREAD, "{unread}");
}

pub async fn a_direct_room_keeps_its_two_users(factory: &dyn MessageStoreFactory) {
    use crate::ports::DirectUsers;
    let store = factory.fresh().await;
    let dm = RoomName::direct("user-ada", "user-bob");
    assert_eq!(
        dm,
        RoomName::direct("user-bob", "user-ada"),
        "whoever opens it"
    );
    assert_ne!(dm, RoomName::direct("user-ada", "user-cat"));
    assert_ne!(
        RoomName::direct("a:b", "c"),
        RoomName::direct("a", "b:c"),
        "no two pairs make one name"
    );
    assert!(dm.as_str().starts_with("dm.") && dm.as_str().len() <= RoomName::MAX_LEN);
    assert_eq!(store.direct_users(&dm).await.unwrap(), None);
    let users = DirectUsers::new("user-bob", "user-ada");
    store.open_direct(&dm, &users).await.unwrap();
    store.open_direct(&dm, &users).await.unwrap();
    assert_eq!(
        store.direct_users(&dm).await.unwrap(),
        Some(DirectUsers("user-ada".into(), "user-bob".into()))
    );
    assert_eq!(store.direct_users(&room("dm.other")).await.unwrap(), None);
}

pub async fn grants_and_bans_are_kept_per_room_and_user_each_apart(
    factory: &dyn MessageStoreFactory,
) {
    use crate::domain::{AccessChange, UserAccess};
    let store = factory.fresh().await;
    let (team, other) = (room("private.team"), room("private.other"));
    assert_eq!(
        store.access(&team, "user-ada").await.unwrap(),
        UserAccess::default(),
        "nothing set: neither granted nor banned"
    );
    store
        .set_access(&team, "user-ada", AccessChange::Grant(true))
        .await
        .unwrap();
    store
        .set_access(&team, "user-ada", AccessChange::Ban(true))
        .await
        .unwrap();
    let both = UserAccess {
        granted: true,
        banned: true,
    };
    assert_eq!(store.access(&team, "user-ada").await.unwrap(), both);
    // Each half changes alone, and a repeat changes nothing.
    store
        .set_access(&team, "user-ada", AccessChange::Ban(false))
        .await
        .unwrap();
    store
        .set_access(&team, "user-ada", AccessChange::Ban(false))
        .await
        .unwrap();
    assert_eq!(
        store.access(&team, "user-ada").await.unwrap(),
        UserAccess {
            granted: true,
            banned: false
        }
    );
    store
        .set_access(&team, "user-ada", AccessChange::Grant(false))
        .await
        .unwrap();
    assert_eq!(
        store.access(&team, "user-ada").await.unwrap(),
        UserAccess::default()
    );
    // Another room, another user: untouched.
    store
        .set_access(&other, "user-bob", AccessChange::Grant(true))
        .await
        .unwrap();
    assert_eq!(
        store.access(&other, "user-ada").await.unwrap(),
        UserAccess::default()
    );
    assert_eq!(
        store.access(&team, "user-bob").await.unwrap(),
        UserAccess::default()
    );
    assert!(store.access(&other, "user-bob").await.unwrap().granted);
}
