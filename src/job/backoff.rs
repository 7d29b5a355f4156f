//! Restart delays (SPEC §2 `backoff`): pure, time and randomness are inputs.

use std::time::Duration;

/// Delay before restart number `attempt` (1-based) after a failed start:
/// `initial * 2^(attempt-1)`, plus up to 25% jitter so a fleet of crashing
/// jobs does not restart in lockstep, capped at `max`.
///
/// `jitter` is a number in `[0, 1)` supplied by the caller (random in the
/// daemon, fixed in tests). The sequence grows strictly until it reaches
/// `max` because doubling outpaces the 25% jitter.
pub fn delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    if initial.is_zero() {
        return Duration::ZERO;
    }
    let exp = attempt.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << exp);
    // Not `mul_f64`: it panics when the product does not fit in a Duration. Validation keeps
    // `initial` and `max` small, but a delay must never be able to kill the supervisor.
    let factor = 1.0 + 0.25 * jitter.clamp(0.0, 0.999);
    let jittered = Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX);
    jittered.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        assert_eq!(delay(s, m, 1, 0.0), s);
        assert_eq!(delay(s, m, 2, 0.0), 2 * s);
        assert_eq!(delay(s, m, 3, 0.0), 4 * s);
        assert_eq!(delay(s, m, 10, 0.0), m);
        assert_eq!(delay(s, m, 1000, 0.9), m);
    }

    #[test]
    fn zero_initial_means_immediate() {
        assert_eq!(delay(Duration::ZERO, Duration::from_secs(5), 7, 0.5), Duration::ZERO);
    }

    #[test]
    fn huge_durations_never_panic() {
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(delay(huge, huge, 1, 0.9), huge);
        assert_eq!(delay(Duration::MAX, Duration::MAX, u32::MAX, 0.999), Duration::MAX);
    }

    proptest::proptest! {
        #[test]
        fn any_input_gives_a_delay_at_most_max(i in proptest::num::u64::ANY, m in proptest::num::u64::ANY, a in proptest::num::u32::ANY, j in proptest::num::f64::ANY) {
            let (i, m) = (Duration::from_nanos(i).saturating_mul(1 << 20), Duration::from_nanos(m).saturating_mul(1 << 20));
            proptest::prop_assert!(delay(i, m, a, j) <= m.max(Duration::ZERO));
        }

        #[test]
        fn grows_until_cap(a in 1u32..20, j1 in 0.0f64..1.0, j2 in 0.0f64..1.0, ms in 1u64..5000) {
            let i = Duration::from_millis(ms);
            let m = Duration::from_secs(600);
            let d1 = delay(i, m, a, j1);
            let d2 = delay(i, m, a + 1, j2);
            proptest::prop_assert!(d2 > d1 || d2 == m);
            proptest::prop_assert!(d1 <= m);
        }
    }
}
