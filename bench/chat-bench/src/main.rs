//! `chat-bench`: the chat against the peers people would pick instead, on this machine.
//!
//!     chat-bench suite [--quick] [--out docs/bench]
//!
//! starts each server (`chat serve`, Socket.IO 4.8 on Node, the bare `chat-relay`) pinned to one
//! core, drives it from another with the scenarios below, and writes `REPORT.md`,
//! `results.json` and SVG plots to the output directory.
//!
//! - fan-out, 1,000 connections in rooms of 10: a fixed run at the target load (4,000 msg/s,
//!   40,000 deliveries/s), then publish rates stepped up until p99 passes 50 ms;
//! - fan-out, 1,000 connections in one room, stepped up the same way;
//! - slow consumers: rooms of 10 at the target load while 10 % of the clients read nothing;
//! - capacity: 1k, 10k and 19.5k idle connections (a little under the 20,000 file descriptors
//!   one process may hold here): server RSS per connection and connect rate.
//!
//!     chat-bench counts [--label before] [--secs 10]
//!
//! counts, per delivery, the system calls by kind, bytes, TCP segments, context switches and
//! fsyncs of the chat and the relay at the target load (`counts-LABEL.json`, a table in the
//! report).
//!
//!     chat-bench soak [--connections 10000] [--duration 600] [--out docs/bench]
//!
//! holds connections open for minutes under light traffic and checks that nothing is lost, no
//! connection is dropped, no error happens and the server's RSS stays flat (`SOAK.md`).

mod capacity;
mod client;
mod counts;
mod fanout;
mod procfs;
mod proto;
mod report;
mod servers;
mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::capacity::CapacityResult;
use crate::fanout::{RunResult, Scenario};
use crate::servers::{Kind, Programs, Server};

#[derive(Parser)]
#[command(
    name = "chat-bench",
    about = "Benchmarks the chat against Socket.IO and a bare Rust relay: fan-out latency and throughput (open loop), capacity, slow consumers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark suite and write the report.
    Suite(SuiteArgs),
    /// Hold many connections for minutes under light traffic: RSS flat, no errors, nothing lost.
    Soak(soak::SoakArgs),
    /// Count what each delivery costs the kernel (syscalls by kind, bytes, TCP segments,
    /// context switches, fsyncs), chat and relay at the target load: `counts-LABEL.json`.
    Counts(counts::CountsArgs),
    /// Hold idle connections open (a worker of the capacity scenario, started by `suite`).
    #[command(hide = true)]
    Hold(HoldArgs),
    /// Write the report and plots again from a results.json.
    Report {
        /// The results.json of a suite run.
        #[arg(long, default_value = "docs/bench/results.json")]
        results: PathBuf,
        /// Where the report and plots go (default: beside results.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ScenarioName {
    /// 1,000 connections in rooms of 10: the target load, then rates stepped up.
    Rooms,
    /// 1,000 connections in one room, rates stepped up.
    OneRoom,
    /// Rooms of 10 at the target load, 10 % of the clients not reading.
    Slow,
    /// Idle connections: RSS per connection and connect rate.
    Capacity,
}

#[derive(Args, Debug, Clone)]
struct SuiteArgs {
    /// A small version of every scenario, in under two minutes: 500 connections, steps of 2 to
    /// 3 s, one step of the one-room search, 500 idle connections.
    #[arg(long)]
    quick: bool,
    /// Where the report, results.json and plots go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Servers to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Chat, Kind::Socketio, Kind::Relay])]
    servers: Vec<Kind>,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ScenarioName::Rooms, ScenarioName::OneRoom, ScenarioName::Slow, ScenarioName::Capacity])]
    scenarios: Vec<ScenarioName>,
    /// The target publish rate (messages/s) in rooms of 10.
    #[arg(long, default_value_t = 4000.0)]
    target_rate: f64,
    #[command(flatten)]
    host: HostArgs,
    /// Directory of the Socket.IO server (server.js, with node_modules installed).
    #[arg(long)]
    socketio_dir: Option<PathBuf>,
    /// The Node.js program.
    #[arg(long, default_value = "node")]
    node: String,
    /// Connections of the capacity scenario (default: 1000,10000,19500; quick: 1000).
    #[arg(long, value_delimiter = ',')]
    capacity: Option<Vec<usize>>,
}

/// Where the programs are, where they run and where they keep their files: the suite's and the
/// soak's.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Core the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_core: usize,
    /// Core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_core: usize,
    /// Do not pin (for machines with one core).
    #[arg(long)]
    pub no_pin: bool,
    /// Directory of the `chat` and `chat-relay` programs (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Scratch directory for the chat's database and the servers' logs (default: beside the
    /// programs, on the build's disk).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

impl HostArgs {
    /// The programs, with absolute paths (the Socket.IO server runs in its own directory), and
    /// a scratch directory of this run's own.
    pub fn programs(&self, socketio_dir: Option<PathBuf>, node: &str) -> anyhow::Result<Programs> {
        let bin_dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no directory")?
                .to_path_buf(),
        };
        let absolute = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let bin_dir = absolute(bin_dir);
        Ok(Programs {
            chat: bin_dir.join("chat"),
            relay: bin_dir.join("chat-relay"),
            socketio_dir: absolute(socketio_dir.unwrap_or_else(servers::default_socketio_dir)),
            node: node.to_owned(),
            core: (!self.no_pin).then_some(self.server_core),
            // On the disk of the build (a /tmp on tmpfs would make fsync free).
            work_dir: self
                .work_dir
                .clone()
                .unwrap_or_else(|| bin_dir.join("chat-bench-work"))
                .join(format!("run-{}", std::process::id())),
        })
    }

    /// The cores, for the reports: (server, load generator), or `None` when not pinned.
    pub fn pinned(&self) -> Option<(usize, usize)> {
        (!self.no_pin).then_some((self.server_core, self.client_core))
    }

    /// Pins the load generator to its core (unless told not to) and starts its runtime.
    fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        if !self.no_pin {
            procfs::pin_self(self.client_core)
                .with_context(|| format!("cannot pin to core {}", self.client_core))?;
        }
        Ok(tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?)
    }
}

#[derive(Args, Debug, Clone)]
struct HoldArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, value_enum)]
    server: Kind,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    total: usize,
}

/// Everything measured for one server.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServerResults {
    pub kind: Kind,
    pub target: Option<RunResult>,
    pub rooms: Option<RunResult>,
    pub one_room: Option<RunResult>,
    pub slow: Option<RunResult>,
    pub capacity: Vec<CapacityResult>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SuiteResults {
    pub date: String,
    pub command: String,
    pub quick: bool,
    pub pinned: Option<(usize, usize)>,
    pub machine: procfs::Machine,
    pub loadavg_before: String,
    /// Write + fdatasync latency of the disk under the chat's data directory: p50, p99, max ms.
    pub fsync_ms: Option<(f64, f64, f64)>,
    pub target_rate: f64,
    pub rooms_rates: Vec<f64>,
    pub one_room_rates: Vec<f64>,
    pub step_secs: f64,
    pub target_secs: f64,
    pub slow_secs: f64,
    pub servers: Vec<ServerResults>,
    pub duration_secs: f64,
    pub connections: usize,
}

/// Runs `work`; on Ctrl-C or SIGTERM, stops the servers it started and exits (130).
async fn until_interrupted(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => interrupted(),
        _ = terminate.recv() => interrupted(),
    }
}

fn interrupted() -> ! {
    eprintln!("interrupted: stopping the servers");
    servers::terminate_all();
    std::process::exit(130);
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    procfs::raise_fd_limit();
    match cli.command {
        Command::Suite(args) => args
            .host
            .runtime()?
            .block_on(until_interrupted(suite(args))),
        Command::Soak(args) => args
            .host
            .runtime()?
            .block_on(until_interrupted(soak::run(args))),
        Command::Counts(args) => args
            .host
            .runtime()?
            .block_on(until_interrupted(counts::run(args))),
        Command::Report { results, out } => {
            let suite: SuiteResults = serde_json::from_str(
                &std::fs::read_to_string(&results)
                    .with_context(|| format!("cannot read {}", results.display()))?,
            )?;
            let out = out.unwrap_or_else(|| {
                results
                    .parent()
                    .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
            });
            report::write(&suite, &out)
        }
        Command::Hold(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(capacity::hold(
                args.addr,
                args.server.proto(),
                args.first,
                args.count,
                args.total,
            ))
        }
    }
}

async fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let progress = move |line: &str| {
        eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    };
    let programs = args.host.programs(args.socketio_dir.clone(), &args.node)?;
    programs.check(&args.servers)?;

    let quick = args.quick;
    let target = args.target_rate;
    let (step_secs, target_secs, slow_secs) = if quick {
        (2.0, 3.0, 3.0)
    } else {
        (8.0, 20.0, 30.0)
    };
    let connections = if quick { 500 } else { 1000 };
    let rooms_rates: Vec<f64> = if quick {
        vec![target / 2.0, target]
    } else {
        [
            0.0625, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0,
        ]
        .iter()
        .map(|f| f * target)
        .collect()
    };
    let one_room_rates: Vec<f64> = if quick {
        vec![target / 200.0]
    } else {
        [
            0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0,
        ]
        .iter()
        .map(|f| f * target / 100.0)
        .collect()
    };
    let drain = Duration::from_secs(if quick { 2 } else { 10 });
    let fanout = |room_size: usize, steps: Vec<(f64, f64)>, stop_at_failure: bool| Scenario {
        connections,
        room_size: room_size.min(connections),
        slow_every: None,
        text_bytes: 100,
        steps,
        stop_at_failure,
        drain,
        slow_recv_buffer: 4096,
    };
    let capacity_counts = args.capacity.clone().unwrap_or_else(|| {
        if quick {
            vec![500]
        } else {
            vec![1000, 10_000, 19_500]
        }
    });

    let loadavg_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fsync_ms = procfs::fsync_latency(&programs.work_dir, if quick { 50 } else { 300 }).ok();
    if let Some((p50, p99, max)) = fsync_ms {
        progress(&format!(
            "disk: 4 KiB write + fdatasync takes p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
        ));
    }
    let mut results = Vec::new();
    for &kind in &args.servers {
        let mut server_results = ServerResults {
            kind,
            target: None,
            rooms: None,
            one_room: None,
            slow: None,
            capacity: Vec::new(),
            errors: Vec::new(),
        };
        let label = kind.label();
        for &scenario in &args.scenarios {
            let outcome: anyhow::Result<()> = async {
                match scenario {
                    ScenarioName::Rooms => {
                        if quick {
                            // One run: below, at and above the target.
                            let steps = rooms_rates
                                .iter()
                                .map(|&r| (r, if r == target { target_secs } else { step_secs }));
                            let run = run_fanout(
                                kind,
                                &programs,
                                &fanout(10, steps.collect(), false),
                                &format!("{label} rooms"),
                                &progress,
                            )
                            .await?;
                            server_results.rooms = Some(run);
                        } else {
                            let run = run_fanout(
                                kind,
                                &programs,
                                &fanout(10, vec![(target, target_secs)], false),
                                &format!("{label} target"),
                                &progress,
                            )
                            .await?;
                            server_results.target = Some(run);
                            let steps = rooms_rates.iter().map(|&r| (r, step_secs)).collect();
                            let run = run_fanout(
                                kind,
                                &programs,
                                &fanout(10, steps, true),
                                &format!("{label} rooms step-up"),
                                &progress,
                            )
                            .await?;
                            server_results.rooms = Some(run);
                        }
                    }
                    ScenarioName::OneRoom => {
                        let steps = one_room_rates.iter().map(|&r| (r, step_secs)).collect();
                        let run = run_fanout(
                            kind,
                            &programs,
                            &fanout(connections, steps, true),
                            &format!("{label} one room"),
                            &progress,
                        )
                        .await?;
                        server_results.one_room = Some(run);
                    }
                    ScenarioName::Slow => {
                        let mut scenario = fanout(10, vec![(target, slow_secs)], false);
                        scenario.slow_every = Some(10);
                        let run = run_fanout(
                            kind,
                            &programs,
                            &scenario,
                            &format!("{label} slow consumers"),
                            &progress,
                        )
                        .await?;
                        server_results.slow = Some(run);
                    }
                    ScenarioName::Capacity => {
                        for &count in &capacity_counts {
                            let programs = programs.clone();
                            let label = format!("{label} capacity {count}");
                            let result = tokio::task::spawn_blocking(move || {
                                let server = Server::start(kind, &programs, "capacity")?;
                                let result = capacity::run(&server, count, &label, &|l| {
                                    eprintln!("[{:>6.1}s] {l}", started.elapsed().as_secs_f64())
                                });
                                server.stop();
                                result
                            })
                            .await??;
                            server_results.capacity.push(result);
                        }
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                progress(&format!("{label} {scenario:?} FAILED: {e:#}"));
                server_results.errors.push(format!("{scenario:?}: {e:#}"));
            }
        }
        results.push(server_results);
    }
    let _ = std::fs::remove_dir_all(&programs.work_dir);

    let suite = SuiteResults {
        date: utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick,
        pinned: args.host.pinned(),
        machine: procfs::machine(),
        loadavg_before: loadavg_before.trim().to_owned(),
        fsync_ms,
        target_rate: target,
        rooms_rates,
        one_room_rates,
        step_secs,
        target_secs,
        slow_secs,
        servers: results,
        duration_secs: started.elapsed().as_secs_f64(),
        connections,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&suite)?,
    )?;
    report::write(&suite, &args.out)?;
    progress(&format!(
        "report written to {}",
        args.out.join("REPORT.md").display()
    ));
    let failures: Vec<String> = suite
        .servers
        .iter()
        .flat_map(|s| {
            s.errors
                .iter()
                .map(move |e| format!("{}: {e}", s.kind.label()))
        })
        .collect();
    if !failures.is_empty() {
        anyhow::bail!("some scenarios failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

async fn run_fanout(
    kind: Kind,
    programs: &Programs,
    scenario: &Scenario,
    label: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RunResult> {
    let tag = label.replace(' ', "-");
    let server = {
        let programs = programs.clone();
        tokio::task::spawn_blocking(move || Server::start(kind, &programs, &tag)).await??
    };
    progress(&format!(
        "{label}: {} started (pid {}) on {}",
        kind.title(),
        server.pid(),
        server.addr
    ));
    let result = fanout::run(&server, scenario, label, progress).await;
    tokio::task::spawn_blocking(move || server.stop()).await?;
    result
}

pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
