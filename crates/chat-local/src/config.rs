//! The settings of `chat serve`: flags, each also settable from the environment (and from a
//! `.env` file in the working directory, which real environment variables override).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_core::ChatConfig;
use chat_core::rate_limit::RateLimit;
use clap::{Args, ValueEnum};

use crate::auth::AuthSettings;

/// What runs behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The chat core in process, with SQLite (DATA_DIR/chat.db).
    Embedded,
    /// The Lambda handlers in process, on DynamoDB (the SDK's AWS_ENDPOINT_URL_DYNAMODB, AWS_REGION
    /// and credentials), posting to this gateway's own @connections API: the AWS code path.
    Lambda,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on. The WebSocket API is at ws://ADDR/STAGE, the web client at
    /// http://ADDR/. Loopback by default; the @connections management API answers only
    /// loopback clients whatever this is.
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Directory of the embedded store (created if missing); messages go to DATA_DIR/chat.db.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// API Gateway stage name: the first segment of the WebSocket path (ws://ADDR/dev).
    #[arg(long, env = "CHAT_STAGE", default_value = "dev", value_parser = parse_stage)]
    pub stage: String,

    /// Most connections at once; the handshake past it gets 429.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection that sends no frame for this long is closed with 1001 (API Gateway: 10m).
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A connection is closed with 1001 after this long, active or not (API Gateway: 2h).
    #[arg(long, env = "CHAT_MAX_LIFETIME", default_value = "2h", value_parser = humantime::parse_duration)]
    pub max_lifetime: Duration,

    /// How long a handler may take (`$connect`, a frame) before the gateway gives up on it: the
    /// client then gets API Gateway's `Internal server error` frame (API Gateway: 29s, its
    /// most).
    #[arg(long, env = "CHAT_INTEGRATION_TIMEOUT", default_value = "29s", value_parser = humantime::parse_duration)]
    pub integration_timeout: Duration,

    /// Frames queued for one connection before it counts as a slow consumer and is closed
    /// (1008). Bounds the memory a client that stops reading can hold.
    #[arg(long, env = "CHAT_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// A connection whose socket accepts nothing for this long (the client stopped reading
    /// and the kernel's send buffer is full) is a slow consumer too, and is closed (1008).
    #[arg(long, env = "CHAT_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// The kernel send buffer of each connection, in bytes (SO_SNDBUF; Linux doubles it for its
    /// bookkeeping). Fixed rather than autotuned (up to 4 MiB per socket), so that clients that
    /// stop reading hold little kernel memory and are noticed soon. 0: the kernel's autotuning.
    #[arg(long, env = "CHAT_SEND_BUFFER", default_value_t = 64 * 1024)]
    pub send_buffer: usize,

    /// sendMessage allowance per connection: the burst.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = RateLimit::DEFAULT.burst)]
    pub rate_burst: u32,

    /// sendMessage allowance per connection: the steady rate, per second.
    #[arg(long, env = "CHAT_RATE_PER_SECOND", default_value_t = RateLimit::DEFAULT.per_second)]
    pub rate_per_second: u32,

    /// Handshakes one IP address may make at once (then `--ip-connect-per-second`); past it, 429.
    #[arg(long, env = "CHAT_IP_CONNECT_BURST", default_value_t = 100)]
    pub ip_connect_burst: u32,

    /// Handshakes per second one IP address may make after its burst.
    #[arg(long, env = "CHAT_IP_CONNECT_PER_SECOND", default_value_t = 20)]
    pub ip_connect_per_second: u32,

    /// What runs behind the gateway: `embedded` (SQLite) or `lambda` (the Lambda handlers on
    /// DynamoDB).
    #[arg(long, env = "CHAT_BACKEND", value_enum, default_value = "embedded")]
    pub backend: BackendKind,

    /// Lambda mode: the connections table.
    #[arg(long, env = "WEBSOCKET_TABLE", default_value = DEFAULT_CONNECTIONS_TABLE)]
    pub websocket_table: String,

    /// Lambda mode: the messages table.
    #[arg(long, env = "MESSAGES_TABLE", default_value = DEFAULT_MESSAGES_TABLE)]
    pub messages_table: String,

    /// Lambda mode: create the tables when they are missing (local DynamoDB; SAM creates them on
    /// AWS).
    #[arg(long, env = "CHAT_CREATE_TABLES")]
    pub create_tables: bool,

    /// Lambda mode: how many frames of one connection are handled at once. API Gateway invokes
    /// the integration for each frame as it arrives, without waiting for the previous one
    /// (bounded only by the account's Lambda concurrency): pipelined frames run concurrently.
    #[arg(long, env = "CHAT_LAMBDA_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub lambda_concurrency: u16,

    /// Lambda mode: send DynamoDB requests one at a time, for moto, which is not atomic per
    /// request as DynamoDB is (a cancelled transaction's rollback can erase a write made
    /// meanwhile). The endpoint is AWS_ENDPOINT_URL_DYNAMODB's (or AWS_ENDPOINT_URL's). Slower;
    /// never needed on DynamoDB or DynamoDB Local.
    #[arg(long, env = "CHAT_DYNAMODB_ONE_AT_A_TIME")]
    pub dynamodb_one_at_a_time: bool,

    /// Lambda mode: the function containers' clocks are this many milliseconds apart (the
    /// first on time, then one ahead, one behind, ...), as the clocks of different machines
    /// are. For tests of what clock skew does.
    #[arg(long, env = "CHAT_LAMBDA_CLOCK_SKEW_MS", default_value_t = 0)]
    pub lambda_clock_skew_ms: u64,

    /// Lambda mode: a room with at least this many connections delivers its events through the
    /// fan-out queue (SQS FIFO, 16 shards, the `fanout` function), as `template.yaml`'s
    /// `FanoutShardFrom` does on AWS; 0 turns the queue off (every room posted to directly, and
    /// no SQS needed).
    #[arg(long, env = "FANOUT_SHARD_FROM", default_value_t = 1000)]
    pub fanout_shard_from: usize,

    /// Lambda mode: the fan-out queue's name, at the SDK's SQS endpoint (AWS_ENDPOINT_URL_SQS,
    /// or AWS_ENDPOINT_URL, else AWS_ENDPOINT_URL_DYNAMODB's: moto serves SQS beside DynamoDB);
    /// created with --create-tables.
    #[arg(long, env = "CHAT_FANOUT_QUEUE", default_value = "chat-fanout.fifo")]
    pub fanout_queue: String,

    /// The server API's key (`/api/...` on this port, with `Authorization: Bearer KEY`). Unset,
    /// the server API is off and answers 404.
    #[arg(long, env = "CHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    #[command(flatten)]
    pub auth: AuthSettings,

    /// Lambda mode: the AWS SDK's configuration; `None` reads it from the environment, as on
    /// Lambda. Not a flag: tests and embedders set it (e.g. to point at a local DynamoDB).
    #[cfg(feature = "lambda")]
    #[arg(skip)]
    pub aws: Option<aws_config::SdkConfig>,
}

/// The tables' default names, those of `chat_aws::Tables` (a test says so), here too so that
/// a build without the Lambda mode still knows its flags.
const DEFAULT_CONNECTIONS_TABLE: &str = "WebSocketConnections";
const DEFAULT_MESSAGES_TABLE: &str = "ChatMessages";

fn parse_stage(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        Err("a stage name is 1 to 128 of A-Z, a-z, 0-9, '_' and '-'".into())
    } else if s == "metrics" {
        // GET /metrics is the Prometheus scrape, on the same port.
        Err("the stage cannot be `metrics`: /metrics is the metrics endpoint".into())
    } else if s == "api" {
        Err("the stage cannot be `api`: /api/... is the server API".into())
    } else {
        Ok(s.to_owned())
    }
}

impl Settings {
    /// The defaults of `chat serve` (the flags' own, not the environment's), on an ephemeral
    /// loopback port and the given data directory: for tests.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        use clap::{Command, FromArgMatches};
        // Without the environment: a CHAT_* variable of the machine must not change a test.
        let command = Self::augment_args(Command::new("chat")).mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from([
            "chat".as_ref(),
            "--addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ]);
        Self::from_arg_matches(&matches).expect("the defaults are valid settings")
    }

    pub fn chat_config(&self) -> ChatConfig {
        ChatConfig {
            rate_limit: RateLimit {
                burst: self.rate_burst,
                per_second: self.rate_per_second,
            },
            ..ChatConfig::default()
        }
    }

    pub fn ip_connect_rate(&self) -> RateLimit {
        RateLimit {
            burst: self.ip_connect_burst,
            per_second: self.ip_connect_per_second,
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("chat.db")
    }
}

#[cfg(all(test, feature = "lambda"))]
mod table_names {
    #[test]
    fn the_default_table_names_are_the_stores_own() {
        use chat_aws::Tables;
        assert_eq!(
            super::DEFAULT_CONNECTIONS_TABLE,
            Tables::DEFAULT_CONNECTIONS
        );
        assert_eq!(super::DEFAULT_MESSAGES_TABLE, Tables::DEFAULT_MESSAGES);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stage;

    #[test]
    fn a_stage_is_api_gateways_alphabet_and_not_the_metrics_path() {
        assert_eq!(parse_stage("dev").as_deref(), Ok("dev"));
        assert!(parse_stage("").is_err());
        assert!(parse_stage("a/b").is_err());
        assert!(parse_stage(&"s".repeat(129)).is_err());
        assert!(parse_stage("metrics").is_err());
        assert!(parse_stage("api").is_err());
    }
}
