//! Hook health: what a hook's answers mean for the hook as a whole, not only for the delivery
//! that got them.
//!
//! - **Pause.** A 429 or 503 with `Retry-After` pauses the hook until then; a run of failures
//!   (no answer, 5xx, 408, 425, Make's 410) pauses it for [`FIRST_PAUSE`], doubling with each
//!   failure of the run up to [`MAX_PAUSE`]. While paused, a delivery ready to go is handed back
//!   unsent (it uses up no attempt). After the pause one attempt, the *probe*, goes alone; only
//!   its success lets the rest flow. The pause stays stored (`paused_until`) until then, so it
//!   holds across restarts and, on PostgreSQL, every instance's claims respect it.
//! - **Adaptive pace.** Each 429 halves the hook's pace, down to [`MIN_PACE`]; each success
//!   adds a tenth of `RELAY_HOOK_RATE` back, up to it. This gate comes on top of the steady
//!   pacer that keeps every hook at `RELAY_HOOK_RATE`.
//! - **Fair share.** A hook is *proven* while its last answer was a success within [`SLOW`];
//!   any other hook — new to this instance, failing, slow, or with a request out for longer than
//!   [`SLOW`] — is *suspect*, and its requests draw on a share of half the request slots
//!   (`slots`). However many hooks hang, proven hooks keep the other half.
//! - **Auto-disable.** A failure `RELAY_DISABLE_AFTER` or more after the run's first disables
//!   the hook; a run's pause never reaches past that moment, so the verdict comes on time.
//!
//! What is kept here is this instance's knowledge, which is the whole truth where one instance
//! owns every hook (SQLite: loaded at start, every change goes through it) and the hook's
//! sender's knowledge on PostgreSQL (seeded from the stored streak a claim returns). Decisions
//! that must outlive the process or reach other instances go to the store with the attempt's
//! record (`Change::streak`).

use std::time::{Duration, Instant};

use dashmap::{DashMap, DashSet};

use super::retry::{Gone, Outcome};
use crate::model::{HookStatus, Streak};

/// The pause after a run's first pausing failure; it doubles with each further failure.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause a run of failures leads to.
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// The slowest adaptive pace: one request per 10 s.
const MIN_PACE: f64 = 0.1;
/// An answer slower than this makes its hook suspect (see the module).
pub(super) const SLOW: Duration = Duration::from_secs(2);
/// How old the stored last success may get before a success is stored again; in between, a
/// success costs no write.
const SUCCESS_REFRESH_MS: i64 = 60_000;
/// How long a hook with nothing to remember stays in memory after its last attempt.
const IDLE_FOR_MS: i64 = 600_000;

/// What one attempt's outcome says about its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// 2xx.
    Success,
    /// 429, with its `Retry-After` if it had one.
    RateLimited(Option<Duration>),
    /// No answer, 5xx, 408, 425, Make's 410: the hook is failing; a `Retry-After` is honoured.
    Failing(Option<Duration>),
    /// Another 4xx or a refused URL: a failure that says nothing about the hook's capacity; it
    /// counts toward the streak and auto-disable, and pauses nothing.
    Rejected,
}

impl Verdict {
    /// The verdict on an attempt's outcome; `gone` says what a 410 means from its target.
    pub(super) fn of(outcome: Outcome, retry_after: Option<Duration>, gone: Gone) -> Self {
        match outcome {
            Outcome::Status(s) if (200..300).contains(&s) => Self::Success,
            Outcome::Status(429) => Self::RateLimited(retry_after),
            Outcome::Status(410) if gone == Gone::NotListening => Self::Failing(None),
            Outcome::Status(s) if s >= 500 || s == 408 || s == 425 => Self::Failing(retry_after),
            Outcome::Failed => Self::Failing(None),
            Outcome::Status(_) | Outcome::Refused => Self::Rejected,
        }
    }
}

/// Whether a delivery ready to go may be sent now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Send it; `probe`: it is the one attempt after a pause.
    Send { probe: bool },
    /// Hand it back unsent, due at this time (ms).
    HandBack(i64),
}

/// What an outcome changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// The streak to store with the attempt's record, when it is worth a write.
    pub(super) streak: Option<Streak>,
    /// The hook's status changed to this.
    pub(super) became: Option<HookStatus>,
    /// The hook is to be disabled now.
    pub(super) disable: bool,
}

/// Every hook's health as this instance knows it.
pub(super) struct Health {
    hooks: DashMap<String, HookState>,
    /// Hooks paused or probing, so that a claim can pass them over without a pass over all.
    held: DashSet<String>,
    full_pace: f64,
    disable_after_ms: i64,
}

#[derive(Debug, Default)]
struct HookState {
    streak: Streak,
    /// The probe after a pause is under way.
    probe_out: bool,
    /// The adaptive pace (requests/s) while below the full one.
    pace: Option<f64>,
    /// While below the full pace: when the next request may go.
    next_send: Option<Instant>,
    /// The last success as last stored.
    stored_success_at: Option<i64>,
    /// The last answer was a success within [`SLOW`], and no request has been out longer since.
    proven: bool,
    /// The last attempt's outcome (ms), to forget idle hooks.
    touched: i64,
}

impl HookState {
    fn is_held(&self) -> bool {
        self.streak.paused_until.is_some()
    }
}

impl Health {
    /// Health for hooks paced at `full_pace` requests/s, disabled after failing `disable_after`.
    pub(super) fn new(full_pace: u32, disable_after: Duration) -> Self {
        Self {
            hooks: DashMap::new(),
            held: DashSet::new(),
            full_pace: f64::from(full_pace.max(1)),
            disable_after_ms: i64::try_from(disable_after.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Starts from a hook's stored streak, unless this instance knows the hook already (its own
    /// knowledge is as new as the store's or newer).
    pub(super) fn seed(&self, hook_id: &str, streak: Streak) {
        if streak == Streak::default() || self.hooks.contains_key(hook_id) {
            return;
        }
        let state = HookState { streak, stored_success_at: streak.last_success_at, ..HookState::default() };
        if state.is_held() {
            self.held.insert(hook_id.to_owned());
        }
        self.hooks.entry(hook_id.to_owned()).or_insert(state);
    }

    /// Forgets a hook: it was enabled (a clean record), disabled or detached.
    pub(super) fn forget(&self, hook_id: &str) {
        self.hooks.remove(hook_id);
        self.held.remove(hook_id);
    }

    /// The hook's streak as known here, if this instance knows more than the default.
    pub(super) fn streak(&self, hook_id: &str) -> Option<Streak> {
        self.hooks.get(hook_id).map(|s| s.streak)
    }

    /// How many of the hook's deliveries a claim at `now` (ms) may take: none while it is
    /// paused or its probe is out, one to probe it, else `per_hook`.
    pub(super) fn claim_limit(&self, hook_id: &str, now: i64, per_hook: usize) -> usize {
        let Some(s) = self.hooks.get(hook_id) else { return per_hook };
        match s.streak.paused_until {
            Some(until) if until > now => 0,
            Some(_) if s.probe_out => 0,
            Some(_) => 1,
            None => per_hook,
        }
    }

    /// The hooks a claim at `now` must pass over: paused, or probed right now.
    pub(super) fn held_back(&self, now: i64) -> Vec<String> {
        self.held.iter().map(|h| h.key().clone()).filter(|h| self.claim_limit(h, now, 1) == 0).collect()
    }

    /// Whether a new delivery of the hook may skip the claim queue: not while it is paused or
    /// probing (the claim queue gives the probe, then the rest, in order).
    pub(super) fn may_hand_off(&self, hook_id: &str) -> bool {
        !self.held.contains(hook_id)
    }

    /// Whether the hook's requests draw on the suspects' share of request slots.
    pub(super) fn is_suspect(&self, hook_id: &str) -> bool {
        self.hooks.get(hook_id).is_none_or(|s| !s.proven)
    }

    /// A request to the hook has been out for longer than [`SLOW`]: its next requests are
    /// suspect before this one's answer comes.
    pub(super) fn slow(&self, hook_id: &str) {
        if let Some(mut s) = self.hooks.get_mut(hook_id) {
            s.proven = false;
        }
    }

    /// Whether a delivery ready to go at `now` (ms) is sent, as the module says.
    pub(super) fn admit(&self, hook_id: &str, now: i64) -> Admission {
        // The common case, a hook that is not held back, takes no write lock.
        if !self.held.contains(hook_id) {
            return Admission::Send { probe: false };
        }
        let Some(mut s) = self.hooks.get_mut(hook_id) else { return Admission::Send { probe: false } };
        match s.streak.paused_until {
            Some(until) if until > now => Admission::HandBack(until),
            Some(_) if s.probe_out => Admission::HandBack(now),
            Some(_) => {
                s.probe_out = true;
                Admission::Send { probe: true }
            }
            None => Admission::Send { probe: false },
        }
    }

    /// The adaptive pace's turn: `None` if a request may go at `now` (and the next turn is
    /// taken), else when to ask again.
    pub(super) fn turn(&self, hook_id: &str, now: Instant) -> Option<Instant> {
        // The common case, a hook at full pace, takes no write lock.
        self.hooks.get(hook_id)?.pace?;
        let mut s = self.hooks.get_mut(hook_id)?;
        let pace = s.pace?;
        match s.next_send {
            Some(at) if at > now => Some(at),
            _ => {
                s.next_send = Some(now + Duration::from_secs_f64(1.0 / pace));
                None
            }
        }
    }

    /// The hook's pace (requests/s) as the adaptive gate has it.
    #[cfg(test)]
    fn pace(&self, hook_id: &str) -> f64 {
        self.hooks.get(hook_id).and_then(|s| s.pace).unwrap_or(self.full_pace)
    }

    /// Takes in an attempt's outcome at `now` (ms) after `took`; `probe`: it was the probe.
    pub(super) fn outcome(&self, hook_id: &str, verdict: Verdict, now: i64, took: Duration, probe: bool) -> Change {
        // A known hook costs no key allocation.
        let mut s = match self.hooks.get_mut(hook_id) {
            Some(known) => known,
            None => self.hooks.entry(hook_id.to_owned()).or_default(),
        };
        s.touched = now;
        if probe {
            s.probe_out = false;
        }
        let before = s.streak;
        let mut change = Change::default();
        s.proven = verdict == Verdict::Success && took <= SLOW;
        if verdict == Verdict::Success {
            s.pace = s.pace.map(|p| p + self.full_pace / 10.0).filter(|p| *p < self.full_pace);
            if s.pace.is_none() {
                s.next_send = None;
            }
            s.streak = Streak { last_success_at: Some(now), ..Streak::default() };
            let refresh = s.stored_success_at.is_none_or(|at| now - at >= SUCCESS_REFRESH_MS);
            if before.failures > 0 || before.paused_until.is_some() || refresh {
                s.stored_success_at = Some(now);
                change.streak = Some(s.streak);
            }
            if before.paused_until.is_some() {
                change.became = Some(HookStatus::Active);
            }
            drop(s);
            if before.paused_until.is_some() {
                self.held.remove(hook_id);
            }
            return change;
        }
        s.streak.failures = s.streak.failures.saturating_add(1);
        let since = *s.streak.failing_since.get_or_insert(now);
        let deadline = since.saturating_add(self.disable_after_ms);
        if now >= deadline {
            drop(s);
            self.forget(hook_id);
            return Change { disable: true, became: Some(HookStatus::Disabled), ..Change::default() };
        }
        let pause = match verdict {
            Verdict::RateLimited(retry_after) => {
                let pace = (s.pace.unwrap_or(self.full_pace) / 2.0).max(MIN_PACE);
                s.pace = Some(pace);
                s.next_send = Some(Instant::now() + Duration::from_secs_f64(1.0 / pace));
                retry_after
            }
            Verdict::Failing(retry_after) => Some(run_pause(s.streak.failures).max(retry_after.unwrap_or_default())),
            Verdict::Rejected | Verdict::Success => None,
        };
        if let Some(pause) = pause {
            let until = now.saturating_add(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX)).min(deadline);
            s.streak.paused_until = Some(s.streak.paused_until.map_or(until, |known| known.max(until)));
            if before.paused_until.is_none_or(|known| known <= now) {
                change.became = Some(HookStatus::Paused);
            }
        }
        let held = s.is_held();
        change.streak = Some(s.streak);
        drop(s);
        if held {
            self.held.insert(hook_id.to_owned());
        }
        change
    }

    /// Forgets hooks with nothing to remember whose last attempt was before `now - IDLE_FOR`.
    pub(super) fn forget_idle(&self, now: i64) {
        self.hooks
            .retain(|_, s| s.is_held() || s.streak.failures > 0 || s.pace.is_some() || now - s.touched < IDLE_FOR_MS);
    }
}

/// The pause after the `failures`th failure of a run.
fn run_pause(failures: u32) -> Duration {
    FIRST_PAUSE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const QUICK: Duration = Duration::from_millis(50);

    #[test]
    fn verdicts_follow_the_contract() {
        let ra = Some(Duration::from_secs(2));
        assert_eq!(Verdict::of(Outcome::Status(204), None, Gone::Unsubscribed), Verdict::Success);
        assert_eq!(Verdict::of(Outcome::Status(429), ra, Gone::Unsubscribed), Verdict::RateLimited(ra));
        assert_eq!(Verdict::of(Outcome::Status(503), ra, Gone::Unsubscribed), Verdict::Failing(ra));
        assert_eq!(Verdict::of(Outcome::Failed, None, Gone::Unsubscribed), Verdict::Failing(None));
        assert_eq!(Verdict::of(Outcome::Status(410), None, Gone::NotListening), Verdict::Failing(None));
        assert_eq!(Verdict::of(Outcome::Status(400), None, Gone::NotListening), Verdict::Rejected);
        assert_eq!(Verdict::of(Outcome::Refused, None, Gone::NotListening), Verdict::Rejected);
    }

    #[test]
    fn a_run_of_failures_pauses_for_longer_each_time_then_one_probe_goes_first() {
        let health = Health::new(5, DAY);
        let change = health.outcome("h", Verdict::Failing(None), 1_000, QUICK, false);
        assert_eq!(change.became, Some(HookStatus::Paused));
        assert_eq!(change.streak.unwrap().paused_until, Some(2_000));
        assert!(health.is_suspect("h") && !health.may_hand_off("h"));
        assert_eq!(health.admit("h", 1_500), Admission::HandBack(2_000), "nothing goes while paused");
        assert_eq!(health.claim_limit("h", 1_500, 5), 0);
        assert_eq!(health.held_back(1_500), ["h"]);
        assert_eq!(health.claim_limit("h", 2_000, 5), 1, "the pause is over: one probe");
        assert_eq!(health.admit("h", 2_000), Admission::Send { probe: true });
        assert_eq!(health.admit("h", 2_000), Admission::HandBack(2_000), "one probe at a time");
        assert_eq!(health.claim_limit("h", 2_000, 5), 0);
        let change = health.outcome("h", Verdict::Failing(None), 2_100, QUICK, true);
        assert_eq!(change.streak.unwrap().paused_until, Some(4_100), "the second failure pauses for 2 s");
        assert_eq!(change.streak.unwrap().failures, 2);
        assert_eq!(health.admit("h", 4_100), Admission::Send { probe: true });
        let change = health.outcome("h", Verdict::Success, 4_200, QUICK, true);
        assert_eq!(change.became, Some(HookStatus::Active));
        assert_eq!(change.streak, Some(Streak { last_success_at: Some(4_200), ..Streak::default() }));
        assert_eq!(health.claim_limit("h", 4_200, 5), 5, "the probe's success lets the rest flow");
        assert!(health.may_hand_off("h") && !health.is_suspect("h") && health.held_back(4_200).is_empty());
        health.slow("h");
        assert!(health.is_suspect("h"), "a request out for long makes it suspect before its answer");
        assert!(health.is_suspect("new"), "so is a hook this instance has not seen answer yet");
        assert_eq!(run_pause(40), MAX_PAUSE);
    }

    #[test]
    fn retry_after_sets_the_pause_and_429s_halve_the_pace_which_successes_restore() {
        let health = Health::new(4, DAY);
        let change = health.outcome("h", Verdict::RateLimited(Some(Duration::from_secs(2))), 0, QUICK, false);
        assert_eq!(change.streak.unwrap().paused_until, Some(2_000));
        assert_eq!(health.pace("h"), 2.0);
        let change = health.outcome("h", Verdict::RateLimited(None), 10, QUICK, false);
        assert_eq!(change.streak.unwrap().paused_until, Some(2_000), "a 429 without Retry-After pauses nothing");
        assert_eq!(health.pace("h"), 1.0);
        for _ in 0..10 {
            health.outcome("x", Verdict::RateLimited(None), 0, QUICK, false);
        }
        assert_eq!(health.pace("x"), MIN_PACE, "one request per 10 s at the slowest");
        health.outcome("h", Verdict::Success, 2_500, QUICK, true);
        assert!((health.pace("h") - 1.4).abs() < 1e-9, "a success adds a tenth of the full pace");
        for _ in 0..10 {
            health.outcome("h", Verdict::Success, 3_000, QUICK, false);
        }
        assert_eq!(health.pace("h"), 4.0, "back to the full pace, no further");
        assert_eq!(health.turn("h", Instant::now()), None, "the full pace is the steady pacer's alone");
    }

    #[test]
    fn the_adaptive_gate_spaces_requests_by_the_pace() {
        let health = Health::new(5, DAY);
        health.outcome("h", Verdict::RateLimited(None), 0, QUICK, false);
        let now = Instant::now();
        let next = health.turn("h", now).expect("a 429 just came: wait");
        assert!(next > now && next <= now + Duration::from_millis(401));
        assert_eq!(health.turn("h", next), None, "its turn");
        assert_eq!(health.turn("h", next), Some(next + Duration::from_millis(400)), "then 1/2.5 s later");
    }

    #[test]
    fn a_hook_failing_for_the_whole_window_is_disabled_and_its_pauses_do_not_overshoot() {
        let health = Health::new(5, Duration::from_secs(3));
        health.outcome("h", Verdict::Failing(None), 0, QUICK, false);
        health.outcome("h", Verdict::Failing(None), 1_000, QUICK, true);
        let change = health.outcome("h", Verdict::Failing(None), 2_500, QUICK, true);
        assert_eq!(change.streak.unwrap().paused_until, Some(3_000), "the pause ends when the window does");
        let change = health.outcome("h", Verdict::Rejected, 3_000, QUICK, true);
        assert!(change.disable && change.became == Some(HookStatus::Disabled));
        assert_eq!(health.streak("h"), None, "a disabled hook is forgotten");
    }

    #[test]
    fn successes_are_stored_when_they_end_a_run_or_the_stored_one_is_old() {
        let health = Health::new(5, DAY);
        assert!(health.outcome("h", Verdict::Success, 0, QUICK, false).streak.is_some(), "first success");
        assert!(health.outcome("h", Verdict::Success, 1_000, QUICK, false).streak.is_none(), "nothing new");
        assert!(health.outcome("h", Verdict::Success, SUCCESS_REFRESH_MS, QUICK, false).streak.is_some());
        health.outcome("h", Verdict::Rejected, SUCCESS_REFRESH_MS + 1, QUICK, false);
        assert!(health.may_hand_off("h"), "a rejection pauses nothing");
        assert!(health.outcome("h", Verdict::Success, SUCCESS_REFRESH_MS + 2, QUICK, false).streak.is_some());
        assert!(health.outcome("s", Verdict::Success, 0, SLOW * 2, false).streak.is_some());
        assert!(health.is_suspect("s"), "a slow hook is suspect");
    }

    #[test]
    fn seeds_are_taken_only_for_hooks_not_known_here() {
        let health = Health::new(5, DAY);
        let paused = Streak { failures: 3, failing_since: Some(0), paused_until: Some(9_000), last_success_at: None };
        health.seed("h", paused);
        assert_eq!(health.claim_limit("h", 1_000, 5), 0);
        health.seed("h", Streak::default());
        assert_eq!(health.streak("h"), Some(paused), "what is known here is not overwritten");
        health.seed("clean", Streak::default());
        assert_eq!(health.streak("clean"), None, "a clean record needs no entry");
        health.forget_idle(IDLE_FOR_MS * 2);
        assert_eq!(health.streak("h"), Some(paused), "a paused hook is not forgotten");
    }
}
