//! The one polling loop of the tests: look until something holds, within a bound that guards
//! against hanging (it is not a timing assertion). A leaf like [`cluster`](super::cluster).

use std::fmt;
use std::time::{Duration, Instant};

/// How often [`eventually`] and [`eventually_ok`] look.
pub const EVERY: Duration = Duration::from_millis(200);

/// A wait that ran out of time.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub limit: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.limit, self.what
        )
    }
}

/// Calls `check` every `every` until it returns `Some`, and returns that; [`TimedOut`] (naming
/// `what`) once `limit` has passed since the first call. `check` runs at least once.
pub async fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return Err(TimedOut {
                what: what.to_owned(),
                limit,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll`]s `check` every [`EVERY`]; panics once `limit` has passed.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll(what, limit, EVERY, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`eventually`] for a `check` that may fail: an error counts as "not yet", and the last one is
/// part of the error returned once `limit` has passed.
pub async fn eventually_ok<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let mut last_err = None;
    let outcome = poll(what, limit, EVERY, async || match check().await {
        Ok(v) => v,
        Err(e) => {
            last_err = Some(e);
            None
        }
    })
    .await;
    outcome.map_err(|e| anyhow::anyhow!("{e} (last error: {last_err:?})"))
}
