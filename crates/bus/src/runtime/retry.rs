//! Retry with exponential backoff and jitter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::handler::{Failure, FailureKind};

/// Which failures the retry middleware tries again.
pub type RetryPredicate = Arc<dyn Fn(&RetryableError<'_>) -> bool + Send + Sync>;

/// A failed attempt, as shown to a [`Retry::retry_if`] predicate.
#[derive(Debug)]
pub struct RetryableError<'a> {
    /// The error's message.
    pub message: &'a str,
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// True when the handler panicked.
    pub panicked: bool,
}

/// Retry with exponential backoff and jitter.
///
/// Attempt *n* (from 1) that fails waits
/// `min(max_interval, initial_interval × multiplier^(n-1))`, scaled by a random
/// factor in `[1 − jitter, 1 + jitter]`, then tries again, up to
/// `max_attempts` attempts in all. Retries happen in place: later events of
/// the same partition wait (ordering is kept) — which is why the default
/// budget is small. When the attempts are used up the delivery is
/// dead-lettered.
///
/// Never retried, whatever the predicate says: payloads that do not decode,
/// and [`HandlerError::permanent`](crate::HandlerError::permanent) errors.
/// On shutdown a pending retry is abandoned and the delivery given back to
/// the bus, to be handled again after restart.
///
/// Built from [`Retry::default`] (or [`Retry::none`]) with a setter per
/// field: `Retry::default().max_attempts(3).initial_interval(ms(50))`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Retry {
    /// Attempts in all, including the first. Default 5. 1 disables retries.
    pub max_attempts: u32,
    /// Wait after the first failure. Default 100 ms.
    pub initial_interval: Duration,
    /// Longest wait. Default 10 s.
    pub max_interval: Duration,
    /// Growth of the wait per attempt. Default 2.0.
    pub multiplier: f64,
    /// Random spread of each wait, as a fraction. Default 0.5 (±50 %).
    pub jitter: f64,
    /// Which failures to retry; `None` (the default) retries every error and panic.
    pub retry_if: Option<RetryPredicate>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 5,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            retry_if: None,
        }
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("initial_interval", &self.initial_interval)
            .field("max_interval", &self.max_interval)
            .field("multiplier", &self.multiplier)
            .field("jitter", &self.jitter)
            .field("retry_if", &self.retry_if.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Retry {
    /// No retries: the first failure dead-letters.
    pub fn none() -> Self {
        Retry {
            max_attempts: 1,
            ..Retry::default()
        }
    }

    /// Sets the number of attempts in all, including the first (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the wait after the first failure.
    pub fn initial_interval(mut self, wait: Duration) -> Self {
        self.initial_interval = wait;
        self
    }

    /// Sets the longest wait.
    pub fn max_interval(mut self, wait: Duration) -> Self {
        self.max_interval = wait;
        self
    }

    /// Sets the growth of the wait per attempt (below 1 counts as 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the random spread of each wait, as a fraction (0 for none, at
    /// most 1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Retries only failures for which `predicate` is true.
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&RetryableError<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// Sets the first wait and the longest wait together (the longest no
    /// shorter than the first).
    pub fn backoff(self, initial: Duration, max: Duration) -> Self {
        self.initial_interval(initial)
            .max_interval(max.max(initial))
    }

    /// The wait after failed attempt `attempt` (from 1), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = self.initial_interval.as_secs_f64() * exp;
        Duration::from_secs_f64(secs.min(self.max_interval.as_secs_f64()))
    }

    /// The wait after failed attempt `attempt`, with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = if j > 0.0 {
            1.0 + j * (2.0 * rand::random::<f64>() - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

impl Retry {
    /// Whether a failed attempt is tried again: retryable kind, attempts
    /// left, and the predicate agrees.
    pub(crate) fn allows(&self, failure: &Failure, attempt: u32) -> bool {
        if !failure.retryable() || attempt >= self.max_attempts {
            return false;
        }
        match &self.retry_if {
            Some(pred) => pred(&RetryableError {
                message: &failure.message,
                attempt,
                panicked: failure.kind == FailureKind::Panic,
            }),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let r = Retry::default()
            .initial_interval(Duration::from_millis(100))
            .max_interval(Duration::from_secs(1));
        assert_eq!(r.base_delay(1), Duration::from_millis(100));
        assert_eq!(r.base_delay(2), Duration::from_millis(200));
        assert_eq!(r.base_delay(3), Duration::from_millis(400));
        assert_eq!(r.base_delay(5), Duration::from_secs(1));
        assert_eq!(r.base_delay(60), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let r = Retry::default().jitter(0.5);
        for _ in 0..1000 {
            let d = r.delay(2).as_secs_f64();
            assert!((0.1..=0.3).contains(&d), "{d}");
        }
        let none = Retry::default().jitter(0.0);
        assert_eq!(none.delay(2), Duration::from_millis(200));
    }
}
