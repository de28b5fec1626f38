//! Inbound message rate per connection: a token bucket owned by the connection's task (no
//! shared state, nothing to clean up), and a count of refusals within a window.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateConfig;

/// Refusals are counted within this window: `max_violations` of them inside it close the
/// connection, however many allowed frames come between.
pub(crate) const VIOLATION_WINDOW_SECS: u32 = 10;

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Allowed,
    /// Answer `error` `rate_limited` (a control frame is dropped); the connection stays.
    Refused,
    /// `max_violations` refusals within `VIOLATION_WINDOW_SECS`: close with 4008.
    Exceeded,
}

pub(super) struct MessageRate {
    bucket: Option<DefaultDirectRateLimiter>,
    /// Refusals in the current window.
    violations: u32,
    /// When the current window started, in seconds on the manager's clock.
    window_start: u32,
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
            window_start: 0,
        }
    }

    /// Charges one inbound frame to the budget; `now_secs` is the manager's clock in seconds
    /// (for the violation window).
    pub(super) fn check(&mut self, config: &RateConfig, now_secs: u32) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Allowed;
        };
        if bucket.check().is_ok() {
            return Verdict::Allowed;
        }
        if now_secs.saturating_sub(self.window_start) >= VIOLATION_WINDOW_SECS {
            self.window_start = now_secs;
            self.violations = 0;
        }
        self.violations += 1;
        if config.max_violations > 0 && self.violations >= config.max_violations {
            Verdict::Exceeded
        } else {
            Verdict::Refused
        }
    }
}
