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
