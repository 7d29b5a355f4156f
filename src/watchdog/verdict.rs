//! Liveness verdicts and the memory limit decision, pure (SPEC §2 `liveness`, `memory_max`).

/// Consecutive liveness failures of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    pub consecutive: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed, as before.
    Fine,
    /// Passed after failures.
    Recovered,
    /// Failed, `count` in a row, fewer than `failures`.
    Failing { count: u32, detail: String },
    /// Failed `failures` times in a row: restart (reason `unhealthy`).
    Restart { detail: String },
}

impl Liveness {
    pub fn observe(&mut self, result: Result<(), String>, failures: u32) -> Verdict {
        match result {
            Ok(()) => {
                let was = std::mem::take(&mut self.consecutive);
                if was > 0 {
                    Verdict::Recovered
                } else {
                    Verdict::Fine
                }
            }
            Err(e) => {
                self.consecutive += 1;
                if self.consecutive >= failures.max(1) {
                    Verdict::Restart { detail: format!("liveness probe failed {} time(s) in a row: {e}", self.consecutive) }
                } else {
                    Verdict::Failing { count: self.consecutive, detail: e }
                }
            }
        }
    }
}

/// Whether a tree of `rss` bytes is over `max`.
pub fn over_memory(rss: u64, max: Option<u64>) -> bool {
    max.is_some_and(|m| rss > m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sequence of 6 results against thresholds 1..=4: a restart comes exactly at the
    /// `failures`-th failure in a row, once, and a pass resets the count.
    #[test]
    fn restart_exactly_at_the_threshold_in_every_sequence() {
        for failures in 1..=4u32 {
            for bits in 0..64u32 {
                let mut l = Liveness::default();
                let mut run = 0;
                for i in 0..6 {
                    let fail = bits & (1 << i) != 0;
                    let v = l.observe(if fail { Err("x".into()) } else { Ok(()) }, failures);
                    if fail {
                        run += 1;
                        if run == failures {
                            assert!(matches!(v, Verdict::Restart { .. }), "{failures} {bits:b} {i}");
                            break; // the run ends here
                        }
                        assert_eq!(v, Verdict::Failing { count: run, detail: "x".into() });
                    } else {
                        assert_eq!(v, if run > 0 { Verdict::Recovered } else { Verdict::Fine });
                        run = 0;
                    }
                }
            }
        }
    }

    #[test]
    fn memory_limit() {
        assert!(!over_memory(10, None));
        assert!(!over_memory(10, Some(10)));
        assert!(over_memory(11, Some(10)));
    }
}
