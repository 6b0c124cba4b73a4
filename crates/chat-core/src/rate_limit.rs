//! The token bucket behind `rate_limited`: a burst, then a steady rate.
//!
//! The state is two numbers, so that a store can keep it next to the connection (in memory
//! locally, in the connection's DynamoDB item on AWS) and update it with a compare-and-set.

use serde::{Deserialize, Serialize};

/// How many messages a connection may send: `burst` at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

impl RateLimit {
    /// The protocol's default `sendMessage` allowance: a burst of 20, then 10 a second.
    pub const DEFAULT: Self = Self {
        burst: 20,
        per_second: 10,
    };
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A connection's allowance. Tokens are kept in thousandths so that the state is integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub milli_tokens: u64,
    pub updated_ms: u64,
}

impl TokenBucket {
    pub fn full(limit: RateLimit, now_ms: u64) -> Self {
        Self {
            milli_tokens: u64::from(limit.burst) * 1000,
            updated_ms: now_ms,
        }
    }

    /// Refills for the time passed, then takes one token if there is one.
    pub fn try_take(&mut self, limit: RateLimit, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let cap = u64::from(limit.burst) * 1000;
        let refill = elapsed.saturating_mul(u64::from(limit.per_second));
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(cap);
        self.updated_ms = self.updated_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses() {
        let limit = RateLimit::default();
        let mut bucket = TokenBucket::full(limit, 0);
        assert!((0..20).all(|_| bucket.try_take(limit, 0)));
        assert!(!bucket.try_take(limit, 0));
    }

    #[test]
    fn the_bucket_refills_at_the_steady_rate() {
        let limit = RateLimit::default();
        let mut bucket = TokenBucket::full(limit, 0);
        while bucket.try_take(limit, 0) {}
        assert!(!bucket.try_take(limit, 99), "0.99 of a token after 99 ms");
        assert!(bucket.try_take(limit, 100), "one token after 100 ms");
        assert!(!bucket.try_take(limit, 100));
        // A long pause refills only up to the burst.
        let taken = (0..100).filter(|_| bucket.try_take(limit, 60_000)).count();
        assert_eq!(taken, 20);
    }

    #[test]
    fn a_clock_that_goes_back_does_not_refill_or_panic() {
        let limit = RateLimit::default();
        let mut bucket = TokenBucket::full(limit, 10_000);
        while bucket.try_take(limit, 10_000) {}
        assert!(!bucket.try_take(limit, 0));
    }
}
