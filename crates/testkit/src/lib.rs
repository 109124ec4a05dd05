//! Test helpers and the bus conformance suite every choreo backend runs.
//!
//! - [`wait_until`] / [`recv`]: wait for a condition or a delivery with a
//!   deadline, never a blind sleep.
//! - [`conformance`]: the suite, and [`conformance_suite!`] to instantiate it
//!   for a backend.

pub mod conformance;

use std::future::Future;
use std::time::{Duration, Instant};

use choreo_core::{Delivery, Subscription};

/// Polls `cond` until it is true or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut cond: F) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The next delivery of `sub`, or a panic naming `what` after `deadline`.
pub async fn recv<S: Subscription>(sub: &mut S, what: &str, deadline: Duration) -> Delivery {
    match tokio::time::timeout(deadline, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("receiving {what} failed: {e}"),
        Ok(None) => panic!("subscription closed while waiting for {what}"),
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// The next delivery of `sub` within `within`, or `None`.
pub async fn try_recv<S: Subscription>(sub: &mut S, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("receiving failed: {e}"),
        Ok(None) | Err(_) => None,
    }
}
