//! The functions' configuration, from the environment (`.env.example` lists every variable).

use std::time::Duration;

use chat_aws::{DynamoConnections, ManagementNotifier, Tables};
use chat_core::ChatConfig;
use chat_core::rate_limit::RateLimit;

/// Where the management API (`@connections`) of the API that sent an event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagementEndpoint {
    /// `{scheme}://{domainName}/{stage}`, from each event: `https` on AWS; `http` for the local
    /// gateway, whose events name its own address.
    FromEvent { scheme: String },
    /// One URL for every event (`APIGW_MANAGEMENT_ENDPOINT`): behind a custom domain, whose name
    /// in the events is not the API's.
    Fixed(String),
}

impl ManagementEndpoint {
    /// The endpoint for an event's domain and stage.
    pub fn resolve(&self, domain: Option<&str>, stage: Option<&str>) -> Option<String> {
        match self {
            Self::Fixed(url) => Some(url.clone()),
            Self::FromEvent { scheme } => {
                let domain = domain.filter(|d| !d.is_empty())?;
                let stage = stage.filter(|s| !s.is_empty())?;
                Some(format!("{scheme}://{domain}/{stage}"))
            }
        }
    }
}

impl Default for ManagementEndpoint {
    fn default() -> Self {
        Self::FromEvent {
            scheme: "https".into(),
        }
    }
}

/// Every variable the functions read (besides the SDK's own, and `RUST_LOG`).
pub const VARIABLES: [&str; 10] = [
    "WEBSOCKET_TABLE",
    "MESSAGES_TABLE",
    "APIGW_MANAGEMENT_ENDPOINT",
    "CHAT_RATE_BURST",
    "CHAT_RATE_PER_SECOND",
    "CONNECTION_TTL_SECONDS",
    "FANOUT_CONCURRENCY",
    "METRICS_NAMESPACE",
    "FANOUT_QUEUE_URL",
    "FANOUT_SHARD_FROM",
];

/// Those that `template.yaml` sets; the others keep their defaults on AWS.
pub const DEPLOYED_VARIABLES: [&str; 8] = [
    "WEBSOCKET_TABLE",
    "MESSAGES_TABLE",
    "APIGW_MANAGEMENT_ENDPOINT",
    "CHAT_RATE_BURST",
    "CHAT_RATE_PER_SECOND",
    "METRICS_NAMESPACE",
    "FANOUT_QUEUE_URL",
    "FANOUT_SHARD_FROM",
];

/// A room with at least this many connections goes through the fan-out queue, when there is one
/// (`FANOUT_SHARD_FROM`): one invocation posts to about 3,000 members a second (32 at once,
/// ~10 ms each), so a room of 1,000 keeps its sender about a third of a second.
pub const DEFAULT_FANOUT_SHARD_FROM: usize = 1000;

/// The CloudWatch namespace of the functions' metrics without `METRICS_NAMESPACE`.
pub const DEFAULT_METRICS_NAMESPACE: &str = "Chat";

/// A variable that is set but cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

/// Everything the functions read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `WEBSOCKET_TABLE`, `MESSAGES_TABLE`.
    pub tables: Tables,
    /// `APIGW_MANAGEMENT_ENDPOINT`, else built from each event.
    pub management_endpoint: ManagementEndpoint,
    /// `CHAT_RATE_BURST`, `CHAT_RATE_PER_SECOND`; the other limits are the protocol's.
    pub chat: ChatConfig,
    /// `CONNECTION_TTL_SECONDS`: how long a connection whose `$disconnect` never came is kept.
    pub connection_ttl: Duration,
    /// `FANOUT_CONCURRENCY`: posts at once in a fan-out.
    pub fanout_concurrency: usize,
    /// `METRICS_NAMESPACE`: the CloudWatch namespace of the EMF metrics (see [`crate::emf`]).
    pub metrics_namespace: String,
    /// `FANOUT_QUEUE_URL`: the sharded fan-out's SQS FIFO queue (none: every room is posted to
    /// directly, whatever its size).
    pub fanout_queue_url: Option<String>,
    /// `FANOUT_SHARD_FROM`: the size from which a room goes through that queue.
    pub fanout_shard_from: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tables: Tables::default(),
            management_endpoint: ManagementEndpoint::default(),
            chat: ChatConfig::default(),
            connection_ttl: DynamoConnections::DEFAULT_TTL,
            fanout_concurrency: ManagementNotifier::DEFAULT_CONCURRENCY,
            metrics_namespace: DEFAULT_METRICS_NAMESPACE.to_owned(),
            fanout_queue_url: None,
            fanout_shard_from: DEFAULT_FANOUT_SHARD_FROM,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match lookup(name) {
                None => Ok(default),
                Some(value) => value.trim().parse().map_err(|_| ConfigError {
                    name,
                    message: format!("{value:?} is not a whole number"),
                }),
            }
        };
        let small = |name: &'static str, default: u32| -> Result<u32, ConfigError> {
            u32::try_from(number(name, u64::from(default))?).map_err(|_| ConfigError {
                name,
                message: "too large".into(),
            })
        };
        let default_limit = defaults.chat.rate_limit;
        let chat = ChatConfig {
            rate_limit: RateLimit {
                burst: small("CHAT_RATE_BURST", default_limit.burst)?,
                per_second: small("CHAT_RATE_PER_SECOND", default_limit.per_second)?,
            },
            ..defaults.chat
        };
        Ok(Self {
            tables: Tables::new(
                lookup("WEBSOCKET_TABLE").unwrap_or(defaults.tables.connections),
                lookup("MESSAGES_TABLE").unwrap_or(defaults.tables.messages),
            ),
            management_endpoint: lookup("APIGW_MANAGEMENT_ENDPOINT")
                .map(ManagementEndpoint::Fixed)
                .unwrap_or(defaults.management_endpoint),
            metrics_namespace: lookup("METRICS_NAMESPACE").unwrap_or(defaults.metrics_namespace),
            chat,
            connection_ttl: Duration::from_secs(number(
                "CONNECTION_TTL_SECONDS",
                defaults.connection_ttl.as_secs(),
            )?),
            fanout_concurrency: usize::try_from(number(
                "FANOUT_CONCURRENCY",
                defaults.fanout_concurrency as u64,
            )?)
            .unwrap_or(usize::MAX)
            .max(1),
            fanout_queue_url: lookup("FANOUT_QUEUE_URL"),
            fanout_shard_from: usize::try_from(number(
                "FANOUT_SHARD_FROM",
                DEFAULT_FANOUT_SHARD_FROM as u64,
            )?)
            .unwrap_or(usize::MAX)
            .max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_seed_tables_and_the_protocol_limits() {
        let config = config(&[]).unwrap();
        assert_eq!(config.tables.connections, "WebSocketConnections");
        assert_eq!(config.tables.messages, "ChatMessages");
        assert_eq!(config.chat.rate_limit, RateLimit::default());
        assert_eq!(config.management_endpoint, ManagementEndpoint::default());
    }

    #[test]
    fn every_variable_is_read() {
        let config = config(&[
            ("WEBSOCKET_TABLE", "c"),
            ("MESSAGES_TABLE", "m"),
            ("APIGW_MANAGEMENT_ENDPOINT", "https://chat.example.com/prod"),
            ("CHAT_RATE_BURST", "5"),
            ("CHAT_RATE_PER_SECOND", "2"),
            ("CONNECTION_TTL_SECONDS", "60"),
            ("FANOUT_CONCURRENCY", "4"),
            ("METRICS_NAMESPACE", "chat-prod"),
            (
                "FANOUT_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/f.fifo",
            ),
            ("FANOUT_SHARD_FROM", "500"),
        ])
        .unwrap();
        assert_eq!(
            config.fanout_queue_url.as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/1/f.fifo")
        );
        assert_eq!(config.fanout_shard_from, 500);
        assert_eq!(config.metrics_namespace, "chat-prod");
        assert_eq!(config.tables, Tables::new("c", "m"));
        assert_eq!(
            config.management_endpoint,
            ManagementEndpoint::Fixed("https://chat.example.com/prod".into())
        );
        assert_eq!(config.chat.rate_limit.burst, 5);
        assert_eq!(config.chat.rate_limit.per_second, 2);
        assert_eq!(config.connection_ttl, Duration::from_secs(60));
        assert_eq!(config.fanout_concurrency, 4);
    }

    #[test]
    fn a_number_that_is_not_one_is_refused_with_its_name() {
        let error = config(&[("CHAT_RATE_BURST", "lots")]).unwrap_err();
        assert_eq!(error.name, "CHAT_RATE_BURST");
    }

    #[test]
    fn the_endpoint_is_built_from_the_event_or_fixed() {
        let aws = ManagementEndpoint::default();
        assert_eq!(
            aws.resolve(Some("abc.execute-api.eu-west-1.amazonaws.com"), Some("dev")),
            Some("https://abc.execute-api.eu-west-1.amazonaws.com/dev".into())
        );
        assert_eq!(aws.resolve(None, Some("dev")), None);
        let fixed = ManagementEndpoint::Fixed("http://127.0.0.1:9/x".into());
        assert_eq!(
            fixed.resolve(None, None),
            Some("http://127.0.0.1:9/x".into())
        );
    }
}
