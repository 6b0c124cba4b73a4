//! Test tokens, signed once for every crate's tests (feature `testing`; dev-dependencies turn
//! it on, no binary does).
//!
//! The keys in `keys/` are test keys, public in this repository: an EC P-256 key (`ec-1` in
//! [`JWKS`]) and an RSA key (`rsa-1`). They sign tokens here and nowhere else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::now_secs;

/// The public test keys, as a JWKS: `ec-1` (ES256) and `rsa-1` (RS256).
pub const JWKS: &str = include_str!("keys/jwks.json");

/// [`JWKS`] as a file, for a binary's `--jwks-file`.
pub const JWKS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/testing/keys/jwks.json");

/// The public half of the RSA test key (PEM), for algorithm-confusion tests.
pub const RSA_PUBLIC_PEM: &[u8] = include_bytes!("keys/rsa.pub.pem");

const EC_PEM: &[u8] = include_bytes!("keys/ec.pem");
const RSA_PEM: &[u8] = include_bytes!("keys/rsa.pem");

/// What signs a test token.
#[derive(Debug, Clone, Copy)]
pub enum SigningKey<'a> {
    /// HS256 with this secret.
    Hs256(&'a [u8]),
    /// ES256 with the EC test key (`ec-1` in [`JWKS`]).
    Es256,
    /// RS256 with the RSA test key (`rsa-1` in [`JWKS`]).
    Rs256,
}

/// Signs `claims` with `key`, the header naming `kid` when given.
pub fn sign(key: SigningKey<'_>, kid: Option<&str>, claims: &impl Serialize) -> String {
    let (alg, key) = match key {
        SigningKey::Hs256(secret) => (Algorithm::HS256, EncodingKey::from_secret(secret)),
        SigningKey::Es256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PEM).expect("the EC test key"),
        ),
        SigningKey::Rs256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PEM).expect("the RSA test key"),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("a signed test token")
}

/// An HS256 token, no `kid`.
pub fn hs256(secret: &[u8], claims: &impl Serialize) -> String {
    sign(SigningKey::Hs256(secret), None, claims)
}

/// An ES256 token from the EC test key, under this `kid`.
pub fn es256(kid: &str, claims: &impl Serialize) -> String {
    sign(SigningKey::Es256, Some(kid), claims)
}

/// An RS256 token from the RSA test key, under this `kid`.
pub fn rs256(kid: &str, claims: &impl Serialize) -> String {
    sign(SigningKey::Rs256, Some(kid), claims)
}

/// An unsigned token (`alg: none`, `header.payload.` with an empty signature), which every
/// verifier must refuse.
pub fn unsigned(claims: &impl Serialize) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims as JSON"));
    format!("{header}.{payload}.")
}

/// Valid claims: `sub` `user-1`, this `name`, `exp` in ten minutes; then each field of `extra`
/// (an object) set over them.
pub fn claims(name: &str, extra: Value) -> Value {
    let mut claims = json!({"sub": "user-1", "name": name, "exp": now_secs() + 600});
    for (k, v) in extra.as_object().expect("extra claims are an object") {
        claims[k] = v.clone();
    }
    claims
}
