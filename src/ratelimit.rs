//! Inbound limits built on `governor`: each connection's ingest rate (with the numbers the
//! `X-RateLimit-*` headers report) and the per-address limit on failed authentication.
//! Imports nothing from the crate.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Failed authentications one address may make in a burst before it is slowed.
pub const AUTH_FAILURE_BURST: u32 = 20;
/// After the burst, one more failed attempt is allowed every this long.
pub const AUTH_FAILURE_REFILL: Duration = Duration::from_secs(3);

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The one clock every limiter reads. Making a clock calibrates it with `cpuid`, which traps to
/// the hypervisor on a VM: one clock per connection's limiter was half of the relay's CPU at
/// start with 100,000 connections, and one per refused request slowed every 429.
fn shared_clock() -> DefaultClock {
    static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);
    CLOCK.clone()
}

/// What a rate check reports, for the `X-RateLimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    /// Whether this request may proceed.
    pub allowed: bool,
    /// The limit (events per second, also the burst).
    pub limit: u32,
    /// Requests left in the current burst.
    pub remaining: u32,
    /// Epoch seconds when the burst is full again.
    pub reset: u64,
    /// Whole seconds to wait before retrying (at least 1) when not allowed.
    pub retry_after: u64,
}

/// One connection's ingest limiter: `rate` events per second with a burst of `rate`.
#[derive(Debug)]
pub struct IngestLimiter {
    rate: u32,
    limiter: Direct,
}

impl IngestLimiter {
    /// A limiter for `rate` events per second (at least 1).
    pub fn new(rate: u32) -> Self {
        let rate = rate.max(1);
        let quota = Quota::per_second(NonZeroU32::new(rate).expect("rate is at least 1"));
        let limiter = RateLimiter::direct_with_clock(quota, shared_clock()).with_middleware();
        Self { rate, limiter }
    }

    /// The configured rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes one event's worth of capacity if there is any.
    pub fn check(&self) -> RateStatus {
        let now_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let per_cell = Duration::from_secs(1) / self.rate;
        match self.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = per_cell * (self.rate - remaining.min(self.rate));
                RateStatus {
                    allowed: true,
                    limit: self.rate,
                    remaining,
                    reset: (now_epoch + refill).as_secs_f64().ceil() as u64,
                    retry_after: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                RateStatus {
                    allowed: false,
                    limit: self.rate,
                    remaining: 0,
                    reset: (now_epoch + per_cell * self.rate).as_secs_f64().ceil() as u64,
                    retry_after,
                }
            }
        }
    }
}

/// Slows addresses that keep failing authentication (hook API and admin API).
///
/// Only failures count, so a busy client with a valid key is never slowed. An address over its
/// budget is refused before its credentials are even looked at, until the budget refills.
#[derive(Clone)]
pub struct AuthFailures {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Arc<DashMap<IpAddr, Instant>>,
}

impl Default for AuthFailures {
    fn default() -> Self {
        let quota = Quota::with_period(AUTH_FAILURE_REFILL)
            .expect("the refill period is not zero")
            .allow_burst(NonZeroU32::new(AUTH_FAILURE_BURST).expect("the burst is not zero"));
        let limiter = RateLimiter::new(quota, Default::default(), shared_clock());
        Self { limiter: Arc::new(limiter), blocked: Arc::new(DashMap::new()) }
    }
}

impl AuthFailures {
    /// If `ip` is currently slowed, how long until it may try again.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let until = *self.blocked.get(&ip)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        self.blocked.remove_if(&ip, |_, until| *until <= now);
        None
    }

    /// Counts a failed authentication from `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            self.blocked.insert(ip, Instant::now() + wait);
        }
    }

    /// Forgets addresses that have been quiet; run periodically so memory stays bounded.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_burst_is_the_rate_then_refused_with_retry_after() {
        let limiter = IngestLimiter::new(3);
        let first = limiter.check();
        assert!(first.allowed && first.limit == 3 && first.remaining == 2);
        assert!(limiter.check().allowed && limiter.check().allowed);
        let refused = limiter.check();
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.retry_after), (0, 1));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(refused.reset >= now && refused.reset <= now + 2);
    }

    #[test]
    fn auth_failures_block_after_the_burst_per_address() {
        let failures = AuthFailures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..AUTH_FAILURE_BURST {
            assert!(failures.blocked_for(a).is_none());
            failures.record_failure(a);
        }
        assert!(failures.blocked_for(a).is_none(), "the burst itself is allowed");
        failures.record_failure(a);
        assert!(failures.blocked_for(a).is_some());
        assert!(failures.blocked_for(b).is_none());
    }
}
