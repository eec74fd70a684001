//! Time: the wall clock in milliseconds, and the process's lag clock.

use crate::replication::LagClock;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The process's [`LagClock`]: follower fetch times, catch-up times and ISR checks of every
/// replica on this broker are measured on it, so a stall of the whole process is not
/// counted against the followers.
static LAG_CLOCK: Mutex<LagClock> = Mutex::new(LagClock::new());

/// Reads the lag clock, letting it advance at most `max_step_ms` since the previous reading.
pub(crate) fn lag_clock_ms(max_step_ms: u64) -> u64 {
    let wall = now_ms().max(0) as u64;
    LAG_CLOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .observe(wall, max_step_ms)
}
