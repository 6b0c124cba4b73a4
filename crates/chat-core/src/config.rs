//! The limits of the chat, with the protocol's defaults.

use crate::rate_limit::RateLimit;

#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Rooms a connection can be in at once, `lobby` included.
    pub max_rooms_per_connection: usize,
    /// The allowance of `sendMessage`s per connection (edits and deletes count).
    pub rate_limit: RateLimit,
    /// The allowance of `react`s and `unreact`s per connection, apart from messages'.
    pub reaction_rate_limit: RateLimit,
    /// The most members a `members` or `joined` frame lists.
    pub max_members_listed: usize,
    /// Messages in `joined` without `since` (the latest).
    pub join_history: usize,
    /// Messages in `joined` with `since` (the first after it).
    pub recovery_history: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_rooms_per_connection: 50,
            rate_limit: RateLimit::default(),
            reaction_rate_limit: RateLimit {
                burst: 30,
                per_second: 10,
            },
            max_members_listed: 1000,
            join_history: 50,
            recovery_history: 100,
        }
    }
}
