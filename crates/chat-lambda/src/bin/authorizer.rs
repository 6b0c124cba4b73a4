//! The `authorizer` function: the REQUEST authorizer of `$connect` (checks the `token`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run_authorizer().await
}
