//! Time, read in one place: milliseconds since the Unix epoch, from the system clock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in milliseconds since the Unix epoch (tests replace it).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
