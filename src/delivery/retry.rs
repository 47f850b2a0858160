//! The retry decision: from an attempt's outcome to the delivery's next step. Pure.

use std::time::{Duration, SystemTime};

/// Longest wait a `Retry-After` can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt saw, reduced to what the retry decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status.
    Status(u16),
    /// No answer: timeout, connection refused or reset, an address the name resolved to that
    /// is forbidden.
    Failed,
    /// Not sent: the hook's URL breaks the target rules now in force (it was attached under
    /// looser settings). Trying again cannot help.
    Refused,
}

/// What to do with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx.
    Delivered,
    /// 410: remove the hook; it gets nothing more.
    Detach,
    /// Try again after this long.
    Retry(Duration),
    /// Non-retryable answer or schedule exhausted.
    DeadLetter,
}

/// What a 410 from a target means, by who answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Make: "there is no scenario listening for this webhook" — also while a scenario is being
    /// built or before it is saved, so the hook stays and the delivery is retried. Make removes
    /// its hooks itself, through detach.
    NotListening,
    /// Anyone else (the REST Hooks convention Zapier follows): the subscription is gone.
    Unsubscribed,
}

/// Decides after attempt number `attempt` (1-based) with `schedule` and an optional `Retry-After`;
/// `gone` says what a 410 means from this target.
///
/// The `n`th retry waits `schedule[n-1]`, or longer if the target asked for it (capped at
/// [`MAX_RETRY_AFTER`]); once the schedule is used up the delivery is dead-lettered.
pub fn decide(
    outcome: Outcome,
    attempt: u32,
    schedule: &[Duration],
    retry_after: Option<Duration>,
    gone: Gone,
) -> Decision {
    let retryable = match outcome {
        Outcome::Status(s) if (200..300).contains(&s) => return Decision::Delivered,
        Outcome::Status(410) if gone == Gone::Unsubscribed => return Decision::Detach,
        Outcome::Status(410) => true,
        Outcome::Status(s) => matches!(s, 408 | 425 | 429) || s >= 500,
        Outcome::Failed => true,
        Outcome::Refused => false,
    };
    if !retryable {
        return Decision::DeadLetter;
    }
    match schedule.get(attempt.saturating_sub(1) as usize) {
        Some(&wait) => Decision::Retry(wait.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))),
        None => Decision::DeadLetter,
    }
}

/// How much a retry's wait may grow: up to a tenth of it.
const SPREAD: f64 = 0.1;

/// Spreads the retries of deliveries that failed together (a Make outage ends, and every
/// waiting delivery would come back at the same instant): the wait grows by up to a tenth,
/// in proportion to `unit` (in `[0, 1)`, random per delivery). The schedule and `Retry-After`
/// stay the lower bound.
pub fn spread(wait: Duration, unit: f64) -> Duration {
    wait + wait.mul_f64(SPREAD * unit.clamp(0.0, 1.0))
}

/// Parses `Retry-After`: whole seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn retries_are_spread_by_up_to_a_tenth_and_never_come_early() {
        let wait = Duration::from_secs(30);
        assert_eq!(spread(wait, 0.0), wait);
        assert!(spread(wait, 0.999) < Duration::from_secs(33) && spread(wait, 0.999) > Duration::from_millis(32_900));
        assert_eq!(spread(wait, 7.0), Duration::from_secs(33), "a unit out of range is clamped");
        let spread_out: std::collections::BTreeSet<_> = (0..10).map(|n| spread(wait, f64::from(n) / 10.0)).collect();
        assert_eq!(spread_out.len(), 10, "different units, different instants");
    }

    const S: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(30)];

    #[test]
    fn success_and_gone() {
        assert_eq!(decide(Outcome::Status(200), 1, &S, None, Gone::Unsubscribed), Decision::Delivered);
        assert_eq!(decide(Outcome::Status(204), 9, &S, None, Gone::Unsubscribed), Decision::Delivered);
        assert_eq!(decide(Outcome::Status(410), 1, &S, None, Gone::Unsubscribed), Decision::Detach);
    }

    #[test]
    fn gone_from_make_is_retried_and_from_anyone_else_detaches() {
        assert_eq!(decide(Outcome::Status(410), 1, &S, None, Gone::NotListening), Decision::Retry(S[0]));
        assert_eq!(decide(Outcome::Status(410), 3, &S, None, Gone::NotListening), Decision::DeadLetter);
        assert_eq!(decide(Outcome::Status(410), 1, &S, None, Gone::Unsubscribed), Decision::Detach);
    }

    #[test]
    fn retryable_answers_follow_the_schedule_then_dead_letter() {
        for o in
            [Outcome::Status(500), Outcome::Status(429), Outcome::Status(408), Outcome::Status(425), Outcome::Failed]
        {
            assert_eq!(decide(o, 1, &S, None, Gone::Unsubscribed), Decision::Retry(S[0]));
            assert_eq!(decide(o, 2, &S, None, Gone::Unsubscribed), Decision::Retry(S[1]));
            assert_eq!(decide(o, 3, &S, None, Gone::Unsubscribed), Decision::DeadLetter);
        }
    }

    #[test]
    fn a_refused_url_is_a_dead_letter_at_once() {
        assert_eq!(decide(Outcome::Refused, 1, &S, None, Gone::Unsubscribed), Decision::DeadLetter);
    }

    #[test]
    fn other_4xx_and_redirects_dead_letter_at_once() {
        for s in [400, 401, 404, 301, 302, 100] {
            assert_eq!(decide(Outcome::Status(s), 1, &S, None, Gone::Unsubscribed), Decision::DeadLetter, "{s}");
        }
    }

    #[test]
    fn retry_after_only_lengthens_and_is_capped() {
        let long = Some(Duration::from_secs(60));
        assert_eq!(
            decide(Outcome::Status(429), 1, &S, long, Gone::Unsubscribed),
            Decision::Retry(Duration::from_secs(60))
        );
        assert_eq!(
            decide(Outcome::Status(429), 2, &S, Some(Duration::from_secs(1)), Gone::Unsubscribed),
            Decision::Retry(S[1])
        );
        let huge = Some(Duration::from_secs(86_400));
        assert_eq!(decide(Outcome::Status(503), 1, &S, huge, Gone::Unsubscribed), Decision::Retry(MAX_RETRY_AFTER));
    }

    #[test]
    fn parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(42)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    proptest! {
        #[test]
        fn retry_after_never_panics_and_is_capped(raw in ".{0,40}", secs in any::<u64>()) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            for value in [raw, secs.to_string()] {
                if let Some(wait) = parse_retry_after(&value, now) {
                    prop_assert!(wait <= MAX_RETRY_AFTER);
                }
            }
        }

        /// A retry never comes sooner than the schedule says, nor later than the cap allows.
        #[test]
        fn retries_wait_at_least_the_schedule(status in 100u16..600, attempt in 1u32..20, after in proptest::option::of(0u64..100_000)) {
            let after = after.map(Duration::from_secs);
            if let Decision::Retry(wait) = decide(Outcome::Status(status), attempt, &S, after, Gone::Unsubscribed) {
                let planned = S[attempt as usize - 1];
                prop_assert!(wait >= planned && wait <= planned.max(MAX_RETRY_AFTER));
            }
        }
    }
}
