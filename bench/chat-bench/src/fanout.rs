//! The fan-out engine: N connections in rooms, an open-loop publisher on its own OS thread, and
//! per-delivery latency from each message's *intended* send time (no coordinated omission).
//!
//! - Connection `i` is in room `i / room_size`; with `slow_every = k`, every k-th connection of
//!   a room stops reading once the rooms are set up (a slow consumer) and never publishes.
//! - The schedule thread sends message `k` of a step at `t0 + k / rate`, whatever happened to
//!   the earlier ones, round-robin over the publishers; it sleeps with 1 ns timer slack, not on
//!   tokio's 1 ms timer. If it falls behind, the late messages keep their intended times.
//! - Each receiver checks every (publisher → receiver) stream for loss, duplicates and
//!   reordering. A message counts as published once the server acknowledged it (the chat's
//!   `ack`, Socket.IO's ack callback, the relay's copy to the sender); loss is reckoned over
//!   acknowledged messages only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::client::{self, Options, Ws};
use crate::procfs;
use crate::proto::{Frame, Marker, Proto, message_text};
use crate::servers::Server;

/// The load generator's clock: ns since its first use. Senders and receivers share it.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies are recorded in µs, up to 10 minutes.
pub const MAX_LATENCY_US: u64 = 600_000_000;
/// The latency bound of the step-up search.
pub const P99_BOUND_MS: f64 = 50.0;

/// One fan-out scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub connections: usize,
    pub room_size: usize,
    /// Every `k`-th member of a room is a slow consumer.
    pub slow_every: Option<usize>,
    pub text_bytes: usize,
    /// The steps, in order (publish rate in messages/s, seconds).
    pub steps: Vec<(f64, f64)>,
    /// Stop at the first step that does not hold.
    pub stop_at_failure: bool,
    /// How long to wait for stragglers after a step.
    pub drain: Duration,
    /// SO_RCVBUF of the slow consumers.
    pub slow_recv_buffer: u32,
}

/// The outcome of one step.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StepResult {
    pub rate: f64,
    pub secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub server_cpu_s: f64,
    pub server_rss_max: u64,
    pub server_rss_end: u64,
    pub loadgen_cpu_s: f64,
    /// Share of its core the load generator used (1.0: saturated).
    pub loadgen_util: f64,
    /// The schedule could not keep up, or the backlog passed a second of messages.
    pub aborted: bool,
    pub held: bool,
    pub server_cpu_us_per_delivery: f64,
    /// The second run of a rate whose first run missed.
    #[serde(default)]
    pub retry: bool,
    /// The kernel's part of `server_cpu_s` (system time: socket writes, and on loopback the
    /// receivers' TCP processing too; fsync).
    #[serde(default)]
    pub server_sys_s: f64,
}

impl StepResult {
    /// Server kernel CPU per delivery, in µs.
    pub fn server_sys_us_per_delivery(&self) -> f64 {
        if self.delivered > 0 {
            self.server_sys_s * 1e6 / self.delivered as f64
        } else {
            f64::NAN
        }
    }
}

/// Loss, duplicates and reordering per room over the whole run, from every receiver's streams.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Integrity {
    pub rooms: usize,
    pub rooms_with_loss: usize,
    pub rooms_with_duplicates: usize,
    pub rooms_with_reordering: usize,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Normal (reading) connections the server closed during the run.
    pub closed_readers: usize,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunResult {
    pub connect_secs: f64,
    pub server_rss_idle: u64,
    pub server_rss_connected: u64,
    pub steps: Vec<StepResult>,
    pub integrity: Integrity,
    /// Slow consumers, and how many of them the server had closed by the end.
    pub slow: usize,
    pub slow_closed: usize,
    pub send_errors: u64,
}

impl RunResult {
    /// The highest rate of a step that held.
    pub fn best_rate(&self) -> Option<f64> {
        self.steps
            .iter()
            .filter(|s| s.held)
            .map(|s| s.rate)
            .reduce(f64::max)
    }
}

struct StepCounters {
    hist: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    expected: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
}

impl StepCounters {
    fn new() -> Self {
        Self {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
        }
    }
}

struct Shared {
    proto: Proto,
    steps: Vec<StepCounters>,
    /// The highest acknowledged sequence number of each connection's messages.
    acked_upto: Vec<AtomicU32>,
    /// Per connection: the members of its room that read (a message's deliveries).
    recipients: Vec<u64>,
    sent_total: AtomicU64,
    acked_total: AtomicU64,
    send_errors: AtomicU64,
    /// Reading connections that ended before the run stopped (closed by the server, or broken).
    closed: AtomicU64,
    /// `error` frames received.
    error_frames: AtomicU64,
    /// The first few error frames and close reasons, verbatim.
    incidents: Mutex<Vec<String>>,
}

/// Incidents kept verbatim; the rest are only counted.
const MAX_INCIDENTS: usize = 20;

impl Shared {
    fn step(&self, step: u32) -> Option<&StepCounters> {
        self.steps.get(step as usize)
    }

    fn note(&self, incident: String) {
        if let Ok(mut incidents) = self.incidents.lock()
            && incidents.len() < MAX_INCIDENTS
        {
            incidents.push(incident);
        }
    }

    fn incidents(&self) -> Vec<String> {
        self.incidents.lock().map(|i| i.clone()).unwrap_or_default()
    }

    fn on_ack(&self, me: usize, step: u32, seq: u32) {
        self.acked_upto[me].fetch_max(seq, Ordering::Relaxed);
        self.acked_total.fetch_add(1, Ordering::Relaxed);
        if let Some(counters) = self.step(step) {
            counters.acked.fetch_add(1, Ordering::Relaxed);
            counters
                .expected
                .fetch_add(self.recipients[me], Ordering::Relaxed);
        }
    }
}

/// What one receiver saw from one publisher of its room.
#[derive(Debug, Default, Clone)]
struct Stream {
    last: u32,
    /// Sequence numbers skipped so far (usually none).
    missing: Vec<u32>,
    duplicates: u32,
    reordered: u32,
}

enum Seen {
    New,
    Reordered,
    Duplicate,
}

impl Stream {
    fn observe(&mut self, seq: u32) -> Seen {
        if seq > self.last {
            // A gap larger than this is not a gap but a corrupt marker.
            if seq - self.last <= 1_000_000 {
                self.missing.extend(self.last + 1..seq);
            }
            self.last = seq;
            Seen::New
        } else if let Some(i) = self.missing.iter().position(|&s| s == seq) {
            self.missing.swap_remove(i);
            self.reordered += 1;
            Seen::Reordered
        } else {
            self.duplicates += 1;
            Seen::Duplicate
        }
    }

    /// Acknowledged messages (1..=acked) never received.
    fn lost(&self, acked: u32) -> u64 {
        let gaps = self.missing.iter().filter(|&&s| s <= acked).count() as u64;
        gaps + u64::from(acked.saturating_sub(self.last))
    }
}

/// A receiver's state, returned when it stops.
struct Receiver {
    index: usize,
    streams: Vec<Stream>,
    /// The server closed the connection.
    closed: bool,
}

enum Cmd {
    Publish {
        step: u32,
        seq: u32,
        intended_ns: u64,
    },
    Pong,
}

struct Conn {
    index: usize,
    room: usize,
    slow: bool,
    ws: Ws,
}

/// Runs a scenario against a running server and returns its measurements.
pub async fn run(
    server: &Server,
    scenario: &Scenario,
    label: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RunResult> {
    let mut fleet = Fleet::connect(server, scenario, label, progress).await?;
    let server_rss_connected = fleet.settle(server).await;

    let mut steps = Vec::new();
    // The machine is shared: one stall of a few hundred ms (another process on the server's
    // core) fails a step on its own. In a step-up search a step that misses is run once more,
    // and the rate fails only if it misses twice; both runs are reported.
    let mut plan: std::collections::VecDeque<(f64, f64, bool)> =
        scenario.steps.iter().map(|&(r, s)| (r, s, false)).collect();
    while let Some((rate, secs, retried)) = plan.pop_front() {
        let number = fleet.steps_run() + 1;
        let mut last = Instant::now();
        let mut report = |live: &Live| {
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(&format!(
                    "{label}: step {number} at {rate:.0} msg/s: {:.0}/{secs:.0} s, sent {}, delivered {}, p99 {:.1} ms, server RSS {:.0} MB",
                    live.elapsed_secs(),
                    live.sent(),
                    live.delivered(),
                    live.p99_ms(),
                    live.rss_max() as f64 / 1e6,
                ));
            }
        };
        let result = fleet
            .step(server, rate, secs, scenario.drain, &mut report)
            .await?;
        progress(&format!(
            "{label}: step {number} at {rate:.0} msg/s {}: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms, lost {}, dup {}, reordered {}, server {:.2} µs CPU/delivery, load generator {:.0} % of its core",
            if result.held { "held" } else { "did NOT hold" },
            result.deliveries_per_sec,
            result.p50_ms,
            result.p99_ms,
            result.p999_ms,
            result.max_ms,
            result.lost,
            result.duplicates,
            result.reordered,
            result.server_cpu_us_per_delivery,
            result.loadgen_util * 100.0,
        ));
        let held = result.held;
        steps.push(StepResult {
            retry: retried,
            ..result
        });
        if !held && scenario.stop_at_failure {
            if retried {
                break;
            }
            progress(&format!("{label}: running {rate:.0} msg/s once more"));
            plan.push_front((rate, secs, true));
        }
    }

    let connect_secs = fleet.connect_secs;
    let server_rss_idle = fleet.server_rss_idle;
    let end = fleet.finish().await?;
    Ok(RunResult {
        connect_secs,
        server_rss_idle,
        server_rss_connected,
        steps,
        integrity: end.integrity,
        slow: end.slow,
        slow_closed: end.slow_closed,
        send_errors: end.send_errors,
    })
}

/// Whether connection `i` is a slow consumer (every `k`-th member of a room).
fn is_slow(slow_every: Option<usize>, room_size: usize, i: usize) -> bool {
    slow_every.is_some_and(|k| k > 0 && i % room_size % k == k - 1)
}

/// The clients of a run, connected and joined, each with a reader and a writer task: what the
/// fan-out scenarios and the soak share. Steps of open-loop traffic run on it one after another.
pub struct Fleet {
    n: usize,
    room_size: usize,
    slow_every: Option<usize>,
    shared: Arc<Shared>,
    senders: Arc<Vec<mpsc::UnboundedSender<Cmd>>>,
    readers: Vec<tokio::task::JoinHandle<Receiver>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    /// The publishing connections, in an order that visits every room before a room's second
    /// member; steps continue the round where the previous one stopped.
    publishers: Arc<Vec<usize>>,
    next_publisher: u64,
    seqs: Arc<Mutex<Vec<u32>>>,
    next_step: u32,
    /// When the last step's first message was due.
    last_step_started: Option<Instant>,
    /// Seconds to connect and join every client.
    pub connect_secs: f64,
    /// Server RSS before the first connection.
    pub server_rss_idle: u64,
}

/// What a fleet saw over its whole run, once stopped.
pub struct FleetEnd {
    pub integrity: Integrity,
    pub slow: usize,
    pub slow_closed: usize,
    pub send_errors: u64,
}

/// A running step, as its watcher sees it (every 100 ms).
pub struct Live<'a> {
    elapsed: f64,
    rss_max: u64,
    counters: &'a StepCounters,
    shared: &'a Shared,
}

impl Live<'_> {
    /// Seconds since the step's first message was due.
    pub fn elapsed_secs(&self) -> f64 {
        self.elapsed
    }
    /// The highest server RSS seen in the step so far (sampled every 100 ms).
    pub fn rss_max(&self) -> u64 {
        self.rss_max
    }
    /// Messages handed to the connections, over the fleet's whole run.
    pub fn sent(&self) -> u64 {
        self.shared.sent_total.load(Ordering::Relaxed)
    }
    /// Messages acknowledged by the server, over the fleet's whole run.
    pub fn acked(&self) -> u64 {
        self.shared.acked_total.load(Ordering::Relaxed)
    }
    /// Deliveries of this step's messages (first copies only).
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }
    /// A copy of this step's latency histogram so far (µs).
    pub fn latency(&self) -> Histogram<u64> {
        self.counters
            .hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
    pub fn p99_ms(&self) -> f64 {
        self.counters
            .hist
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0) as f64
            / 1000.0
    }
    /// Sends that failed (a connection's writer gone or its socket broken), whole run.
    pub fn send_errors(&self) -> u64 {
        self.shared.send_errors.load(Ordering::Relaxed)
    }
    /// Reading connections the server closed (or that broke), whole run.
    pub fn closed(&self) -> u64 {
        self.shared.closed.load(Ordering::Relaxed)
    }
    /// `error` frames received, whole run.
    pub fn error_frames(&self) -> u64 {
        self.shared.error_frames.load(Ordering::Relaxed)
    }
    /// The first few error frames and close reasons, for the report.
    pub fn incidents(&self) -> Vec<String> {
        self.shared.incidents()
    }
}

impl Fleet {
    /// Opens and joins every connection (a few hundred handshakes at a time) and starts their
    /// readers and writers. Room for `scenario.steps` to be run twice each (the retries).
    pub async fn connect(
        server: &Server,
        scenario: &Scenario,
        label: &str,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Fleet> {
        let proto = server.kind.proto();
        let n = scenario.connections;
        let room_size = scenario.room_size.max(1);
        let slow_every = scenario.slow_every;
        let server_rss_idle = server.rss_bytes();

        // 1. Connect and join, a few hundred handshakes at a time.
        let started = Instant::now();
        let permits = Arc::new(Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let permits = permits.clone();
            let addr = server.addr;
            let slow = is_slow(slow_every, room_size, i);
            let options = Options {
                source: client::source_for(i, n),
                recv_buffer: slow.then_some(scenario.slow_recv_buffer),
            };
            let room = i / room_size;
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mut ws = client::open(addr, proto, options).await?;
                client::join(&mut ws, proto, &format!("r{room}")).await?;
                anyhow::Ok(Conn {
                    index: i,
                    room,
                    slow,
                    ws,
                })
            });
        }
        let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
        let mut last_report = Instant::now();
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let conn = joined
                .context("a connection task failed")?
                .with_context(|| format!("{label}: cannot connect and join"))?;
            let i = conn.index;
            conns[i] = Some(conn);
            done += 1;
            if last_report.elapsed() > Duration::from_secs(1) {
                progress(&format!("{label}: connected {done}/{n}"));
                last_report = Instant::now();
            }
        }
        let connect_secs = started.elapsed().as_secs_f64();
        progress(&format!(
            "{label}: {n} connections in rooms of {room_size} in {connect_secs:.1} s"
        ));

        // 2. Readers and writers.
        let recipients: Vec<u64> = (0..n)
            .map(|i| {
                let room = i / room_size;
                let members = (room * room_size)..((room + 1) * room_size).min(n);
                members
                    .filter(|&m| !is_slow(slow_every, room_size, m))
                    .count() as u64
            })
            .collect();
        let shared = Arc::new(Shared {
            proto,
            // Room for each planned step to be run twice (see `retried` in `run`).
            steps: (0..(scenario.steps.len() * 2).max(1))
                .map(|_| StepCounters::new())
                .collect(),
            acked_upto: (0..n).map(|_| AtomicU32::new(0)).collect(),
            recipients,
            sent_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            incidents: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::with_capacity(n);
        let mut readers = Vec::with_capacity(n);
        let mut writers = Vec::with_capacity(n);
        for conn in conns
            .into_iter()
            .map(|c| c.expect("every connection joined"))
        {
            let (sink, stream) = conn.ws.split();
            let (tx, rx) = mpsc::unbounded_channel();
            let room_start = conn.room * room_size;
            let room_len = ((conn.room + 1) * room_size).min(n) - room_start;
            let receiver = Receiver {
                index: conn.index,
                streams: vec![Stream::default(); room_len],
                closed: false,
            };
            writers.push(tokio::spawn(write_loop(
                sink,
                rx,
                shared.clone(),
                format!("r{}", conn.room),
                conn.index as u32,
                scenario.text_bytes,
            )));
            readers.push(if conn.slow {
                tokio::spawn(slow_read_loop(stream, receiver, stop_rx.clone()))
            } else {
                tokio::spawn(read_loop(
                    stream,
                    receiver,
                    room_start,
                    shared.clone(),
                    tx.clone(),
                    stop_rx.clone(),
                ))
            });
            senders.push(tx);
        }

        let mut publishers: Vec<usize> = (0..n)
            .filter(|&i| !is_slow(slow_every, room_size, i))
            .collect();
        publishers.sort_by_key(|&i| (i % room_size, i / room_size));
        Ok(Fleet {
            n,
            room_size,
            slow_every,
            shared,
            senders: Arc::new(senders),
            readers,
            writers,
            stop_tx,
            publishers: Arc::new(publishers),
            next_publisher: 0,
            seqs: Arc::new(Mutex::new(vec![0u32; n])),
            next_step: 0,
            last_step_started: None,
            connect_secs,
            server_rss_idle,
        })
    }

    /// Lets the server finish what the joins set off (presence events, member lists: in one
    /// room of 1,000, half a million frames; the readers drain them) before anything is
    /// measured: waits until it idles, at most a minute. Returns its RSS then.
    pub async fn settle(&self, server: &Server) -> u64 {
        let settle_until = Instant::now() + Duration::from_secs(60);
        loop {
            let cpu0 = server.cpu_seconds();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if server.cpu_seconds() - cpu0 < 0.03 || Instant::now() > settle_until {
                break;
            }
        }
        server.rss_bytes()
    }

    /// Steps run so far.
    pub fn steps_run(&self) -> u32 {
        self.next_step
    }

    /// The last step as it stands (after `step` returned: with its drain).
    pub fn last_step(&self) -> Option<Live<'_>> {
        let started = self.last_step_started?;
        Some(Live {
            elapsed: started.elapsed().as_secs_f64(),
            rss_max: 0,
            counters: self
                .shared
                .steps
                .get(self.next_step.checked_sub(1)? as usize)?,
            shared: &self.shared,
        })
    }

    /// One step: `rate` messages/s for `secs` seconds, open loop, then up to `drain` for
    /// everything sent to be acknowledged and delivered. `watch` sees the step every 100 ms.
    pub async fn step(
        &mut self,
        server: &Server,
        rate: f64,
        secs: f64,
        drain: Duration,
        watch: &mut dyn FnMut(&Live),
    ) -> anyhow::Result<StepResult> {
        let step = self.next_step;
        anyhow::ensure!(
            (step as usize) < self.shared.steps.len(),
            "more steps than the fleet was set up for"
        );
        self.next_step += 1;
        let shared = &self.shared;
        let (user0, sys0) = server.cpu_split();
        let self_cpu0 = procfs::self_cpu_seconds();
        let t0 = Instant::now();
        self.last_step_started = Some(t0);
        let aborted = Arc::new(AtomicBool::new(false));
        let first_publisher = self.next_publisher;
        let schedule = {
            let (shared, publishers, senders, seqs, aborted) = (
                shared.clone(),
                self.publishers.clone(),
                self.senders.clone(),
                self.seqs.clone(),
                aborted.clone(),
            );
            std::thread::Builder::new()
                .name("schedule".into())
                .spawn(move || {
                    schedule(
                        step,
                        rate,
                        secs,
                        &publishers,
                        first_publisher,
                        &senders,
                        &seqs,
                        &shared,
                        &aborted,
                    )
                })?
        };
        let mut rss_max = 0;
        let counters = &shared.steps[step as usize];
        let live = |rss_max: u64| Live {
            elapsed: t0.elapsed().as_secs_f64(),
            rss_max,
            counters,
            shared,
        };
        while !schedule.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rss_max = rss_max.max(server.rss_bytes());
            watch(&live(rss_max));
        }
        let sent = schedule
            .join()
            .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
        self.next_publisher += sent;
        let send_window = t0.elapsed().as_secs_f64();
        // Drain: everything sent acknowledged, everything acknowledged delivered.
        let drain_until = Instant::now() + drain;
        let mut last_watch = Instant::now();
        while Instant::now() < drain_until {
            let all_acked = shared.acked_total.load(Ordering::Relaxed)
                >= shared.sent_total.load(Ordering::Relaxed);
            let all_delivered = counters.delivered.load(Ordering::Relaxed)
                >= counters.expected.load(Ordering::Relaxed);
            if all_acked && all_delivered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            rss_max = rss_max.max(server.rss_bytes());
            if last_watch.elapsed() >= Duration::from_millis(100) {
                last_watch = Instant::now();
                watch(&live(rss_max));
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let (user1, sys1) = server.cpu_split();
        let server_sys_s = sys1 - sys0;
        let server_cpu_s = (user1 - user0) + server_sys_s;
        let loadgen_cpu_s = procfs::self_cpu_seconds() - self_cpu0;
        let server_rss_end = server.rss_bytes();
        let hist = counters.hist.lock().expect("histogram lock");
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let acked = counters.acked.load(Ordering::Relaxed);
        let expected = counters.expected.load(Ordering::Relaxed);
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let duplicates = counters.duplicates.load(Ordering::Relaxed);
        let reordered = counters.reordered.load(Ordering::Relaxed);
        let lost = expected.saturating_sub(delivered) + sent.saturating_sub(acked);
        let aborted = aborted.load(Ordering::Relaxed);
        let p99_ms = ms(0.99);
        let held = !aborted
            && !hist.is_empty()
            && p99_ms <= P99_BOUND_MS
            && lost == 0
            && duplicates == 0
            && reordered == 0;
        Ok(StepResult {
            rate,
            secs,
            sent,
            acked,
            expected,
            delivered,
            lost,
            duplicates,
            reordered,
            deliveries_per_sec: delivered as f64 / send_window.max(1e-9),
            p50_ms: ms(0.5),
            p99_ms,
            p999_ms: ms(0.999),
            max_ms: hist.max() as f64 / 1000.0,
            server_cpu_s,
            server_rss_max: rss_max.max(server_rss_end),
            server_rss_end,
            loadgen_cpu_s,
            loadgen_util: loadgen_cpu_s / wall.max(1e-9),
            aborted,
            held,
            server_cpu_us_per_delivery: if delivered > 0 {
                server_cpu_s * 1e6 / delivered as f64
            } else {
                f64::NAN
            },
            retry: false,
            server_sys_s,
        })
    }

    /// Stops: readers report what they saw; slow consumers read what is left, to see whether
    /// the server closed them.
    pub async fn finish(self) -> anyhow::Result<FleetEnd> {
        let _ = self.stop_tx.send(true);
        let mut receivers = Vec::with_capacity(self.n);
        for reader in self.readers {
            receivers.push(reader.await.context("a reader panicked")?);
        }
        drop(self.senders);
        for writer in self.writers {
            writer.abort();
        }
        let (slow_every, room_size) = (self.slow_every, self.room_size);
        let is_slow = |i: usize| is_slow(slow_every, room_size, i);
        let slow: Vec<&Receiver> = receivers.iter().filter(|r| is_slow(r.index)).collect();
        let slow_closed = slow.iter().filter(|r| r.closed).count();
        let integrity = integrity(&receivers, &self.shared, room_size, self.n, &is_slow);
        Ok(FleetEnd {
            integrity,
            slow: slow.len(),
            slow_closed,
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
        })
    }
}

fn integrity(
    receivers: &[Receiver],
    shared: &Shared,
    room_size: usize,
    n: usize,
    is_slow: &dyn Fn(usize) -> bool,
) -> Integrity {
    let rooms = n.div_ceil(room_size);
    let mut per_room = vec![(0u64, 0u64, 0u64); rooms];
    let mut closed_readers = 0;
    for receiver in receivers.iter().filter(|r| !is_slow(r.index)) {
        if receiver.closed {
            closed_readers += 1;
        }
        let room = receiver.index / room_size;
        let room_start = room * room_size;
        for (offset, stream) in receiver.streams.iter().enumerate() {
            let publisher = room_start + offset;
            let acked = shared.acked_upto[publisher].load(Ordering::Relaxed);
            let entry = &mut per_room[room];
            entry.0 += stream.lost(acked);
            entry.1 += u64::from(stream.duplicates);
            entry.2 += u64::from(stream.reordered);
        }
    }
    Integrity {
        rooms,
        rooms_with_loss: per_room.iter().filter(|r| r.0 > 0).count(),
        rooms_with_duplicates: per_room.iter().filter(|r| r.1 > 0).count(),
        rooms_with_reordering: per_room.iter().filter(|r| r.2 > 0).count(),
        lost: per_room.iter().map(|r| r.0).sum(),
        duplicates: per_room.iter().map(|r| r.1).sum(),
        reordered: per_room.iter().map(|r| r.2).sum(),
        closed_readers,
    }
}

/// The open-loop schedule of one step; returns how many messages it sent.
#[allow(clippy::too_many_arguments)]
fn schedule(
    step: u32,
    rate: f64,
    secs: f64,
    publishers: &[usize],
    first_publisher: u64,
    senders: &[mpsc::UnboundedSender<Cmd>],
    seqs: &Mutex<Vec<u32>>,
    shared: &Shared,
    aborted: &AtomicBool,
) -> u64 {
    procfs::precise_timers();
    let mut seqs = seqs.lock().expect("sequence numbers");
    let total = (rate * secs).round() as u64;
    let interval = 1e9 / rate;
    let start = now_ns() + 1_000_000;
    // More than a second of unacknowledged messages: the server is not keeping up.
    let backlog_limit = rate as u64 + 1000;
    let mut k = 0u64;
    let mut next_check = start;
    while k < total {
        let now = now_ns();
        let due = start + (k as f64 * interval) as u64;
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
            continue;
        }
        while k < total {
            let due = start + (k as f64 * interval) as u64;
            if due > now {
                break;
            }
            let publisher = publishers[((first_publisher + k) % publishers.len() as u64) as usize];
            seqs[publisher] += 1;
            let cmd = Cmd::Publish {
                step,
                seq: seqs[publisher],
                intended_ns: due,
            };
            if senders[publisher].send(cmd).is_err() {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
            shared.sent_total.fetch_add(1, Ordering::Relaxed);
            k += 1;
        }
        if now >= next_check {
            next_check = now + 50_000_000;
            let backlog = shared.sent_total.load(Ordering::Relaxed)
                - shared
                    .acked_total
                    .load(Ordering::Relaxed)
                    .min(shared.sent_total.load(Ordering::Relaxed));
            if backlog > backlog_limit {
                aborted.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    k
}

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut commands: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    room: String,
    me: u32,
    text_bytes: usize,
) {
    let proto = shared.proto;
    let frame = |cmd: Cmd| match cmd {
        Cmd::Publish {
            step,
            seq,
            intended_ns,
        } => {
            let text = message_text(
                Marker {
                    step,
                    publisher: me,
                    seq,
                    intended_ns,
                },
                text_bytes,
            );
            Message::text(proto.publish_frame(&room, &text, step, seq))
        }
        Cmd::Pong => Message::text("3"),
    };
    while let Some(cmd) = commands.recv().await {
        let mut result = sink.feed(frame(cmd)).await;
        while result.is_ok() {
            match commands.try_recv() {
                Ok(cmd) => result = sink.feed(frame(cmd)).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = sink.flush().await;
        }
        if result.is_err() {
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
            // Keep draining so that the schedule never blocks; the sends are counted lost.
            while commands.recv().await.is_some() {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "".into(),
        })))
        .await;
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    mut receiver: Receiver,
    room_start: usize,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Cmd>,
    mut stop: watch::Receiver<bool>,
) -> Receiver {
    let proto = shared.proto;
    let me = receiver.index;
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = stream.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                receiver.closed = true;
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.note(match frame {
                    Some(f) => format!(
                        "connection {me} closed by the server: {} {}",
                        f.code, f.reason
                    ),
                    None => format!("connection {me} closed by the server (no close frame)"),
                });
                break;
            }
            Some(Err(e)) => {
                receiver.closed = true;
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("connection {me} broke: {e}"));
                break;
            }
            None => {
                receiver.closed = true;
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("connection {me} ended without a close frame"));
                break;
            }
            Some(Ok(_)) => continue,
        };
        match proto.classify(text.as_str()) {
            Frame::Delivery(marker) => {
                let latency_us = now_ns().saturating_sub(marker.intended_ns) / 1000;
                let Some(counters) = shared.step(marker.step) else {
                    continue;
                };
                let Some(stream) = (marker.publisher as usize)
                    .checked_sub(room_start)
                    .and_then(|offset| receiver.streams.get_mut(offset))
                else {
                    continue;
                };
                match stream.observe(marker.seq) {
                    Seen::New => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut hist) = counters.hist.lock() {
                            let _ = hist.record(latency_us.clamp(1, MAX_LATENCY_US));
                        }
                    }
                    Seen::Reordered => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        counters.reordered.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut hist) = counters.hist.lock() {
                            let _ = hist.record(latency_us.clamp(1, MAX_LATENCY_US));
                        }
                    }
                    Seen::Duplicate => {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The relay's acknowledgement is the sender's own copy.
                if proto == Proto::Relay && marker.publisher as usize == me {
                    shared.on_ack(me, marker.step, marker.seq);
                }
            }
            Frame::Ack { step, seq } => shared.on_ack(me, step, seq),
            Frame::Ping => {
                let _ = commands.send(Cmd::Pong);
            }
            Frame::Error => {
                shared.error_frames.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("connection {me} got an error frame: {text}"));
            }
            Frame::Joined | Frame::Other => {}
        }
    }
    receiver
}

/// A slow consumer: reads nothing until the run stops, then reads what is left for a few
/// seconds to learn whether the server closed it.
async fn slow_read_loop(
    mut stream: SplitStream<Ws>,
    mut receiver: Receiver,
    mut stop: watch::Receiver<bool>,
) -> Receiver {
    let _ = stop.changed().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                receiver.closed = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_tell_loss_duplicates_and_reordering_apart() {
        let mut s = Stream::default();
        assert!(matches!(s.observe(1), Seen::New));
        assert!(matches!(s.observe(2), Seen::New));
        assert!(matches!(s.observe(2), Seen::Duplicate));
        assert!(matches!(s.observe(5), Seen::New));
        assert!(matches!(s.observe(3), Seen::Reordered));
        assert!(matches!(s.observe(3), Seen::Duplicate));
        // 4 is missing; 6 and 7 were acknowledged and never came.
        assert_eq!(s.lost(7), 3);
        assert_eq!(s.lost(5), 1);
        assert_eq!(s.lost(3), 0);
        assert_eq!((s.duplicates, s.reordered), (2, 1));
    }
}
