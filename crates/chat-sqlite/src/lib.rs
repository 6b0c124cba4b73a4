//! The local binary's message store: one SQLite file in WAL mode.
//!
//! Every acknowledged message is durable: `append` returns only after the transaction holding
//! it is committed with `synchronous = FULL`, so neither a crash nor a power cut loses it.
//! To keep that affordable, writes go through one writer thread that commits whatever has queued
//! up in one transaction (group commit): under load, one fsync serves many messages; alone, a
//! message waits for its own. Reads use a second connection, which WAL lets run beside the writer.
//!
//! The writer also gives each message its room's next `seq` and an id after the room's latest,
//! inside the transaction that stores it, so both are in the order messages are stored.
//!
//! Checkpoints (copying the WAL back into the main file) run on a third connection, in the
//! background, once a second: off the commit path, so that an `ack` never waits for one, and
//! less often than SQLite's default (every 1,000 WAL pages), so that a page written by many
//! commits is copied back once. The writer still checkpoints by itself past a much larger WAL.
//! Under sustained load that is what empties it: a passive pass copies what was committed when
//! it began, the writer appends meanwhile, so the background never finds the WAL all copied and
//! it never starts over (docs/bench/counts-notes.md: a 9-12 ms commit every 3.4 s at 4,000 msg/s).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_core::clock::now_ms;
use chat_core::domain::{
    AccessChange, Change, ClientMsgId, ConnectionId, Cursor, DisplayName, LoggedKind, MAX_UNREAD,
    Member, MessageChange, MessageId, NewMessage, Page, Reactions, ReadState, RoomHead, RoomName,
    StoredMessage, UserAccess,
};
use chat_core::memory::{LoggedChange, merge_events, messages_to_read, replay};
use chat_core::ports::{Appended, Changed, DirectUsers, MessageStore, StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::oneshot;

/// The most appends committed in one transaction.
const MAX_BATCH: usize = 256;
/// Group commit is paced: a commit starts at least this many times the measured cost of a
/// commit (its wall time, mostly the fsync) after the previous one started, so that under
/// load the writer spends at most about a quarter of its time committing and every commit
/// carries about four times the writes it would carry unpaced. A write that finds the writer
/// idle for longer than that is committed at once.
const COMMIT_SPACING: u32 = 4;
/// The most a write waits for others to share its commit: a bound on the latency pacing adds.
const MAX_COMMIT_WAIT: Duration = Duration::from_millis(1);
/// How often the background checkpointer runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// WAL pages past which the writer checkpoints by itself (SQLite's default is 1,000).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 50_000;

/// The schema of version 4. Files of versions 1 (no `seq`) and 2 (no changes) are migrated by
/// [`migrate`]; version 3 lacked only the `access` table, which this creates.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    room           TEXT NOT NULL,
    id             TEXT NOT NULL,   -- UUID v7, lowercase: sorts like seq (StoredMessage::stamp)
    seq            INTEGER NOT NULL, -- the room's sequence number: 1, 2, 3...
    ts             INTEGER NOT NULL,
    sender_name    TEXT NOT NULL,
    sender_user_id TEXT,
    sender_key     TEXT NOT NULL,   -- who a clientMsgId belongs to
    text           TEXT NOT NULL,   -- '' once deleted
    client_msg_id  TEXT,
    edited_at      INTEGER,
    reactions      TEXT,            -- JSON: each reaction to its users; NULL without any
    deleted        INTEGER NOT NULL DEFAULT 0,
    author_connection TEXT,         -- without a user id, the connection that may change it
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_msg_id
    ON messages (room, sender_key, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (room, seq);
-- Edits, reactions and deletes, each an event of its room with its own seq, at most one of
-- each kind per message (its latest; a delete takes the others out). What one shows is read
-- from the message (a text is not kept twice, so a delete removes it everywhere).
CREATE TABLE IF NOT EXISTS changes (
    room    TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    id      TEXT NOT NULL,
    kind    TEXT NOT NULL,          -- edit, reactions, delete
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS changes_by_message ON changes (room, id);
-- Direct rooms: their two users.
CREATE TABLE IF NOT EXISTS direct_rooms (
    room    TEXT PRIMARY KEY,
    user_a  TEXT NOT NULL,
    user_b  TEXT NOT NULL
) WITHOUT ROWID;
-- Read state: the message each reader (a user, or a guest's connection) read up to.
CREATE TABLE IF NOT EXISTS reads (
    room    TEXT NOT NULL,
    reader  TEXT NOT NULL,
    id      TEXT NOT NULL,
    PRIMARY KEY (room, reader)
) WITHOUT ROWID;
-- The server API's grants (of private. rooms) and bans, per room and user.
CREATE TABLE IF NOT EXISTS access (
    room    TEXT NOT NULL,
    user    TEXT NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    banned  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
PRAGMA user_version = 4;
";

/// Version 1 had no `seq`: each room's messages are numbered in id order, which was the order
/// they were stored (one writer gave them their ids).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET seq = numbered.seq
    FROM (SELECT room, id, row_number() OVER (PARTITION BY room ORDER BY id) AS seq
          FROM messages) AS numbered
    WHERE messages.room = numbered.room AND messages.id = numbered.id;
";

/// Version 2 had no edits, deletes or reactions.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN reactions TEXT;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN author_connection TEXT;
";

/// Brings a file of an earlier version to [`SCHEMA`]'s, in one transaction.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let tx = conn.transaction()?;
    if version == 1 {
        tx.execute_batch(MIGRATE_1_TO_2)?;
        tracing::info!("message store migrated from version 1: messages numbered by room");
    }
    if version == 1 || version == 2 {
        tx.execute_batch(MIGRATE_2_TO_3)?;
        tracing::info!("message store migrated to version 3: edits, deletes and reactions");
    }
    tx.execute_batch(SCHEMA)?;
    tx.commit()
}

const COLUMNS: &str = "room, id, ts, sender_name, sender_user_id, text, client_msg_id, seq, \
     edited_at, deleted, author_connection, reactions";

/// What the writer thread is asked to do.
enum WriteRequest {
    Append {
        message: NewMessage,
        reply: oneshot::Sender<StoreResult<Appended>>,
    },
    Change {
        room: RoomName,
        id: MessageId,
        change: Change,
        reply: oneshot::Sender<StoreResult<Changed>>,
    },
    MarkRead {
        room: RoomName,
        reader: String,
        id: MessageId,
        reply: oneshot::Sender<StoreResult<Option<MessageId>>>,
    },
    /// A statement in the batch's transaction that answers nothing but done (opening a direct
    /// room, setting a user's access).
    Execute {
        sql: &'static str,
        params: Vec<String>,
        reply: oneshot::Sender<StoreResult<()>>,
    },
}

/// A request's answer, sent once its transaction is committed.
enum Answer {
    Append(
        oneshot::Sender<StoreResult<Appended>>,
        StoreResult<Appended>,
    ),
    Change(oneshot::Sender<StoreResult<Changed>>, StoreResult<Changed>),
    MarkRead(
        oneshot::Sender<StoreResult<Option<MessageId>>>,
        StoreResult<Option<MessageId>>,
    ),
    Execute(oneshot::Sender<StoreResult<()>>, StoreResult<()>),
}

impl Answer {
    /// Sends the result (or `error`, when the commit failed). The caller may have gone away
    /// (its connection closed); what was committed stays.
    fn send(self, error: Option<&rusqlite::Error>) {
        match self {
            Self::Append(reply, result) => {
                let _ = reply.send(error.map_or(result, |e| Err(store_error(e))));
            }
            Self::Change(reply, result) => {
                let _ = reply.send(error.map_or(result, |e| Err(store_error(e))));
            }
            Self::MarkRead(reply, result) => {
                let _ = reply.send(error.map_or(result, |e| Err(store_error(e))));
            }
            Self::Execute(reply, result) => {
                let _ = reply.send(error.map_or(result, |e| Err(store_error(e))));
            }
        }
    }
}

/// Messages in SQLite. Call [`SqliteMessages::close`] on shutdown to flush and checkpoint.
pub struct SqliteMessages {
    /// The writer thread's queue; `None` once closed.
    writer: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Dropping the sender stops the background checkpointer.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Reads are short; one connection behind a lock, used from blocking threads, suffices.
    reader: Arc<Mutex<Connection>>,
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e)
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // What a delete removes is overwritten with zeros, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

impl SqliteMessages {
    /// Opens (or creates) the database file and its schema.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                store_error(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let writer_conn = open_connection(path)
            .and_then(|mut conn| migrate(&mut conn).map(|()| conn))
            .and_then(|conn| {
                conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
                    .map(|()| conn)
            })
            .map_err(|e| store_error(format!("cannot open {}: {e}", path.display())))?;
        let reader = open_connection(path).map_err(store_error)?;
        let checkpoint_conn = open_connection(path).map_err(store_error)?;
        let (stop, stopped) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoint_conn, stopped))
            .map_err(store_error)?;
        let (tx, rx) = mpsc::channel();
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(writer_conn, rx))
            .map_err(store_error)?;
        Ok(Self {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Finishes the queued writes, checkpoints the WAL into the main file and stops the writer.
    /// Appends after this fail.
    pub fn close(&self) {
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the SQLite checkpoint thread panicked");
            }
        }
        drop(
            self.writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
    }

    /// Queues a write for the writer thread (`request` makes it around its reply channel), and
    /// waits for its answer: after its transaction is committed.
    async fn write<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteRequest,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        {
            let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer
                .as_ref()
                .ok_or_else(|| store_error("the message store is closed"))?
                .send(request(reply))
                .map_err(|_| store_error("the message store writer has stopped"))?;
        }
        answer
            .await
            .map_err(|_| store_error("the message store writer has stopped"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(store_error)?
        .map_err(store_error)
    }
}

impl Drop for SqliteMessages {
    fn drop(&mut self) {
        self.close();
    }
}

/// When the writer commits: the measured cost of a commit, and when the last one started.
/// Public so that the `append_cost` example paces its bare log by the same rule.
#[derive(Debug, Clone, Default)]
pub struct Pacing {
    /// A moving average of commits' wall time (the fsync, mostly).
    cost: Duration,
    last_start: Option<Instant>,
}

impl Pacing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Until when a batch opened at `now` waits for more writes: `COMMIT_SPACING` times the
    /// cost after the last commit started, at most `MAX_COMMIT_WAIT` after it (so never more
    /// than that after `now`, which is later), and not at all when that time has passed (a
    /// lone write after a quiet spell, or a disk whose fsync costs next to nothing).
    pub fn hold_until(&self, now: Instant) -> Option<Instant> {
        let spacing = (self.cost * COMMIT_SPACING).min(MAX_COMMIT_WAIT);
        let until = self.last_start? + spacing;
        (until > now).then_some(until)
    }

    /// A commit started at `started` and took `took`.
    pub fn record(&mut self, started: Instant, took: Duration) {
        self.cost = if self.last_start.is_none() {
            took
        } else {
            (self.cost * 7 + took) / 8
        };
        self.last_start = Some(started);
    }
}

fn run_writer(mut conn: Connection, queue: mpsc::Receiver<WriteRequest>) {
    let mut pacing = Pacing::new();
    let mut heads = Heads::default();
    while let Ok(first) = queue.recv() {
        let batch = gather(&queue, first, &pacing);
        let started = Instant::now();
        commit_batch(&mut conn, batch, &mut heads);
        pacing.record(started, started.elapsed());
    }
    // The queue is closed: shutting down.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "WAL checkpoint on close failed");
    }
}

/// The batch that `first` opens: what is queued behind it once pacing lets the commit start.
/// The writer sleeps through the hold rather than waiting on the queue, so that writes arriving
/// meanwhile do not wake it one by one (a futex wake-up and a context switch each).
fn gather(
    queue: &mpsc::Receiver<WriteRequest>,
    first: WriteRequest,
    pacing: &Pacing,
) -> Vec<WriteRequest> {
    let now = Instant::now();
    if let Some(until) = pacing.hold_until(now) {
        std::thread::sleep(until - now);
    }
    let mut batch = vec![first];
    // A closed queue ends the batch too; the writer's next `recv` sees it closed.
    while batch.len() < MAX_BATCH
        && let Ok(request) = queue.try_recv()
    {
        batch.push(request);
    }
    batch
}

/// Copies the WAL back into the main file once a second, without blocking the writer
/// (a passive checkpoint), until `stop` is dropped.
fn run_checkpointer(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
}

/// Each room's head as the writer last left it, which saves two index lookups per append (the
/// latest message, the latest change). What it remembers stays true while only this writer
/// commits: it forgets everything when a transaction of its own fails, and when another
/// connection committed since its last transaction (`PRAGMA data_version` moved: a second
/// process on the same file, or someone's `sqlite3` shell).
#[derive(Default)]
struct Heads {
    rooms: HashMap<String, RoomHead>,
    data_version: Option<i64>,
}

impl Heads {
    /// Rooms remembered at most; past this the writer starts over (a read per room again).
    const MAX_ROOMS: usize = 100_000;

    fn get(&mut self, conn: &Connection, room: &str) -> rusqlite::Result<RoomHead> {
        if let Some(head) = self.rooms.get(room) {
            return Ok(*head);
        }
        let head = room_head(conn, room)?;
        if self.rooms.len() >= Self::MAX_ROOMS {
            self.rooms.clear();
        }
        self.rooms.insert(room.to_owned(), head);
        Ok(head)
    }

    /// At the start of a transaction that holds the write lock (so that no other connection
    /// commits until it ends): forgets what another connection may have changed.
    fn check(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        // Once per batch: prepared once, not parsed again each time.
        let version = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        if self.data_version != Some(version) {
            self.forget();
            self.data_version = Some(version);
        }
        Ok(())
    }

    /// The room's head moved to `head` by a statement of the open transaction.
    fn moved(&mut self, room: &str, head: RoomHead) {
        if let Some(known) = self.rooms.get_mut(room) {
            *known = head;
        }
    }

    fn forget(&mut self) {
        self.rooms.clear();
    }
}

fn commit_batch(conn: &mut Connection, batch: Vec<WriteRequest>, heads: &mut Heads) {
    let deletes = batch.iter().any(|request| {
        matches!(
            request,
            WriteRequest::Change {
                change: Change::Delete,
                ..
            }
        )
    });
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a transaction");
            for request in batch {
                match request {
                    WriteRequest::Append { reply, .. } => drop(reply.send(Err(store_error(&e)))),
                    WriteRequest::Change { reply, .. } => drop(reply.send(Err(store_error(&e)))),
                    WriteRequest::MarkRead { reply, .. } => drop(reply.send(Err(store_error(&e)))),
                    WriteRequest::Execute { reply, .. } => drop(reply.send(Err(store_error(&e)))),
                }
            }
            return;
        }
    };
    if let Err(e) = heads.check(&tx) {
        tracing::warn!(error = %e, "cannot read the data version: room heads read again");
        heads.forget();
    }
    let answers: Vec<Answer> = batch
        .into_iter()
        .map(|request| match request {
            WriteRequest::Append { message, reply } => {
                Answer::Append(reply, append_in(&tx, heads, message))
            }
            WriteRequest::Change {
                room,
                id,
                change,
                reply,
            } => Answer::Change(reply, change_in(&tx, heads, &room, &id, &change)),
            WriteRequest::MarkRead {
                room,
                reader,
                id,
                reply,
            } => Answer::MarkRead(
                reply,
                mark_read_in(&tx, &room, &reader, &id).map_err(store_error),
            ),
            WriteRequest::Execute { sql, params, reply } => {
                let done = tx
                    .prepare_cached(sql)
                    .and_then(|mut statement| {
                        statement.execute(rusqlite::params_from_iter(params.iter()))
                    })
                    .map(|_| ())
                    .map_err(store_error);
                Answer::Execute(reply, done)
            }
        })
        .collect();
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "commit failed");
        // Rolled back: the heads this batch moved did not move.
        heads.forget();
        answers.into_iter().for_each(|answer| answer.send(Some(&e)));
        return;
    }
    if deletes {
        // A deleted text may still be in the WAL (the frames that wrote it) and in the main
        // file's old page: copy everything back and empty the WAL before the delete is
        // answered, so that the text is nowhere on disk by then. Deletes are rare; this costs
        // one checkpoint each.
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(0) => {}
            Ok(_) => tracing::warn!(
                "checkpoint after a delete: the WAL is busy, the text stays in it until the next one"
            ),
            Err(e) => tracing::warn!(error = %e, "checkpoint after a delete failed"),
        }
    }
    answers.into_iter().for_each(|answer| answer.send(None));
}

/// Edits or deletes a message, inside the writer's transaction, as the room's next event.
fn change_in(
    tx: &rusqlite::Transaction<'_>,
    heads: &mut Heads,
    room: &RoomName,
    id: &MessageId,
    change: &Change,
) -> StoreResult<Changed> {
    let Some(message) = get_message(tx, room.as_str(), id).map_err(store_error)? else {
        return Ok(Changed::Gone);
    };
    if message.deleted {
        return Ok(Changed::Gone);
    }
    let head = heads.get(tx, room.as_str()).map_err(store_error)?;
    let seq = head.seq + 1;
    let event = match MessageChange::of(&message, change, seq, now_ms()) {
        Ok(Some(event)) => event,
        Ok(None) => return Ok(Changed::Unchanged),
        Err(_) => return Ok(Changed::TooManyReactions),
    };
    let mut changed = message;
    changed.apply(&event);
    let reactions = if changed.reactions.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&changed.reactions).map_err(store_error)?)
    };
    let kind = change.logged_kind();
    tx.prepare_cached(
        "UPDATE messages SET text = ?3, edited_at = ?4, deleted = ?5, reactions = ?6
         WHERE room = ?1 AND id = ?2",
    )
    .and_then(|mut update| {
        update.execute(params![
            room.as_str(),
            id.to_string(),
            changed.text,
            changed.edited_at.map(|at| at as i64),
            changed.deleted,
            reactions,
        ])
    })
    .and_then(|_| {
        // One event of each kind per message, its latest: a delete takes them all out.
        tx.prepare_cached("DELETE FROM changes WHERE room = ?1 AND id = ?2 AND (kind = ?3 OR ?4)")?
            .execute(params![
                room.as_str(),
                id.to_string(),
                kind.as_str(),
                kind == LoggedKind::Delete
            ])
    })
    .and_then(|_| {
        tx.prepare_cached("INSERT INTO changes (room, seq, id, kind) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                room.as_str(),
                seq as i64,
                id.to_string(),
                kind.as_str()
            ])
    })
    .map_err(store_error)?;
    heads.moved(room.as_str(), RoomHead { seq, ..head });
    Ok(Changed::Done(event))
}

/// Moves the reader's mark up to `id` (never back: ids follow the room's order): where it is
/// now, or `None` when the room has no message `id`.
fn mark_read_in(
    tx: &rusqlite::Transaction<'_>,
    room: &RoomName,
    reader: &str,
    id: &MessageId,
) -> rusqlite::Result<Option<MessageId>> {
    if get_message(tx, room.as_str(), id)?.is_none() {
        return Ok(None);
    }
    tx.prepare_cached(
        "INSERT INTO reads (room, reader, id) VALUES (?1, ?2, ?3)
         ON CONFLICT (room, reader) DO UPDATE SET id = max(id, excluded.id)",
    )?
    .execute(params![room.as_str(), reader, id.to_string()])?;
    let now: String = tx
        .prepare_cached("SELECT id FROM reads WHERE room = ?1 AND reader = ?2")?
        .query_row(params![room.as_str(), reader], |row| row.get(0))?;
    Ok(MessageId::parse(&now).ok())
}

/// The reader's mark in the room, and the messages after it: counted in the index, up to one
/// more than a frame shows.
fn read_state(conn: &Connection, room: &str, reader: &str) -> rusqlite::Result<ReadState> {
    let last_read: Option<String> = conn
        .prepare_cached("SELECT id FROM reads WHERE room = ?1 AND reader = ?2")?
        .query_row(params![room, reader], |row| row.get(0))
        .optional()?;
    let unread: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE room = ?1 AND id > ?2 LIMIT ?3)",
        )?
        .query_row(
            params![
                room,
                last_read.as_deref().unwrap_or(""),
                (MAX_UNREAD + 1) as i64
            ],
            |row| row.get(0),
        )?;
    Ok(ReadState {
        last_read: last_read.and_then(|id| MessageId::parse(&id).ok()),
        unread: u64::try_from(unread).unwrap_or_default(),
    })
}

fn get_message(
    conn: &Connection,
    room: &str,
    id: &MessageId,
) -> rusqlite::Result<Option<StoredMessage>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND id = ?2"
    ))?
    .query_row(params![room, id.to_string()], read_message)
    .optional()
}

fn append_in(
    tx: &rusqlite::Transaction<'_>,
    heads: &mut Heads,
    message: NewMessage,
) -> StoreResult<Appended> {
    let sender_key = message.sender.sender_key();
    let head = heads.get(tx, message.room.as_str()).map_err(store_error)?;
    let stored = StoredMessage::stamp(message, head, now_ms());
    // Insert first, look the clientMsgId up only when its unique index refuses the row: a
    // retry is rare, and the insert checks that index anyway. (SQLite undoes the refused
    // statement alone; the transaction goes on.)
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (room, id, seq, ts, sender_name, sender_user_id, sender_key,
                                   text, client_msg_id, author_connection)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                stored.room.as_str(),
                stored.id.to_string(),
                stored.seq as i64,
                stored.ts as i64,
                stored.sender.name.as_str(),
                stored.sender.user_id,
                sender_key,
                stored.text,
                stored.client_msg_id.as_ref().map(ClientMsgId::as_str),
                stored.author_connection.as_ref().map(ConnectionId::as_str),
            ])
        });
    match inserted {
        Ok(_) => {
            heads.moved(
                stored.room.as_str(),
                RoomHead {
                    seq: stored.seq,
                    last_id: Some(stored.id),
                    ..head
                },
            );
            Ok(Appended::New(stored))
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
            let earlier = match &stored.client_msg_id {
                Some(client_msg_id) => find_by_client_msg_id(
                    tx,
                    stored.room.as_str(),
                    &sender_key,
                    client_msg_id.as_str(),
                )
                .map_err(store_error)?,
                None => None,
            };
            // Without an earlier message of that clientMsgId, the refusal was not a retry:
            // the writer's heads were wrong. Forget them and report it.
            earlier.map(Appended::Duplicate).ok_or_else(|| {
                heads.forget();
                store_error(e)
            })
        }
        Err(e) => Err(store_error(e)),
    }
}

/// The room's latest event and message, as the writer reads them inside its transaction: the
/// next append follows them.
fn room_head(conn: &Connection, room: &str) -> rusqlite::Result<RoomHead> {
    let latest = conn
        .prepare_cached("SELECT seq, id FROM messages WHERE room = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row(params![room], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?;
    let (mut head, last_id) = match latest {
        None => (0, None),
        Some((seq, id)) => (seq, MessageId::parse(&id).ok()),
    };
    head = head.max(latest_change(conn, room)?);
    Ok(RoomHead {
        seq: u64::try_from(head).unwrap_or_default(),
        last_id,
        // Unread counts are counted in the index here.
        messages: 0,
    })
}

/// The `seq` of the room's latest change, 0 without one.
fn latest_change(conn: &Connection, room: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE room = ?1")?
        .query_row(params![room], |row| row.get(0))
}

fn find_by_client_msg_id(
    conn: &Connection,
    room: &str,
    sender_key: &str,
    client_msg_id: &str,
) -> rusqlite::Result<Option<StoredMessage>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND sender_key = ?2 AND client_msg_id = ?3"
    ))?
    .query_row(params![room, sender_key, client_msg_id], read_message)
    .optional()
}

/// Reads a row back into a message. Rows were valid when written; a row that no longer parses
/// means the file was edited by hand, and is reported as a conversion error.
fn read_message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    fn bad(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    }
    let room: String = row.get(0)?;
    let id: String = row.get(1)?;
    let ts: i64 = row.get(2)?;
    let name: String = row.get(3)?;
    let client_msg_id: Option<String> = row.get(6)?;
    let seq: i64 = row.get(7)?;
    let edited_at: Option<i64> = row.get(8)?;
    let author_connection: Option<String> = row.get(10)?;
    Ok(StoredMessage {
        room: RoomName::parse(&room).map_err(|e| bad(0, e))?,
        id: MessageId::parse(&id).map_err(|e| bad(1, e))?,
        ts: u64::try_from(ts).unwrap_or_default(),
        seq: u64::try_from(seq).unwrap_or_default(),
        sender: Member {
            name: DisplayName::parse(&name).map_err(|e| bad(3, e))?,
            user_id: row.get(4)?,
        },
        text: row.get(5)?,
        client_msg_id: client_msg_id
            .map(|s| ClientMsgId::parse(&s))
            .transpose()
            .map_err(|e| bad(6, e))?,
        edited_at: edited_at.map(|at| u64::try_from(at).unwrap_or_default()),
        deleted: row.get(9)?,
        author_connection: author_connection.map(ConnectionId::new),
        reactions: match row.get::<_, Option<String>>(11)? {
            Some(json) => serde_json::from_str(&json).map_err(|e| bad(11, e))?,
            None => Reactions::new(),
        },
    })
}

#[async_trait]
impl MessageStore for SqliteMessages {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        self.write(|reply| WriteRequest::Append { message, reply })
            .await
    }

    async fn latest_seq(&self, room: &RoomName) -> StoreResult<u64> {
        let room = room.as_str().to_owned();
        self.read(move |conn| room_head(conn, &room).map(|head| head.seq))
            .await
    }

    async fn get(&self, room: &RoomName, id: &MessageId) -> StoreResult<Option<StoredMessage>> {
        let (room, id) = (room.as_str().to_owned(), *id);
        self.read(move |conn| get_message(conn, &room, &id)).await
    }

    async fn mark_read(
        &self,
        room: &RoomName,
        reader: &str,
        id: &MessageId,
    ) -> StoreResult<Option<MessageId>> {
        self.write(|reply| WriteRequest::MarkRead {
            room: room.clone(),
            reader: reader.to_owned(),
            id: *id,
            reply,
        })
        .await
    }

    async fn open_direct(&self, room: &RoomName, users: &DirectUsers) -> StoreResult<()> {
        self.write(|reply| WriteRequest::Execute {
            sql: "INSERT OR IGNORE INTO direct_rooms (room, user_a, user_b) VALUES (?1, ?2, ?3)",
            params: vec![room.as_str().into(), users.0.clone(), users.1.clone()],
            reply,
        })
        .await
    }

    async fn direct_users(&self, room: &RoomName) -> StoreResult<Option<DirectUsers>> {
        let room = room.as_str().to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT user_a, user_b FROM direct_rooms WHERE room = ?1")?
                .query_row(params![room], |row| {
                    Ok(DirectUsers(row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .await
    }

    async fn access(&self, room: &RoomName, user_id: &str) -> StoreResult<UserAccess> {
        let (room, user_id) = (room.as_str().to_owned(), user_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached("SELECT granted, banned FROM access WHERE room = ?1 AND user = ?2")?
                .query_row(params![room, user_id], |row| {
                    Ok(UserAccess {
                        granted: row.get(0)?,
                        banned: row.get(1)?,
                    })
                })
                .optional()
                .map(Option::unwrap_or_default)
        })
        .await
    }

    async fn set_access(
        &self,
        room: &RoomName,
        user_id: &str,
        change: AccessChange,
    ) -> StoreResult<()> {
        // One column changes; the other keeps its value (0 for a row made now).
        let sql = match change {
            AccessChange::Grant(_) => {
                "INSERT INTO access (room, user, granted) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (room, user) DO UPDATE SET granted = excluded.granted"
            }
            AccessChange::Ban(_) => {
                "INSERT INTO access (room, user, banned) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (room, user) DO UPDATE SET banned = excluded.banned"
            }
        };
        let on = matches!(change, AccessChange::Grant(true) | AccessChange::Ban(true));
        self.write(|reply| WriteRequest::Execute {
            sql,
            params: vec![
                room.as_str().into(),
                user_id.into(),
                u8::from(on).to_string(),
            ],
            reply,
        })
        .await
    }

    async fn read_state(&self, room: &RoomName, reader: &str) -> StoreResult<ReadState> {
        let (room, reader) = (room.as_str().to_owned(), reader.to_owned());
        self.read(move |conn| read_state(conn, &room, &reader))
            .await
    }

    async fn change(
        &self,
        room: &RoomName,
        id: &MessageId,
        change: Change,
    ) -> StoreResult<Changed> {
        self.write(|reply| WriteRequest::Change {
            room: room.clone(),
            id: *id,
            change,
            reply,
        })
        .await
    }

    async fn find_by_client_msg_id(
        &self,
        room: &RoomName,
        sender_key: &str,
        client_msg_id: &ClientMsgId,
    ) -> StoreResult<Option<StoredMessage>> {
        let (room, sender_key, client_msg_id) = (
            room.as_str().to_owned(),
            sender_key.to_owned(),
            client_msg_id.as_str().to_owned(),
        );
        self.read(move |conn| find_by_client_msg_id(conn, &room, &sender_key, &client_msg_id))
            .await
    }

    async fn page(&self, room: &RoomName, cursor: Cursor, limit: usize) -> StoreResult<Page> {
        if let Cursor::AfterSeq(seq) = cursor {
            let room = room.clone();
            return self
                .read(move |conn| events_after(conn, &room, seq, limit))
                .await;
        }
        let room = room.as_str().to_owned();
        self.read(move |conn| {
            // One row past the page tells whether there is more.
            let fetch = (limit + 1) as i64;
            // Ids and seqs sort alike within a room; each cursor uses its own index.
            let (sql, position) = match cursor {
                Cursor::Latest => ("WHERE room = ?1 ORDER BY id DESC LIMIT ?2", None),
                Cursor::Before(id) => (
                    "WHERE room = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?2",
                    Some(id.to_string().into()),
                ),
                Cursor::After(id) => (
                    "WHERE room = ?1 AND id > ?3 ORDER BY id ASC LIMIT ?2",
                    Some(id.to_string().into()),
                ),
                Cursor::AfterSeq(seq) => (
                    "WHERE room = ?1 AND seq > ?3 ORDER BY seq ASC LIMIT ?2",
                    // Past SQLite's integers: after everything.
                    Some(i64::try_from(seq).unwrap_or(i64::MAX).into()),
                ),
            };
            let mut statement =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM messages {sql}"))?;
            let rows = match position {
                None => statement.query_map(params![room, fetch], read_message)?,
                Some::<rusqlite::types::Value>(position) => {
                    statement.query_map(params![room, fetch, position], read_message)?
                }
            };
            let mut messages = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            if matches!(cursor, Cursor::Latest | Cursor::Before(_)) {
                messages.reverse();
            }
            Ok(Page {
                messages,
                changes: Vec::new(),
                has_more,
            })
        })
        .await
    }
}

/// The room's events after `seq`: its messages and changes after it, merged in `seq` order.
fn events_after(
    conn: &Connection,
    room: &RoomName,
    seq: u64,
    limit: usize,
) -> rusqlite::Result<Page> {
    // One row past the page tells whether there is more; past SQLite's integers: after
    // everything.
    let fetch = (limit + 1) as i64;
    let after = i64::try_from(seq).unwrap_or(i64::MAX);
    let messages = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))?
        .query_map(params![room.as_str(), after, fetch], read_message)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let changes = conn
        .prepare_cached(
            "SELECT seq, id, kind FROM changes WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![room.as_str(), after, fetch], |row| {
            let id: String = row.get(1)?;
            Ok(LoggedChange {
                seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or_default(),
                id: MessageId::parse(&id).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                kind: LoggedKind::parse(&row.get::<_, String>(2)?).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        "an unknown kind of change".into(),
                    )
                })?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let (messages, changes, has_more) = merge_events(messages, changes, limit);
    // An edit shows its message's text now: from the page when it is there, else read.
    let mut others = Vec::new();
    for id in messages_to_read(&messages, &changes) {
        others.extend(get_message(conn, room.as_str(), &id)?);
    }
    let changes = replay(room, &changes, &messages, &others);
    Ok(Page {
        messages,
        changes,
        has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    fn paced(cost: Duration, last_start: Instant) -> Pacing {
        let mut pacing = Pacing::new();
        pacing.record(last_start, cost);
        pacing
    }

    #[test]
    fn the_first_commit_is_not_held() {
        let now = Instant::now();
        assert_eq!(Pacing::new().hold_until(now), None);
    }

    #[test]
    fn a_commit_is_held_until_spacing_times_the_cost_after_the_last_one_started() {
        let t0 = Instant::now();
        let pacing = paced(100 * US, t0);
        let first = t0 + 150 * US;
        assert_eq!(pacing.hold_until(first), Some(t0 + 400 * US));
    }

    #[test]
    fn a_write_after_a_quiet_spell_is_committed_at_once() {
        let t0 = Instant::now();
        let pacing = paced(100 * US, t0);
        let first = t0 + 5 * MS;
        assert_eq!(pacing.hold_until(first), None);
    }

    #[test]
    fn once_the_hold_has_passed_the_batch_commits() {
        let t0 = Instant::now();
        let pacing = paced(100 * US, t0);
        assert_eq!(pacing.hold_until(t0 + 400 * US), None);
    }

    #[test]
    fn no_write_waits_longer_than_max_commit_wait() {
        let t0 = Instant::now();
        // A slow disk: four times its cost is far past the bound.
        let pacing = paced(10 * MS, t0);
        assert_eq!(pacing.hold_until(t0), Some(t0 + MAX_COMMIT_WAIT));
        let first = t0 + 900 * US;
        assert_eq!(pacing.hold_until(first), Some(t0 + MAX_COMMIT_WAIT));
    }

    #[test]
    fn the_cost_is_a_moving_average_of_commits() {
        let t0 = Instant::now();
        let mut pacing = paced(800 * US, t0);
        pacing.record(t0 + MS, Duration::ZERO);
        assert_eq!(pacing.cost, 700 * US);
        assert_eq!(pacing.last_start, Some(t0 + MS));
    }
}
