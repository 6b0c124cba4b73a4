//! `chat-bench counts`: what one delivery costs the kernel, counted rather than timed.
//!
//! Each server in turn runs the target load (1,000 connections in rooms of 10, 4,000 msg/s by
//! default) for a few seconds, and over that step the bench counts, for the server process:
//!
//! - system calls by kind: `perf stat -e syscalls:sys_enter_*` attached to the server (every
//!   thread; threads it starts later inherit the counters). Without perf, these are missing;
//! - bytes and TCP segments the server's sockets sent: `ss -ti` on its listening port, summed
//!   over its connections (bytes_sent, segs_out, data_segs_out), before and after;
//! - TCP segments out for the whole machine (`/proc/net/snmp`, both ends of loopback);
//! - context switches, voluntary and not, summed over its threads (`/proc/PID/task/*/status`);
//! - fsync and fdatasync per message, from the syscall counts;
//! - the CPU split (user, kernel) per delivery from /proc/PID/stat (with perf attached: a
//!   little above the suite's figure, for both servers alike).
//!
//! Counts depend far less on what else runs on the machine than CPU time does. The results go
//! to `counts-LABEL.json` in the output directory, which the report turns into a table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::fanout::{Fleet, Scenario};
use crate::servers::{Kind, Server};
use crate::{HostArgs, procfs};

/// The system calls counted, by tracepoint name (`syscalls:sys_enter_NAME`).
pub const SYSCALLS: &[&str] = &[
    "sendto",
    "sendmsg",
    "writev",
    "write",
    "recvfrom",
    "read",
    "readv",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "fsync",
    "fdatasync",
    "pwrite64",
    "pread64",
    "fcntl",
    "sched_yield",
];

#[derive(Args, Debug, Clone)]
pub struct CountsArgs {
    /// Servers to count, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Chat, Kind::Relay])]
    pub servers: Vec<Kind>,
    /// Publish rate (messages/s).
    #[arg(long, default_value_t = 4000.0)]
    pub rate: f64,
    /// Seconds counted per server.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// A name for this run: its results go to `counts-LABEL.json` ("before", "after"...).
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Where `counts-LABEL.json` goes.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
    /// Extra arguments for `chat serve` (after the bench's own), e.g. `--send-buffer=0`.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub chat_args: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
}

/// What one server's step counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counted {
    pub kind: Kind,
    pub rate: f64,
    pub secs: f64,
    pub messages: u64,
    pub deliveries: u64,
    pub p99_ms: f64,
    pub lost: u64,
    pub user_s: f64,
    pub sys_s: f64,
    /// User and kernel seconds per thread name over the step (the chat's `sqlite-writer` apart
    /// from its `tokio-rt-worker`s); empty in runs from before it was counted.
    #[serde(default)]
    pub cpu_by_thread: BTreeMap<String, (f64, f64)>,
    /// Per kind; absent when perf could not count.
    pub syscalls: BTreeMap<String, u64>,
    /// Every system call (`raw_syscalls:sys_enter`).
    pub syscalls_total: Option<u64>,
    /// The server's sockets: bytes, segments and data segments sent.
    pub bytes_sent: u64,
    pub segs_out: u64,
    pub data_segs_out: u64,
    /// `Tcp: OutSegs` of /proc/net/snmp: the whole machine, both ends.
    pub machine_out_segs: u64,
    pub voluntary_ctxt: u64,
    pub nonvoluntary_ctxt: u64,
    pub loadavg: String,
    /// rustc processes seen running at the start and at the end of the step.
    pub rustc_running: usize,
}

/// A counts run: every server's figures, with the conditions they were taken under.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountsRun {
    pub label: String,
    pub date: String,
    pub command: String,
    pub commit: String,
    pub connections: usize,
    pub room_size: usize,
    pub servers: Vec<Counted>,
}

impl Counted {
    pub fn per_delivery(&self, n: u64) -> f64 {
        n as f64 / self.deliveries.max(1) as f64
    }
    pub fn per_message(&self, n: u64) -> f64 {
        n as f64 / self.messages.max(1) as f64
    }
    pub fn syscall(&self, names: &[&str]) -> u64 {
        names
            .iter()
            .filter_map(|n| self.syscalls.get(*n))
            .copied()
            .sum()
    }
}

pub async fn run(args: CountsArgs) -> anyhow::Result<()> {
    let programs = args.host.programs(None, "node")?;
    programs.check(&args.servers)?;
    let progress = |line: &str| eprintln!("{line}");
    let scenario = Scenario {
        connections: args.connections,
        room_size: args.room_size,
        slow_every: None,
        text_bytes: 100,
        steps: vec![(args.rate, args.secs)],
        stop_at_failure: false,
        drain: Duration::from_secs(5),
        slow_recv_buffer: 4096,
    };
    let mut servers = Vec::new();
    for &kind in &args.servers {
        let extra = if kind == Kind::Chat {
            args.chat_args.clone()
        } else {
            Vec::new()
        };
        let server = {
            let programs = programs.clone();
            tokio::task::spawn_blocking(move || {
                Server::start_with(kind, &programs, "counts", &extra)
            })
            .await??
        };
        let label = format!("{} counts", kind.label());
        let mut fleet = Fleet::connect(&server, &scenario, &label, &progress).await?;
        fleet.settle(&server).await;
        let pid = server.pid();
        let port = server.addr.port();
        let rustc_before = rustc_running();
        let (user0, sys0) = server.cpu_split();
        let threads0 = procfs::cpu_by_thread(pid);
        let ss0 = socket_counters(port);
        let snmp0 = machine_out_segs();
        let ctxt0 = procfs::context_switches(pid);
        let perf_out = programs.work_dir.join(format!("perf-{}.txt", kind.label()));
        std::fs::create_dir_all(&programs.work_dir)?;
        let perf = start_perf(pid, &perf_out);
        let step = fleet
            .step(&server, args.rate, args.secs, scenario.drain, &mut |_| {})
            .await?;
        let syscalls = perf.map(|p| stop_perf(p, &perf_out)).unwrap_or_default();
        let (user1, sys1) = server.cpu_split();
        let threads1 = procfs::cpu_by_thread(pid);
        let ss1 = socket_counters(port);
        let snmp1 = machine_out_segs();
        let ctxt1 = procfs::context_switches(pid);
        let rustc_after = rustc_running();
        let mut syscalls = syscalls;
        let total = syscalls.remove("raw_syscalls:sys_enter");
        let counted = Counted {
            kind,
            rate: args.rate,
            secs: args.secs,
            messages: step.acked,
            deliveries: step.delivered,
            p99_ms: step.p99_ms,
            lost: step.lost,
            user_s: user1 - user0,
            sys_s: sys1 - sys0,
            cpu_by_thread: thread_deltas(&threads0, threads1),
            syscalls,
            syscalls_total: total,
            bytes_sent: ss1.bytes_sent.saturating_sub(ss0.bytes_sent),
            segs_out: ss1.segs_out.saturating_sub(ss0.segs_out),
            data_segs_out: ss1.data_segs_out.saturating_sub(ss0.data_segs_out),
            machine_out_segs: snmp1.saturating_sub(snmp0),
            voluntary_ctxt: ctxt1.0.saturating_sub(ctxt0.0),
            nonvoluntary_ctxt: ctxt1.1.saturating_sub(ctxt0.1),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            rustc_running: rustc_before.max(rustc_after),
        };
        progress(&table(std::slice::from_ref(&counted)).to_string());
        let _ = fleet.finish().await;
        tokio::task::spawn_blocking(move || server.stop()).await?;
        servers.push(counted);
    }
    let _ = std::fs::remove_dir_all(&programs.work_dir);
    let run = CountsRun {
        label: args.label.clone(),
        date: crate::utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: git_commit(),
        connections: args.connections,
        room_size: args.room_size,
        servers,
    };
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("counts-{}.json", args.label));
    std::fs::write(&path, serde_json::to_string_pretty(&run)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", table(&run.servers));
    eprintln!("written to {}", path.display());
    Ok(())
}

/// Each thread name's CPU over the step; names that used none are left out.
fn thread_deltas(
    before: &BTreeMap<String, (f64, f64)>,
    after: BTreeMap<String, (f64, f64)>,
) -> BTreeMap<String, (f64, f64)> {
    after
        .into_iter()
        .filter_map(|(name, (user, sys))| {
            let (user0, sys0) = before.get(&name).copied().unwrap_or_default();
            let delta = ((user - user0).max(0.0), (sys - sys0).max(0.0));
            (delta.0 + delta.1 > 0.0).then_some((name, delta))
        })
        .collect()
}

/// The per-delivery table of some servers' counts, one column each.
pub fn table(servers: &[Counted]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("| per delivery |");
    for s in servers {
        let _ = write!(out, " {} |", s.kind.label());
    }
    out.push_str("\n| --- |");
    for _ in servers {
        out.push_str(" ---: |");
    }
    out.push('\n');
    let mut row = |name: &str, value: &dyn Fn(&Counted) -> String| {
        let _ = write!(out, "| {name} |");
        for s in servers {
            let _ = write!(out, " {} |", value(s));
        }
        out.push('\n');
    };
    row("messages, deliveries", &|s| {
        format!("{}, {}", s.messages, s.deliveries)
    });
    // CPU seconds as µs per delivery: "total (user + kernel)".
    let cpu = |s: &Counted, user: f64, sys: f64| {
        let d = s.deliveries.max(1) as f64;
        format!(
            "{:.2} ({:.2} + {:.2})",
            (user + sys) * 1e6 / d,
            user * 1e6 / d,
            sys * 1e6 / d
        )
    };
    row("CPU µs (user + kernel)", &|s| cpu(s, s.user_s, s.sys_s));
    let mut threads: Vec<&String> = servers
        .iter()
        .flat_map(|s| s.cpu_by_thread.keys())
        .collect();
    threads.sort();
    threads.dedup();
    for thread in threads {
        row(&format!("… of which thread `{thread}`"), &|s| {
            s.cpu_by_thread
                .get(thread)
                .map_or("-".into(), |&(user, sys)| cpu(s, user, sys))
        });
    }
    row("p99 ms (lost)", &|s| {
        format!("{:.2} ({})", s.p99_ms, s.lost)
    });
    let have_syscalls = servers.iter().any(|s| s.syscalls_total.is_some());
    if have_syscalls {
        row("all syscalls", &|s| {
            s.syscalls_total
                .map_or("-".into(), |n| format!("{:.2}", s.per_delivery(n)))
        });
        let kinds: &[(&str, &[&str])] = &[
            ("sendto + sendmsg (socket writes)", &["sendto", "sendmsg"]),
            ("writev", &["writev"]),
            ("write (eventfd wake-ups, files)", &["write"]),
            ("recvfrom + read + readv", &["recvfrom", "read", "readv"]),
            ("epoll_wait + epoll_pwait", &["epoll_wait", "epoll_pwait"]),
            ("epoll_ctl", &["epoll_ctl"]),
            ("futex", &["futex"]),
            ("sched_yield", &["sched_yield"]),
            ("pwrite64 (SQLite: WAL frames)", &["pwrite64"]),
            ("fcntl (SQLite: locks)", &["fcntl"]),
            ("pread64 (SQLite: checkpoints)", &["pread64"]),
        ];
        for (name, calls) in kinds {
            row(name, &|s| {
                format!("{:.3}", s.per_delivery(s.syscall(calls)))
            });
        }
    }
    row("bytes sent", &|s| {
        format!("{:.1}", s.per_delivery(s.bytes_sent))
    });
    row("TCP segments out (data)", &|s| {
        format!(
            "{:.3} ({:.3})",
            s.per_delivery(s.segs_out),
            s.per_delivery(s.data_segs_out)
        )
    });
    row("TCP segments out, machine (both ends)", &|s| {
        format!("{:.3}", s.per_delivery(s.machine_out_segs))
    });
    row("context switches (voluntary + not)", &|s| {
        format!(
            "{:.3} + {:.3}",
            s.per_delivery(s.voluntary_ctxt),
            s.per_delivery(s.nonvoluntary_ctxt)
        )
    });
    if have_syscalls {
        row("fsync + fdatasync per message", &|s| {
            format!("{:.4}", s.per_message(s.syscall(&["fsync", "fdatasync"])))
        });
        row("all syscalls per message", &|s| {
            s.syscalls_total
                .map_or("-".into(), |n| format!("{:.2}", s.per_message(n)))
        });
    }
    row("load average, rustc running", &|s| {
        let load = s.loadavg.split_whitespace().next().unwrap_or("?");
        format!("{load}, {}", s.rustc_running)
    });
    out
}

/// Reads every `counts-*.json` in a directory, by label.
pub fn load_all(dir: &Path) -> Vec<CountsRun> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(String, CountsRun)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("counts-") && name.ends_with(".json")
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let run: CountsRun = serde_json::from_str(&text).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), run))
        })
        .collect();
    runs.sort_by(|a, b| a.1.date.cmp(&b.1.date).then(a.0.cmp(&b.0)));
    runs.into_iter().map(|(_, run)| run).collect()
}

fn start_perf(pid: u32, out: &Path) -> Option<Child> {
    let mut events = vec!["raw_syscalls:sys_enter".to_owned()];
    events.extend(SYSCALLS.iter().map(|s| format!("syscalls:sys_enter_{s}")));
    let child = Command::new("perf")
        .args(["stat", "-x", ",", "--no-big-num", "-o"])
        .arg(out)
        .arg("-e")
        .arg(events.join(","))
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf not available ({e}): no syscall counts"))
        .ok()?;
    // Let it attach to every thread before the step starts.
    std::thread::sleep(Duration::from_millis(500));
    Some(child)
}

fn stop_perf(mut perf: Child, out: &Path) -> BTreeMap<String, u64> {
    // SAFETY: a signal to the child we started and have not reaped.
    unsafe {
        libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
    }
    let _ = perf.wait();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        let Ok(n) = fields[0].trim().parse::<u64>() else {
            continue;
        };
        let event = fields[2].trim();
        let name = event
            .strip_prefix("syscalls:sys_enter_")
            .unwrap_or(event)
            .to_owned();
        counts.insert(name, n);
    }
    if counts.is_empty() {
        eprintln!("perf counted nothing ({}): {text}", out.display());
    }
    counts
}

#[derive(Debug, Default, Clone, Copy)]
struct SocketCounters {
    bytes_sent: u64,
    segs_out: u64,
    data_segs_out: u64,
}

/// Sums `ss -ti` counters over the established sockets whose local port is `port`.
fn socket_counters(port: u16) -> SocketCounters {
    let output = Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output();
    let Ok(output) = output else {
        return SocketCounters::default();
    };
    parse_ss(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ss(text: &str) -> SocketCounters {
    let mut c = SocketCounters::default();
    for token in text.split_whitespace() {
        let Some((key, value)) = token.split_once(':') else {
            continue;
        };
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "bytes_sent" => c.bytes_sent += n,
            "segs_out" => c.segs_out += n,
            "data_segs_out" => c.data_segs_out += n,
            _ => {}
        }
    }
    c
}

/// `Tcp: ... OutSegs` of /proc/net/snmp.
fn machine_out_segs() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let [names, values] = tcp.as_slice() else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn rustc_running() -> usize {
    Command::new("pgrep")
        .arg("-c")
        .arg("rustc")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_cpu_is_what_it_used_during_the_step() {
        let before = BTreeMap::from([
            ("sqlite-writer".to_owned(), (1.0, 2.0)),
            ("idle".to_owned(), (0.5, 0.5)),
        ]);
        let after = BTreeMap::from([
            ("sqlite-writer".to_owned(), (1.5, 2.25)),
            ("idle".to_owned(), (0.5, 0.5)),
            ("started-later".to_owned(), (0.0, 0.125)),
        ]);
        let deltas = thread_deltas(&before, after);
        assert_eq!(
            deltas,
            BTreeMap::from([
                ("sqlite-writer".to_owned(), (0.5, 0.25)),
                ("started-later".to_owned(), (0.0, 0.125)),
            ])
        );
    }

    #[test]
    fn reads_ss_counters() {
        let text = "0 0 127.0.0.1:4000 127.0.0.1:5000\n\t cubic wscale:7,7 rto:201 bytes_sent:300 bytes_acked:300 segs_out:4 segs_in:3 data_segs_out:2 send 1bps\n0 0 127.0.0.1:4000 127.0.0.1:5001\n\t bytes_sent:100 segs_out:1 data_segs_out:1\n";
        let c = parse_ss(text);
        assert_eq!((c.bytes_sent, c.segs_out, c.data_segs_out), (400, 5, 3));
    }
}
