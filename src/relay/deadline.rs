//! Write deadlines that cost no timer when the write completes at once.
//!
//! `tokio::time::timeout` registers a timer entry on its first poll and
//! removes it on drop: two trips through a timer-wheel lock for every relayed
//! message. A write to a healthy socket finishes on its first poll, so the
//! timer is armed only when it does not.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// The future did not finish within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut;

/// `fut`'s output, or [`TimedOut`] if it is still pending `limit` after its
/// first poll.
pub(crate) async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, TimedOut> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout(limit, fut).await.map_err(|_| TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_needs_no_timer_and_a_stuck_one_times_out() {
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let stuck = within(Duration::from_secs(1), std::future::pending::<()>());
        assert_eq!(stuck.await, Err(TimedOut));
        // Pending at first, done before the limit.
        let late = within(Duration::from_secs(2), tokio::time::sleep(Duration::from_secs(1)));
        assert_eq!(late.await, Ok(()));
    }
}
