//! Polling for a state the system reaches on its own, with a deadline, so a scenario whose
//! expected state never comes fails fast with what it waited for instead of hanging.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every `poll` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `limit` passes first, with a message naming `what` was awaited: this is a test
/// harness, and a panic is how a scenario fails.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, poll: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(poll).await;
    }
}
