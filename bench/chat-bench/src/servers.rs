//! Starting and stopping the servers under test, each pinned to its own core.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs;
use crate::proto::Proto;

/// The servers the suite knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `chat serve`: the product, embedded SQLite store, persistence on.
    Chat,
    /// Socket.IO 4.8 on Node (bench/socketio/server.js).
    Socketio,
    /// The bare Rust relay (`chat-relay`): no persistence, no validation.
    Relay,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Socketio => "socketio",
            Kind::Relay => "relay",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Chat => "chat (SQLite, fsync)",
            Kind::Socketio => "Socket.IO 4.8 (Node)",
            Kind::Relay => "bare Rust relay",
        }
    }

    pub fn proto(self) -> Proto {
        match self {
            Kind::Chat => Proto::Chat,
            Kind::Socketio => Proto::SocketIo,
            Kind::Relay => Proto::Relay,
        }
    }
}

/// Where the servers' programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub chat: PathBuf,
    pub relay: PathBuf,
    pub socketio_dir: PathBuf,
    pub node: String,
    /// The core the servers run on (`taskset -c`), if pinning.
    pub core: Option<usize>,
    /// Scratch space: data directories and server logs.
    pub work_dir: PathBuf,
}

impl Programs {
    pub fn check(&self, kinds: &[Kind]) -> anyhow::Result<()> {
        for kind in kinds {
            match kind {
                Kind::Chat if !self.chat.is_file() => bail!(
                    "{} not found; build it: cargo build --release -p chat-local -p chat-bench",
                    self.chat.display()
                ),
                Kind::Relay if !self.relay.is_file() => bail!(
                    "{} not found; build it: cargo build --release -p chat-bench",
                    self.relay.display()
                ),
                Kind::Socketio if !self.socketio_dir.join("node_modules/socket.io").is_dir() => {
                    bail!(
                        "Socket.IO is not installed; run: (cd {} && npm ci)",
                        self.socketio_dir.display()
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A running server; killed when dropped.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The arguments it was started with (the program's own, after its name).
    pub args: Vec<String>,
    /// Its standard error.
    pub log_path: PathBuf,
    child: Child,
    data_dir: Option<PathBuf>,
}

impl Server {
    pub fn start(kind: Kind, programs: &Programs, tag: &str) -> anyhow::Result<Server> {
        Self::start_with(kind, programs, tag, &[])
    }

    /// Starts a server with `extra` arguments after the usual ones.
    pub fn start_with(
        kind: Kind,
        programs: &Programs,
        tag: &str,
        extra: &[String],
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&programs.work_dir)?;
        let log_path = programs
            .work_dir
            .join(format!("{}-{tag}.log", kind.label()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let (program, args, data_dir): (String, Vec<String>, Option<PathBuf>) = match kind {
            Kind::Chat => {
                let dir = programs.work_dir.join(format!("chat-data-{tag}"));
                let _ = std::fs::remove_dir_all(&dir);
                let args = [
                    "serve",
                    "--addr",
                    "127.0.0.1:0",
                    "--data-dir",
                    &dir.to_string_lossy(),
                    "--max-connections",
                    "20000",
                    "--rate-burst",
                    "1000000",
                    "--rate-per-second",
                    "1000000",
                ]
                .map(str::to_owned)
                .to_vec();
                let mut args = args;
                // Newer servers also limit handshakes per IP address; the bench opens
                // thousands from one.
                if supports_flag(&programs.chat, "--ip-connect-burst") {
                    args.extend(
                        [
                            "--ip-connect-burst",
                            "1000000",
                            "--ip-connect-per-second",
                            "1000000",
                        ]
                        .map(str::to_owned),
                    );
                }
                (
                    programs.chat.to_string_lossy().into_owned(),
                    args,
                    Some(dir),
                )
            }
            Kind::Relay => (
                programs.relay.to_string_lossy().into_owned(),
                vec!["--addr".into(), "127.0.0.1:0".into()],
                None,
            ),
            Kind::Socketio => (
                programs.node.clone(),
                vec![
                    programs
                        .socketio_dir
                        .join("server.js")
                        .to_string_lossy()
                        .into_owned(),
                    "0".into(),
                ],
                None,
            ),
        };
        let mut args = args;
        args.extend_from_slice(extra);
        let mut command = match programs.core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command
            .args(&args)
            .env("RUST_LOG", "info")
            .env("NODE_ENV", "production")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if kind == Kind::Socketio {
            command.current_dir(&programs.socketio_dir);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        running().push(child.id());
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            // Keep reading (and discarding) so that the server never blocks on a full pipe.
            while let Some(Ok(line)) = lines.next() {
                if !sent && let Some(addr) = parse_listening(&line) {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let mut server = Server {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            args,
            log_path: log_path.clone(),
            child,
            data_dir,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "{} did not say where it listens within 30 s; its log ({}):\n{}",
                    kind.label(),
                    log_path.display(),
                    log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_seconds(self.pid())
    }

    /// User and kernel CPU seconds so far, from one reading.
    pub fn cpu_split(&self) -> (f64, f64) {
        procfs::cpu_split(self.pid())
    }

    pub fn rss_bytes(&self) -> u64 {
        procfs::rss_bytes(self.pid())
    }

    pub fn rss_anon_bytes(&self) -> u64 {
        procfs::rss_anon_bytes(self.pid())
    }

    pub fn open_fds(&self) -> usize {
        procfs::open_fds(self.pid())
    }

    /// The bytes of the files in the chat's data directory (the database and its WAL).
    pub fn data_bytes(&self) -> u64 {
        let Some(dir) = &self.data_dir else { return 0 };
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.terminate(Duration::from_secs(15));
    }

    fn terminate(&mut self, grace: Duration) {
        let pid = self.child.id();
        running().retain(|&running| running != pid);
        if !self.is_running() {
            return;
        }
        // SAFETY: kill with a pid we started and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The servers started and not stopped yet: a bench that is interrupted stops them too, rather
/// than leave them running (and holding a core) after it.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends SIGTERM to every server still running (on Ctrl-C or SIGTERM of the bench).
pub fn terminate_all() {
    for pid in running().drain(..) {
        // SAFETY: kill with a pid we started; at worst it has exited and the call fails.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(2));
    }
}

/// Whether `chat serve --help` lists a flag.
fn supports_flag(chat: &Path, flag: &str) -> bool {
    Command::new(chat)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// `... listening on http://127.0.0.1:PORT/ ...` → the address.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    let addr = rest.split('/').next()?;
    addr.parse().ok()
}

pub fn default_socketio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../socketio")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_lines() {
        assert_eq!(
            parse_listening(
                "chat listening on http://127.0.0.1:4000/ (WebSocket: ws://127.0.0.1:4000/dev)"
            ),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            parse_listening("socketio listening on http://127.0.0.1:5/"),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(parse_listening("hello"), None);
    }
}
