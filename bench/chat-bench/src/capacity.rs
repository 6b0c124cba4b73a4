//! Capacity: how much memory an idle connection costs the server, and how fast it accepts them.
//!
//! A process may hold at most 20,000 file descriptors here (the hard limit), so the connections
//! are opened by worker processes (`chat-bench hold`), a few thousand each; the server, one
//! process, can hold a little under 20,000.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Options};
use crate::proto::Proto;
use crate::servers::Server;

/// Connections one worker process opens at most.
const PER_WORKER: usize = 7_000;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CapacityResult {
    pub connections: usize,
    pub opened: usize,
    pub failed: usize,
    pub workers: usize,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub server_rss_idle: u64,
    pub server_rss_loaded: u64,
    pub rss_per_connection: f64,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_connect: f64,
}

/// Opens `count` idle connections to a fresh server through worker processes, measures, closes.
pub fn run(
    server: &Server,
    count: usize,
    label: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<CapacityResult> {
    let exe = std::env::current_exe()?;
    // Let the server settle before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let server_rss_idle = server.rss_bytes();
    let cpu0 = server.cpu_seconds();
    let workers = count.div_ceil(PER_WORKER).max(1);
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let first = w * count / workers;
        let last = (w + 1) * count / workers;
        let child = Command::new(&exe)
            .arg("hold")
            .arg("--addr")
            .arg(server.addr.to_string())
            .arg("--server")
            .arg(server.kind.label())
            .arg("--first")
            .arg(first.to_string())
            .arg("--count")
            .arg((last - first).to_string())
            .arg("--total")
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a hold worker")?;
        children.push(child);
    }
    let mut opened = 0;
    let mut failed = 0;
    let mut connect_secs: f64 = 0.0;
    for child in &mut children {
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // `ready OPENED FAILED SECS`
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"ready") || fields.len() < 4 {
            bail!("a hold worker failed: {line:?}");
        }
        opened += fields[1].parse::<usize>()?;
        failed += fields[2].parse::<usize>()?;
        connect_secs = connect_secs.max(fields[3].parse::<f64>()?);
    }
    let wall = started.elapsed().as_secs_f64();
    progress(&format!(
        "{label}: {opened} idle connections open ({failed} failed) in {connect_secs:.1} s ({wall:.1} s with process start)"
    ));
    // Let the server finish its side of the handshakes and settle.
    std::thread::sleep(Duration::from_secs(2));
    let server_rss_loaded = server.rss_bytes();
    let server_cpu_s = server.cpu_seconds() - cpu0;
    for mut child in children {
        // Closing stdin tells the worker to close its connections and exit.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = child.wait();
    }
    Ok(CapacityResult {
        connections: count,
        opened,
        failed,
        workers,
        connect_secs,
        connects_per_sec: opened as f64 / connect_secs.max(1e-9),
        server_rss_idle,
        server_rss_loaded,
        rss_per_connection: (server_rss_loaded.saturating_sub(server_rss_idle)) as f64
            / opened.max(1) as f64,
        server_cpu_s,
        server_cpu_us_per_connect: server_cpu_s * 1e6 / opened.max(1) as f64,
    })
}

/// The worker: opens `count` connections (numbered from `first` of `total`, which picks their
/// source addresses), prints `ready OPENED FAILED SECS`, keeps them open (answering Engine.IO
/// pings) until stdin has a line or closes, then exits.
pub async fn hold(
    addr: SocketAddr,
    proto: Proto,
    first: usize,
    count: usize,
    total: usize,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(64));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let started = Instant::now();
    for i in first..first + count {
        let permits = permits.clone();
        let ready = ready_tx.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            let options = Options {
                source: client::source_for(i, total),
                recv_buffer: None,
            };
            let ws = {
                let _permit = permits.acquire_owned().await;
                client::open(addr, proto, options).await
            };
            let mut ws = match ws {
                Ok(ws) => {
                    let _ = ready.send(true);
                    ws
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("hold: connection {i} failed: {e:#}");
                    }
                    let _ = ready.send(false);
                    return;
                }
            };
            drop(ready);
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = &message
                    && text.as_str() == "2"
                {
                    let _ = ws.send(Message::text("3")).await;
                }
            }
        });
    }
    drop(ready_tx);
    let mut opened = 0;
    let mut failures = 0;
    while let Some(ok) = ready_rx.recv().await {
        if ok { opened += 1 } else { failures += 1 }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("ready {opened} {failures} {secs:.3}");
    std::io::stdout().flush()?;
    // Wait for the parent, at most ten minutes.
    let wait = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
    let _ = tokio::time::timeout(Duration::from_secs(600), wait).await;
    Ok(())
}
