//! Inbound message rate per connection: a token bucket owned by the reader (no shared state,
//! nothing to clean up), and a count of refusals in a row.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateConfig;

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Allowed,
    /// Answer `error` `rate_limited`; the connection stays.
    Refused,
    /// `max_violations` refusals in a row: close with 4008.
    Exceeded,
}

pub(super) struct MessageRate {
    bucket: Option<DefaultDirectRateLimiter>,
    violations: u32,
    max_violations: u32,
}

impl MessageRate {
    pub(super) fn new(config: &RateConfig) -> Self {
        let bucket = NonZeroU32::new(config.messages_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            bucket,
            violations: 0,
            max_violations: config.max_violations,
        }
    }

    pub(super) fn check(&mut self) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Allowed;
        };
        if bucket.check().is_ok() {
            self.violations = 0;
            return Verdict::Allowed;
        }
        self.violations += 1;
        if self.max_violations > 0 && self.violations >= self.max_violations {
            Verdict::Exceeded
        } else {
            Verdict::Refused
        }
    }
}
