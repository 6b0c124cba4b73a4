//! The SDK's configuration, with its HTTPS client: rustls on ring.
//!
//! The SDK's own default client (feature `default-https-client`, off here) is rustls on aws-lc-rs;
//! the functions' one other TLS user, reqwest (the authorizer's JWKS), is rustls on ring. Building
//! the SDK's client here on ring links one crypto library into each bootstrap instead of two:
//! docs/bench/LAMBDA.md has the sizes and init times of both choices. Every SDK configuration of
//! the project starts from [`defaults`] (the local binary, tests, examples) or [`for_lambda`]
//! (the functions): without the feature, the SDK has no client of its own.

use aws_config::{BehaviorVersion, ConfigLoader};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The HTTPS client of every SDK client: rustls with ring, the system's root certificates.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// `aws_config::defaults` (the environment's region, credentials and endpoints, as on Lambda)
/// with [`https_client`].
pub fn defaults() -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())
}

/// The configuration of a function on Lambda, from what Lambda puts in its environment: the
/// region (`AWS_REGION`), the function role's credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and the SDK's endpoint overrides
/// (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`).
///
/// Not [`defaults`]: aws-config's loader, with its chains of profile files, IMDS, ECS and web
/// identity (an STS client), that a function never uses: `aws_config`'s and `aws_sdk_sts`'s code
/// were 337 KB of the `message` bootstrap (x86_64 symbols, docs/bench/LAMBDA.md).
pub fn for_lambda(lookup: impl Fn(&str) -> Option<String>) -> aws_config::SdkConfig {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;

    let variable = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let region = variable("AWS_REGION").or_else(|| variable("AWS_DEFAULT_REGION"));
    let overrides: std::collections::HashMap<String, String> = ENDPOINT_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), variable(name)?)))
        .collect();
    let mut builder = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(https_client())
        .service_config(EndpointOverrides(overrides));
    // Lambda sets these once per execution environment, for its lifetime: read once, as
    // aws-config's environment provider would (it never expires them either). Without them
    // the SDK fails each request with "no credentials", which the function's log shows.
    if let (Some(key), Some(secret)) = (
        variable("AWS_ACCESS_KEY_ID"),
        variable("AWS_SECRET_ACCESS_KEY"),
    ) {
        let token = variable("AWS_SESSION_TOKEN");
        builder = builder.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            key,
            secret,
            token,
            None,
            "Lambda's environment",
        )));
    }
    if let Some(region) = region {
        builder = builder.region(aws_config::Region::new(region));
    }
    builder.build()
}

/// The endpoint variables [`for_lambda`] reads: one per service the functions call, then the
/// one for every service. (The SDK asks for `AWS_ENDPOINT_URL` with each service's id.)
const ENDPOINT_VARIABLES: [&str; 4] = [
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL",
];

/// The SDK's per-service settings, from [`ENDPOINT_VARIABLES`]: `AWS_ENDPOINT_URL_<SERVICE ID>`
/// (the id in capitals, spaces as `_`), else `AWS_ENDPOINT_URL`, as aws-config reads them.
#[derive(Debug)]
struct EndpointOverrides(std::collections::HashMap<String, String>);

impl aws_types::service_config::LoadServiceConfig for EndpointOverrides {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        let service = key.service_id().to_uppercase().replace([' ', '-'], "_");
        self.0
            .get(&format!("{}_{service}", key.env()))
            .or_else(|| self.0.get(key.env()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{EndpointOverrides, for_lambda};

    fn config(vars: &[(&str, &str)]) -> aws_config::SdkConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        for_lambda(|name| vars.get(name).cloned())
    }

    /// A DynamoDB stand-in that answers one `ListTables`: the request's head, as it came.
    async fn one_answer() -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answered = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 8192];
            let read = socket.read(&mut request).await.unwrap();
            let body = br#"{"TableNames":[]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(body).await.unwrap();
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        (url, answered)
    }

    #[tokio::test]
    async fn a_function_signs_with_lambdas_credentials_for_its_region_at_the_endpoint_set() {
        for endpoint_variable in ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"] {
            let (url, answered) = one_answer().await;
            let sdk = config(&[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_DEFAULT_REGION", "us-east-2"),
                ("AWS_ACCESS_KEY_ID", "AKIDLAMBDA"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_SESSION_TOKEN", "session"),
                (endpoint_variable, &url),
            ]);
            let tables = aws_sdk_dynamodb::Client::new(&sdk)
                .list_tables()
                .send()
                .await;
            assert!(tables.is_ok(), "{endpoint_variable}: {tables:?}");
            let request = answered.await.unwrap();
            assert!(
                request.contains("Credential=AKIDLAMBDA/")
                    && request.contains("/eu-west-1/dynamodb/"),
                "{endpoint_variable}: signed with Lambda's key for AWS_REGION: {request}"
            );
            assert!(
                request
                    .to_lowercase()
                    .contains("x-amz-security-token: session")
            );
        }
    }

    #[test]
    fn the_region_falls_back_and_an_endpoint_is_for_its_service() {
        let fallback = config(&[("AWS_DEFAULT_REGION", "us-east-2")]);
        assert_eq!(fallback.region().map(|r| r.as_ref()), Some("us-east-2"));
        assert!(config(&[]).credentials_provider().is_none());

        let overrides = EndpointOverrides(HashMap::from([
            (
                "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
                "http://127.0.0.1:5055".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_SQS".to_string(),
                "http://127.0.0.1:5056".to_string(),
            ),
        ]));
        let key = |service_id| {
            ServiceConfigKey::builder()
                .service_id(service_id)
                .profile("endpoint_url")
                .env("AWS_ENDPOINT_URL")
                .build()
                .unwrap()
        };
        assert_eq!(
            overrides.load_config(key("DynamoDB")).as_deref(),
            Some("http://127.0.0.1:5055")
        );
        assert_eq!(
            overrides.load_config(key("SQS")).as_deref(),
            Some("http://127.0.0.1:5056")
        );
        assert_eq!(overrides.load_config(key("ApiGatewayManagementApi")), None);
    }
}
