//! Each attempt's timeout: tower's `Timeout`, with its timer armed only
//! when the attempt first waits.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::timeout::error::Elapsed;

use super::handler::BoxError;

/// Fails an attempt still running `timeout` after it was called, with
/// tower's [`Elapsed`] (which the runtime reports as "timed out").
///
/// The deadline is tower's `Timeout`'s: the clock read just after the inner
/// service is called, plus `timeout`. What differs is when the timer is
/// made: tower makes a `Sleep` (a handle to the runtime's timer, carried in
/// every attempt's future) on each call; this makes it only when the attempt
/// first waits, so an attempt that completes at its first poll — most do on
/// the in-process bus — neither builds nor drops one, and its future carries
/// a deadline rather than a timer.
#[derive(Clone)]
pub(super) struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> AttemptTimeout<S> {
    pub(super) fn new(inner: S, timeout: Duration) -> Self {
        AttemptTimeout { inner, timeout }
    }
}

impl<S, R> tower::Service<R> for AttemptTimeout<S>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimedAttempt<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let attempt = self.inner.call(request);
        TimedAttempt {
            attempt,
            // Past the clock's range: never.
            deadline: Instant::now().checked_add(self.timeout),
            timer: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// An attempt and its deadline; the timer once the attempt has waited.
    pub(super) struct TimedAttempt<F> {
        #[pin]
        attempt: F,
        deadline: Option<Instant>,
        // Boxed: made only on the slow path, it takes no room in the
        // future of an attempt that completes at once.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, T, E> Future for TimedAttempt<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The attempt first, as tower does: one that is ready wins over a
        // deadline that has passed.
        if let Poll::Ready(out) = this.attempt.poll(cx) {
            return Poll::Ready(out.map_err(Into::into));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(Elapsed::new().into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    fn svc(
        wait: Duration,
    ) -> AttemptTimeout<impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone>
    {
        AttemptTimeout::new(
            tower::service_fn(move |()| async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok::<(), BoxError>(())
            }),
            Duration::from_millis(100),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_within_its_timeout_completes() {
        svc(Duration::ZERO).oneshot(()).await.unwrap();
        svc(Duration::from_millis(99)).oneshot(()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_past_its_timeout_fails_with_elapsed_at_the_deadline() {
        let start = Instant::now();
        let err = svc(Duration::from_millis(101))
            .oneshot(())
            .await
            .unwrap_err();
        assert!(err.is::<Elapsed>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_call_not_the_first_wait() {
        let mut s = svc(Duration::from_millis(60));
        let attempt = s.ready().await.unwrap().call(());
        // Time passes between the call and the first poll: it counts.
        tokio::time::advance(Duration::from_millis(50)).await;
        let err = attempt.await.unwrap_err();
        assert!(err.is::<Elapsed>(), "{err}");
    }
}
