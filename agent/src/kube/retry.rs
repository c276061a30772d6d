//! One retry helper for single API requests: transient failures (5xx, 429, connection
//! errors) are retried with capped exponential backoff until a deadline, so one 503 does not
//! fail a large apply. Whole steps are retried by the boot state machine, not here.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::KubeError;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Runs `op` until it succeeds, fails permanently, or `deadline` passes.
pub async fn retry<T, F, Fut>(deadline: Instant, mut op: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let mut delay = FIRST_DELAY;
    let mut attempt = 1u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                tracing::debug!(attempt, error = %e, "transient API error, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
