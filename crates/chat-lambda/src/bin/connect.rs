//! The `connect` function. `$connect`: stores the connection in `lobby`, or refuses the handshake.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run(chat_lambda::Route::Connect).await
}
