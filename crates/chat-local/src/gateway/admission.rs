//! Who may open a connection: a per-IP connection rate, so that one address cannot take the
//! whole connection limit (or the `$connect` work behind it) in a burst.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use chat_core::rate_limit::{RateLimit, TokenBucket};

/// How many addresses are remembered before idle ones are forgotten.
const SWEEP_AT: usize = 10_000;

pub struct Admission {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl Admission {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one handshake from the address's allowance; false when it is used up.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= SWEEP_AT {
            // A bucket that has refilled completely carries no information: forget it, so that
            // many addresses cannot grow this map without bound.
            let limit = self.limit;
            buckets.retain(|_, bucket| {
                let mut probe = *bucket;
                probe.try_take(limit, now_ms);
                probe.milli_tokens + 1000 < u64::from(limit.burst) * 1000
            });
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(self.limit, now_ms))
            .try_take(self.limit, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_allowance() {
        let admission = Admission::new(RateLimit {
            burst: 2,
            per_second: 1,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(admission.admit(a, 0));
        assert!(admission.admit(a, 0));
        assert!(!admission.admit(a, 0));
        assert!(admission.admit(b, 0));
        assert!(admission.admit(a, 1000), "refilled after a second");
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let admission = Admission::new(RateLimit {
            burst: 1,
            per_second: 1,
        });
        for i in 0..SWEEP_AT as u32 {
            admission.admit(IpAddr::from(i.to_be_bytes()), 0);
        }
        admission.admit("10.0.0.1".parse().unwrap(), 60_000);
        assert!(admission.buckets.lock().unwrap().len() < 10);
    }
}
