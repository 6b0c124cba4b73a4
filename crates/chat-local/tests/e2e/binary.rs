//! The `chat` binary as a process: its command line, its environment, and a crash (SIGKILL)
//! that must lose no acknowledged message. Always the embedded store: this is about SQLite.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::Client;

const CHAT: &str = env!("CARGO_BIN_EXE_chat");

struct Process {
    child: Child,
    addr: String,
}

impl Process {
    /// Starts `chat serve` with these extra arguments and environment; waits for its address.
    fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(CHAT);
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("CHAT_STAGE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("chat starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a first line");
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, no flush, no checkpoint.
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(status.expect("kill -TERM").success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_explains_every_setting() {
    let output = Command::new(CHAT)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for flag in [
        "--addr",
        "--data-dir",
        "--stage",
        "CHAT_ADDR",
        "CHAT_DATA_DIR",
        "CHAT_STAGE",
        "127.0.0.1:8080",
        "./data",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[tokio::test]
async fn settings_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start(dir.path(), &[], &[("CHAT_STAGE", "prod")]);
    let mut client = Client::connect(&format!("ws://{}/prod?name=env", process.addr)).await;
    assert_eq!(
        client.request(json!({"action":"ping"})).await["type"],
        "pong"
    );
    assert_eq!(
        Client::refused_status(&format!("ws://{}/dev", process.addr)).await,
        403
    );
}

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = Process::start(dir.path(), &[], &[]);
    let mut client = Client::connect(&format!("ws://{}/dev?name=ada", process.addr)).await;
    client.request(json!({"action":"ping"})).await;
    process.terminate();
    let close = client.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    let status = tokio::task::spawn_blocking(move || process.child.wait().expect("exits"))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--rate-burst", "1000000", "--rate-per-second", "1000000"];
    let mut process = Process::start(dir.path(), &args, &[]);
    let mut client = Client::connect(&format!("ws://{}/dev?name=crash", process.addr)).await;
    // Pipeline sends so that many are in flight when the process dies.
    let mut acked: HashMap<String, String> = HashMap::new(); // clientMsgId -> id
    let mut sent = 0;
    'stream: loop {
        for _ in 0..20 {
            client
                .send(json!({"action":"sendMessage","text":format!("m{sent}"),"clientMsgId":format!("c{sent}")}))
                .await;
            sent += 1;
        }
        while let Ok(frame) =
            tokio::time::timeout(std::time::Duration::from_millis(5), client.recv()).await
        {
            if frame["type"] == "ack" {
                acked.insert(
                    frame["clientMsgId"].as_str().unwrap().into(),
                    frame["id"].as_str().unwrap().into(),
                );
            }
            if acked.len() >= 300 {
                break 'stream;
            }
        }
    }
    // A last burst that the server is still reading and committing when it dies.
    for _ in 0..500 {
        client
            .send(json!({"action":"sendMessage","text":format!("m{sent}"),"clientMsgId":format!("c{sent}")}))
            .await;
        sent += 1;
    }
    tokio::task::block_in_place(|| process.kill());
    // Acks that were already on the wire count too.
    while let Ok(Some(Ok(message))) = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        futures_util::StreamExt::next(&mut client.ws),
    )
    .await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "ack" {
                acked.insert(
                    frame["clientMsgId"].as_str().unwrap().into(),
                    frame["id"].as_str().unwrap().into(),
                );
            }
        }
    }
    assert!(acked.len() >= 300);
    eprintln!("{sent} sent, {} acknowledged before the kill", acked.len());

    let restarted = Process::start(dir.path(), &args, &[]);
    let mut reader = Client::connect(&format!("ws://{}/dev?name=reader", restarted.addr)).await;
    let mut stored: Vec<Value> = Vec::new();
    let mut after = "00000000-0000-0000-0000-000000000000".to_owned();
    loop {
        let page = reader
            .request(json!({"action":"history","room":"lobby","after":after,"limit":100}))
            .await;
        let messages = page["messages"].as_array().unwrap();
        if let Some(last) = messages.last() {
            after = last["id"].as_str().unwrap().to_owned();
        }
        stored.extend(messages.iter().cloned());
        if page["hasMore"] == false {
            break;
        }
    }
    let mut seen = HashSet::new();
    for message in &stored {
        assert!(
            seen.insert(message["clientMsgId"].as_str().unwrap().to_owned()),
            "stored twice: {message}"
        );
    }
    for (client_msg_id, id) in &acked {
        let found = stored
            .iter()
            .find(|m| m["clientMsgId"] == client_msg_id.as_str());
        let found = found.unwrap_or_else(|| panic!("acknowledged {client_msg_id} was lost"));
        assert_eq!(found["id"], id.as_str());
    }
}
