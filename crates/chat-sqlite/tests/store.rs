//! The SQLite message store on a real file: the port's conformance suite, and what only a file
//! shows (reopening it, reading it after a crash, closing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chat_core::domain::Cursor;
use chat_core::ports::{Appended, MessageStore};
use chat_core::testing::fixtures::{message, room, texts};
use chat_core::testing::message_store::MessageStoreFactory;
use chat_sqlite::SqliteMessages;

chat_core::message_store_conformance!(TempFiles::new());

/// Each store is a new file in a temporary directory, which lives as long as the test.
struct TempFiles {
    dir: tempfile::TempDir,
    opened: AtomicUsize,
}

impl TempFiles {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            opened: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl MessageStoreFactory for TempFiles {
    async fn fresh(&self) -> Arc<dyn MessageStore> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("chat-{n}.db"));
        Arc::new(SqliteMessages::open(&path).unwrap())
    }
}

#[tokio::test]
async fn messages_survive_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/chat.db");
    let store = SqliteMessages::open(&path).unwrap();
    let Appended::New(stored) = store
        .append(message("r", "ada", "kept", None))
        .await
        .unwrap()
    else {
        panic!("expected a new message");
    };
    store.close();
    drop(store);
    let reopened = SqliteMessages::open(&path).unwrap();
    let page = reopened.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert_eq!(page.messages, vec![stored]);
}

#[tokio::test]
async fn an_acknowledged_message_is_readable_without_a_clean_close() {
    // The file is read by a second, independent store while the first is still open: what
    // `append` returned is committed, not waiting in a buffer.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteMessages::open(&path).unwrap();
    store
        .append(message("r", "ada", "committed", None))
        .await
        .unwrap();
    let other = SqliteMessages::open(&path).unwrap();
    let page = other.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert_eq!(texts(&page), ["committed"]);
    std::mem::forget(store); // no close, no checkpoint: like a crash
}

#[tokio::test]
async fn appends_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMessages::open(&dir.path().join("chat.db")).unwrap();
    store.close();
    assert!(
        store
            .append(message("r", "ada", "late", None))
            .await
            .is_err()
    );
}

/// A file written by version 1 (no `seq`) opens with each room's messages numbered in id order,
/// and appends go on from there.
#[tokio::test]
async fn a_version_1_file_is_numbered_by_room_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (
                room TEXT NOT NULL, id TEXT NOT NULL, ts INTEGER NOT NULL,
                sender_name TEXT NOT NULL, sender_user_id TEXT, sender_key TEXT NOT NULL,
                text TEXT NOT NULL, client_msg_id TEXT, PRIMARY KEY (room, id)
             ) WITHOUT ROWID;
             CREATE UNIQUE INDEX messages_by_client_msg_id
                ON messages (room, sender_key, client_msg_id) WHERE client_msg_id IS NOT NULL;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        // Inserted out of id order, in two rooms.
        for (room, id, text) in [
            ("a", "0190a0b0-0000-7000-8000-000000000003", "a3"),
            ("a", "0190a0b0-0000-7000-8000-000000000001", "a1"),
            ("b", "0190a0b0-0000-7000-8000-000000000002", "b2"),
            ("a", "0190a0b0-0000-7000-8000-000000000002", "a2"),
        ] {
            conn.execute(
                "INSERT INTO messages VALUES (?1, ?2, 1720000000000, 'ada', NULL, 'n:ada', ?3, NULL)",
                rusqlite::params![room, id, text],
            )
            .unwrap();
        }
    }
    let store = SqliteMessages::open(&path).unwrap();
    let page = store.page(&room("a"), Cursor::Latest, 10).await.unwrap();
    let numbered: Vec<(&str, u64)> = page
        .messages
        .iter()
        .map(|m| (m.text.as_str(), m.seq))
        .collect();
    assert_eq!(numbered, [("a1", 1), ("a2", 2), ("a3", 3)]);
    assert_eq!(store.latest_seq(&room("b")).await.unwrap(), 1);
    let Appended::New(next) = store.append(message("a", "ada", "a4", None)).await.unwrap() else {
        panic!("expected a new message");
    };
    assert_eq!(next.seq, 4);
    assert!(next.id > page.messages[2].id);
    let after = store
        .page(&room("a"), Cursor::AfterSeq(2), 10)
        .await
        .unwrap();
    assert_eq!(texts(&after), ["a3", "a4"]);
}

/// Every byte of the store on disk: the main file, and the WAL beside it when there is one.
fn bytes_on_disk(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let wal = path.with_extension("db-wal");
    if let Ok(more) = std::fs::read(wal) {
        bytes.extend(more);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn a_deleted_text_is_nowhere_in_the_files_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteMessages::open(&path).unwrap();
    let secret = "my card number is 4111-1111-1111-1111";
    let edited_away = "first draft with a typo in it";
    let Appended::New(stored) = store
        .append(message("r", "ada", edited_away, None))
        .await
        .unwrap()
    else {
        panic!("expected a new message");
    };
    store
        .append(message("r", "ada", "a neighbour that stays", None))
        .await
        .unwrap();
    let edit = chat_core::domain::Change::Edit(
        chat_core::domain::MessageText::parse(secret.to_owned()).unwrap(),
    );
    store.change(&room("r"), &stored.id, edit).await.unwrap();
    assert!(
        contains(&bytes_on_disk(&path), secret),
        "the edit is stored"
    );
    store
        .change(&room("r"), &stored.id, chat_core::domain::Change::Delete)
        .await
        .unwrap();
    let on_disk = bytes_on_disk(&path);
    assert!(
        !contains(&on_disk, secret),
        "the deleted text is still in the files"
    );
    assert!(
        !contains(&on_disk, edited_away),
        "an earlier text is still in the files"
    );
    assert!(contains(&on_disk, "a neighbour that stays"));
    let page = store.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert!(page.messages[0].deleted && page.messages[0].text.is_empty());
}

#[tokio::test]
async fn unread_counts_reach_past_what_a_frame_shows() {
    chat_core::testing::message_store::unread_counts_reach_past_what_a_frame_shows(
        &TempFiles::new(),
    )
    .await;
}

#[tokio::test]
async fn two_stores_on_one_file_number_a_room_in_turn() {
    // Each writer remembers its rooms' heads; a commit by another connection (a second
    // process on the same file) must make it read them again, not reuse a taken seq.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let first = SqliteMessages::open(&path).unwrap();
    let second = SqliteMessages::open(&path).unwrap();
    let mut seqs = Vec::new();
    for (n, store) in [&first, &second, &first, &second, &first]
        .into_iter()
        .enumerate()
    {
        let appended = store
            .append(message(
                "r",
                "ada",
                &format!("m{n}"),
                Some(&format!("c{n}")),
            ))
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e}"));
        let Appended::New(stored) = appended else {
            panic!("append {n} was taken for a retry");
        };
        seqs.push(stored.seq);
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let page = first.page(&room("r"), Cursor::Latest, 10).await.unwrap();
    assert_eq!(texts(&page), ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_retry_is_recognised_by_a_store_that_remembers_the_rooms_head() {
    // The writer inserts first and looks the clientMsgId up only when the index refuses it:
    // the retry gets the first message back, and the room's next message its next seq.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMessages::open(&dir.path().join("chat.db")).unwrap();
    let first = store
        .append(message("r", "ada", "once", Some("c1")))
        .await
        .unwrap();
    let retry = store
        .append(message("r", "ada", "once", Some("c1")))
        .await
        .unwrap();
    let Appended::New(first) = first else {
        panic!("the first append is new")
    };
    assert_eq!(retry, Appended::Duplicate(first.clone()));
    let Appended::New(next) = store
        .append(message("r", "ada", "next", Some("c2")))
        .await
        .unwrap()
    else {
        panic!("a new clientMsgId is a new message")
    };
    assert_eq!(next.seq, first.seq + 1);
    assert!(next.id > first.id);
}
