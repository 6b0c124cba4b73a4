//! The `disconnect` function. `$disconnect`: removes the connection and tells its rooms.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run(chat_lambda::Route::Disconnect).await
}
