//! What an append costs the store's writer thread, alone: the target load of issue 16's counts
//! (100 rooms, 4,000 messages/s in all, texts of 100 bytes, no clientMsgId) sent straight to
//! `SqliteMessages::append`, without the network side. Prints the writer's CPU per message
//! (user and kernel, from /proc/self/task) and the slowest append.
//!
//! With `log` as the fifth argument the same load goes instead to the least a store that syncs
//! before it acknowledges can do: each message a ~250-byte record appended to a file, the
//! records queued during a commit written at once and `fdatasync`ed, paced by the SQLite
//! writer's own rule (`chat_sqlite::Pacing`: 4 × a commit's cost after the previous one, at
//! most 1 ms). No index, no reads:
//! the floor under any durable store at this load, not a store.
//!
//! `cargo run --release -p chat-sqlite --example append_cost -- [secs] [rate] [rooms] [dir] [log]`

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use chat_core::ports::MessageStore;
use chat_core::testing::fixtures::message;
use chat_sqlite::{Pacing, SqliteMessages};

/// (user, kernel) CPU in clock ticks of the threads named `name`.
fn thread_cpu(name: &str) -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        total.0 += fields[11].parse::<u64>().unwrap();
        total.1 += fields[12].parse::<u64>().unwrap();
    }
    total
}

/// A record for the bare log, and where its writer says it is synced.
type LogWrite = (Vec<u8>, tokio::sync::oneshot::Sender<()>);

/// Where the load goes: the SQLite store, or a bare log (its writer thread `log-writer`).
enum Target {
    Sqlite(SqliteMessages),
    Log(mpsc::Sender<LogWrite>),
}

impl Target {
    fn writer_thread(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite-writer",
            Target::Log(_) => "log-writer",
        }
    }

    async fn append(&self, room: &str, text: &str, seq: u64) {
        match self {
            Target::Sqlite(store) => {
                store
                    .append(message(room, "ada", text, None))
                    .await
                    .unwrap();
            }
            Target::Log(queue) => {
                // About what the store keeps of a message: room, id, seq, ts, sender, text.
                let record = format!(
                    "{{\"room\":\"{room}\",\"id\":\"{}\",\"seq\":{seq},\"ts\":{},\"sender\":{{\"name\":\"ada\"}},\"text\":\"{text}\"}}\n",
                    uuid::Uuid::now_v7(),
                    chat_core::clock::now_ms()
                );
                let (reply, done) = tokio::sync::oneshot::channel();
                queue.send((record.into_bytes(), reply)).unwrap();
                done.await.unwrap();
            }
        }
    }
}

/// The bare log's commits so far.
static LOG_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The bare log's writer: group commit paced by the SQLite writer's rule ([`Pacing`]).
fn run_log(path: std::path::PathBuf, queue: mpsc::Receiver<LogWrite>) {
    use std::os::unix::fs::FileExt;
    // Written ahead and synced, as a log's segments would be: a commit's `fdatasync` then
    // writes the records' blocks, not the file's new size and extents too.
    let file = std::fs::File::create(path).unwrap();
    let segment = vec![0u8; 64 << 20];
    file.write_all_at(&segment, 0).unwrap();
    file.sync_all().unwrap();
    let mut offset = 0u64;
    let mut pacing = Pacing::new();
    while let Ok(first) = queue.recv() {
        let now = Instant::now();
        if let Some(until) = pacing.hold_until(now) {
            std::thread::sleep(until - now);
        }
        let mut batch = vec![first];
        while let Ok(next) = queue.try_recv() {
            batch.push(next);
        }
        let started = Instant::now();
        let bytes: Vec<u8> = batch.iter().flat_map(|(r, _)| r.iter().copied()).collect();
        file.write_all_at(&bytes, offset).unwrap();
        // Past the segment the file grows (a run of minutes at this load).
        offset += bytes.len() as u64;
        LOG_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        file.sync_data().unwrap();
        for (_, reply) in batch {
            let _ = reply.send(());
        }
        pacing.record(started, started.elapsed());
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.first().map_or(10, |a| a.parse().unwrap());
    let rate: u64 = args.get(1).map_or(4_000, |a| a.parse().unwrap());
    let rooms: u64 = args.get(2).map_or(100, |a| a.parse().unwrap());
    let dir = match args.get(3) {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir_in(".").unwrap(),
    };
    let store = Arc::new(if args.get(4).is_some_and(|a| a == "log") {
        let (queue, receiver) = mpsc::channel();
        let path = dir.path().join("chat.log");
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || run_log(path, receiver))
            .unwrap();
        Target::Log(queue)
    } else {
        Target::Sqlite(SqliteMessages::open(&dir.path().join("chat.db")).unwrap())
    });
    let text = "x".repeat(100);
    // Warm up: every room has messages, the heads are cached.
    for r in 0..rooms {
        store.append(&format!("room-{r}"), &text, 0).await;
    }
    let per_room = Duration::from_secs_f64(rooms as f64 / rate as f64);
    let writer = store.writer_thread();
    let cpu0 = thread_cpu(writer);
    let commits0 = LOG_COMMITS.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut senders = Vec::new();
    for r in 0..rooms {
        let store = store.clone();
        let text = text.clone();
        senders.push(tokio::spawn(async move {
            let room = format!("room-{r}");
            // Rooms spread over the interval, as independent senders would be.
            let phase = per_room * r as u32 / rooms as u32;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, per_room);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            let mut worst = Duration::ZERO;
            while started.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                let t = Instant::now();
                store.append(&room, &text, sent + 1).await;
                worst = worst.max(t.elapsed());
                sent += 1;
            }
            (sent, worst)
        }));
    }
    let mut sent = 0;
    let mut worst = Duration::ZERO;
    for s in senders {
        let (n, w) = s.await.unwrap();
        sent += n;
        worst = worst.max(w);
    }
    let elapsed = started.elapsed();
    let cpu1 = thread_cpu(writer);
    // /proc counts CPU in clock ticks, 100 a second on Linux (USER_HZ).
    let tick_us = 1e6 / 100.0;
    let user = (cpu1.0 - cpu0.0) as f64 * tick_us / sent as f64;
    let kernel = (cpu1.1 - cpu0.1) as f64 * tick_us / sent as f64;
    println!(
        "{sent} messages in {:.1} s ({:.0}/s): writer {:.1} µs per message ({user:.1} user, {kernel:.1} kernel), slowest append {:.1} ms",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        user + kernel,
        worst.as_secs_f64() * 1e3
    );
    match &*store {
        Target::Sqlite(store) => store.close(),
        Target::Log(_) => {
            let commits = LOG_COMMITS.load(std::sync::atomic::Ordering::Relaxed) - commits0;
            println!(
                "{commits} commits: {:.1} messages and {:.0} µs of the writer's CPU per commit",
                sent as f64 / commits as f64,
                (user + kernel) * sent as f64 / commits as f64
            );
        }
    }
}
