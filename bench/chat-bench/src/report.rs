//! The Markdown report and its SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::fanout::{P99_BOUND_MS, RunResult, StepResult};
use crate::servers::Kind;
use crate::{ServerResults, SuiteResults};

/// The targets of issue 5.
const P99_TARGET_MS: f64 = 5.0;
const RSS_PER_CONN_TARGET: f64 = 8.0 * 1024.0;
/// A load generator above this share of its core may be what limits a step.
const SATURATED: f64 = 0.9;

pub(crate) fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Chat => RGBColor(31, 119, 180),
        Kind::Socketio => RGBColor(214, 39, 40),
        Kind::Relay => RGBColor(44, 160, 44),
    }
}

/// The step at the target load: the fixed run, or (quick mode) the step at that rate.
pub fn target_step(suite: &SuiteResults, server: &ServerResults) -> Option<(StepResult, bool)> {
    if let Some(run) = &server.target {
        return run.steps.first().cloned().map(|s| {
            (
                s,
                run.integrity.lost + run.integrity.duplicates + run.integrity.reordered == 0,
            )
        });
    }
    let run = server.rooms.as_ref()?;
    run.steps
        .iter()
        .find(|s| (s.rate - suite.target_rate).abs() < 0.5)
        .cloned()
        .map(|s| {
            let clean = s.lost + s.duplicates + s.reordered == 0;
            (s, clean)
        })
}

fn best_step(run: &RunResult) -> Option<&StepResult> {
    run.steps
        .iter()
        .filter(|s| s.held)
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
}

/// The step that ended the search (a rate that missed twice), if it went that far.
fn first_failure(run: &RunResult) -> Option<&StepResult> {
    let failed: Vec<&StepResult> = run.steps.iter().filter(|s| !s.held).collect();
    failed
        .iter()
        .find(|s| s.retry)
        .or_else(|| failed.last())
        .copied()
}

pub(crate) fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub(crate) fn kb(bytes: f64) -> String {
    format!("{:.1} KB", bytes / 1024.0)
}

fn rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn find(suite: &SuiteResults, kind: Kind) -> Option<&ServerResults> {
    suite.servers.iter().find(|s| s.kind == kind)
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

pub fn write(suite: &SuiteResults, out: &Path) -> anyhow::Result<()> {
    let mut md = String::new();
    let m = &suite.machine;
    writeln!(
        md,
        "# Benchmark: the chat against Socket.IO and a bare Rust relay\n"
    )?;
    writeln!(
        md,
        "Run {}{}, in {:.0} s, with:\n\n```\n{}\n```\n",
        suite.date,
        if suite.quick {
            " (**quick mode**: short steps, small numbers)"
        } else {
            ""
        },
        suite.duration_secs,
        suite.command
    )?;
    writeln!(
        md,
        "Machine: {} cores ({}), {:.1} GiB of memory, Linux {}. {}. Load average before the run: {}.\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_gib,
        m.kernel,
        match suite.pinned {
            Some((server, client)) => format!(
                "Each server pinned to core {server} and the load generator to core {client} (taskset / sched_setaffinity)"
            ),
            None => "Nothing pinned".into(),
        },
        suite.loadavg_before
    )?;
    if let Some((p50, p99, max)) = suite.fsync_ms {
        writeln!(
            md,
            "Disk under the chat's data directory: a 4 KiB write + `fdatasync` takes p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms. The chat commits (and so fsyncs) before it fans a message out, so this is a floor under its latency.\n"
        )?;
    }
    writeln!(
        md,
        "Servers: **chat** is `chat serve` as shipped (SQLite in WAL mode, `synchronous = FULL`, every message committed before its `ack`), with only its limits raised for the bench (`--max-connections 20000 --rate-burst 1000000 --rate-per-second 1000000`); **Socket.IO** is socket.io 4.8.4 on Node {} (`bench/socketio/server.js`: join a room, `io.to(room).emit`, an ack callback; no persistence); **relay** is `chat-relay`, tokio-tungstenite's broadcast example with rooms (no persistence, no validation).\n",
        node_version()
    )?;

    // The target load.
    writeln!(
        md,
        "## At the target load\n\n{} connections in rooms of 10, 100-byte messages, {} messages/s published open-loop ({} deliveries/s), {:.0} s. Latency runs from each message's *intended* send time to its delivery at each member, the sender included.\n",
        suite.connections,
        rate(suite.target_rate),
        rate(suite.target_rate * 10.0),
        suite.target_secs
    )?;
    writeln!(
        md,
        "| server | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | lost / dup / reordered | server CPU µs per delivery | of which kernel | vs Socket.IO | load generator core |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")?;
    let sio_cpu = find(suite, Kind::Socketio)
        .and_then(|s| target_step(suite, s))
        .map(|(s, _)| s.server_cpu_us_per_delivery);
    for server in &suite.servers {
        let Some((s, _)) = target_step(suite, server) else {
            writeln!(md, "| {} | not measured ||||||||||", server.kind.title())?;
            continue;
        };
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} / {} / {} | {:.2} | {:.2} | {} | {:.0} % |",
            server.kind.title(),
            s.deliveries_per_sec,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            ms(s.max_ms),
            s.lost,
            s.duplicates,
            s.reordered,
            s.server_cpu_us_per_delivery,
            s.server_sys_us_per_delivery(),
            sio_cpu.map_or("–".into(), |c| format!(
                "{:.2}×",
                s.server_cpu_us_per_delivery / c
            )),
            s.loadgen_util * 100.0,
        )?;
    }
    writeln!(md)?;

    // Highest rates.
    writeln!(
        md,
        "## Highest publish rate that holds p99 ≤ {P99_BOUND_MS:.0} ms with no loss\n\nRates step up ({:.0} s per step) until a rate misses twice in a row (the machine is shared with other work, and one stall of a few hundred ms fails a step on its own); a step also fails when more than a second of messages is waiting for acknowledgement. \"Per server CPU-second\" is the deliveries of the best step divided by the CPU time the server used in it: what the server could carry per core if the load generator were not the limit.\n",
        suite.step_secs
    )?;
    writeln!(
        md,
        "| server | scenario | best rate msg/s | deliveries/s | p99 ms there | deliveries per server CPU-second | first failing step | load generator there |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|")?;
    for server in &suite.servers {
        for (name, run) in [
            ("rooms of 10", &server.rooms),
            ("one room", &server.one_room),
        ] {
            let Some(run) = run else { continue };
            let best = best_step(run);
            let fail = first_failure(run);
            writeln!(
                md,
                "| {} | {name} | {} | {} | {} | {} | {} | {} |",
                server.kind.title(),
                best.map_or("none held".into(), |s| rate(s.rate)),
                best.map_or("–".into(), |s| format!("{:.0}", s.deliveries_per_sec)),
                best.map_or("–".into(), |s| ms(s.p99_ms)),
                best.map_or("–".into(), |s| format!(
                    "{:.0}",
                    s.delivered as f64 / s.server_cpu_s.max(1e-9)
                )),
                fail.map_or("none (the search ended)".into(), |s| format!(
                    "{} msg/s: p99 {} ms{}{}",
                    rate(s.rate),
                    ms(s.p99_ms),
                    if s.aborted { ", backlog over 1 s" } else { "" },
                    if s.lost > 0 {
                        format!(", {} lost", s.lost)
                    } else {
                        String::new()
                    }
                )),
                fail.map_or("–".into(), |s| format!(
                    "{:.0} %{}",
                    s.loadgen_util * 100.0,
                    if s.loadgen_util > SATURATED {
                        " (saturated)"
                    } else {
                        ""
                    }
                )),
            )?;
        }
    }
    writeln!(md)?;

    // Capacity.
    writeln!(
        md,
        "## Capacity: idle connections\n\nA fresh server for each count; the connections are opened by worker processes (at most 7,000 each) since a process here may hold at most 20,000 file descriptors. The largest count is the most one server process can hold under that limit, not 20,000. RSS per connection = (RSS with the connections open − RSS before) / connections.\n"
    )?;
    writeln!(
        md,
        "| server | connections | opened | connects/s | server RSS before | with connections | RSS per connection | server CPU µs per connect |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for server in &suite.servers {
        for c in &server.capacity {
            writeln!(
                md,
                "| {} | {} | {}{} | {:.0} | {} | {} | {} | {:.0} |",
                server.kind.title(),
                c.connections,
                c.opened,
                if c.failed > 0 {
                    format!(" ({} failed)", c.failed)
                } else {
                    String::new()
                },
                c.connects_per_sec,
                mb(c.server_rss_idle),
                mb(c.server_rss_loaded),
                kb(c.rss_per_connection),
                c.server_cpu_us_per_connect,
            )?;
        }
    }
    writeln!(md)?;

    // Slow consumers.
    writeln!(
        md,
        "## Slow consumers\n\nRooms of 10 at {} msg/s for {:.0} s; one member of each room (10 %) reads nothing (its socket receive buffer set to 4 KiB so that the server feels it at once) and publishes nothing. Latency and loss are those of the other 90 %.\n",
        rate(suite.target_rate),
        suite.slow_secs
    )?;
    writeln!(
        md,
        "| server | p50 ms | p99 ms | p99.9 ms | max ms | lost / dup / reordered (readers) | server RSS before → max → end | slow consumers closed by the server |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|---|---:|")?;
    for server in &suite.servers {
        let Some(run) = &server.slow else { continue };
        let Some(s) = run.steps.first() else { continue };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} / {} | {} → {} → {} | {} of {} |",
            server.kind.title(),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            ms(s.max_ms),
            run.integrity.lost,
            run.integrity.duplicates,
            run.integrity.reordered,
            mb(run.server_rss_connected),
            mb(s.server_rss_max),
            mb(s.server_rss_end),
            run.slow_closed,
            run.slow,
        )?;
    }
    writeln!(md)?;

    // Targets.
    write_targets(&mut md, suite)?;

    // Plots.
    let mut plots = Vec::new();
    let rooms_title = format!("{} connections in rooms of 10", suite.connections);
    let one_room_title = format!("{} connections in one room", suite.connections);
    if plot_sweep(suite, out, "rooms", |s| s.rooms.as_ref(), &rooms_title)? {
        plots.push((
            "rooms_throughput.svg",
            "Server CPU against throughput, rooms of 10",
        ));
        plots.push(("rooms_latency.svg", "Latency, rooms of 10"));
    }
    if plot_sweep(
        suite,
        out,
        "one_room",
        |s| s.one_room.as_ref(),
        &one_room_title,
    )? {
        plots.push((
            "one_room_throughput.svg",
            "Server CPU against throughput, one room",
        ));
        plots.push(("one_room_latency.svg", "Latency, one room"));
    }
    if plot_target(suite, out)? {
        plots.push((
            "target_latency.svg",
            "Latency percentiles at the target load",
        ));
    }
    write_counts(&mut md, out)?;
    if !plots.is_empty() {
        writeln!(md, "## Plots\n")?;
        for (file, title) in plots {
            writeln!(md, "![{title}]({file})\n")?;
        }
    }

    // Every step.
    writeln!(md, "## Every step\n")?;
    for server in &suite.servers {
        for (name, run) in [
            ("target load", &server.target),
            ("rooms of 10, step-up", &server.rooms),
            ("one room, step-up", &server.one_room),
            ("slow consumers", &server.slow),
        ] {
            let Some(run) = run else { continue };
            writeln!(
                md,
                "### {}: {name}\n\nConnected and joined in {:.1} s; server RSS {} idle, {} with the connections. Whole run: {} of {} rooms with loss, {} with duplicates, {} with reordering ({} lost, {} duplicates, {} reordered); {} reading connections closed by the server; {} failed sends.\n",
                server.kind.title(),
                run.connect_secs,
                mb(run.server_rss_idle),
                mb(run.server_rss_connected),
                run.integrity.rooms_with_loss,
                run.integrity.rooms,
                run.integrity.rooms_with_duplicates,
                run.integrity.rooms_with_reordering,
                run.integrity.lost,
                run.integrity.duplicates,
                run.integrity.reordered,
                run.integrity.closed_readers,
                run.send_errors,
            )?;
            writeln!(
                md,
                "| msg/s | s | sent | acked | deliveries/s | p50 | p99 | p99.9 | max ms | lost | dup | reord | server CPU s | µs/delivery | server RSS max | load gen | held |"
            )?;
            writeln!(
                md,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            )?;
            for s in &run.steps {
                writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.0} % | {} |",
                    rate(s.rate),
                    s.secs,
                    s.sent,
                    s.acked,
                    s.deliveries_per_sec,
                    ms(s.p50_ms),
                    ms(s.p99_ms),
                    ms(s.p999_ms),
                    ms(s.max_ms),
                    s.lost,
                    s.duplicates,
                    s.reordered,
                    s.server_cpu_s,
                    s.server_cpu_us_per_delivery,
                    mb(s.server_rss_max),
                    s.loadgen_util * 100.0,
                    match (s.held, s.aborted, s.retry) {
                        (true, _, false) => "yes",
                        (true, _, true) => "yes (second run)",
                        (false, true, false) => "no (backlog)",
                        (false, true, true) => "no again (backlog)",
                        (false, false, false) => "no",
                        (false, false, true) => "no again",
                    },
                )?;
            }
            writeln!(md)?;
        }
        for e in &server.errors {
            writeln!(md, "**{} failed**: {e}\n", server.kind.title())?;
        }
    }

    writeln!(md, "{}", METHOD)?;
    std::fs::write(out.join("REPORT.md"), md)?;
    Ok(())
}

/// The per-delivery counts of `chat-bench counts` runs kept beside the report, oldest first.
fn write_counts(md: &mut String, out: &Path) -> anyhow::Result<()> {
    let runs = crate::counts::load_all(out);
    if runs.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## Per-delivery counts\n\nFrom `chat-bench counts` (`scripts/counts`): each server alone at {} connections in rooms of {}, with `perf stat -e 'syscalls:sys_enter_*'` attached to it (its CPU figures are a little above the suite's for that), `ss -ti` summed over its connections for bytes and segments, /proc/PID/task/*/status for context switches. Counts hardly depend on what else runs on the machine; CPU time does, so each table gives the load average and whether a compiler was running.\n",
        runs[0].connections, runs[0].room_size
    )?;
    for run in &runs {
        let rate = run.servers.first().map_or(0.0, |s| s.rate);
        let secs = run.servers.first().map_or(0.0, |s| s.secs);
        writeln!(
            md,
            "### {} ({}, commit {}, {} msg/s for {:.0} s)\n\n```\n{}\n```\n",
            run.label, run.date, run.commit, rate, secs, run.command
        )?;
        writeln!(md, "{}", crate::counts::table(&run.servers))?;
    }
    // What the runs show, written by hand beside them: kept when the report is regenerated.
    if let Ok(notes) = std::fs::read_to_string(out.join("counts-notes.md")) {
        writeln!(md, "{}", notes.trim_end())?;
        writeln!(md)?;
    }
    Ok(())
}

fn write_targets(md: &mut String, suite: &SuiteResults) -> anyhow::Result<()> {
    writeln!(md, "## Targets\n")?;
    writeln!(md, "| target | measured | verdict |")?;
    writeln!(md, "|---|---|---|")?;
    let chat = find(suite, Kind::Chat);
    let chat_target = chat.and_then(|s| target_step(suite, s));
    let sio_target = find(suite, Kind::Socketio).and_then(|s| target_step(suite, s));
    let relay_target = find(suite, Kind::Relay).and_then(|s| target_step(suite, s));
    let cpu =
        |t: &Option<(StepResult, bool)>| t.as_ref().map(|(s, _)| s.server_cpu_us_per_delivery);
    let (c, s, r) = (cpu(&chat_target), cpu(&sio_target), cpu(&relay_target));
    writeln!(
        md,
        "| server CPU per delivery ≤ 1/3 of Socket.IO's | chat {} µs, Socket.IO {} µs: {} | {} |",
        c.map_or("–".into(), |v| format!("{v:.2}")),
        s.map_or("–".into(), |v| format!("{v:.2}")),
        match (c, s) {
            (Some(c), Some(s)) => format!("{:.2}× Socket.IO's", c / s),
            _ => "–".into(),
        },
        verdict(c.zip(s).map(|(c, s)| c <= s / 3.0)),
    )?;
    writeln!(
        md,
        "| server CPU per delivery ≤ the bare relay's, persistence included | chat {} µs, relay {} µs: {} | {} |",
        c.map_or("–".into(), |v| format!("{v:.2}")),
        r.map_or("–".into(), |v| format!("{v:.2}")),
        match (c, r) {
            (Some(c), Some(r)) => format!("{:.2}× the relay's", c / r),
            _ => "–".into(),
        },
        verdict(c.zip(r).map(|(c, r)| c <= r)),
    )?;
    writeln!(
        md,
        "| p99 ≤ {P99_TARGET_MS} ms at the target load | chat p99 {} ms | {} |",
        chat_target
            .as_ref()
            .map_or("–".into(), |(s, _)| ms(s.p99_ms)),
        verdict(chat_target.as_ref().map(|(s, _)| s.p99_ms <= P99_TARGET_MS)),
    )?;
    writeln!(
        md,
        "| no loss, duplicates or reordering of acknowledged messages | chat: {} | {} |",
        chat_target
            .as_ref()
            .map_or("–".into(), |(s, clean)| format!(
                "{} lost, {} duplicates, {} reordered at the target load{}",
                s.lost,
                s.duplicates,
                s.reordered,
                if *clean {
                    ""
                } else {
                    " (or elsewhere in that run)"
                }
            )),
        verdict(
            chat_target
                .as_ref()
                .map(|(s, clean)| *clean && s.lost + s.duplicates + s.reordered == 0)
        ),
    )?;
    let best = |kind: Kind| {
        find(suite, kind)
            .and_then(|s| s.rooms.as_ref())
            .map(|run| (best_step(run).cloned(), first_failure(run).cloned()))
    };
    let (chat_best, sio_best) = (best(Kind::Chat), best(Kind::Socketio));
    let sio_lowest = find(suite, Kind::Socketio)
        .and_then(|s| s.rooms.as_ref())
        .and_then(|run| run.steps.first().cloned());
    let rate_line = match (&chat_best, &sio_best) {
        (Some((Some(c), chat_fail)), Some((sio, _))) => {
            let saturated = chat_fail
                .as_ref()
                .is_none_or(|f| f.loadgen_util > SATURATED)
                || c.loadgen_util > SATURATED;
            let per_cpu = |x: &StepResult| x.delivered as f64 / x.server_cpu_s.max(1e-9);
            // Socket.IO holding not even the lowest rate: the ratio is at least this.
            let (s_rate, s_text, bound) = match (sio, &sio_lowest) {
                (Some(s), _) => (s.rate, rate(s.rate), ""),
                (None, Some(lowest)) => (
                    lowest.rate,
                    format!("none (not even {})", rate(lowest.rate)),
                    "more than ",
                ),
                (None, None) => (f64::NAN, "–".into(), ""),
            };
            let ratio = c.rate / s_rate;
            let normalized = sio.as_ref().map(|s| per_cpu(c) / per_cpu(s));
            let text = format!(
                "chat {} msg/s, Socket.IO {s_text} msg/s: {bound}{ratio:.1}×{}{}",
                rate(c.rate),
                match chat_fail {
                    None => " (the search ended before the chat missed a step)",
                    Some(_) if saturated => " (the load generator, not the chat, was the limit)",
                    Some(_) => "",
                },
                normalized.map_or(String::new(), |n| format!(
                    "; deliveries per server CPU-second at those rates {n:.1}×"
                )),
            );
            let ok = if ratio >= 3.0 {
                Some(true)
            } else if saturated {
                normalized.map(|n| n >= 3.0)
            } else {
                Some(false)
            };
            (text, ok)
        }
        _ => ("–".into(), None),
    };
    writeln!(
        md,
        "| highest rate with p99 ≤ {P99_BOUND_MS:.0} ms ≥ 3× Socket.IO's (rooms of 10) | {} | {} |",
        rate_line.0,
        verdict(rate_line.1)
    )?;
    let cap = chat.and_then(|s| s.capacity.iter().max_by_key(|c| c.connections));
    writeln!(
        md,
        "| RSS per idle connection ≤ 8 KB at 20k (here: the most one process holds) | {} | {} |",
        cap.map_or("–".into(), |c| format!(
            "{} at {} connections",
            kb(c.rss_per_connection),
            c.opened
        )),
        verdict(cap.map(|c| c.rss_per_connection <= RSS_PER_CONN_TARGET)),
    )?;
    writeln!(md)?;
    // What no server can go below here: the relay does nothing but one socket write per
    // delivery, and its kernel time alone is that write's cost.
    let sys =
        |t: &Option<(StepResult, bool)>| t.as_ref().map(|(s, _)| s.server_sys_us_per_delivery());
    if let (Some(relay_sys), Some(s)) = (sys(&relay_target), s) {
        writeln!(
            md,
            "The kernel's share sets a floor under the CPU targets. Each delivery is one socket write, and on loopback the kernel charges the writer for the receiver's TCP processing too: the bare relay, which does nothing else, spends {relay_sys:.2} µs of kernel time per delivery at the target load (chat {}, Socket.IO {}), against a 1/3-of-Socket.IO budget of {:.2} µs for everything. On this machine, no server that writes each delivery to its own TCP connection can meet that target; what a server can change is its user-space share.\n",
            sys(&chat_target).map_or("–".into(), |v| format!("{v:.2} µs")),
            sys(&sio_target).map_or("–".into(), |v| format!("{v:.2} µs")),
            s / 3.0,
        )?;
    }
    Ok(())
}

struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    thick: bool,
}

fn plot_sweep(
    suite: &SuiteResults,
    out: &Path,
    name: &str,
    run_of: impl Fn(&ServerResults) -> Option<&RunResult>,
    title: &str,
) -> anyhow::Result<bool> {
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    for server in &suite.servers {
        let Some(run) = run_of(server) else { continue };
        let c = color(server.kind);
        throughput.push(Series {
            label: server.kind.title().into(),
            color: c,
            // Open loop: what is offered is delivered until latency gives way, so throughput
            // alone draws the same line for every server. Plotted against what it costs:
            points: run
                .steps
                .iter()
                .map(|s| {
                    let cores = s.server_cpu_us_per_delivery * s.deliveries_per_sec / 1e6;
                    (s.deliveries_per_sec / 1000.0, cores)
                })
                .collect(),
            thick: true,
        });
        latency.push(Series {
            label: format!("{} p99", server.kind.label()),
            color: c,
            points: run
                .steps
                .iter()
                .map(|s| (s.rate, s.p99_ms.max(0.01).log10()))
                .collect(),
            thick: true,
        });
        latency.push(Series {
            label: format!("{} p50", server.kind.label()),
            color: lighter(c),
            points: run
                .steps
                .iter()
                .map(|s| (s.rate, s.p50_ms.max(0.01).log10()))
                .collect(),
            thick: false,
        });
    }
    if throughput.is_empty() {
        return Ok(false);
    }
    line_chart(
        &out.join(format!("{name}_throughput.svg")),
        &format!("Server CPU against delivered throughput, {title}"),
        "delivered messages/s (thousands of deliveries)",
        "server CPU (cores)",
        &throughput,
        false,
    )?;
    line_chart(
        &out.join(format!("{name}_latency.svg")),
        &format!("Latency from intended send to delivery, {title}"),
        "offered publish rate (messages/s)",
        "latency, ms (log scale)",
        &latency,
        true,
    )?;
    Ok(true)
}

fn plot_target(suite: &SuiteResults, out: &Path) -> anyhow::Result<bool> {
    let mut series = Vec::new();
    for server in &suite.servers {
        let Some((s, _)) = target_step(suite, server) else {
            continue;
        };
        series.push(Series {
            label: server.kind.title().into(),
            color: color(server.kind),
            points: [s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms]
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, v.max(0.01).log10()))
                .collect(),
            thick: true,
        });
    }
    if series.is_empty() {
        return Ok(false);
    }
    line_chart(
        &out.join("target_latency.svg"),
        &format!(
            "Latency at {} msg/s in rooms of 10 ({} deliveries/s)",
            rate(suite.target_rate),
            rate(suite.target_rate * 10.0)
        ),
        "percentile: p50, p99, p99.9, max",
        "latency, ms (log scale)",
        &series,
        true,
    )?;
    Ok(true)
}

/// A line chart; with `log_y` the points' y are log10 values and the labels show 10^y.
fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
    };
    let x_max = xs.fold(1.0f64, f64::max) * 1.05;
    let y_max = ys().fold(f64::MIN, f64::max);
    let y_min = ys().fold(f64::MAX, f64::min);
    let (y_lo, y_hi) = if log_y {
        (
            y_min.floor().min(-1.0),
            (y_max.ceil()).max(y_min.floor() + 1.0) + 0.2,
        )
    } else {
        (0.0, (y_max * 1.15).max(0.1))
    };
    let percentiles = title.starts_with("Latency at");
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.0f64..x_max.max(if percentiles { 3.3 } else { 0.0 }),
            y_lo..y_hi,
        )
        .map_err(plot_error)?;
    let y_format = |v: &f64| {
        if log_y {
            let value = 10f64.powf(*v);
            if value >= 1.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            }
        } else if y_hi < 5.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    let x_format = |v: &f64| {
        if percentiles {
            match v.round() as i64 {
                0 => "p50".into(),
                1 => "p99".into(),
                2 => "p99.9".into(),
                3 => "max".into(),
                _ => String::new(),
            }
        } else {
            format!("{v:.0}")
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&y_format)
        .x_label_formatter(&x_format);
    if log_y {
        mesh.y_labels(((y_hi - y_lo).round() as usize + 1).max(2));
    }
    if percentiles {
        mesh.x_labels(4);
    }
    mesh.draw().map_err(plot_error)?;
    for s in series {
        let style = s.color.stroke_width(if s.thick { 3 } else { 1 });
        let c = s.color;
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))
            .map_err(plot_error)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, if s.thick { 4 } else { 2 }, c.filled())),
            )
            .map_err(plot_error)?;
    }
    if log_y && !percentiles {
        // The bound of the step-up search.
        let bound = P99_BOUND_MS.log10();
        draw_line(
            &mut chart,
            vec![(0.0, bound), (x_max, bound)],
            BLACK.mix(0.4).stroke_width(1),
            format!("{P99_BOUND_MS:.0} ms"),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws a line through `points`, with a legend entry of the same style.
pub(crate) fn draw_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    label: impl Into<String>,
) -> anyhow::Result<()> {
    chart
        .draw_series(LineSeries::new(points, style))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    Ok(())
}

pub(crate) fn lighter(c: RGBColor) -> RGBColor {
    let mix = |v: u8| ((u16::from(v) + 255) / 2) as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

pub(crate) fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

fn node_version() -> String {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

const METHOD: &str = "## How it measures

- **Open loop.** A dedicated OS thread (1 ns timer slack, not tokio's 1 ms timer) sends message
  *k* of a step at `t0 + k / rate`, round-robin over the publishing connections, whatever
  happened to the earlier ones. Each message's text carries its step, publisher, sequence
  number and intended send time (`~B~step~publisher~seq~ns~`, padded to 100 bytes).
  Latency is measured from that intended time to its arrival at each member, so a stalled
  server or a stalled load generator shows up as latency (no coordinated omission).
- **Acknowledged means published.** The chat's `ack`, Socket.IO's ack callback, and the relay's
  copy to the sender. Loss is counted over acknowledged messages only: every member that reads
  must receive each of them once, in each publisher's order. Every (publisher, receiver) stream is
  checked for gaps, duplicates and reordering, per room.
- **Servers** are started by the bench, pinned to one core, killed after each run; a fresh
  server (and, for the chat, a fresh database on disk) for each run. CPU seconds (user + system,
  all threads) and RSS come from `/proc/PID/stat` and `/proc/PID/status`. CPU per delivery is the
  server's CPU time over the step and its drain, divided by the deliveries in that time.
- **The load generator** is one process on one core: a tokio runtime with 1,000 WebSocket
  connections (tokio-tungstenite, 4 KiB read buffers, `TCP_NODELAY`). Its own CPU use is in
  every step's row; above 90 % of its core it, not the server, may be what limits a step.
- **The machine is shared** (two other engineers build and test on the same two cores): a
  run's tail latencies and its highest rates move from run to run, CPU per delivery by about
  ±20 %. Compare servers within one report, not across reports.
- **Capacity** uses worker processes (`chat-bench hold`) because one process may hold at most
  20,000 file descriptors here; source addresses would spread over 127.0.0.0/8 past 20,000
  connections per address.
";
