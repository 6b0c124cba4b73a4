//! The `api` function: the server API behind an HTTP API with IAM authorization.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run_api().await
}
