//! Shared helpers: a server on 127.0.0.1:0, a WebSocket client, a tiny HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_local::Settings;
use chat_local::config::BackendKind;
use chat_local::gateway::{Backend, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tokio_util::sync::CancellationToken;

/// How long a test waits for a frame that must come.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test listens for a frame that must not come.
pub const QUIET: Duration = Duration::from_millis(300);

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub settings: Settings,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::for_tests(dir.path().to_path_buf());
        adjust(&mut settings);
        let mut this = Self::start_on(settings).await;
        this._dir = Some(dir);
        this
    }

    /// Like [`TestServer::start_with`], with the back end wrapped by `wrap` (an integration that
    /// fails, or one that records what it is given), in front of the real one.
    pub async fn start_wrapped(
        adjust: impl FnOnce(&mut Settings),
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::for_tests(dir.path().to_path_buf());
        adjust(&mut settings);
        let mut this = Self::start_on_wrapped(settings, wrap).await;
        this._dir = Some(dir);
        this
    }

    /// Starts on exactly these settings (a restart reuses the address and data directory), with
    /// the back end `CHAT_TEST_BACKEND` names.
    pub async fn start_on(settings: Settings) -> Self {
        Self::start_on_wrapped(settings, |backend| backend).await
    }

    async fn start_on_wrapped(
        mut settings: Settings,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Self {
        // The server's logs, when RUST_LOG asks for them (e.g. RUST_LOG=warn).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        if lambda_backend() {
            use_lambda(&mut settings);
            #[cfg(feature = "lambda")]
            {
                // moto makes each request atomic only one at a time (as DynamoDB does at once).
                settings.aws = Some(chat_aws::testing::one_request_at_a_time().await);
            }
            #[cfg(not(feature = "lambda"))]
            panic!(
                "CHAT_TEST_BACKEND=lambda needs the lambda feature: cargo test --features lambda"
            );
        }
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .expect("the test server's address is free");
        let server =
            chat_local::run_with(listener, settings.clone(), CancellationToken::new(), wrap)
                .await
                .expect("server starts");
        Self {
            addr: server.local_addr,
            server: Some(server),
            settings,
            _dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/{}", self.addr, self.settings.stage)
    }

    /// Stops the server and waits until it has flushed and closed.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await.expect("clean shutdown");
        }
    }

    pub fn connection_ids(&self) -> Vec<chat_core::domain::ConnectionId> {
        self.server.as_ref().expect("running").connection_ids()
    }

    /// A client connected with this display name (and so a member of `lobby`).
    pub async fn client(&self, name: &str) -> Client {
        Client::connect(&format!("{}?name={}", self.url(), urlencode(name))).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown();
        }
    }
}

/// `CHAT_TEST_BACKEND=lambda`: the suite runs against the Lambda handlers on DynamoDB (moto at
/// `AWS_ENDPOINT_URL_DYNAMODB`, or one the tests start), behind the same gateway.
pub fn lambda_backend() -> bool {
    match std::env::var("CHAT_TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "embedded") => false,
        Ok("lambda") => true,
        Ok(other) => panic!("CHAT_TEST_BACKEND={other}: expected embedded or lambda"),
    }
}

/// The Lambda back end, with tables of this server's own (tests run concurrently on one moto).
/// They are named after the data directory, which is unique per test and kept across a restart,
/// so that a restarted server finds its tables again, as the embedded one finds its file.
fn use_lambda(settings: &mut Settings) {
    if settings.backend == BackendKind::Lambda {
        return;
    }
    let dir = settings
        .data_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag: String = dir.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    settings.backend = BackendKind::Lambda;
    settings.websocket_table = format!("e2e-{tag}-WebSocketConnections");
    settings.messages_table = format!("e2e-{tag}-ChatMessages");
    settings.fanout_queue = format!("e2e-{tag}.fifo");
    settings.create_tables = true;
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_request: u64,
    /// This client's name in the frame log (`CHAT_FRAME_LOG`).
    log_id: String,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (ws, _response) = connect_async(url).await.expect("handshake accepted");
        let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            ws,
            next_request: 0,
            log_id: format!("{}-{n}", std::process::id()),
        }
    }

    /// The HTTP status of a refused handshake.
    pub async fn refused_status(url: &str) -> u16 {
        match connect_async(url).await {
            Ok(_) => panic!("handshake to {url} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(e) => panic!("handshake failed without a status: {e}"),
        }
    }

    /// Closes the connection from the client's side (a close frame).
    #[cfg_attr(not(feature = "lambda"), allow(dead_code))]
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        log_frame(&self.log_id, "out", text);
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        if let Message::Text(text) = &message {
            log_frame(&self.log_id, "out", text);
        }
        self.ws.send(message).await.expect("send");
    }

    /// The next data frame, as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame within the patience")
                .expect("connection open")
                .expect("frame readable");
            match message {
                Message::Text(text) => {
                    log_frame(&self.log_id, "in", &text);
                    return serde_json::from_str(&text).expect("frame is JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next data frame if one comes before `deadline`.
    pub async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message.expect("connection open").expect("frame readable") {
                Message::Text(text) => {
                    log_frame(&self.log_id, "in", &text);
                    return Some(serde_json::from_str(&text).expect("frame is JSON"));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Skips frames until one of this type.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends the frame with a fresh `requestId` and returns the reply that echoes it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_request += 1;
        let request_id = format!("req-{}", self.next_request);
        frame["requestId"] = json!(request_id);
        self.send(frame).await;
        loop {
            let reply = self.recv().await;
            if reply["requestId"] == request_id.as_str() {
                return reply;
            }
        }
    }

    /// Asserts that no data frame arrives for a while.
    pub async fn expect_silence(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns its close frame.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the server closes within the patience");
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Text(text))) => log_frame(&self.log_id, "in", &text),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => return None,
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let joined = self.request(json!({"action":"joinRoom","room":room})).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        joined
    }

    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        let ack = self
            .request(json!({"action":"sendMessage","room":room,"text":text}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }
}

/// An HTTP response, as far as the tests look at it.
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request over a fresh connection.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    http_with(addr, method, path, &[], body).await
}

/// One HTTP/1.1 request with extra header lines (`Name: value`) over a fresh connection.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    HttpResponse {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// `CHAT_FRAME_LOG=PATH`: every text frame a [`Client`] sends or receives through its own
/// functions is appended to PATH as one JSON line, `{"dir":"in"|"out","client":ID,"bytes":N,
/// "frame":JSON}` (`"raw":TEXT` instead of `"frame"` when the text is not JSON), for the check
/// of every frame against docs/asyncapi.yaml (docs/asyncapi/check-frames.mjs). One write per
/// line, in append mode, under a lock: tests run in parallel threads.
fn log_frame(client: &str, dir: &str, text: &str) {
    use std::io::Write;
    static LOG: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> =
        std::sync::OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os("CHAT_FRAME_LOG").filter(|p| !p.is_empty())?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("CHAT_FRAME_LOG={}: {e}", path.to_string_lossy()));
        Some(std::sync::Mutex::new(file))
    });
    let Some(file) = log else { return };
    let mut line = serde_json::Map::new();
    line.insert("dir".into(), json!(dir));
    line.insert("client".into(), json!(client));
    line.insert("bytes".into(), json!(text.len()));
    match serde_json::from_str::<Value>(text) {
        Ok(frame) => line.insert("frame".into(), frame),
        Err(_) => line.insert("raw".into(), json!(text)),
    };
    let mut bytes = Value::Object(line).to_string().into_bytes();
    bytes.push(b'\n');
    let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    file.write_all(&bytes).expect("the frame log is written");
}
