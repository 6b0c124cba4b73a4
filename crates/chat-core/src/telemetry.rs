//! What the chat counts, through the `metrics` facade: nothing is recorded unless the process
//! installs a recorder (the local binary renders them at `GET /metrics`).

/// Messages stored (retries of a stored one not included).
pub const MESSAGES_STORED: &str = "chat_messages_stored_total";
/// Frames handed to the notifier for members of a room (events, not replies).
pub const DELIVERIES: &str = "chat_deliveries_total";
/// `error` replies, by `code`.
pub const ERRORS: &str = "chat_errors_total";
/// How long storing a message took, in seconds (the append, until it is durable).
pub const STORE_SECONDS: &str = "chat_message_store_seconds";
