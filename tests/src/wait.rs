//! Waiting on conditions: polls with a short backoff, bounded in time and in count.

use std::time::{Duration, Instant};

/// Longest pause between two polls.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// First pause between two polls.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Pause between two checks of [`stays_true`].
const STAYS_TRUE_POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until it returns true (then true) or `timeout` passes (then false), so the
/// caller can say what it saw. The number of polls is bounded as well: at most
/// `timeout / 10ms + 2`.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let max_polls = timeout.as_millis() / FIRST_BACKOFF.as_millis() + 2;
    let mut backoff = FIRST_BACKOFF;
    for _ in 0..max_polls {
        if cond() {
            return true;
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            break;
        }
        std::thread::sleep(backoff.min(timeout - elapsed));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    false
}

/// Polls `cond` until it returns true; panics with `desc` after `timeout`.
pub fn wait_until(desc: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    let start = Instant::now();
    if !poll_until(timeout, cond) {
        panic!(
            "timed out after {:.1}s waiting until {desc}",
            start.elapsed().as_secs_f64()
        );
    }
}

/// Like [`wait_until`] but the condition returns a value when it holds.
pub fn wait_for<T>(desc: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(desc, timeout, || {
        found = cond();
        found.is_some()
    });
    found.expect("wait_until returned, so the condition held")
}

/// [`wait_until`] for async tests: polls `cond` between short sleeps on the runtime; panics
/// with `desc` after `timeout`.
pub async fn wait_until_async(desc: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {:.1}s waiting until {desc}",
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Checks that `cond` keeps holding for all of `window` (for "nothing more happens" checks:
/// no second rebalance, no record read twice); panics with `desc` as soon as it does not.
pub fn stays_true(desc: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(
            cond(),
            "after {:.1}s: no longer true that {desc}",
            start.elapsed().as_secs_f64()
        );
        if start.elapsed() >= window {
            return;
        }
        std::thread::sleep(STAYS_TRUE_POLL.min(window));
    }
}

/// [`stays_true`] for async tests.
pub async fn stays_true_async(desc: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(
            cond(),
            "after {:.1}s: no longer true that {desc}",
            start.elapsed().as_secs_f64()
        );
        if start.elapsed() >= window {
            return;
        }
        tokio::time::sleep(STAYS_TRUE_POLL.min(window)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        wait_until("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after")]
    fn panics_with_the_description() {
        wait_until("never", Duration::from_millis(50), || false);
    }

    #[test]
    fn wait_for_returns_the_value() {
        let mut n = 0;
        let v = wait_for("n reaches 2", Duration::from_secs(5), || {
            n += 1;
            (n == 2).then_some(n * 10)
        });
        assert_eq!(v, 20);
    }
}
