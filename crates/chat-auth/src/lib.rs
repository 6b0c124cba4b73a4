//! JWT verification for `$connect`, as PROTOCOL.md's "Authentication" section says.
//!
//! One [`Verifier`] serves the local binary (in-process, on the handshake) and the Lambda
//! REQUEST authorizer on AWS. It accepts exactly one family of keys:
//!
//! - an HS256 shared secret, or
//! - RS256 / ES256 public keys from a JWKS (a file locally; a Cognito user pool's on AWS).
//!
//! The token's header picks nothing on its own: its `alg` must be the one the configured keys
//! are for (so `alg: none` and RS256-to-HS256 confusion are refused), a JWKS key is chosen by
//! `kid` and must be of the header's type, and `exp` (required), `nbf`, `iss` and `aud` are
//! checked. `sub` becomes the user id; the `name` claim, when present, the display name.
//!
//! Layout: this file is the verifier; `testing/` (feature `testing`, for tests only) signs test
//! tokens with the test keys in `testing/keys/`.

#[cfg(feature = "testing")]
pub mod testing;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Who a valid token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// The `name` claim, if any; the chat falls back to `sub`.
    pub name: Option<String>,
    /// The `rooms` claim: the `private.` rooms the user may enter, each an exact name or a
    /// prefix ending in `*`. Empty without the claim.
    pub rooms: Vec<String>,
}

/// Why a token was refused. The text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names a `kid` the key set does not have: a key set fetched from a URL may be
    /// out of date (the issuer rotated its keys), and is worth fetching again.
    #[error("invalid token: no key with kid {0:?}")]
    UnknownKey(String),
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::Invalid(reason.into())
}

/// Invalid configuration (an unreadable JWKS).
#[derive(Debug, thiserror::Error)]
#[error("invalid auth configuration: {0}")]
pub struct ConfigError(String);

enum Keys {
    Hs256(DecodingKey),
    Jwks(JwkSet),
}

/// Checks tokens against the configured keys, issuer and audience.
pub struct Verifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    name: Option<String>,
    /// A list of strings when present: anything else makes the token invalid.
    rooms: Option<Vec<String>>,
}

impl Verifier {
    /// Tokens signed with this HS256 secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            keys: Keys::Hs256(DecodingKey::from_secret(secret)),
            issuer: None,
            audience: None,
        }
    }

    /// Tokens signed by a key of this JWKS (its JSON text), RS256 or ES256.
    pub fn from_jwks_json(json: &str) -> Result<Self, ConfigError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| ConfigError(format!("JWKS: {e}")))?;
        if set.keys.is_empty() {
            return Err(ConfigError("the JWKS has no keys".into()));
        }
        Ok(Self {
            keys: Keys::Jwks(set),
            issuer: None,
            audience: None,
        })
    }

    /// Requires `iss` to be this issuer.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Requires `aud` to include this audience.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Verifies a token; never panics, whatever the input.
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("header: {e}")))?;
        let (key, alg) = match &self.keys {
            Keys::Hs256(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(invalid(format!(
                        "algorithm {:?} is not accepted",
                        header.alg
                    )));
                }
                (key.clone(), Algorithm::HS256)
            }
            Keys::Jwks(set) => {
                let jwk = pick_key(set, &header)?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key: {e}")))?;
                (key, header.alg)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not only right when present.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        let user_id = data
            .claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| invalid("the token has no sub"))?;
        Ok(Identity {
            user_id,
            name: data.claims.name,
            rooms: data.claims.rooms.unwrap_or_default(),
        })
    }
}

/// The JWKS key for this header: by `kid`, of the header's algorithm's key type, and of the
/// header's algorithm if the key names one.
fn pick_key<'a>(set: &'a JwkSet, header: &Header) -> Result<&'a Jwk, AuthError> {
    let key_type_fits = |jwk: &Jwk| match header.alg {
        Algorithm::RS256 => matches!(jwk.algorithm, AlgorithmParameters::RSA(_)),
        Algorithm::ES256 => matches!(jwk.algorithm, AlgorithmParameters::EllipticCurve(_)),
        _ => false,
    };
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(invalid(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let jwk = match &header.kid {
        Some(kid) => set
            .find(kid)
            .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?,
        None if set.keys.len() == 1 => &set.keys[0],
        None => return Err(invalid("the token has no kid")),
    };
    if !key_type_fits(jwk) {
        return Err(invalid("the key does not fit the token's algorithm"));
    }
    let declared_fits = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => header.alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => header.alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_fits {
        return Err(invalid("the key is for another algorithm"));
    }
    Ok(jwk)
}

/// The claims `chat token` puts in a token.
#[derive(Debug, Serialize)]
pub struct MintClaims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The `private.` rooms granted (exact names, or prefixes ending in `*`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// Signs claims with an HS256 secret (for local testing).
pub fn mint_hs256(secret: &[u8], claims: &MintClaims) -> Result<String, ConfigError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| ConfigError(e.to_string()))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
