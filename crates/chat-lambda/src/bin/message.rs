//! The `message` function. Every other route (`sendMessage`, `joinRoom`, ..., `$default`): one chat action per frame.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run(chat_lambda::Route::Message).await
}
