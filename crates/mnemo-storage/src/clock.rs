//! Wall-clock time and the hybrid logical clock that numbers the change log and the audit log.
//!
//! Both logs key their entries by a per-tenant sequence number `max(previous + 1, now in
//! microseconds)` ([`next_seq`]): strictly increasing within a tenant, close to the commit
//! time, and still increasing across restarts and after a clock step backwards, as long as
//! the writer starts from the newest stored number.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The sequence number after `previous`: `max(previous + 1, now in microseconds)`.
pub fn next_seq(previous: u64) -> u64 {
    previous.saturating_add(1).max(now_us())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_increase_even_when_the_clock_is_behind() {
        let far_ahead = now_us() + 10_000_000;
        assert_eq!(next_seq(far_ahead), far_ahead + 1);
        let s = next_seq(0);
        assert!(s >= now_us() - 1_000_000 && next_seq(s) > s);
    }
}
