//! The fan-out of one `sendMessage` on the Lambda path: the time from the send to the last
//! delivery in rooms of 1,000, 10,000 and 100,000 members, posted directly (the `message`
//! function posts to every member before its ack) and sharded (the `message` function queues one
//! SQS FIFO message per shard and acks; the `fanout` function, fed by the local event source
//! mapping of `chat serve --backend lambda`, posts each shard page by page), with the DynamoDB
//! and SQS requests each made.
//!
//! ```text
//! cargo run --release -p chat-local --features lambda --example fanout_bench -- \
//!     --sizes 1000,10000,100000 --post-ms 10 --out docs/bench/fanout.jsonl
//! ```
//!
//! What is real: the handlers (`chat_lambda::Handlers`, as the functions run them), their
//! DynamoDB and SQS requests (moto_server: `AWS_ENDPOINT_URL_DYNAMODB`, or one started for the
//! run), the local event source mapping (`chat_local::backends::queue`). What is simulated: the
//! members. A room of 100,000 is more sockets than one process here holds, so the members are
//! membership items written straight to the table (`chat_aws::testing::seed_members`), and their
//! `@connections` endpoint is a server here that counts each `PostToConnection`, holds it
//! `--post-ms` (API Gateway's own time to take a post) and answers 200.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use chat_aws::testing::{fresh_fifo_queue, fresh_tables, sdk_config, seed_members};
use chat_core::domain::ConnectionId;
use chat_core::protocol::Inbound;
use chat_lambda::{ApiGatewayWebsocketProxyRequest, Config, Handlers, ManagementEndpoint};
use chat_local::backends::events::Api;
use chat_local::backends::queue::EventSourceMapping;
use chat_local::gateway::{Connection, Handshake};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Room sizes (members, the sender among them).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// How long the simulated `@connections` holds each post, in ms.
    #[arg(long, default_value_t = 10)]
    post_ms: u64,
    /// Pollers of the event source mapping (concurrent `fanout` invocations).
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// Appends one JSON line per run to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// A label for the JSON lines.
    #[arg(long, default_value = "")]
    label: String,
    /// Be the simulated `@connections` server (the bench starts itself so).
    #[arg(long, hide = true)]
    serve_posts: bool,
}

const ROOM: &str = "big";
const STAGE: &str = "bench";
/// How long a sharded run may take before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(900);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.serve_posts {
        Posts::serve(Duration::from_millis(args.post_ms)).await;
        return;
    }
    let posts = Posts::start(args.post_ms);
    println!(
        "| members | path | ack | first delivery | last delivery | posts | twice | CPU: handlers / moto / @connections | DynamoDB requests | SQS requests |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for &size in &args.sizes {
        let room = Room::seed(size, &posts).await;
        for sharded in [false, true] {
            let run = room.send(sharded, &posts, args.pollers).await;
            println!(
                "| {size} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {} / {} / {} | {} | {} |",
                if sharded { "sharded" } else { "direct" },
                run.ack.as_secs_f64() * 1e3,
                run.first.as_secs_f64() * 1e3,
                run.last.as_secs_f64() * 1e3,
                run.posts,
                run.twice,
                seconds(run.cpu[0]),
                seconds(run.cpu[1]),
                seconds(run.cpu[2]),
                summary(&run.dynamodb),
                summary(&run.sqs),
            );
            if let Some(out) = &args.out {
                use std::io::Write;
                let line = json!({
                    "label": args.label,
                    "members": size,
                    "path": if sharded { "sharded" } else { "direct" },
                    "post_ms": args.post_ms,
                    "pollers": args.pollers,
                    "seed_s": room.seeded.as_secs_f64(),
                    "ack_ms": run.ack.as_secs_f64() * 1e3,
                    "first_delivery_ms": run.first.as_secs_f64() * 1e3,
                    "last_delivery_ms": run.last.as_secs_f64() * 1e3,
                    "posts": run.posts,
                    "twice": run.twice,
                    "cpu_s": run.cpu[0],
                    "moto_cpu_s": run.cpu[1],
                    "posts_server_cpu_s": run.cpu[2],
                    "dynamodb": run.dynamodb,
                    "sqs": run.sqs,
                });
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(out)
                    .expect("the output file opens");
                writeln!(file, "{line}").expect("a line is written");
            }
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("?".into(), |s| format!("{s:.1} s"))
}

/// moto_server's process id, when the caller gives it (`scripts/fanout-bench` does).
fn moto_pid() -> Option<String> {
    std::env::var("MOTO_PID").ok().filter(|pid| !pid.is_empty())
}

/// A process's CPU time so far (user and system), from `/proc/{pid}/stat`; none for no pid.
fn cpu_seconds(pid: &str) -> Option<f64> {
    if pid.is_empty() {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's parenthesised name: fields 3 onwards; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ: 100 on Linux's every architecture but alpha and ia64.
    Some(ticks / 100.0)
}

fn summary(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A room of `size` members on fresh tables and a fresh queue: one real connection (the sender)
/// and `size - 1` seeded memberships.
struct Room {
    config: Config,
    sender: String,
    seeded: Duration,
}

impl Room {
    async fn seed(size: usize, posts: &Posts) -> Self {
        let sdk = sdk_config().await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let tables = fresh_tables(&dynamodb, "fanout-bench").await;
        let queue = fresh_fifo_queue(&sqs, "fanout-bench", 60).await;
        let config = Config {
            tables: tables.clone(),
            management_endpoint: ManagementEndpoint::Fixed(posts.endpoint.clone()),
            fanout_queue_url: Some(queue),
            // Every room through the queue, when the run is sharded.
            fanout_shard_from: 1,
            ..Config::default()
        };
        // The sender joins the room while it is empty, posted to directly: its `presence` is
        // not left in the queue for the sharded run.
        let direct = Config {
            fanout_queue_url: None,
            ..config.clone()
        };
        let handlers = Handlers::on_aws(&sdk, &direct);
        let sender = format!("sender-{size}");
        let connected = handlers.connect(event(&sender, "$connect", None)).await;
        assert_eq!(connected.status_code, 200, "{:?}", connected.body);
        let join = json!({ "action": "joinRoom", "room": ROOM }).to_string();
        let joined = handlers
            .message(event(&sender, "joinRoom", Some(&join)))
            .await;
        assert!(
            joined
                .body
                .as_ref()
                .is_some_and(|body| format!("{body:?}").contains("joined")),
            "{:?}",
            joined.body
        );
        let start = Instant::now();
        seed_members(&dynamodb, &tables, ROOM, "member-", size - 1, 3600)
            .await
            .expect("the members are written");
        let seeded = start.elapsed();
        eprintln!("{size} members seeded in {:.1} s", seeded.as_secs_f64());
        Self {
            config,
            sender,
            seeded,
        }
    }

    /// One `sendMessage` by the sender, and every post that follows from it.
    async fn send(&self, sharded: bool, posts: &Posts, pollers: usize) -> Run {
        let message_calls = Calls::default();
        let fanout_calls = Calls::default();
        let sdk = sdk_config().await;
        let message_sdk = message_calls.wrap(&sdk);
        let fanout_sdk = fanout_calls.wrap(&sdk);
        let mut config = self.config.clone();
        if !sharded {
            config.fanout_queue_url = None;
        }
        let handlers = Handlers::on_aws(&message_sdk, &config);
        let mapping = sharded.then(|| {
            EventSourceMapping::start(
                aws_sdk_sqs::Client::new(&fanout_sdk),
                config.fanout_queue_url.clone().expect("a queue"),
                pollers,
                |_| Handlers::on_aws(&fanout_sdk, &config),
            )
        });
        // The pollers' first receives, before the clock starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        message_calls.take();
        fanout_calls.take();
        posts.reset().await;

        let body =
            json!({ "action": "sendMessage", "room": ROOM, "text": "hello, everyone" }).to_string();
        // This process, moto_server (when `MOTO_PID` names it), the simulated `@connections`.
        let processes = [
            "self".to_owned(),
            moto_pid().unwrap_or_default(),
            posts.pid(),
        ];
        let cpu_before = processes.each_ref().map(|pid| cpu_seconds(pid));
        let start = Instant::now();
        let start_us = epoch_us(std::time::SystemTime::now());
        let reply = handlers
            .message(event(&self.sender, "sendMessage", Some(&body)))
            .await;
        let ack = start.elapsed();
        let text = format!("{:?}", reply.body);
        assert!(text.contains("ack"), "{text}");
        let expected = posts.expected.lock().unwrap().unwrap_or(0);
        if sharded {
            let deadline = start + PATIENCE;
            while posts.count().await < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Whatever would come twice.
            tokio::time::sleep(Duration::from_secs(2)).await;
        } else {
            let count = posts.count().await;
            *posts.expected.lock().unwrap() = Some(count);
        }
        let stats = posts.stats().await;
        let cpu = std::array::from_fn(|n| {
            let after = cpu_seconds(&processes[n])?;
            Some(after - cpu_before[n]?)
        });
        let since_start = |us: Option<u64>| {
            us.map_or(ack, |us| Duration::from_micros(us.saturating_sub(start_us)))
        };
        if let Some(mapping) = mapping {
            mapping.stop().await;
        }
        let mut dynamodb = BTreeMap::new();
        let mut sqs = BTreeMap::new();
        for (function, calls) in [("message", message_calls), ("fanout", fanout_calls)] {
            for (target, n) in calls.take() {
                // "DynamoDB_20120810.Query", "AmazonSQS.SendMessageBatch".
                let (service, operation) = target.split_once('.').unwrap_or(("", &target));
                let counts = if service == "AmazonSQS" {
                    &mut sqs
                } else {
                    &mut dynamodb
                };
                counts.insert(format!("{function}:{operation}"), n);
            }
        }
        Run {
            ack,
            first: since_start(stats.first_us),
            last: since_start(stats.last_us),
            posts: stats.count,
            twice: stats.count - stats.distinct,
            cpu,
            dynamodb,
            sqs,
        }
    }
}

struct Run {
    /// CPU seconds used during the run by this process (the handlers and the pollers), by
    /// moto_server (`MOTO_PID`) and by the simulated `@connections`, from /proc.
    cpu: [Option<f64>; 3],
    ack: Duration,
    /// When the first post came.
    first: Duration,
    last: Duration,
    posts: u64,
    twice: u64,
    dynamodb: BTreeMap<String, u64>,
    sqs: BTreeMap<String, u64>,
}

/// An API Gateway event of `connection`, as the local gateway makes them
/// (`chat_local::backends::events`, checked against AWS's sample events): `$connect` with a
/// `name`, or a frame.
fn event(connection: &str, route: &str, body: Option<&str>) -> ApiGatewayWebsocketProxyRequest {
    let api = Api {
        domain: "127.0.0.1".into(),
        stage: STAGE.into(),
    };
    let connection = Connection {
        id: ConnectionId::new(connection),
        connected_at_ms: chat_core::clock::now_ms(),
        source_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        user_agent: None,
        authorizer: None,
    };
    let event = match (route, body) {
        ("$connect", _) => api.connect(
            &connection,
            &Handshake {
                query: vec![("name".into(), "sender".into())],
                headers: Vec::new(),
            },
        ),
        (_, Some(body)) => api.message(
            &connection,
            &uuid::Uuid::now_v7().to_string(),
            Inbound::Text(body),
        ),
        (route, None) => panic!("a {route} event needs a body"),
    };
    serde_json::from_value(event).expect("an API Gateway event")
}

/// The simulated `@connections`, in a process of its own (this program, run with
/// `--serve-posts`), so that its CPU is not counted as the handlers': counts each
/// `PostToConnection`, holds it, answers 200. `GET /_stats` reads its counts, `POST /_reset`
/// empties them.
struct Posts {
    endpoint: String,
    /// `127.0.0.1:PORT` of the server, for its stats.
    addr: String,
    server: std::process::Child,
    /// How many posts the direct run made: what the sharded run must make.
    expected: Mutex<Option<u64>>,
}

/// What the server counted since its last reset; times in µs since the epoch (the two processes
/// share the machine's clock).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct PostStats {
    count: u64,
    distinct: u64,
    first_us: Option<u64>,
    last_us: Option<u64>,
}

#[derive(Default)]
struct PostLog {
    count: u64,
    ids: HashSet<String>,
    first_us: Option<u64>,
    last_us: Option<u64>,
}

fn epoch_us(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

impl Posts {
    /// Starts the server process and waits for its address.
    fn start(hold_ms: u64) -> Self {
        use std::io::BufRead;
        let mut server = std::process::Command::new(std::env::current_exe().expect("this program"))
            .args(["--serve-posts", "--post-ms", &hold_ms.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the posts server starts");
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("its address");
        let addr = line.trim().to_owned();
        Self {
            endpoint: format!("http://{addr}/{STAGE}"),
            addr,
            server,
            expected: Mutex::default(),
        }
    }

    /// The server: until its stdin closes (this program's parent ends).
    async fn serve(hold: Duration) {
        let log: Arc<Mutex<PostLog>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/_stats",
                axum::routing::get({
                    let log = log.clone();
                    move || async move {
                        let log = log.lock().unwrap();
                        axum::Json(PostStats {
                            count: log.count,
                            distinct: log.ids.len() as u64,
                            first_us: log.first_us,
                            last_us: log.last_us,
                        })
                    }
                }),
            )
            .route(
                "/_reset",
                axum::routing::post({
                    let log = log.clone();
                    move || async move {
                        *log.lock().unwrap() = PostLog::default();
                    }
                }),
            )
            .fallback(move |uri: axum::http::Uri| {
                let log = log.clone();
                async move {
                    // `/{stage}/%40connections/{id}` (or `@connections`).
                    let id = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
                    {
                        let mut log = log.lock().unwrap();
                        log.count += 1;
                        log.ids.insert(id);
                        let now = epoch_us(std::time::SystemTime::now());
                        log.first_us.get_or_insert(now);
                        log.last_us = Some(now);
                    }
                    tokio::time::sleep(hold).await;
                    axum::http::StatusCode::OK
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        println!("{}", listener.local_addr().expect("its address"));
        // Without TCP_NODELAY on the accepted sockets, each answer could wait for the ACK of
        // the one before (Nagle), which the client delays by up to 40 ms: API Gateway's own
        // front end is not what is measured here.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The parent holds the other end of stdin: EOF when it ends, however it ends.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        })
        .await
        .ok();
    }

    async fn request(&self, method: &str, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("the posts server answers");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.expect("sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    async fn reset(&self) {
        self.request("POST", "/_reset").await;
    }

    async fn stats(&self) -> PostStats {
        serde_json::from_str(&self.request("GET", "/_stats").await).expect("the stats")
    }

    async fn count(&self) -> u64 {
        self.stats().await.count
    }

    fn pid(&self) -> String {
        self.server.id().to_string()
    }
}

impl Drop for Posts {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The requests an SDK configuration made, by `X-Amz-Target` (`DynamoDB_20120810.Query`,
/// `AmazonSQS.SendMessageBatch`, ...): every request of both services names its operation so.
#[derive(Clone, Default, Debug)]
struct Calls(Arc<Mutex<BTreeMap<String, u64>>>);

impl Calls {
    fn wrap(&self, sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
        let inner = sdk
            .http_client()
            .unwrap_or_else(chat_aws::sdk::https_client);
        sdk.clone()
            .into_builder()
            .http_client(Counting {
                inner,
                calls: self.clone(),
            })
            .build()
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Debug)]
struct Counting {
    inner: SharedHttpClient,
    calls: Calls,
}

impl HttpClient for Counting {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(CountingConnector {
            inner: self.inner.http_connector(settings, components),
            calls: self.calls.clone(),
        })
    }
}

#[derive(Debug)]
struct CountingConnector {
    inner: SharedHttpConnector,
    calls: Calls,
}

impl HttpConnector for CountingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        if let Some(target) = request.headers().get("x-amz-target") {
            *self
                .calls
                .0
                .lock()
                .unwrap()
                .entry(target.to_owned())
                .or_default() += 1;
        }
        self.inner.call(request)
    }
}
