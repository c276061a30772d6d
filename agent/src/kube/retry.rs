//! Backing off, for every path that asks the API server again: single requests on transient
//! failures (5xx, 429, connection errors) are retried with capped exponential backoff and
//! jitter until a deadline, so one 503 does not fail a large apply; watches are reopened and
//! polls repeated with the same [`Backoff`]. Whole steps are retried by the boot state machine,
//! not here. Nothing asks again without waiting first.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::KubeError;

/// Capped exponential backoff with jitter in [0.5, 1.0] of the nominal delay.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pause before the next try; each call doubles the following one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// Back to the first delay, after the other side has answered usefully.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for the next delay, but not past `deadline`. False when the deadline has passed.
    pub(crate) async fn wait(&mut self, deadline: Instant) -> bool {
        let until = (Instant::now() + self.next_delay()).min(deadline);
        tokio::time::sleep_until(until).await;
        Instant::now() < deadline
    }
}

/// Per-request retries: 100 ms doubling to 2 s.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Runs `op` until it succeeds, fails permanently, or `deadline` passes.
pub async fn retry<T, F, Fut>(deadline: Instant, mut op: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY);
    let mut attempt = 1u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tracing::debug!(attempt, error = %e, "transient API error, retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let nominal = [100u64, 200, 400, 800, 800];
        for n in nominal {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(n / 2) && d <= Duration::from_millis(n),
                "{d:?} not within [{}, {n}] ms",
                n / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
