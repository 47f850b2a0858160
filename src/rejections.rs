//! What a connection's rejected ingest requests were, so that its owner can see why Stencil's
//! webhooks do not arrive (a wrong secret, a missing header, the wrong `ingest_auth`) without
//! the relay ever keeping what the requests carried. In memory, per instance, since it started.
//! Imports `signature` only.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::signature::Rejection;

/// How many of the latest rejections are kept with their time.
pub const RECENT: usize = 20;

/// A connection's rejected ingests; shared by the connection's registry entries.
#[derive(Debug, Default)]
pub struct Rejections {
    log: Mutex<Log>,
}

#[derive(Debug, Default, Clone)]
struct Log {
    by_reason: [u64; Rejection::ALL.len()],
    recent: VecDeque<(i64, Rejection)>,
}

/// A copy of the log, for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rejections since the instance started, by reason (every reason, in [`Rejection::ALL`]'s order).
    pub by_reason: Vec<(Rejection, u64)>,
    /// The latest [`RECENT`] rejections, newest first: when (ms) and why.
    pub recent: Vec<(i64, Rejection)>,
}

impl Summary {
    /// Rejections since the instance started.
    pub fn total(&self) -> u64 {
        self.by_reason.iter().map(|(_, n)| n).sum()
    }
}

impl Rejections {
    /// Counts one rejection at `at` (ms).
    pub fn record(&self, reason: Rejection, at: i64) {
        let mut log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.by_reason[index(reason)] += 1;
        if log.recent.len() == RECENT {
            log.recent.pop_back();
        }
        log.recent.push_front((at, reason));
    }

    /// What has been counted so far.
    pub fn summary(&self) -> Summary {
        let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Summary {
            by_reason: Rejection::ALL.into_iter().zip(log.by_reason).collect(),
            recent: log.recent.into_iter().collect(),
        }
    }
}

fn index(reason: Rejection) -> usize {
    Rejection::ALL.iter().position(|r| *r == reason).expect("every reason is in ALL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_reason_and_keeps_the_latest_newest_first() {
        let log = Rejections::default();
        for at in 0..30 {
            let reason = if at % 3 == 0 { Rejection::InvalidToken } else { Rejection::MissingCredentials };
            log.record(reason, at);
        }
        let summary = log.summary();
        assert_eq!(summary.total(), 30);
        assert!(summary.by_reason.contains(&(Rejection::InvalidToken, 10)));
        assert!(summary.by_reason.contains(&(Rejection::MissingCredentials, 20)));
        assert!(summary.by_reason.contains(&(Rejection::InvalidSignature, 0)));
        assert_eq!(summary.recent.len(), RECENT);
        assert_eq!(summary.recent[0], (29, Rejection::MissingCredentials));
        assert_eq!(summary.recent[RECENT - 1].0, 10);
    }
}
