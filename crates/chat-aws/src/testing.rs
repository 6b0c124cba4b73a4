//! A DynamoDB API for tests: moto_server on loopback.
//!
//! The endpoint is `AWS_ENDPOINT_URL_DYNAMODB` when it is set (`scripts/test` starts one moto for
//! the whole run); otherwise one `moto_server` per test process is started on a free
//! `127.0.0.1` port, and stops when the process exits. Nothing is skipped: without moto, the
//! tests that need it fail and say why.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_config::{Region, SdkConfig};

use crate::tables::{Tables, create_tables};

/// The endpoint of the DynamoDB API the tests use.
pub fn dynamodb_endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| match std::env::var("AWS_ENDPOINT_URL_DYNAMODB") {
            Ok(endpoint) if !endpoint.is_empty() => endpoint,
            _ => start_moto(),
        })
        .clone()
}

/// An SDK configuration for moto: its endpoint for DynamoDB, a region, test credentials.
pub async fn sdk_config() -> SdkConfig {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    crate::sdk::defaults()
        .region(Region::new(region))
        .test_credentials()
        .endpoint_url(dynamodb_endpoint())
        .load()
        .await
}

pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

/// Table names no other test of any process on this moto uses.
pub fn unique_tables(label: &str) -> Tables {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{label}-{}-{n}", std::process::id());
    Tables::new(
        format!("{tag}-{}", Tables::DEFAULT_CONNECTIONS),
        format!("{tag}-{}", Tables::DEFAULT_MESSAGES),
    )
}

/// Fresh tables on moto, created.
pub async fn fresh_tables(client: &aws_sdk_dynamodb::Client, label: &str) -> Tables {
    let tables = unique_tables(label);
    create_tables(client, &tables)
        .await
        .expect("the tables are created on moto");
    tables
}

/// Starts moto_server under a small Python guard that stops it when this process exits (the
/// guard's stdin, a pipe from us, closes then).
fn start_moto() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let guard = "import subprocess, sys\n\
        p = subprocess.Popen(['moto_server', '-H', '127.0.0.1', '-p', sys.argv[1]],\n\
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
        sys.stdin.read()\n\
        p.terminate()\n";
    let child: Child = Command::new("python3")
        .args(["-c", guard, &port.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs (moto_server is started through it)");
    // Keep the pipe open for the life of the process: dropping it would stop moto.
    static GUARD: OnceLock<std::sync::Mutex<Child>> = OnceLock::new();
    let _ = GUARD.set(std::sync::Mutex::new(child));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !moto_answers(addr) {
        assert!(
            Instant::now() < deadline,
            "moto_server did not start on {addr}: install it with `pip install 'moto[server]'`, \
             or set AWS_ENDPOINT_URL_DYNAMODB to a running one"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://{addr}")
}

fn moto_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Clients whose every call is answered by aws-smithy-mocks rules (no network): for what moto
/// cannot do (`GoneException`, a throttled or failing DynamoDB). Retries are on, as in
/// production, with a 1 ms backoff so that a failing call fails fast.
pub mod mocked {
    use std::time::Duration;

    use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client};

    fn interceptor(mode: RuleMode, rules: &[&Rule]) -> MockResponseInterceptor {
        rules
            .iter()
            .fold(MockResponseInterceptor::new().rule_mode(mode), |i, rule| {
                i.with_rule(rule)
            })
    }

    pub fn dynamodb(mode: RuleMode, rules: &[&Rule]) -> aws_sdk_dynamodb::Client {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "mocked"))
            .retry_config(RetryConfig::standard().with_initial_backoff(Duration::from_millis(1)))
            .http_client(create_mock_http_client())
            .interceptor(interceptor(mode, rules))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    pub fn management(mode: RuleMode, rules: &[&Rule]) -> aws_sdk_apigatewaymanagement::Client {
        use aws_sdk_apigatewaymanagement::config::{
            BehaviorVersion, Credentials, Region, retry::RetryConfig,
        };
        let config = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url("https://mocked.execute-api.us-east-1.amazonaws.com/dev")
            .credentials_provider(Credentials::new("test", "test", None, None, "mocked"))
            .retry_config(RetryConfig::standard().with_initial_backoff(Duration::from_millis(1)))
            .http_client(create_mock_http_client())
            .interceptor(interceptor(mode, rules))
            .build();
        aws_sdk_apigatewaymanagement::Client::from_conf(config)
    }
}

/// An SDK configuration for moto (as [`sdk_config`]) whose DynamoDB requests reach moto one at a
/// time ([`crate::one_at_a_time`] says why); other requests (the management API) go as they
/// come. Each configuration has its own turn, so tests with their own still run side by side.
pub async fn one_request_at_a_time() -> SdkConfig {
    crate::one_at_a_time::dynamodb_requests_one_at_a_time(sdk_config().await, &dynamodb_endpoint())
}

/// Every DynamoDB request a client made: its operation (`GetItem`, `TransactWriteItems`, ...)
/// and its JSON body, in order. For checks of what a function does against what its role
/// allows (moto allows everything; IAM does not).
#[derive(Debug, Clone, Default)]
pub struct CallLog(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl CallLog {
    /// The calls so far, and empties the log.
    pub fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl aws_sdk_dynamodb::config::Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        // "DynamoDB_20120810.GetItem": the operation after the dot.
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or_default()
            .to_owned();
        let body = request
            .body()
            .bytes()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((operation, body));
        Ok(())
    }
}

/// A client of the tests' DynamoDB (one request at a time, as [`one_request_at_a_time`]) whose
/// every request goes into the log returned with it.
pub async fn recorded_client() -> (aws_sdk_dynamodb::Client, CallLog) {
    let log = CallLog::default();
    let config = aws_sdk_dynamodb::config::Builder::from(&one_request_at_a_time().await)
        .interceptor(log.clone())
        .build();
    (aws_sdk_dynamodb::Client::from_conf(config), log)
}

/// A fresh FIFO queue on moto (which serves SQS on the same port), as `template.yaml` makes the
/// fan-out queue: its URL. `visibility_secs` is its visibility timeout.
pub async fn fresh_fifo_queue(
    sqs: &aws_sdk_sqs::Client,
    label: &str,
    visibility_secs: u32,
) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{label}-{}-{n}.fifo", std::process::id());
    sqs.create_queue()
        .queue_name(name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .expect("create a FIFO queue on moto")
        .queue_url
        .expect("a queue URL")
}

/// Puts `count` members into `room` at once, as [`crate::DynamoConnections`]'s `join` writes
/// them (the membership in the room's partition and its copy in its shard's), through
/// `BatchWriteItem` (25 items a request, a few requests at a time), without a connection item
/// each: what a room's fan-out reads, for benchmarks of rooms far larger than one join at a
/// time fills in reasonable time. Their connection ids are `{prefix}{n}`; they expire in
/// `ttl_secs`.
pub async fn seed_members(
    client: &aws_sdk_dynamodb::Client,
    tables: &Tables,
    room: &str,
    prefix: &str,
    count: usize,
    ttl_secs: u64,
) -> Result<(), aws_sdk_dynamodb::Error> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    use chat_core::domain::{DisplayName, Member};
    use futures_util::stream::{StreamExt, TryStreamExt};

    use crate::db::{MemberItem, keys};

    const ITEMS_PER_REQUEST: usize = 25;
    const REQUESTS_AT_ONCE: usize = 4;
    let ttl = crate::db::now_secs() + ttl_secs;
    let items = (0..count).flat_map(|n| {
        let connection_id = format!("{prefix}{n}");
        let membership = MemberItem {
            room: room.to_owned(),
            sk: keys::member(&uuid::Uuid::now_v7().to_string()),
            member: Member {
                name: DisplayName::parse(&format!("m{n}")).expect("a valid name"),
                user_id: None,
            },
            ttl,
            connection_id,
        };
        let shard_copy = membership.shard_copy();
        [membership, shard_copy]
    });
    let requests: Vec<Vec<WriteRequest>> = items
        .map(|item| {
            let item = serde_dynamo::to_item(item).expect("a member item serializes");
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("an item is set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect::<Vec<_>>()
        .chunks(ITEMS_PER_REQUEST)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    futures_util::stream::iter(requests)
        .map(|mut writes| async move {
            // What DynamoDB leaves unprocessed (it throttles) is sent again.
            while !writes.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(&tables.messages, writes)
                    .send()
                    .await?;
                writes = out
                    .unprocessed_items
                    .and_then(|mut left| left.remove(&tables.messages))
                    .unwrap_or_default();
            }
            Ok::<_, aws_sdk_dynamodb::Error>(())
        })
        .buffer_unordered(REQUESTS_AT_ONCE)
        .try_collect::<()>()
        .await
}
