//! A job's `schedule` and `timezone` (SPEC §2): parsed once, then asked for occurrences.
//!
//! Cron expressions (5 fields, or 6 with seconds first) and the `@hourly`, `@daily`, ...
//! nicknames are croner's: it parses them and finds occurrences in a named time zone
//! (chrono-tz), daylight-saving gaps and repeats included. `@every DURATION` is ours: its
//! occurrences are the multiples of the period since the Unix epoch, so a restart of corral
//! does not shift them and missed runs can be told from the clock alone.
//!
//! Pure: no clock is read here; every question carries the time it is asked about.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A point on the wall clock, in UTC.
pub type Wall = DateTime<Utc>;

/// The shortest `@every` period (a shorter one is a busy loop, not a schedule).
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest `@every` period.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Cron(Box<Cron>),
    /// Milliseconds, at least [`MIN_EVERY`].
    Every(i64),
}

/// A parsed `schedule` in its `timezone`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// As written in the manifest (shown by `status`).
    pub text: String,
    pub tz: Tz,
    expr: Expr,
}

/// Why a `schedule` or `timezone` was refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub message: String,
    pub hint: String,
}

const CRON_HINT: &str = "write 5 cron fields (\"*/15 * * * *\"), 6 with seconds first (\"*/10 * * * * *\"), \
                         \"@hourly\", \"@daily\", \"@weekly\", \"@monthly\", \"@yearly\" or \"@every 10m\"";

/// Parse a `timezone` value: an IANA name such as `Europe/Berlin` or `UTC`.
pub fn parse_tz(name: &str) -> Result<Tz, SpecError> {
    name.trim().parse::<Tz>().map_err(|_| SpecError {
        message: format!("unknown time zone {:?}", name.trim()),
        hint: "use an IANA time zone name such as \"UTC\", \"Europe/Berlin\" or \"America/New_York\"".into(),
    })
}

/// Parse a `schedule` value for time zone `tz`.
pub fn parse(text: &str, tz: Tz) -> Result<Spec, SpecError> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let expr = if let Some(rest) = lower.strip_prefix("@every") {
        let rest = rest.trim();
        let period = humantime::parse_duration(rest).map_err(|e| SpecError {
            message: format!("invalid period {rest:?} in \"@every\": {e}"),
            hint: "write \"@every\" and a duration, like \"@every 10m\" or \"@every 90s\"".into(),
        })?;
        if !(MIN_EVERY..=MAX_EVERY).contains(&period) {
            return Err(SpecError {
                message: format!("\"@every\" must be between 1s and 366days, found {rest:?}"),
                hint: "use a period from 1s to 366days".into(),
            });
        }
        Expr::Every(period.as_millis() as i64)
    } else if lower == "@reboot" {
        return Err(SpecError {
            message: "\"@reboot\" is not a schedule corral runs".into(),
            hint: "for a job that runs once when corral starts, drop \"schedule\" and set restart = \"never\"".into(),
        });
    } else {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser.parse(trimmed).map_err(|e| SpecError { message: format!("invalid schedule {trimmed:?}: {e}"), hint: CRON_HINT.into() })?;
        Expr::Cron(Box::new(cron))
    };
    let spec = Spec { text: trimmed.to_string(), tz, expr };
    // "0 0 30 2 *" parses but never comes: refuse it now rather than schedule nothing.
    if spec.next_after(Utc::now()).is_none() {
        return Err(SpecError { message: format!("schedule {trimmed:?} never matches a date"), hint: CRON_HINT.into() });
    }
    Ok(spec)
}

impl Spec {
    /// The first occurrence strictly after `t`. None when there is none (within croner's
    /// search horizon of several years).
    pub fn next_after(&self, t: Wall) -> Option<Wall> {
        match &self.expr {
            Expr::Every(ms) => {
                let now = t.timestamp_millis();
                let next = now.div_euclid(*ms).checked_add(1)?.checked_mul(*ms)?;
                Utc.timestamp_millis_opt(next).single()
            }
            Expr::Cron(cron) => {
                // croner works in whole seconds: from 10:00:00.5, "strictly after" is 10:00:01.
                let base = t.with_timezone(&self.tz);
                cron.find_next_occurrence(&base, false).ok().map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// The latest occurrence at or before `t`, if any.
    pub fn latest_at_or_before(&self, t: Wall) -> Option<Wall> {
        match &self.expr {
            Expr::Every(ms) => {
                let at = t.timestamp_millis().div_euclid(*ms).checked_mul(*ms)?;
                Utc.timestamp_millis_opt(at).single()
            }
            Expr::Cron(cron) => {
                // Whole seconds: at 10:00:00.5 the occurrence of 10:00:00 has come.
                let whole = Utc.timestamp_opt(t.timestamp(), 0).single()?;
                let base = whole.with_timezone(&self.tz);
                cron.find_previous_occurrence(&base, true).ok().map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// Occurrences in `(after, until]`: how many (counting at most `cap`) and the latest.
    pub fn passed(&self, after: Wall, until: Wall, cap: u64) -> (u64, Option<Wall>) {
        if until <= after {
            return (0, None);
        }
        match &self.expr {
            Expr::Every(ms) => {
                let a = after.timestamp_millis().div_euclid(*ms);
                let u = until.timestamp_millis().div_euclid(*ms);
                let n = (u - a).max(0) as u64;
                (n.min(cap), if n == 0 { None } else { self.latest_at_or_before(until) })
            }
            Expr::Cron(_) => {
                let Some(latest) = self.latest_at_or_before(until).filter(|l| *l > after) else { return (0, None) };
                let mut n = 0;
                let mut t = after;
                while n < cap {
                    match self.next_after(t) {
                        Some(next) if next <= until => {
                            n += 1;
                            t = next;
                        }
                        _ => break,
                    }
                }
                (n.max(1), Some(latest))
            }
        }
    }

    /// The period of an `@every` schedule.
    pub fn every(&self) -> Option<Duration> {
        match self.expr {
            Expr::Every(ms) => Some(Duration::from_millis(ms as u64)),
            Expr::Cron(_) => None,
        }
    }
}

/// RFC 3339 in UTC, to the second, or to the millisecond when it has one (`CORRAL_SCHEDULED_AT`,
/// `next_run`).
pub fn rfc3339(t: Wall) -> String {
    use chrono::SubsecRound;
    t.trunc_subsecs(3).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Wall {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(text: &str, tz: &str) -> Spec {
        parse(text, parse_tz(tz).unwrap()).unwrap()
    }

    fn nexts(s: &Spec, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                rfc3339(t)
            })
            .collect()
    }

    #[test]
    fn five_and_six_fields_and_nicknames() {
        assert_eq!(nexts(&spec("*/15 * * * *", "UTC"), "2026-12-01T10:07:00Z", 2), ["2026-12-01T10:15:00Z", "2026-12-01T10:30:00Z"]);
        assert_eq!(nexts(&spec("*/10 * * * * *", "UTC"), "2026-12-01T10:00:05Z", 2), ["2026-12-01T10:00:10Z", "2026-12-01T10:00:20Z"]);
        assert_eq!(nexts(&spec("@hourly", "UTC"), "2026-12-01T10:00:00Z", 1), ["2026-12-01T11:00:00Z"]);
        assert_eq!(nexts(&spec("@daily", "UTC"), "2026-12-01T10:00:00Z", 1), ["2026-12-02T00:00:00Z"]);
        assert_eq!(nexts(&spec("@weekly", "UTC"), "2026-12-01T10:00:00Z", 1), ["2026-12-06T00:00:00Z"]);
        assert_eq!(nexts(&spec("@monthly", "UTC"), "2026-12-01T10:00:00Z", 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(nexts(&spec("@yearly", "UTC"), "2026-12-01T10:00:00Z", 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(nexts(&spec("@DAILY", "UTC"), "2026-12-01T10:00:00Z", 1), ["2026-12-02T00:00:00Z"]);
    }

    #[test]
    fn next_is_strictly_after_even_within_a_second() {
        let s = spec("* * * * * *", "UTC");
        assert_eq!(s.next_after(utc("2026-12-01T10:00:00Z")).map(rfc3339).unwrap(), "2026-12-01T10:00:01Z");
        assert_eq!(s.next_after(utc("2026-12-01T10:00:00.500Z")).map(rfc3339).unwrap(), "2026-12-01T10:00:01Z");
        assert_eq!(s.latest_at_or_before(utc("2026-12-01T10:00:00.500Z")).map(rfc3339).unwrap(), "2026-12-01T10:00:00Z");
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = spec("@every 10m", "UTC");
        assert_eq!(nexts(&s, "2026-12-01T10:07:31Z", 2), ["2026-12-01T10:10:00Z", "2026-12-01T10:20:00Z"]);
        assert_eq!(s.latest_at_or_before(utc("2026-12-01T10:10:00Z")).map(rfc3339).unwrap(), "2026-12-01T10:10:00Z");
        let ms = spec("@every 1500ms", "UTC");
        assert_eq!(nexts(&ms, "1970-01-01T00:00:00Z", 2), ["1970-01-01T00:00:01.500Z", "1970-01-01T00:00:03Z"]);
        // The time zone does not move an @every schedule.
        assert_eq!(nexts(&spec("@every 1h", "Asia/Kolkata"), "2026-12-01T10:07:00Z", 1), ["2026-12-01T11:00:00Z"]);
    }

    #[test]
    fn passed_counts_and_finds_the_latest() {
        let s = spec("*/10 * * * * *", "UTC");
        let (n, latest) = s.passed(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T10:00:35Z"), 100);
        assert_eq!((n, latest.map(rfc3339)), (3, Some("2026-12-01T10:00:30Z".into())));
        assert_eq!(s.passed(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T10:00:09Z"), 100), (0, None));
        // Counting stops at the cap; the latest is still exact.
        let (n, latest) = s.passed(utc("2026-01-01T00:00:00Z"), utc("2026-12-01T10:00:35Z"), 50);
        assert_eq!((n, latest.map(rfc3339)), (50, Some("2026-12-01T10:00:30Z".into())));
        let e = spec("@every 1s", "UTC");
        let (n, latest) = e.passed(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T10:00:05.5Z"), 1000);
        assert_eq!((n, latest.map(rfc3339)), (5, Some("2026-12-01T10:00:05Z".into())));
    }

    /// Berlin springs forward on 29 March 2026 (02:00 → 03:00) and falls back on 25 October
    /// (03:00 → 02:00).
    #[test]
    fn dst_spring_forward_in_a_named_zone() {
        // 02:30 does not exist that night: the run comes at the first real instant after the
        // gap, once, and the days around it keep their local time.
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            nexts(&s, "2026-03-27T12:00:00Z", 3),
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        // An hourly job has one run fewer that night: 23 local hours.
        let h = spec("0 * * * *", "Europe/Berlin");
        let (n, _) = h.passed(utc("2026-03-28T23:00:00Z"), utc("2026-03-29T22:00:00Z"), 1000);
        assert_eq!(n, 23);
        // Daily at 09:00 local is 08:00 UTC before and 07:00 UTC after.
        let d = spec("0 9 * * *", "Europe/Berlin");
        assert_eq!(nexts(&d, "2026-03-28T09:00:00Z", 2), ["2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z"]);
    }

    #[test]
    fn dst_fall_back_in_a_named_zone() {
        // 02:30 happens twice that night: one run, at the first.
        let s = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            nexts(&s, "2026-10-24T12:00:00Z", 3),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"]
        );
        // Every 15 minutes keeps running through the repeated hour: every absolute quarter
        // hour, 25 local hours of them.
        let q = spec("*/15 * * * *", "Europe/Berlin");
        let (n, _) = q.passed(utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z"), 1000);
        assert_eq!(n, 25 * 4);
        // New York too (first Sunday of November 2026, 1 November).
        let ny = spec("0 9 * * *", "America/New_York");
        assert_eq!(nexts(&ny, "2026-10-31T14:00:00Z", 2), ["2026-11-01T14:00:00Z", "2026-11-02T14:00:00Z"]);
    }

    #[test]
    fn bad_schedules_and_zones_say_what_to_write() {
        for bad in ["", "* * *", "61 * * * *", "@every", "@every 0s", "@every 500ms", "@every 400days", "@every soon", "@often", "0 0 30 2 *"] {
            let e = parse(bad, Tz::UTC).unwrap_err();
            assert!(!e.message.is_empty() && !e.hint.is_empty(), "{bad}: {e:?}");
        }
        assert!(parse("@reboot", Tz::UTC).unwrap_err().hint.contains("restart = \"never\""));
        assert!(parse("0 0 30 2 *", Tz::UTC).unwrap_err().message.contains("never matches"));
        assert!(parse_tz("Mars/Olympus").is_err());
        assert_eq!(parse_tz(" Europe/Berlin ").unwrap(), chrono_tz::Europe::Berlin);
    }
}
