//! The settings of `chat serve`: flags, each also settable from the environment (and from a
//! `.env` file in the working directory, which real environment variables override).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_core::ChatConfig;
use chat_core::rate_limit::RateLimit;
use clap::Args;

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

    /// Frames queued for one connection before it counts as a slow consumer and is closed
    /// (1008). Bounds the memory a client that stops reading can hold.
    #[arg(long, env = "CHAT_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// sendMessage allowance per connection: the burst.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 20)]
    pub rate_burst: u32,

    /// sendMessage allowance per connection: the steady rate, per second.
    #[arg(long, env = "CHAT_RATE_PER_SECOND", default_value_t = 10)]
    pub rate_per_second: u32,
}

fn parse_stage(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(s.to_owned())
    } else {
        Err("a stage name is 1 to 128 of A-Z, a-z, 0-9, '_' and '-'".into())
    }
}

impl Settings {
    /// Defaults for tests: an ephemeral port and the given data directory.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            stage: "dev".into(),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(7200),
            send_queue: 1024,
            rate_burst: 20,
            rate_per_second: 10,
        }
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

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("chat.db")
    }
}
