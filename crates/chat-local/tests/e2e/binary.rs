//! The `chat` binary as a process: its command line, its environment, and a crash (SIGKILL)
//! that must lose no acknowledged message. Always the embedded store: this is about SQLite.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::Client;

const CHAT: &str = env!("CARGO_BIN_EXE_chat");

/// A `chat serve` process on 127.0.0.1:0, killed when dropped.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Process {
    /// Starts `chat serve` with these extra arguments and environment; waits for its address.
    pub(crate) fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
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

/// `CHAT_API_KEY` turns the server API on, and its value is the key; `--help` never prints it.
#[tokio::test]
async fn the_api_key_comes_from_the_environment_and_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let key = "key-from-the-environment";
    let process = Process::start(dir.path(), &[], &[("CHAT_API_KEY", key)]);
    let addr = process.addr.parse().unwrap();
    let path = "/api/rooms/lobby/members";
    let bearer = format!("Authorization: Bearer {key}");
    let allowed = crate::support::http_with(addr, "GET", path, &[&bearer], b"").await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let refused = crate::support::http_with(addr, "GET", path, &[], b"").await;
    assert_eq!(refused.status, 401);
    let help = Command::new(CHAT)
        .args(["serve", "--help"])
        .env("CHAT_API_KEY", key)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--api-key") && help.contains("CHAT_API_KEY"));
    assert!(!help.contains(key), "the key is shown by --help");
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

pub(crate) fn mint(secret: &str, sub: &str, name: Option<&str>, ttl: &str) -> String {
    let mut command = Command::new(CHAT);
    command.args(["token", "--secret", secret, "--sub", sub, "--ttl", ttl]);
    if let Some(name) = name {
        command.args(["--name", name]);
    }
    let output = command.output().expect("chat token runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A server that checks tokens (any secret but "another-secret") answers 401 to no token, an
/// empty one, garbage, and one signed with another secret.
pub(crate) async fn bad_tokens_are_refused_with_401(url: &str) {
    assert_eq!(Client::refused_status(url).await, 401, "no token");
    assert_eq!(
        Client::refused_status(&format!("{url}?token=")).await,
        401,
        "empty token"
    );
    assert_eq!(
        Client::refused_status(&format!("{url}?token=not.a.jwt")).await,
        401
    );
    let forged = mint("another-secret", "u-1", Some("Ada"), "1h");
    assert_eq!(
        Client::refused_status(&format!("{url}?token={forged}")).await,
        401,
        "wrong secret"
    );
}

#[tokio::test]
async fn with_a_jwt_secret_only_valid_tokens_connect_and_the_token_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "local-test-secret-0123456789abcdef";
    let process = Process::start(dir.path(), &["--jwt-secret", secret], &[]);
    let url = format!("ws://{}/dev", process.addr);
    bad_tokens_are_refused_with_401(&url).await;

    let token = mint(secret, "u-1", Some("Ada"), "1h");
    let mut ada = Client::connect(&format!("{url}?token={token}&name=Mallory")).await;
    let ack = ada
        .request(json!({"action":"sendMessage","text":"signed","clientMsgId":"a1"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let history = ada
        .request(json!({"action":"history","room":"lobby"}))
        .await;
    assert_eq!(
        history["messages"][0]["sender"],
        json!({"name":"Ada","userId":"u-1"}),
        "the name parameter is ignored"
    );

    // The same user on another connection, under another display name, retries: same message.
    let renamed = mint(secret, "u-1", Some("Ada L."), "1h");
    let mut again = Client::connect(&format!("{url}?token={renamed}")).await;
    let retry = again
        .request(json!({"action":"sendMessage","text":"signed","clientMsgId":"a1"}))
        .await;
    assert_eq!(
        retry["id"], ack["id"],
        "retries are keyed by userId when authenticated"
    );

    // Without a name claim, the display name is sub.
    let nameless = mint(secret, "u-2", None, "1h");
    let mut bob = Client::connect(&format!("{url}?token={nameless}")).await;
    let members = bob
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .contains(&json!({"name":"u-2","userId":"u-2"}))
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "local-test-secret-0123456789abcdef";
    let process = Process::start(dir.path(), &[], &[("CHAT_JWT_SECRET", secret)]);
    // Expired two minutes ago: beyond the verifier's 30 s leeway.
    let claims = chat_auth::MintClaims {
        sub: "u-1".into(),
        name: None,
        exp: chat_auth::now_secs() - 120,
        iat: chat_auth::now_secs() - 180,
        iss: None,
        aud: None,
        rooms: Vec::new(),
    };
    let expired = chat_auth::mint_hs256(secret.as_bytes(), &claims).unwrap();
    let url = format!("ws://{}/dev?token={expired}", process.addr);
    assert_eq!(Client::refused_status(&url).await, 401);
}

#[tokio::test]
async fn with_a_jwks_file_es256_tokens_connect() {
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start(
        dir.path(),
        &[
            "--jwks-file",
            chat_auth::testing::JWKS_FILE,
            "--jwt-issuer",
            "https://issuer.test",
        ],
        &[],
    );
    let claims = json!({"sub":"u-7","name":"Eve","iss":"https://issuer.test","exp":chat_auth::now_secs()+600});
    let token = chat_auth::testing::es256("ec-1", &claims);
    let mut eve = Client::connect(&format!("ws://{}/dev?token={token}", process.addr)).await;
    assert_eq!(eve.request(json!({"action":"ping"})).await["type"], "pong");
    let wrong_issuer =
        json!({"sub":"u-7","iss":"https://other.test","exp":chat_auth::now_secs()+600});
    let token = chat_auth::testing::es256("ec-1", &wrong_issuer);
    assert_eq!(
        Client::refused_status(&format!("ws://{}/dev?token={token}", process.addr)).await,
        401
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_cannot_grow_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--rate-burst",
        "1000000",
        "--rate-per-second",
        "1000000",
        "--send-queue",
        "256",
    ];
    let process = Process::start(dir.path(), &args, &[]);
    let url = format!("ws://{}/dev", process.addr);
    let slow = Client::connect(&format!("{url}?name=slow")).await; // never reads
    let mut ada = Client::connect(&format!("{url}?name=ada")).await;
    let mut bob = Client::connect(&format!("{url}?name=bob")).await;
    ada.request(json!({"action":"ping"})).await;
    let before = rss_kib(process.child.id());
    // 8,000 messages of 4 KB: 32 MB that an unbounded queue for `slow` would hold.
    let text = "z".repeat(4000);
    let mut peak = before;
    for i in 0..8000 {
        ada.send(json!({"action":"sendMessage","text":text,"clientMsgId":format!("{i}")}))
            .await;
        if i % 100 == 99 {
            // Keep ada's and bob's side drained so that only `slow` falls behind.
            loop {
                let frame = bob.recv().await;
                if frame["clientMsgId"] == format!("{i}") {
                    break;
                }
            }
            while let Ok(Some(_)) = tokio::time::timeout(
                std::time::Duration::from_millis(1),
                futures_util::StreamExt::next(&mut ada.ws),
            )
            .await
            {}
            peak = peak.max(rss_kib(process.child.id()));
        }
    }
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    eprintln!("RSS before {before} KiB, peak {peak} KiB");
    assert!(growth_mib < 16, "the server grew by {growth_mib} MiB");
    // `slow` was dropped by the server (it is still open on this side).
    let members = bob
        .request(json!({"action":"members","room":"lobby"}))
        .await;
    let names: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert!(!names.contains(&json!("slow")), "{names:?}");
    drop(slow);
}
