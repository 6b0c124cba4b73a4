//! The `$connect` REQUEST authorizer: what it allows and refuses, the key set it fetches from a
//! JWKS URL (over real HTTP, from a server on loopback) and caches, and its context reaching the
//! `connect` function.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chat_auth::testing::{self, JWKS};
use chat_auth::{AuthError, now_secs};
use chat_core::ChatConfig;
use chat_core::memory::{MemoryConnections, MemoryMessages};
use chat_lambda::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, Authorizer, AuthorizerConfig, Denied, Handlers,
};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "an authorizer test secret, long enough";
const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test";

/// The authorizer event API Gateway sends for a handshake, with this `token` (none: no query
/// string parameter at all).
fn authorizer_event(token: Option<&str>) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let path = format!(
        "{}/tests/fixtures/authorizer/request.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (map, value) in [
        ("queryStringParameters", json!(token)),
        ("multiValueQueryStringParameters", json!([token])),
    ] {
        match token {
            Some(_) => event[map]["token"] = value,
            None => {
                event[map].as_object_mut().unwrap().remove("token");
            }
        }
    }
    serde_json::from_value(event).expect("an authorizer event")
}

fn claims(extra: Value) -> Value {
    testing::claims("Ada Lovelace", extra)
}

fn hs256(claims: &Value, secret: &str) -> String {
    testing::hs256(secret.as_bytes(), claims)
}

fn es256(kid: &str, claims: &Value) -> String {
    testing::es256(kid, claims)
}

fn hs256_authorizer() -> Authorizer {
    Authorizer::from_config(&AuthorizerConfig {
        secret: Some(SECRET.into()),
        ..AuthorizerConfig::default()
    })
    .unwrap()
}

/// What the Lambda runtime would report for a refusal.
fn reported(denied: Denied) -> (String, String) {
    let diagnostic = lambda_runtime::Diagnostic::from(denied);
    (diagnostic.error_type, diagnostic.error_message)
}

#[tokio::test]
async fn a_valid_token_is_allowed_on_the_route_with_the_user_as_context() {
    let token = hs256(&claims(json!({})), SECRET);
    let response = hs256_authorizer()
        .authorize(&authorizer_event(Some(&token)))
        .await
        .unwrap();
    // The JSON API Gateway reads.
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(wire["principalId"], "user-1");
    assert_eq!(wire["policyDocument"]["Version"], "2012-10-17");
    let statements = wire["policyDocument"]["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(statements[0]["Action"], json!(["execute-api:Invoke"]));
    assert_eq!(
        statements[0]["Resource"],
        json!(["arn:aws:execute-api:us-east-1:123456789012:abc123defg/dev/$connect"])
    );
    assert_eq!(
        wire["context"],
        json!({"userId": "user-1", "name": "Ada Lovelace"})
    );
}

#[tokio::test]
async fn bad_tokens_are_unauthorized_which_api_gateway_answers_401() {
    let authorizer = hs256_authorizer();
    let expired = hs256(&claims(json!({"exp": now_secs() - 3600})), SECRET);
    let not_yet = hs256(&claims(json!({"nbf": now_secs() + 3600})), SECRET);
    let wrong_secret = hs256(&claims(json!({})), "another secret, just as long");
    let no_sub = hs256(&json!({"exp": now_secs() + 600}), SECRET);
    // `alg: none`, unsigned.
    let none = testing::unsigned(&claims(json!({})));
    for (what, token) in [
        ("no token", None),
        ("empty", Some("")),
        ("garbage", Some("not.a.jwt")),
        ("expired", Some(expired.as_str())),
        ("not yet valid", Some(not_yet.as_str())),
        ("wrong secret", Some(wrong_secret.as_str())),
        ("no sub", Some(no_sub.as_str())),
        ("alg none", Some(none.as_str())),
    ] {
        let denied = authorizer
            .authorize(&authorizer_event(token))
            .await
            .expect_err(what);
        assert!(matches!(denied, Denied::Unauthorized(_)), "{what}");
        assert_eq!(
            reported(denied),
            ("Unauthorized".into(), "Unauthorized".into()),
            "{what}"
        );
    }
}

/// A JWKS endpoint on loopback whose key set can be changed, counting its fetches.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(jwks: &str) -> Self {
        type Shared = (Arc<Mutex<(StatusCode, String)>>, Arc<AtomicUsize>);
        let body = Arc::new(Mutex::new((StatusCode::OK, jwks.to_owned())));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State((body, fetches)): State<Shared>| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    body.lock().unwrap().clone()
                }),
            )
            .with_state((body.clone(), fetches.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, body, fetches }
    }

    fn serve(&self, status: StatusCode, body: &str) {
        *self.body.lock().unwrap() = (status, body.to_owned());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn authorizer(&self, cache: Duration) -> Authorizer {
        Authorizer::from_config(&AuthorizerConfig {
            jwks_url: Some(self.url.clone()),
            issuer: Some(ISSUER.into()),
            jwks_cache: cache,
            ..AuthorizerConfig::default()
        })
        .unwrap()
    }
}

/// The test key set with its EC key also under another `kid` (a rotation).
fn jwks_with_ec_kid(kid: &str) -> String {
    let mut set: Value = serde_json::from_str(JWKS).unwrap();
    let mut rotated = set["keys"][0].clone();
    rotated["kid"] = json!(kid);
    set["keys"].as_array_mut().unwrap().push(rotated);
    set.to_string()
}

#[tokio::test]
async fn the_jwks_is_fetched_once_cached_and_refetched_for_a_rotated_key() {
    let server = JwksServer::start(JWKS).await;
    let authorizer = server.authorizer(Duration::from_secs(3600));
    let issued = claims(json!({"iss": ISSUER}));

    // Nothing is fetched before a handshake needs it; then once for many handshakes.
    assert_eq!(server.fetches(), 0);
    for _ in 0..3 {
        let identity = authorizer
            .verify(Some(&es256("ec-1", &issued)))
            .await
            .unwrap();
        assert_eq!(identity.user_id, "user-1");
    }
    assert_eq!(server.fetches(), 1);
    // The issuer is still checked on fetched keys.
    assert!(matches!(
        authorizer
            .verify(Some(&es256(
                "ec-1",
                &claims(json!({"iss": "https://evil"}))
            )))
            .await,
        Err(Denied::Unauthorized(_))
    ));

    // The issuer rotates its keys: a token under the new kid makes one refetch, and passes.
    server.serve(StatusCode::OK, &jwks_with_ec_kid("ec-2"));
    let identity = authorizer
        .verify(Some(&es256("ec-2", &issued)))
        .await
        .unwrap();
    assert_eq!(identity.user_id, "user-1");
    assert_eq!(server.fetches(), 2);

    // Junk kids right after cannot make every handshake a fetch.
    for kid in ["junk-1", "junk-2", "junk-3"] {
        let denied = authorizer
            .verify(Some(&es256(kid, &issued)))
            .await
            .unwrap_err();
        assert!(
            matches!(denied, Denied::Unauthorized(AuthError::UnknownKey(ref k)) if k == kid),
            "{denied:?}"
        );
    }
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn a_stale_key_set_is_fetched_again() {
    let server = JwksServer::start(JWKS).await;
    let authorizer = server.authorizer(Duration::ZERO);
    let token = es256("ec-1", &claims(json!({"iss": ISSUER})));
    authorizer.verify(Some(&token)).await.unwrap();
    authorizer.verify(Some(&token)).await.unwrap();
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn keys_that_cannot_be_had_are_a_server_error_not_a_401() {
    let server = JwksServer::start(JWKS).await;
    let token = es256("ec-1", &claims(json!({"iss": ISSUER})));
    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, "oops"),
        (StatusCode::OK, "<html>not a key set</html>"),
        (StatusCode::OK, r#"{"keys":[]}"#),
    ] {
        server.serve(status, body);
        let denied = server
            .authorizer(Duration::from_secs(3600))
            .verify(Some(&token))
            .await
            .unwrap_err();
        assert!(matches!(denied, Denied::KeysUnavailable(_)), "{body}");
        let (error_type, message) = reported(denied);
        assert_eq!(error_type, "KeysUnavailable");
        assert_ne!(message, "Unauthorized");
    }
    // Nothing listening at all.
    let unreachable = Authorizer::from_config(&AuthorizerConfig {
        jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
        jwks_cache: Duration::from_secs(3600),
        ..AuthorizerConfig::default()
    })
    .unwrap();
    assert!(matches!(
        unreachable.verify(Some(&token)).await,
        Err(Denied::KeysUnavailable(_))
    ));
    // Once the keys are back, the same authorizer recovers.
    server.serve(StatusCode::OK, JWKS);
    let authorizer = server.authorizer(Duration::from_secs(3600));
    server.serve(StatusCode::SERVICE_UNAVAILABLE, "down");
    assert!(authorizer.verify(Some(&token)).await.is_err());
    server.serve(StatusCode::OK, JWKS);
    assert_eq!(
        authorizer.verify(Some(&token)).await.unwrap().user_id,
        "user-1"
    );
}

/// API Gateway gives `connect` (and every later event of the connection) the authorizer's
/// context in `requestContext.authorizer`, with `principalId`: the user it names is who the
/// connection is, whatever its `name` parameter says.
#[tokio::test]
async fn the_authorizers_context_is_the_connections_user() {
    let recorder = Arc::new(Recorder::default());
    let handlers = Handlers::new(
        Arc::new(MemoryConnections::new()),
        Arc::new(MemoryMessages::new()),
        recorder.clone(),
        ChatConfig::default(),
    );
    let token = hs256(&claims(json!({})), SECRET);
    let allowed = hs256_authorizer()
        .authorize(&authorizer_event(Some(&token)))
        .await
        .unwrap();
    let mut connect = fixture("connect-authorized.json");
    let mut context = allowed.context.as_object().unwrap().clone();
    context.insert("principalId".into(), json!(allowed.principal_id));
    connect.request_context.authorizer.fields = context.into_iter().collect();
    assert_eq!(handlers.connect(connect).await.status_code, 200);
    // The recorded fixture (the same context, as API Gateway wrote it) gives the same user.
    assert_eq!(
        handlers
            .connect(fixture_from("connect-authorized.json", BOB))
            .await
            .status_code,
        200
    );

    let members = body(
        &handlers
            .message(frame_from(
                ADA,
                r#"{"action":"members","room":"lobby","requestId":"m"}"#,
            ))
            .await,
    );
    assert_eq!(
        members["members"],
        // One member: the same user on two connections, and the name parameter (mallory)
        // ignored.
        json!([{"name": "Ada Lovelace", "userId": "user-1"}]),
    );
}
