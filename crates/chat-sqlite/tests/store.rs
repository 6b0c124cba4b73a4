//! The SQLite message store on a real file.

use std::sync::Arc;

use chat_core::domain::{
    ClientMsgId, Cursor, DisplayName, Member, MessageText, NewMessage, RoomName,
};
use chat_core::ports::{Appended, MessageStore};
use chat_sqlite::SqliteMessages;

fn message(room: &str, text: &str, client_msg_id: Option<&str>) -> NewMessage {
    NewMessage {
        room: RoomName::parse(room).unwrap(),
        sender: Member {
            name: DisplayName::parse("ada").unwrap(),
            user_id: None,
        },
        text: MessageText::parse(text.into()).unwrap(),
        client_msg_id: client_msg_id.map(|id| ClientMsgId::parse(id).unwrap()),
    }
}

fn texts(page: &chat_core::domain::Page) -> Vec<&str> {
    page.messages.iter().map(|m| m.text.as_str()).collect()
}

#[tokio::test]
async fn messages_survive_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/chat.db");
    let store = SqliteMessages::open(&path).unwrap();
    let Appended::New(stored) = store.append(message("r", "kept", None)).await.unwrap() else {
        panic!("expected a new message");
    };
    store.close();
    drop(store);
    let reopened = SqliteMessages::open(&path).unwrap();
    let page = reopened
        .page(&RoomName::parse("r").unwrap(), Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(page.messages, vec![stored]);
}

#[tokio::test]
async fn an_acknowledged_message_is_readable_without_a_clean_close() {
    // The file is read by a second, independent store while the first is still open: what
    // `append` returned is committed, not waiting in a buffer.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteMessages::open(&path).unwrap();
    store.append(message("r", "committed", None)).await.unwrap();
    let other = SqliteMessages::open(&path).unwrap();
    let page = other
        .page(&RoomName::parse("r").unwrap(), Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(texts(&page), ["committed"]);
    std::mem::forget(store); // no close, no checkpoint: like a crash
}

#[tokio::test]
async fn a_client_msg_id_is_stored_once_per_sender_and_room() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMessages::open(&dir.path().join("chat.db")).unwrap();
    let Appended::New(first) = store.append(message("r", "a", Some("c1"))).await.unwrap() else {
        panic!()
    };
    let again = store.append(message("r", "a", Some("c1"))).await.unwrap();
    assert_eq!(again, Appended::Duplicate(first.clone()));
    let found = store
        .find_by_client_msg_id(&first.room, "n:ada", &ClientMsgId::parse("c1").unwrap())
        .await
        .unwrap();
    assert_eq!(found, Some(first));
    assert!(matches!(
        store
            .append(message("other", "a", Some("c1")))
            .await
            .unwrap(),
        Appended::New(_)
    ));
}

#[tokio::test]
async fn concurrent_appends_are_all_stored_once_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteMessages::open(&dir.path().join("chat.db")).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            // Every tenth one is sent twice with the same clientMsgId.
            let client_msg_id = (i % 10 == 0).then(|| format!("c{i}"));
            tokio::spawn(async move {
                let first = store
                    .append(message("r", &format!("m{i}"), client_msg_id.as_deref()))
                    .await
                    .unwrap();
                if client_msg_id.is_some() {
                    store
                        .append(message("r", &format!("m{i}"), client_msg_id.as_deref()))
                        .await
                        .unwrap();
                }
                first
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Appended::New(_)));
    }
    let page = store
        .page(&RoomName::parse("r").unwrap(), Cursor::Latest, 100)
        .await
        .unwrap();
    assert!(page.has_more);
    let mut all = page.messages.clone();
    let older = store
        .page(
            &RoomName::parse("r").unwrap(),
            Cursor::Before(all[0].id),
            100,
        )
        .await
        .unwrap();
    assert!(!older.has_more);
    all.splice(0..0, older.messages);
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn pages_go_backwards_with_before_and_forwards_with_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMessages::open(&dir.path().join("chat.db")).unwrap();
    let room = RoomName::parse("r").unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        if let Appended::New(m) = store
            .append(message("r", &format!("m{i}"), None))
            .await
            .unwrap()
        {
            ids.push(m.id);
        }
    }
    store
        .append(message("elsewhere", "not here", None))
        .await
        .unwrap();
    let latest = store.page(&room, Cursor::Latest, 3).await.unwrap();
    assert_eq!(
        (texts(&latest), latest.has_more),
        (vec!["m7", "m8", "m9"], true)
    );
    let before = store.page(&room, Cursor::Before(ids[3]), 5).await.unwrap();
    assert_eq!(
        (texts(&before), before.has_more),
        (vec!["m0", "m1", "m2"], false)
    );
    let after = store.page(&room, Cursor::After(ids[2]), 3).await.unwrap();
    assert_eq!(
        (texts(&after), after.has_more),
        (vec!["m3", "m4", "m5"], true)
    );
    let tail = store.page(&room, Cursor::After(ids[6]), 5).await.unwrap();
    assert_eq!(
        (texts(&tail), tail.has_more),
        (vec!["m7", "m8", "m9"], false)
    );
    let empty = store
        .page(&RoomName::parse("none").unwrap(), Cursor::Latest, 5)
        .await
        .unwrap();
    assert_eq!((empty.messages.len(), empty.has_more), (0, false));
}

#[tokio::test]
async fn appends_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMessages::open(&dir.path().join("chat.db")).unwrap();
    store.close();
    assert!(store.append(message("r", "late", None)).await.is_err());
}
