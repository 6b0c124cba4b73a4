//! The soak: many connections held for minutes under light traffic. Nothing may be lost,
//! duplicated or reordered, no connection dropped, no error seen, and the server's RSS must stay
//! flat once warmed up.
//!
//! It runs on the fan-out engine ([`Fleet`]): one long open-loop step at a low rate, round-robin
//! over every connection, watched every `--sample-interval` (RSS, CPU, open connections,
//! deliveries, that interval's latency, errors). Writes `SOAK.md`, `soak.svg` and `soak.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::fanout::{Fleet, Integrity, Live, P99_BOUND_MS, Scenario, StepResult, now_ns};
use crate::report::{draw_line, kb, lighter, mb, ms, plot_error};
use crate::servers::{Kind, Server};
use crate::{HostArgs, procfs};

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Connections held open for the whole run (one load-generator process holds them all).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages published per second, all rooms together, open loop, round-robin over every
    /// connection.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_interval: f64,
    /// Seconds of warm-up: RSS growth is measured from the sample at this time to the end.
    #[arg(long, default_value_t = 60.0)]
    pub warmup: f64,
    /// The RSS growth allowed from warm-up to the end, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_rss_growth: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    pub text_bytes: usize,
    /// Where SOAK.md, soak.svg and soak.json go.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
    #[command(flatten)]
    pub host: HostArgs,
}

/// What the run looked like over one span of time (a sample interval, or a table row).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the traffic started, at the end of the span.
    pub t_secs: f64,
    /// The span's length.
    pub span_secs: f64,
    pub server_rss: u64,
    /// The anonymous part of the server's RSS (heap, stacks; not mapped files).
    pub server_rss_anon: u64,
    /// Server CPU over the span, percent of one core.
    pub server_cpu_pct: f64,
    /// Load generator CPU over the span, percent of one core.
    pub loadgen_cpu_pct: f64,
    /// Connections still open (the load generator's view).
    pub open: u64,
    /// File descriptors the server holds (its sockets, its database, its listener).
    pub server_fds: usize,
    /// Messages sent and acknowledged since the start.
    pub sent: u64,
    pub acked: u64,
    /// Deliveries since the start, and in the span.
    pub delivered: u64,
    pub deliveries: u64,
    /// Latency of the span's deliveries (0 when there were none).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failed sends plus error frames, since the start.
    pub errors: u64,
    /// Connections closed by the server (or broken), since the start.
    pub closed: u64,
    /// Time the server's threads spent runnable but waiting for a CPU in the span (other work
    /// on its core), ms.
    pub server_cpu_wait_ms: f64,
    /// The slowest 4 KiB write + fdatasync on the server's disk in the span (a probe every
    /// 100 ms), ms.
    pub fsync_max_ms: f64,
}

/// One pass/fail check of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResults {
    pub date: String,
    pub command: String,
    pub machine: procfs::Machine,
    pub pinned: Option<(usize, usize)>,
    pub loadavg_before: String,
    pub connections: usize,
    pub room_size: usize,
    pub rooms: usize,
    pub rate: f64,
    pub duration_secs: f64,
    pub sample_interval_secs: f64,
    pub warmup_secs: f64,
    pub max_rss_growth_pct: f64,
    pub text_bytes: usize,
    pub server_command: String,
    pub connect_secs: f64,
    pub server_rss_idle: u64,
    pub server_rss_connected: u64,
    /// The warm-up and end samples the RSS check compares.
    pub rss_warm: u64,
    pub rss_warm_t_secs: f64,
    pub rss_anon_warm: u64,
    pub rss_end: u64,
    pub rss_anon_end: u64,
    pub rss_growth_bytes: i64,
    pub rss_growth_pct: f64,
    pub rss_growth_per_connection: f64,
    pub rss_anon_growth_bytes: i64,
    /// The sample half-way through, and the growth from it to the end: a leak keeps growing,
    /// caches filling up do not.
    pub rss_half: u64,
    pub rss_half_t_secs: f64,
    /// From this time on, every sample's RSS is within 0.1 % of the last one.
    pub rss_steady_from_secs: f64,
    pub step: StepResult,
    pub integrity: Integrity,
    pub send_errors: u64,
    pub error_frames: u64,
    pub closed: u64,
    pub open_at_end: u64,
    /// The first few error frames and close reasons.
    pub incidents: Vec<String>,
    /// WARN and ERROR lines of the server's log: how many, and the first few.
    pub server_log_problems: usize,
    pub server_log_excerpt: Vec<String>,
    pub db_bytes: u64,
    pub samples: Vec<Sample>,
    /// Coarser rows for the report's table (every minute in a long run).
    pub rows: Vec<Sample>,
    pub checks: Vec<Check>,
    pub wall_secs: f64,
}

/// The state at one instant, as the monitor reads it.
struct Probe {
    t: f64,
    cpu: f64,
    self_cpu: f64,
    sent: u64,
    acked: u64,
    delivered: u64,
    hist: Histogram<u64>,
    errors: u64,
    closed: u64,
    cpu_wait: f64,
}

impl Probe {
    fn copy(&self) -> Probe {
        Probe {
            hist: self.hist.clone(),
            ..*self
        }
    }

    fn read(live: &Live, server: &Server, wait: &mut procfs::RunQueueWait) -> Probe {
        Probe {
            t: live.elapsed_secs(),
            cpu: server.cpu_seconds(),
            self_cpu: procfs::self_cpu_seconds(),
            sent: live.sent(),
            acked: live.acked(),
            delivered: live.delivered(),
            hist: live.latency(),
            errors: live.send_errors() + live.error_frames(),
            closed: live.closed(),
            cpu_wait: wait.seconds(),
        }
    }
}

/// Writes 4 KiB and fdatasyncs it on the server's disk every 100 ms, keeping the slowest since
/// the last look: whether a stall in the deliveries was the disk's. (The chat commits, and so
/// fsyncs, each message before it fans it out.)
struct DiskProbe {
    stop: Arc<AtomicBool>,
    /// The slowest since the last look, µs.
    max_us: Arc<AtomicU64>,
    /// When the write in flight started (`now_ns`), or 0.
    in_flight_since: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskProbe {
    fn start(dir: &Path) -> anyhow::Result<DiskProbe> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("soak-fsync-probe");
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let max_us = Arc::new(AtomicU64::new(0));
        let in_flight_since = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, max_us, in_flight_since) =
                (stop.clone(), max_us.clone(), in_flight_since.clone());
            std::thread::Builder::new()
                .name("fsync-probe".into())
                .spawn(move || {
                    let block = [b'x'; 4096];
                    let mut written = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Keep the file small: rewrite it from the start every 1,000 writes.
                        if written >= 1000 {
                            let _ = file.set_len(0);
                            let _ = std::io::Seek::rewind(&mut file);
                            written = 0;
                        }
                        let started = now_ns();
                        in_flight_since.store(started, Ordering::Relaxed);
                        let ok = file.write_all(&block).is_ok() && file.sync_data().is_ok();
                        in_flight_since.store(0, Ordering::Relaxed);
                        if ok {
                            max_us.fetch_max((now_ns() - started) / 1000, Ordering::Relaxed);
                        }
                        written += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                })?
        };
        Ok(DiskProbe {
            stop,
            max_us,
            in_flight_since,
            thread: Some(thread),
        })
    }

    /// The slowest write since the last call (one still in flight counts as far as it got), ms.
    fn take_max_ms(&self) -> f64 {
        let done = self.max_us.swap(0, Ordering::Relaxed);
        let since = self.in_flight_since.load(Ordering::Relaxed);
        let running = if since > 0 {
            now_ns().saturating_sub(since) / 1000
        } else {
            0
        };
        done.max(running) as f64 / 1000.0
    }
}

impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Samples the run: every interval, and coarser rows for the table.
struct Monitor {
    connections: usize,
    interval: f64,
    row_every: f64,
    duration: f64,
    next_sample: f64,
    next_row: f64,
    last_sample: Probe,
    last_row: Probe,
    samples: Vec<Sample>,
    rows: Vec<Sample>,
    /// Stopped once the last sample is taken.
    disk: Option<DiskProbe>,
    cpu_wait: procfs::RunQueueWait,
    /// The slowest probe write since the last row, ms.
    row_fsync_max_ms: f64,
}

impl Monitor {
    fn new(args: &SoakArgs, start: Probe, server: &Server, disk: DiskProbe) -> Monitor {
        let row_every = if args.duration >= 300.0 {
            60.0
        } else {
            args.sample_interval
        };
        let mut monitor = Monitor {
            connections: args.connections,
            interval: args.sample_interval,
            row_every,
            duration: args.duration,
            next_sample: args.sample_interval,
            next_row: row_every,
            last_sample: start.copy(),
            last_row: start.copy(),
            samples: Vec::new(),
            rows: Vec::new(),
            disk: Some(disk),
            cpu_wait: procfs::RunQueueWait::new(server.pid()),
            row_fsync_max_ms: 0.0,
        };
        // The state before the traffic: an empty span at t = 0.
        let first = monitor.span(&start, &start, &ServerState::read(server));
        monitor.samples.push(first.clone());
        monitor.rows.push(first);
        monitor
    }

    /// The span from `from` to `to`, with the server's state at its end.
    fn span(&self, from: &Probe, to: &Probe, state: &ServerState) -> Sample {
        let span = (to.t - from.t).max(1e-9);
        let mut hist = to.hist.clone();
        // Counts only grow, so the earlier copy always subtracts.
        let _ = hist.subtract(&from.hist);
        let q = |q: f64| {
            if hist.is_empty() {
                0.0
            } else {
                hist.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Sample {
            t_secs: to.t,
            span_secs: to.t - from.t,
            server_rss: state.rss,
            server_rss_anon: state.rss_anon,
            server_cpu_pct: (to.cpu - from.cpu) / span * 100.0,
            loadgen_cpu_pct: (to.self_cpu - from.self_cpu) / span * 100.0,
            open: (self.connections as u64).saturating_sub(to.closed),
            server_fds: state.fds,
            sent: to.sent,
            acked: to.acked,
            delivered: to.delivered,
            deliveries: to.delivered - from.delivered,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: if hist.is_empty() {
                0.0
            } else {
                hist.max() as f64 / 1000.0
            },
            errors: to.errors,
            closed: to.closed,
            server_cpu_wait_ms: (to.cpu_wait - from.cpu_wait) * 1000.0,
            fsync_max_ms: 0.0,
        }
    }

    /// Called every 100 ms while the traffic runs: a sample when one is due.
    fn watch(&mut self, live: &Live, server: &Server, progress: &dyn Fn(&str)) {
        if live.elapsed_secs() < self.next_sample || self.next_sample >= self.duration - 1e-6 {
            return;
        }
        self.next_sample += self.interval;
        let probe = Probe::read(live, server, &mut self.cpu_wait);
        self.take(probe, server, false, progress);
    }

    /// The last sample (and row), once the traffic has stopped and drained.
    fn finish(&mut self, live: &Live, server: &Server, progress: &dyn Fn(&str)) {
        let probe = Probe::read(live, server, &mut self.cpu_wait);
        self.take(probe, server, true, progress);
        self.disk = None;
    }

    fn take(&mut self, probe: Probe, server: &Server, last: bool, progress: &dyn Fn(&str)) {
        let state = ServerState::read(server);
        let mut sample = self.span(&self.last_sample, &probe, &state);
        sample.fsync_max_ms = self.disk.as_ref().map_or(0.0, DiskProbe::take_max_ms);
        self.row_fsync_max_ms = self.row_fsync_max_ms.max(sample.fsync_max_ms);
        progress(&format!(
            "soak: {:>5.0}/{:.0} s: {} open, server RSS {} (anon {}), server CPU {:.1} % (waited {:.0} ms for it), {} fds, {:.0} deliveries/s, p50 {} ms, p99 {} ms, max {} ms, disk fsync max {} ms, errors {}, closed {}",
            sample.t_secs,
            self.duration,
            sample.open,
            mb(sample.server_rss),
            mb(sample.server_rss_anon),
            sample.server_cpu_pct,
            sample.server_cpu_wait_ms,
            sample.server_fds,
            sample.deliveries as f64 / sample.span_secs.max(1e-9),
            ms(sample.p50_ms),
            ms(sample.p99_ms),
            ms(sample.max_ms),
            ms(sample.fsync_max_ms),
            sample.errors,
            sample.closed,
        ));
        let row_due = if last {
            probe.t > self.last_row.t
        } else {
            probe.t >= self.next_row - self.interval / 2.0
        };
        if row_due {
            while self.next_row <= probe.t + self.interval / 2.0 {
                self.next_row += self.row_every;
            }
            let mut row = self.span(&self.last_row, &probe, &state);
            row.fsync_max_ms = std::mem::take(&mut self.row_fsync_max_ms);
            self.rows.push(row);
            self.last_row = probe.copy();
        }
        self.samples.push(sample);
        self.last_sample = probe;
    }
}

/// The server's memory and descriptors at one instant.
struct ServerState {
    rss: u64,
    rss_anon: u64,
    fds: usize,
}

impl ServerState {
    fn read(server: &Server) -> ServerState {
        ServerState {
            rss: server.rss_bytes(),
            rss_anon: server.rss_anon_bytes(),
            fds: server.open_fds(),
        }
    }
}

/// Runs the soak and writes its report; fails when a check fails.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let progress = move |line: &str| {
        eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    };
    if args.connections == 0 || args.room_size == 0 {
        bail!("--connections and --room-size must be at least 1");
    }
    if !(args.rate > 0.0 && args.sample_interval > 0.0) {
        bail!("--rate and --sample-interval must be positive");
    }
    if !(args.warmup >= 0.0 && args.warmup < args.duration) {
        bail!("--warmup must be shorter than --duration");
    }
    let programs = args.host.programs(None, "node")?;
    programs.check(&[Kind::Chat])?;
    let loadavg_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // The server as shipped, with the limits the suite raises (connections, per-connection
    // publish rate, handshakes per address); its idle timeout (10 min) and lifetime (2 h) stay,
    // unless the run needs more: each connection publishes every connections / rate seconds.
    let per_connection_secs = args.connections as f64 / args.rate;
    let mut extra = Vec::new();
    if per_connection_secs > 300.0 {
        extra.push("--idle-timeout".to_owned());
        extra.push(format!("{}s", (per_connection_secs * 2.0 + 60.0).ceil()));
    }
    if args.duration + 600.0 > 7200.0 {
        extra.push("--max-lifetime".to_owned());
        extra.push(format!("{}s", (args.duration + 600.0).ceil()));
    }
    let server = {
        let programs = programs.clone();
        tokio::task::spawn_blocking(move || {
            Server::start_with(Kind::Chat, &programs, "soak", &extra)
        })
        .await??
    };
    // The scratch directory's path is this run's own: shown as WORK.
    let server_command = format!("chat {}", display_args(&server.args))
        .replace(&*programs.work_dir.to_string_lossy(), "WORK");
    progress(&format!(
        "soak: chat started (pid {}) on {}: {server_command}",
        server.pid(),
        server.addr
    ));
    let outcome = soak(&args, &server, &programs.work_dir, &progress).await;
    let db_bytes = server.data_bytes();
    let log_path = server.log_path.clone();
    tokio::task::spawn_blocking(move || server.stop()).await?;
    let (log_problems, log_excerpt) = log_problems(&log_path);
    let _ = std::fs::remove_dir_all(&programs.work_dir);
    let run = outcome?;

    // The checks.
    let Run {
        connect_secs,
        server_rss_idle,
        server_rss_connected,
        step,
        end,
        monitor,
        incidents,
        error_frames,
        closed,
    } = run;
    let samples = monitor.samples;
    let rows = monitor.rows;
    let last = samples.last().context("no samples")?.clone();
    let warm = samples
        .iter()
        .find(|s| s.t_secs >= args.warmup - args.sample_interval / 2.0)
        .unwrap_or(&last)
        .clone();
    let growth = last.server_rss as i64 - warm.server_rss as i64;
    let growth_pct = growth as f64 / warm.server_rss.max(1) as f64 * 100.0;
    let per_connection = growth as f64 / args.connections as f64;
    let anon_growth = last.server_rss_anon as i64 - warm.server_rss_anon as i64;
    let half = samples
        .iter()
        .find(|s| s.t_secs >= args.duration / 2.0 - args.sample_interval / 2.0)
        .unwrap_or(&last)
        .clone();
    let half_growth = last.server_rss as i64 - half.server_rss as i64;
    let near_end = |s: &Sample| {
        (s.server_rss as f64 - last.server_rss as f64).abs() <= last.server_rss as f64 * 0.001
    };
    let steady_from = samples
        .iter()
        .rposition(|s| !near_end(s))
        .map_or(0.0, |i| samples[(i + 1).min(samples.len() - 1)].t_secs);
    let integrity = end.integrity;
    let unacked = step.sent.saturating_sub(step.acked);
    let undelivered = step.expected.saturating_sub(step.delivered);
    let mut checks = Vec::new();
    checks.push(Check {
        name: "every acknowledged message delivered exactly once, in order, to every member".into(),
        measured: format!(
            "{} sent, {} acknowledged; {} of {} deliveries; {} lost, {} duplicated, {} reordered ({} of {} rooms with loss)",
            thousands(step.sent),
            thousands(step.acked),
            thousands(step.delivered),
            thousands(step.expected),
            integrity.lost.max(undelivered),
            integrity.duplicates,
            integrity.reordered,
            integrity.rooms_with_loss,
            integrity.rooms,
        ),
        pass: step.acked > 0
            && undelivered == 0
            && integrity.lost == 0
            && integrity.duplicates == 0
            && integrity.reordered == 0,
    });
    checks.push(Check {
        name: "no connection dropped".into(),
        measured: format!(
            "{} of {} open at the end; {} closed by the server or broken",
            thousands(last.open),
            thousands(args.connections as u64),
            closed.max(integrity.closed_readers as u64),
        ),
        pass: closed == 0 && integrity.closed_readers == 0,
    });
    checks.push(Check {
        name: "no errors".into(),
        measured: format!(
            "{} failed sends, {} error frames, {} messages never acknowledged, {} WARN/ERROR lines in the server's log{}",
            end.send_errors,
            error_frames,
            unacked,
            log_problems,
            if step.aborted {
                "; the schedule stopped: over a second of messages unacknowledged"
            } else {
                ""
            }
        ),
        pass: end.send_errors == 0
            && error_frames == 0
            && unacked == 0
            && log_problems == 0
            && !step.aborted,
    });
    checks.push(Check {
        name: format!(
            "server RSS flat: at most {} % growth from warm-up ({:.0} s) to the end",
            args.max_rss_growth, warm.t_secs
        ),
        measured: format!(
            "{} → {}: {:+.2} MB ({:+.2} %, {:+.0} bytes per connection); anonymous memory {} → {} ({:+.2} MB); second half ({} → end): {:+.3} MB ({:+.3} %)",
            mb(warm.server_rss),
            mb(last.server_rss),
            growth as f64 / 1e6,
            growth_pct,
            per_connection,
            mb(warm.server_rss_anon),
            mb(last.server_rss_anon),
            anon_growth as f64 / 1e6,
            clock(half.t_secs),
            half_growth as f64 / 1e6,
            half_growth as f64 / half.server_rss.max(1) as f64 * 100.0,
        ),
        pass: growth_pct <= args.max_rss_growth,
    });

    let results = SoakResults {
        date: crate::utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: procfs::machine(),
        pinned: args.host.pinned(),
        loadavg_before: loadavg_before.trim().to_owned(),
        connections: args.connections,
        room_size: args.room_size,
        rooms: args.connections.div_ceil(args.room_size),
        rate: args.rate,
        duration_secs: args.duration,
        sample_interval_secs: args.sample_interval,
        warmup_secs: args.warmup,
        max_rss_growth_pct: args.max_rss_growth,
        text_bytes: args.text_bytes,
        server_command,
        connect_secs,
        server_rss_idle,
        server_rss_connected,
        rss_warm: warm.server_rss,
        rss_warm_t_secs: warm.t_secs,
        rss_anon_warm: warm.server_rss_anon,
        rss_end: last.server_rss,
        rss_anon_end: last.server_rss_anon,
        rss_growth_bytes: growth,
        rss_growth_pct: growth_pct,
        rss_growth_per_connection: per_connection,
        rss_anon_growth_bytes: anon_growth,
        rss_half: half.server_rss,
        rss_half_t_secs: half.t_secs,
        rss_steady_from_secs: steady_from,
        step,
        integrity,
        send_errors: end.send_errors,
        error_frames,
        closed,
        open_at_end: last.open,
        incidents,
        server_log_problems: log_problems,
        server_log_excerpt: log_excerpt,
        db_bytes,
        samples,
        rows,
        checks,
        wall_secs: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("soak.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    write_report(&results, &args.out)?;
    for check in &results.checks {
        progress(&format!(
            "soak: {}: {}: {}",
            if check.pass { "PASS" } else { "FAIL" },
            check.name,
            check.measured
        ));
    }
    progress(&format!(
        "soak: report written to {}",
        args.out.join("SOAK.md").display()
    ));
    let failed: Vec<&str> = results
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}

/// What the traffic phase returns.
struct Run {
    connect_secs: f64,
    server_rss_idle: u64,
    server_rss_connected: u64,
    step: StepResult,
    end: crate::fanout::FleetEnd,
    monitor: Monitor,
    incidents: Vec<String>,
    error_frames: u64,
    closed: u64,
}

async fn soak(
    args: &SoakArgs,
    server: &Server,
    work_dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    let scenario = Scenario {
        connections: args.connections,
        room_size: args.room_size,
        slow_every: None,
        text_bytes: args.text_bytes,
        steps: vec![(args.rate, args.duration)],
        stop_at_failure: false,
        drain: Duration::from_secs(10),
        slow_recv_buffer: 4096,
    };
    let mut fleet = Fleet::connect(server, &scenario, "soak", progress).await?;
    let server_rss_connected = fleet.settle(server).await;
    progress(&format!(
        "soak: {} connections in {} rooms; server RSS {} idle, {} with the connections ({} per connection); {:.0} msg/s for {:.0} s",
        args.connections,
        args.connections.div_ceil(args.room_size),
        mb(fleet.server_rss_idle),
        mb(server_rss_connected),
        kb(
            server_rss_connected.saturating_sub(fleet.server_rss_idle) as f64
                / args.connections as f64
        ),
        args.rate,
        args.duration,
    ));
    let start = Probe {
        t: 0.0,
        cpu: server.cpu_seconds(),
        self_cpu: procfs::self_cpu_seconds(),
        sent: 0,
        acked: 0,
        delivered: 0,
        hist: Histogram::new_with_bounds(1, crate::fanout::MAX_LATENCY_US, 3)?,
        errors: 0,
        closed: 0,
        cpu_wait: 0.0,
    };
    let disk = DiskProbe::start(work_dir)?;
    let mut monitor = Monitor::new(args, start, server, disk);
    let step = fleet
        .step(
            server,
            args.rate,
            args.duration,
            scenario.drain,
            &mut |live| monitor.watch(live, server, progress),
        )
        .await?;
    let live = fleet.last_step().context("no step ran")?;
    monitor.finish(&live, server, progress);
    let (incidents, error_frames, closed) = (live.incidents(), live.error_frames(), live.closed());
    let connect_secs = fleet.connect_secs;
    let server_rss_idle = fleet.server_rss_idle;
    let end = fleet.finish().await?;
    Ok(Run {
        connect_secs,
        server_rss_idle,
        server_rss_connected,
        step,
        end,
        monitor,
        incidents,
        error_frames,
        closed,
    })
}

/// Arguments for a shell line (paths with spaces quoted).
fn display_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The WARN and ERROR lines of a server log: how many, and the first ten.
fn log_problems(path: &Path) -> (usize, Vec<String>) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let problems: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let excerpt = problems.iter().take(10).cloned().collect();
    (problems.len(), excerpt)
}

/// A line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration_text(secs: f64) -> String {
    if secs >= 120.0 && secs % 60.0 == 0.0 {
        format!("{:.0} minutes", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// SOAK.md and soak.svg.
pub fn write_report(r: &SoakResults, out: &Path) -> anyhow::Result<()> {
    let mut md = String::new();
    let m = &r.machine;
    let passed = r.checks.iter().all(|c| c.pass);
    writeln!(
        md,
        "# Soak: {} connections for {}\n",
        thousands(r.connections as u64),
        duration_text(r.duration_secs)
    )?;
    writeln!(
        md,
        "**{}.** Run {}, in {:.0} s, with:\n\n```\n{}\n```\n",
        if passed {
            "Every check passed"
        } else {
            "Some checks FAILED"
        },
        r.date,
        r.wall_secs,
        r.command
    )?;
    writeln!(
        md,
        "Machine: {} cores ({}), {:.1} GiB of memory, Linux {}, shared with other work. {}. Load average before the run: {}.\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_gib,
        m.kernel,
        match r.pinned {
            Some((server, client)) =>
                format!("Server pinned to core {server}, load generator to core {client}"),
            None => "Nothing pinned".into(),
        },
        r.loadavg_before
    )?;
    writeln!(md, "## What runs\n")?;
    writeln!(
        md,
        "- **{} WebSocket connections**, held by one load-generator process, in {} rooms of {}. Connected and joined in {:.1} s.",
        thousands(r.connections as u64),
        thousands(r.rooms as u64),
        r.room_size,
        r.connect_secs
    )?;
    writeln!(
        md,
        "- **Light traffic, open loop**: {} messages/s in all ({} bytes each), sent round-robin by every connection in turn (each publishes once every {:.0} s), for {}: {} deliveries/s, each message going to the {} members of its room, the sender included.",
        r.rate,
        r.text_bytes,
        r.connections as f64 / r.rate,
        duration_text(r.duration_secs),
        r.rate * r.room_size as f64,
        r.room_size
    )?;
    writeln!(
        md,
        "- **The server**: `{}`. The embedded SQLite store with persistence on (WAL, `synchronous = FULL`: every message committed before its `ack`), a fresh database on the build's disk (WORK); only the limits raised (connections, publish rate per connection, handshakes per address). {}",
        r.server_command,
        if r.server_command.contains("--idle-timeout")
            || r.server_command.contains("--max-lifetime")
        {
            "Its idle timeout or connection lifetime raised too: at this rate a connection would not send a message within the shipped ones (10 min, 2 h)."
        } else {
            "Its idle timeout (10 min) and connection lifetime (2 h) stay as shipped: every connection sends a message well within them."
        }
    )?;
    writeln!(
        md,
        "- **Samples** every {:.0} s: server RSS (and its anonymous part: heap and stacks, not mapped files), server CPU, open connections, the server's file descriptors, deliveries, latency of that interval's deliveries (from each message's intended send time), errors. RSS growth is measured from the sample at {:.0} s (after warm-up) to the last one.\n",
        r.sample_interval_secs, r.rss_warm_t_secs
    )?;

    writeln!(md, "## Checks\n")?;
    writeln!(md, "| check | measured | result |")?;
    writeln!(md, "|---|---|---|")?;
    for c in &r.checks {
        writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            c.measured,
            if c.pass { "**pass**" } else { "**FAIL**" }
        )?;
    }
    writeln!(md)?;

    let s = &r.step;
    writeln!(md, "## Figures\n")?;
    writeln!(md, "| | |")?;
    writeln!(md, "|---|---|")?;
    writeln!(
        md,
        "| server RSS: idle → connected → after warm-up → end | {} → {} → {} → {} ({} per connection once connected) |",
        mb(r.server_rss_idle),
        mb(r.server_rss_connected),
        mb(r.rss_warm),
        mb(r.rss_end),
        kb(r.server_rss_connected.saturating_sub(r.server_rss_idle) as f64 / r.connections as f64),
    )?;
    writeln!(
        md,
        "| RSS growth after warm-up | {:+.2} MB ({:+.2} %), {:+.0} bytes per connection; anonymous memory {:+.2} MB |",
        r.rss_growth_bytes as f64 / 1e6,
        r.rss_growth_pct,
        r.rss_growth_per_connection,
        r.rss_anon_growth_bytes as f64 / 1e6,
    )?;
    writeln!(
        md,
        "| RSS growth over the second half ({} → end) | {:+.3} MB ({:+.3} %) |",
        clock(r.rss_half_t_secs),
        (r.rss_end as i64 - r.rss_half as i64) as f64 / 1e6,
        (r.rss_end as i64 - r.rss_half as i64) as f64 / r.rss_half.max(1) as f64 * 100.0,
    )?;
    writeln!(
        md,
        "| RSS within 0.1 % of its final value | from {} on |",
        clock(r.rss_steady_from_secs)
    )?;
    writeln!(
        md,
        "| messages sent / acknowledged | {} / {} |",
        thousands(s.sent),
        thousands(s.acked)
    )?;
    writeln!(
        md,
        "| deliveries (owed / made) | {} / {} |",
        thousands(s.expected),
        thousands(s.delivered)
    )?;
    writeln!(
        md,
        "| latency over the whole run, p50 / p99 / p99.9 / max | {} / {} / {} / {} ms |",
        ms(s.p50_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        ms(s.max_ms)
    )?;
    writeln!(
        md,
        "| highest p99 of any {:.0}-s interval | {} ms |",
        r.sample_interval_secs,
        ms(r.samples.iter().map(|x| x.p99_ms).fold(0.0, f64::max))
    )?;
    writeln!(
        md,
        "| server CPU | {:.1} s over the run ({:.1} % of a core), {:.1} µs per delivery |",
        s.server_cpu_s,
        s.server_cpu_s / r.duration_secs * 100.0,
        s.server_cpu_us_per_delivery
    )?;
    writeln!(
        md,
        "| connections open at the end / closed by the server | {} / {} |",
        thousands(r.open_at_end),
        r.closed
    )?;
    writeln!(
        md,
        "| errors: failed sends / error frames / server log WARN+ERROR lines | {} / {} / {} |",
        r.send_errors, r.error_frames, r.server_log_problems
    )?;
    writeln!(
        md,
        "| database at the end (chat.db and its WAL) | {} |",
        mb(r.db_bytes)
    )?;
    writeln!(
        md,
        "| server threads runnable but waiting for a CPU, whole run | {:.1} s |",
        r.samples.iter().map(|x| x.server_cpu_wait_ms).sum::<f64>() / 1000.0
    )?;
    writeln!(
        md,
        "| slowest 4 KiB write + fdatasync of the disk probe | {} ms |",
        ms(r.samples.iter().map(|x| x.fsync_max_ms).fold(0.0, f64::max))
    )?;
    writeln!(md)?;

    let every = r
        .rows
        .get(1)
        .map_or(r.sample_interval_secs, |row| row.span_secs.round());
    writeln!(
        md,
        "## Over time\n\nOne row per {}; latency and rates are those of the row's span, RSS, file descriptors and the counts of errors and closed connections at its end.\n",
        if (every - 60.0).abs() < 1.0 {
            "minute".to_owned()
        } else {
            format!("{every:.0} s")
        }
    )?;
    writeln!(
        md,
        "| t (min:s) | server RSS | anon | server CPU | waited for CPU | open conns | server fds | deliveries/s | p50 ms | p99 ms | max ms | disk fsync max | errors | closed |"
    )?;
    writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in &r.rows {
        let rate = if row.span_secs > 0.0 {
            format!("{:.0}", row.deliveries as f64 / row.span_secs)
        } else {
            "–".into()
        };
        let lat = |v: f64| {
            if row.deliveries > 0 {
                ms(v)
            } else {
                "–".into()
            }
        };
        let spanned = |text: String| {
            if row.span_secs > 0.0 {
                text
            } else {
                "–".into()
            }
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            clock(row.t_secs),
            mb(row.server_rss),
            mb(row.server_rss_anon),
            spanned(format!("{:.1} %", row.server_cpu_pct)),
            spanned(format!("{:.0} ms", row.server_cpu_wait_ms)),
            thousands(row.open),
            thousands(row.server_fds as u64),
            rate,
            lat(row.p50_ms),
            lat(row.p99_ms),
            lat(row.max_ms),
            spanned(format!("{} ms", ms(row.fsync_max_ms))),
            row.errors,
            row.closed,
        )?;
    }
    writeln!(md)?;
    write_stalls(&mut md, r)?;
    plot(r, &out.join("soak.svg"))?;
    writeln!(
        md,
        "![Server RSS and latency over the soak](soak.svg)\n\nEvery {:.0}-s sample is in `soak.json`.\n",
        r.sample_interval_secs
    )?;
    if !r.incidents.is_empty() || !r.server_log_excerpt.is_empty() {
        writeln!(md, "## Incidents\n\n```")?;
        for line in r.incidents.iter().chain(&r.server_log_excerpt) {
            writeln!(md, "{line}")?;
        }
        writeln!(md, "```\n")?;
    }
    writeln!(md, "{METHOD}")?;
    std::fs::write(out.join("SOAK.md"), md)?;
    Ok(())
}

/// The intervals whose p99 passed the suite's bound, with what the server waited for meanwhile.
fn write_stalls(md: &mut String, r: &SoakResults) -> anyhow::Result<()> {
    let stalls: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.deliveries > 0 && s.p99_ms > P99_BOUND_MS)
        .collect();
    writeln!(md, "### Latency stalls\n")?;
    if stalls.is_empty() {
        writeln!(
            md,
            "No {:.0}-s interval had a p99 over {P99_BOUND_MS:.0} ms.\n",
            r.sample_interval_secs
        )?;
        return Ok(());
    }
    writeln!(
        md,
        "{} of {} {:.0}-s intervals had a p99 over {P99_BOUND_MS:.0} ms. Beside each: how long the server's threads were runnable but waited for a CPU in that interval (other work on its core: the machine is shared), the slowest 4 KiB write + `fdatasync` of a probe on the server's disk (every 100 ms; the chat commits each message before fanning it out), and the load generator's CPU.\n",
        stalls.len(),
        r.samples.iter().filter(|s| s.span_secs > 0.0).count(),
        r.sample_interval_secs
    )?;
    writeln!(
        md,
        "| interval ending at | p50 ms | p99 ms | max ms | server waited for CPU | disk fsync max | load generator CPU |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for s in stalls {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} ms | {} ms | {:.1} % |",
            clock(s.t_secs),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            s.server_cpu_wait_ms,
            ms(s.fsync_max_ms),
            s.loadgen_cpu_pct,
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Server RSS over time above, latency per interval below.
fn plot(r: &SoakResults, path: &Path) -> anyhow::Result<()> {
    let minutes = r.duration_secs >= 120.0;
    let (unit, x_desc) = if minutes {
        (60.0, "minutes since the traffic started")
    } else {
        (1.0, "seconds since the traffic started")
    };
    let x = |t: f64| t / unit;
    let x_max = x(r.samples.last().map_or(r.duration_secs, |s| s.t_secs)).max(x(r.duration_secs));
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);

    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(320);

    let rss: Vec<(f64, f64)> = r
        .samples
        .iter()
        .map(|s| (x(s.t_secs), s.server_rss as f64 / 1e6))
        .collect();
    let anon: Vec<(f64, f64)> = r
        .samples
        .iter()
        .map(|s| (x(s.t_secs), s.server_rss_anon as f64 / 1e6))
        .collect();
    let limit = r.rss_warm as f64 / 1e6 * (1.0 + r.max_rss_growth_pct / 100.0);
    let y_max = rss.iter().map(|p| p.1).fold(limit, f64::max) * 1.12;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "Server RSS, {} connections, {} msg/s",
                thousands(r.connections as u64),
                r.rate
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("MB")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;
    draw_line(&mut chart, rss, blue.stroke_width(3), "server RSS")?;
    let light = lighter(blue);
    draw_line(
        &mut chart,
        anon,
        light.stroke_width(2),
        "anonymous (heap, stacks)",
    )?;
    let grey = BLACK.mix(0.4);
    draw_line(
        &mut chart,
        vec![(x(r.rss_warm_t_secs), limit), (x_max, limit)],
        grey.stroke_width(1),
        format!("limit: warm-up RSS + {} %", r.max_rss_growth_pct),
    )?;
    let orange = RGBColor(255, 127, 14);
    draw_line(
        &mut chart,
        vec![(x(r.rss_warm_t_secs), 0.0), (x(r.rss_warm_t_secs), y_max)],
        orange.stroke_width(2),
        "end of warm-up",
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;

    let with_deliveries = || r.samples.iter().filter(|s| s.deliveries > 0);
    let p99: Vec<(f64, f64)> = with_deliveries().map(|s| (x(s.t_secs), s.p99_ms)).collect();
    let p50: Vec<(f64, f64)> = with_deliveries().map(|s| (x(s.t_secs), s.p50_ms)).collect();
    let y_max = p99.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            format!(
                "Latency of each {:.0}-s interval's deliveries",
                r.sample_interval_secs
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("ms")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if y_max < 5.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .draw()
        .map_err(plot_error)?;
    draw_line(&mut chart, p99, red.stroke_width(3), "p99")?;
    let light = lighter(red);
    draw_line(&mut chart, p50, light.stroke_width(2), "p50")?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

const METHOD: &str = "## How it measures

- `chat-bench soak` (`scripts/bench soak`) runs on the fan-out engine of the benchmark suite
  (`bench/chat-bench/src/fanout.rs`): a dedicated OS thread sends message *k* at
  `t0 + k / rate` whatever happened to the earlier ones (open loop); each message carries its
  publisher, sequence number and intended send time, and latency runs from that intended time to
  its arrival at each member.
- **Nothing lost**: a message counts as published once the server acknowledged it (`ack`). Every
  (publisher, receiver) stream is checked for gaps, duplicates and reordering; every member of a
  room, the sender included, must receive each acknowledged message once, in order.
- **No connection dropped**: any close frame from the server, read error or end of stream on a
  connection before the run stops counts (the close reasons are kept under Incidents).
- **No errors**: failed sends, `error` frames, messages sent but never acknowledged, a schedule
  that fell more than a second of messages behind, and WARN or ERROR lines in the server's log.
- **RSS flat**: `VmRSS` of the server from `/proc/PID/status`, compared between the sample after
  warm-up and the last one (taken after the last messages drained); `RssAnon` beside it shows
  what of it is heap. CPU from `/proc/PID/stat`, file descriptors from `/proc/PID/fd`.
- **Where a stall came from**: the time the server's threads were runnable but waited for a CPU
  (`/proc/PID/task/*/schedstat`: other work on its core), and a probe that writes 4 KiB and
  calls `fdatasync` on the server's disk every 100 ms (the chat commits each message before it
  fans it out, so a slow disk delays every delivery behind it).
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("2025-01-01T00:00:00Z \u{1b}[33m WARN\u{1b}[0m chat: slow"),
            "2025-01-01T00:00:00Z  WARN chat: slow"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(600_000), "600,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(clock(600.04), "10:00");
        assert_eq!(duration_text(600.0), "10 minutes");
        assert_eq!(duration_text(20.0), "20 s");
    }
}
