//! The `fanout` function: a large room's events, from the SQS FIFO queue, one shard per message.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chat_lambda::run_fanout().await
}
