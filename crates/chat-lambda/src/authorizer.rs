//! The `$connect` REQUEST authorizer: the token check of PROTOCOL.md's "Authentication", with the
//! same [`Verifier`] the local binary runs in process.
//!
//! API Gateway calls it with the handshake's query string before `$connect`. A valid token gets
//! an `Allow` policy for the route, with the user in the context (`userId`, `name`); API Gateway
//! passes that context to every function of the connection in `requestContext.authorizer`, and
//! the `connect` function stores the user with the connection. A missing or bad token is the
//! error `Unauthorized`, which API Gateway answers with 401 (a `Deny` policy would be 403).
//!
//! Keys come from an HS256 secret (`JWT_SECRET`) or a JWKS URL (`JWKS_URL`, e.g. a Cognito user
//! pool's `.../.well-known/jwks.json`), fetched on first use and cached for `JWKS_CACHE_SECONDS`.
//! A token whose `kid` is not in the cached set makes one early refetch (the issuer may have
//! rotated its keys), at most once per [`REFETCH_INTERVAL`], so that junk `kid`s cannot make
//! every handshake a fetch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use chat_auth::{AuthError, Identity, Verifier};
use chat_core::service::authorizer_context;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::ConfigError;

/// The least time between two fetches of the key set caused by unknown `kid`s.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// How long a fetched key set is used before it is fetched again, by default.
pub const DEFAULT_JWKS_CACHE: Duration = Duration::from_secs(3600);

/// Every variable the authorizer reads; the template sets all but `JWKS_CACHE_SECONDS`.
pub const VARIABLES: [&str; 5] = [
    "JWKS_URL",
    "JWT_SECRET",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWKS_CACHE_SECONDS",
];

/// Why the authorizer did not allow a handshake.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// A missing or invalid token. The text is API Gateway's contract: a Lambda authorizer that
    /// fails with exactly `Unauthorized` makes the handshake a 401.
    #[error("Unauthorized")]
    Unauthorized(AuthError),
    /// The keys could not be had (the JWKS URL is down): API Gateway answers 500, and the
    /// client may retry.
    #[error("the signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// What the Lambda runtime reports to API Gateway: `errorMessage` must be `Unauthorized` for a
/// 401.
impl From<Denied> for lambda_runtime::Diagnostic {
    fn from(denied: Denied) -> Self {
        let error_type = match &denied {
            Denied::Unauthorized(_) => "Unauthorized",
            Denied::KeysUnavailable(_) => "KeysUnavailable",
        };
        Self {
            error_type: error_type.into(),
            error_message: denied.to_string(),
        }
    }
}

/// Where the keys come from.
enum Keys {
    /// A secret or a key set known at start.
    Fixed(Verifier),
    /// A JWKS URL, fetched and cached.
    Fetched(JwksCache),
}

/// The authorizer's configuration, from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// `JWT_SECRET`: HS256.
    pub secret: Option<String>,
    /// `JWKS_URL`: RS256/ES256 keys.
    pub jwks_url: Option<String>,
    /// `JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// `JWKS_CACHE_SECONDS`.
    pub jwks_cache: Duration,
}

impl AuthorizerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let jwks_cache = match lookup("JWKS_CACHE_SECONDS") {
            None => DEFAULT_JWKS_CACHE,
            Some(value) => Duration::from_secs(value.trim().parse().map_err(|_| ConfigError {
                name: "JWKS_CACHE_SECONDS",
                message: format!("{value:?} is not a whole number"),
            })?),
        };
        let config = Self {
            secret: lookup("JWT_SECRET"),
            jwks_url: lookup("JWKS_URL"),
            issuer: lookup("JWT_ISSUER"),
            audience: lookup("JWT_AUDIENCE"),
            jwks_cache,
        };
        config.key_source()?;
        Ok(config)
    }

    /// The one source of keys: a secret or a JWKS URL, never both, never neither.
    fn key_source(&self) -> Result<KeySource<'_>, ConfigError> {
        match (&self.secret, &self.jwks_url) {
            (Some(secret), None) => Ok(KeySource::Secret(secret)),
            (None, Some(url)) => Ok(KeySource::JwksUrl(url)),
            (Some(_), Some(_)) => Err(ConfigError {
                name: "JWT_SECRET",
                message: "set JWT_SECRET or JWKS_URL, not both".into(),
            }),
            (None, None) => Err(ConfigError {
                name: "JWKS_URL",
                message: "the authorizer needs JWT_SECRET or JWKS_URL".into(),
            }),
        }
    }
}

enum KeySource<'a> {
    Secret(&'a str),
    JwksUrl(&'a str),
}

/// Checks the handshake's token and answers API Gateway.
pub struct Authorizer {
    keys: Keys,
}

impl Authorizer {
    /// An authorizer over keys known at start (the local binary's Lambda mode uses this).
    pub fn with_verifier(verifier: Verifier) -> Self {
        Self {
            keys: Keys::Fixed(verifier),
        }
    }

    pub fn from_config(config: &AuthorizerConfig) -> Result<Self, ConfigError> {
        let keys = match config.key_source()? {
            KeySource::Secret(secret) => Keys::Fixed(
                Verifier::hs256(secret.as_bytes())
                    .with_issuer(config.issuer.clone())
                    .with_audience(config.audience.clone()),
            ),
            KeySource::JwksUrl(url) => Keys::Fetched(JwksCache::new(url.to_owned(), config)?),
        };
        Ok(Self { keys })
    }

    /// Verifies a token; fetches the key set when it has to.
    pub async fn verify(&self, token: Option<&str>) -> Result<Identity, Denied> {
        match &self.keys {
            Keys::Fixed(verifier) => verifier.verify(token).map_err(Denied::Unauthorized),
            Keys::Fetched(cache) => cache.verify(token).await,
        }
    }

    /// The answer to one authorizer event: an `Allow` policy on the route with the user as
    /// context, or [`Denied`].
    pub async fn authorize(
        &self,
        event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, Denied> {
        let token = crate::handlers::first_query_value(
            &event.multi_value_query_string_parameters,
            &event.query_string_parameters,
            "token",
        );
        let identity = match self.verify(token).await {
            Ok(identity) => identity,
            Err(denied) => {
                tracing::info!(reason = %reason(&denied), "handshake not authorized");
                return Err(denied);
            }
        };
        tracing::info!(user_id = identity.user_id.as_str(), "handshake authorized");
        Ok(allow(
            event.method_arn.as_deref().unwrap_or_default(),
            &identity,
        ))
    }
}

fn reason(denied: &Denied) -> String {
    match denied {
        Denied::Unauthorized(error) => error.to_string(),
        other => other.to_string(),
    }
}

/// `Allow` for this route only, with the user in the context (strings only, as API Gateway
/// requires of context values).
fn allow(method_arn: &str, identity: &Identity) -> ApiGatewayCustomAuthorizerResponse {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".into()];
    statement.effect = IamPolicyEffect::Allow;
    statement.resource = vec![method_arn.to_owned()];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".into());
    policy.statement = vec![statement];
    let context = authorizer_context::with_rooms(
        authorizer_context::of(&identity.user_id, identity.name.as_deref()),
        &identity.rooms,
    );
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    response.principal_id = Some(identity.user_id.clone());
    response.policy_document = policy;
    response.context = Value::Object(context);
    response
}

/// A JWKS URL's key set, fetched when first needed and again when stale.
struct JwksCache {
    url: String,
    issuer: Option<String>,
    audience: Option<String>,
    max_age: Duration,
    http: reqwest::Client,
    /// One fetch at a time; the others wait for its result.
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    keys: Option<(Arc<Verifier>, Instant)>,
    /// When an unknown `kid` last caused a fetch.
    last_refetch: Option<Instant>,
}

impl JwksCache {
    fn new(url: String, config: &AuthorizerConfig) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConfigError {
                name: "JWKS_URL",
                message: format!("no HTTP client: {e}"),
            })?;
        Ok(Self {
            url,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_age: config.jwks_cache,
            http,
            state: Mutex::new(CacheState::default()),
        })
    }

    async fn verify(&self, token: Option<&str>) -> Result<Identity, Denied> {
        let verifier = self.current().await?;
        match verifier.verify(token) {
            Err(AuthError::UnknownKey(kid)) => match self.refetch_for_unknown_key().await? {
                Some(fresh) => fresh.verify(token).map_err(Denied::Unauthorized),
                None => Err(Denied::Unauthorized(AuthError::UnknownKey(kid))),
            },
            result => result.map_err(Denied::Unauthorized),
        }
    }

    /// The cached keys, fetched first if there are none or they are too old.
    async fn current(&self) -> Result<Arc<Verifier>, Denied> {
        let mut state = self.state.lock().await;
        match &state.keys {
            Some((verifier, fetched)) if fetched.elapsed() < self.max_age => Ok(verifier.clone()),
            _ => {
                let verifier = self.fetch().await?;
                state.keys = Some((verifier.clone(), Instant::now()));
                Ok(verifier)
            }
        }
    }

    /// Fetches the key set again for a token with an unknown `kid`, unless that was done less
    /// than [`REFETCH_INTERVAL`] ago (then `None`: the cached keys stand).
    async fn refetch_for_unknown_key(&self) -> Result<Option<Arc<Verifier>>, Denied> {
        let mut state = self.state.lock().await;
        if state
            .last_refetch
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return Ok(None);
        }
        state.last_refetch = Some(Instant::now());
        let verifier = self.fetch().await?;
        state.keys = Some((verifier.clone(), Instant::now()));
        Ok(Some(verifier))
    }

    async fn fetch(&self) -> Result<Arc<Verifier>, Denied> {
        let unavailable = |e: String| {
            tracing::error!(url = %self.url, error = %e, "cannot fetch the JWKS");
            Denied::KeysUnavailable(e)
        };
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unavailable(e.to_string()))?;
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let verifier = Verifier::from_jwks_json(&text)
            .map_err(|e| unavailable(e.to_string()))?
            .with_issuer(self.issuer.clone())
            .with_audience(self.audience.clone());
        tracing::info!(url = %self.url, "JWKS fetched");
        Ok(Arc::new(verifier))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<AuthorizerConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AuthorizerConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_configuration_needs_exactly_one_key_source() {
        assert!(config(&[]).is_err());
        assert!(config(&[("JWT_SECRET", "s"), ("JWKS_URL", "https://x")]).is_err());
        let jwks = config(&[
            ("JWKS_URL", "https://x/jwks.json"),
            ("JWT_ISSUER", "https://issuer"),
            ("JWT_AUDIENCE", "app"),
            ("JWKS_CACHE_SECONDS", "60"),
        ])
        .unwrap();
        assert_eq!(jwks.jwks_url.as_deref(), Some("https://x/jwks.json"));
        assert_eq!(jwks.issuer.as_deref(), Some("https://issuer"));
        assert_eq!(jwks.audience.as_deref(), Some("app"));
        assert_eq!(jwks.jwks_cache, Duration::from_secs(60));
        assert_eq!(
            config(&[("JWT_SECRET", "s")]).unwrap().jwks_cache,
            DEFAULT_JWKS_CACHE
        );
        let error = config(&[("JWT_SECRET", "s"), ("JWKS_CACHE_SECONDS", "soon")]).unwrap_err();
        assert_eq!(error.name, "JWKS_CACHE_SECONDS");
    }

    #[test]
    fn the_unauthorized_error_says_exactly_what_api_gateway_maps_to_401() {
        assert_eq!(
            Denied::Unauthorized(AuthError::Missing).to_string(),
            "Unauthorized"
        );
    }
}
