//! Token verification: what is accepted, and every way a token is refused.

use chat_auth::testing::{self, JWKS, RSA_PUBLIC_PEM, SigningKey};
use chat_auth::{AuthError, Identity, MintClaims, Verifier, mint_hs256, now_secs};
use serde_json::{Value, json};

const SECRET: &[u8] = b"a test secret of enough length!!";

fn claims(extra: Value) -> Value {
    testing::claims("Ada", extra)
}

fn hs(claims: &Value) -> String {
    testing::hs256(SECRET, claims)
}

fn es(kid: &str, claims: &Value) -> String {
    testing::es256(kid, claims)
}

fn rs(kid: &str, claims: &Value) -> String {
    testing::rs256(kid, claims)
}

fn refused(result: Result<Identity, AuthError>) -> String {
    match result {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[test]
fn a_valid_hs256_token_gives_the_subject_and_name() {
    let verifier = Verifier::hs256(SECRET);
    let identity = verifier.verify(Some(&hs(&claims(json!({}))))).unwrap();
    assert_eq!(
        identity,
        Identity {
            user_id: "user-1".into(),
            name: Some("Ada".into()),
            rooms: Vec::new(),
        }
    );
    let nameless = verifier
        .verify(Some(&hs(&json!({"sub":"u2","exp":now_secs()+60}))))
        .unwrap();
    assert_eq!(nameless.name, None);
}

#[test]
fn a_missing_or_empty_token_is_missing() {
    let verifier = Verifier::hs256(SECRET);
    assert_eq!(verifier.verify(None), Err(AuthError::Missing));
    assert_eq!(verifier.verify(Some("")), Err(AuthError::Missing));
}

#[test]
fn expired_not_yet_valid_and_exp_less_tokens_are_refused() {
    let verifier = Verifier::hs256(SECRET);
    refused(verifier.verify(Some(&hs(&claims(json!({"exp": now_secs() - 120}))))));
    refused(verifier.verify(Some(&hs(&claims(json!({"nbf": now_secs() + 3600}))))));
    refused(verifier.verify(Some(&hs(&json!({"sub":"u"})))));
    refused(verifier.verify(Some(&hs(&json!({"exp": now_secs() + 60})))));
    refused(verifier.verify(Some(&hs(&claims(json!({"sub": ""}))))));
}

#[test]
fn a_token_signed_with_another_secret_is_refused() {
    let other = testing::hs256(b"another secret", &claims(json!({})));
    refused(Verifier::hs256(SECRET).verify(Some(&other)));
}

#[test]
fn alg_none_is_refused() {
    let unsigned = testing::unsigned(&claims(json!({})));
    let without_dot = unsigned.strip_suffix('.').unwrap().to_owned();
    for token in [unsigned, without_dot] {
        refused(Verifier::hs256(SECRET).verify(Some(&token)));
        refused(Verifier::from_jwks_json(JWKS).unwrap().verify(Some(&token)));
    }
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let verifier = Verifier::hs256(SECRET)
        .with_issuer(Some("https://issuer.example".into()))
        .with_audience(Some("chat".into()));
    let good = claims(json!({"iss":"https://issuer.example","aud":"chat"}));
    assert!(verifier.verify(Some(&hs(&good))).is_ok());
    refused(verifier.verify(Some(&hs(&claims(
        json!({"iss":"https://evil.example","aud":"chat"}),
    )))));
    refused(verifier.verify(Some(&hs(&claims(
        json!({"iss":"https://issuer.example","aud":"other"}),
    )))));
    refused(verifier.verify(Some(&hs(&claims(json!({"aud":"chat"}))))));
    refused(verifier.verify(Some(&hs(&claims(json!({"iss":"https://issuer.example"}))))));
    // Without configuration, any issuer and audience are fine.
    assert!(
        Verifier::hs256(SECRET)
            .verify(Some(&hs(&claims(json!({"aud":"x","iss":"y"})))))
            .is_ok()
    );
}

#[test]
fn es256_and_rs256_tokens_verify_against_the_jwks_by_kid() {
    let verifier = Verifier::from_jwks_json(JWKS).unwrap();
    assert_eq!(
        verifier
            .verify(Some(&es("ec-1", &claims(json!({})))))
            .unwrap()
            .user_id,
        "user-1"
    );
    assert_eq!(
        verifier
            .verify(Some(&rs("rsa-1", &claims(json!({})))))
            .unwrap()
            .user_id,
        "user-1"
    );
    // An unknown kid has its own error: a fetched key set may be stale and worth refetching.
    assert_eq!(
        verifier.verify(Some(&es("unknown", &claims(json!({}))))),
        Err(AuthError::UnknownKey("unknown".into()))
    );
    // The right signature under the wrong key's kid.
    refused(verifier.verify(Some(&es("rsa-1", &claims(json!({}))))));
    refused(verifier.verify(Some(&rs("ec-1", &claims(json!({}))))));
}

#[test]
fn algorithm_confusion_is_refused() {
    // HS256 signed with the RSA public key as the "secret": the classic confusion attack.
    let forged = testing::sign(
        SigningKey::Hs256(RSA_PUBLIC_PEM),
        Some("rsa-1"),
        &claims(json!({})),
    );
    refused(
        Verifier::from_jwks_json(JWKS)
            .unwrap()
            .verify(Some(&forged)),
    );
    // An RS256 token is not accepted by an HS256 verifier either.
    refused(Verifier::hs256(SECRET).verify(Some(&rs("rsa-1", &claims(json!({}))))));
}

#[test]
fn garbage_never_panics() {
    let verifier = Verifier::from_jwks_json(JWKS).unwrap();
    let hs = Verifier::hs256(SECRET);
    for token in [
        "x",
        "a.b.c",
        "..",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "\u{0}",
        &"A".repeat(100_000),
        "eyJ.eyJ.eyJ",
    ] {
        assert!(verifier.verify(Some(token)).is_err());
        assert!(hs.verify(Some(token)).is_err());
    }
}

#[test]
fn a_jwks_without_keys_or_unreadable_is_a_configuration_error() {
    assert!(Verifier::from_jwks_json(r#"{"keys":[]}"#).is_err());
    assert!(Verifier::from_jwks_json("not json").is_err());
}

#[test]
fn minted_tokens_verify() {
    let token = mint_hs256(
        SECRET,
        &MintClaims {
            sub: "u-9".into(),
            name: Some("Grace".into()),
            exp: now_secs() + 60,
            iat: now_secs(),
            iss: None,
            aud: None,
            rooms: vec!["private.team-1.*".into()],
        },
    )
    .unwrap();
    let identity = Verifier::hs256(SECRET).verify(Some(&token)).unwrap();
    assert_eq!(
        identity,
        Identity {
            user_id: "u-9".into(),
            name: Some("Grace".into()),
            rooms: vec!["private.team-1.*".into()],
        }
    );
}

#[test]
fn the_rooms_claim_is_a_list_of_strings_or_the_token_is_invalid() {
    let verifier = Verifier::hs256(SECRET);
    let granted = verifier
        .verify(Some(&hs(&claims(
            json!({"rooms": ["private.a", "private.team-*"]}),
        ))))
        .unwrap();
    assert_eq!(granted.rooms, ["private.a", "private.team-*"]);
    for bad in [json!("private.a"), json!([1]), json!({"private.a": true})] {
        let refused = verifier.verify(Some(&hs(&claims(json!({ "rooms": bad.clone() })))));
        assert!(
            matches!(refused, Err(chat_auth::AuthError::Invalid(_))),
            "{bad}: {refused:?}"
        );
    }
}
