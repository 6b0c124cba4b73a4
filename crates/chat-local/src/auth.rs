//! Authentication of the local binary: the same verifier as the Lambda authorizer, in process.

use std::path::PathBuf;

use anyhow::Context;
use chat_auth::Verifier;
use clap::Args;

/// Off unless a secret or a key set is given; then `$connect` needs a valid `token`.
#[derive(Debug, Clone, Default, Args)]
pub struct AuthSettings {
    /// HS256 secret: when set, every connection needs a `token` signed with it (else 401).
    #[arg(
        long,
        env = "CHAT_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwks_file"
    )]
    pub jwt_secret: Option<String>,

    /// A JWKS file (JSON) of RS256/ES256 public keys: when set, every connection needs a
    /// `token` signed by one of them (else 401).
    #[arg(long, env = "CHAT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Required `iss` claim, when auth is on.
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when auth is on.
    #[arg(long, env = "CHAT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl AuthSettings {
    /// The verifier, or `None` when authentication is off.
    pub fn verifier(&self) -> anyhow::Result<Option<Verifier>> {
        let verifier = match (&self.jwt_secret, &self.jwks_file) {
            (Some(secret), _) if secret.is_empty() => anyhow::bail!("the JWT secret is empty"),
            (Some(secret), _) => Verifier::hs256(secret.as_bytes()),
            (None, Some(path)) => {
                let json = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
                Verifier::from_jwks_json(&json)?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(
            verifier
                .with_issuer(self.jwt_issuer.clone())
                .with_audience(self.jwt_audience.clone()),
        ))
    }
}
