//! What an alert is (SPEC §9 `[alerts]`): its event kind, the job it is about, a message and
//! the `details` it knows, and the JSON a webhook or command receives.
//!
//! Pure data: no I/O, no clocks (the caller passes the time), no tokio.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

/// The events of SPEC §9, plus the recoveries and the test alert of `corral alert-test`.
/// The names (`as_str`) are stable: the JSON's `event`, `events = [...]` and `/metrics` use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `start_retries` exhausted: the job is `fatal`.
    Fatal,
    /// `crash_loop.restarts` restarts within `crash_loop.window` while corral still retries.
    CrashLoop,
    /// The watchdog restarted the job: its liveness probe failed.
    Unhealthy,
    /// The watchdog restarted the job: no output line for `stall_after`.
    Stalled,
    /// The watchdog restarted the job: its process tree went above `memory_max`.
    Memory,
    /// Live use above `warn_at` of usable for longer than one reading.
    BudgetHigh,
    DatabaseDown,
    /// Recovery of `database_down` (sent once, only after a `database_down` was sent).
    DatabaseUp,
    /// A scheduled run could not start within its `starting_deadline`.
    ScheduleMissed,
    /// Recovery of `fatal`: the job runs again (sent once, only after its `fatal` was sent).
    Recovered,
    /// `corral alert-test`.
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Fatal,
        EventKind::CrashLoop,
        EventKind::Unhealthy,
        EventKind::Stalled,
        EventKind::Memory,
        EventKind::BudgetHigh,
        EventKind::DatabaseDown,
        EventKind::DatabaseUp,
        EventKind::ScheduleMissed,
        EventKind::Recovered,
        EventKind::Test,
    ];

    /// What `events = [...]` accepts; the default is all of them. Recoveries follow their
    /// problem event; the test alert is always sent.
    pub const SELECTABLE: [EventKind; 8] = [
        EventKind::Fatal,
        EventKind::CrashLoop,
        EventKind::Unhealthy,
        EventKind::Stalled,
        EventKind::Memory,
        EventKind::BudgetHigh,
        EventKind::DatabaseDown,
        EventKind::ScheduleMissed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Fatal => "fatal",
            EventKind::CrashLoop => "crash_loop",
            EventKind::Unhealthy => "unhealthy",
            EventKind::Stalled => "stalled",
            EventKind::Memory => "memory",
            EventKind::BudgetHigh => "budget_high",
            EventKind::DatabaseDown => "database_down",
            EventKind::DatabaseUp => "database_up",
            EventKind::ScheduleMissed => "schedule_missed",
            EventKind::Recovered => "recovered",
            EventKind::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The problem event whose recovery this is.
    pub fn recovery_of(self) -> Option<EventKind> {
        match self {
            EventKind::DatabaseUp => Some(EventKind::DatabaseDown),
            EventKind::Recovered => Some(EventKind::Fatal),
            _ => None,
        }
    }

    /// Whether `events` selects this kind.
    pub fn selected_by(self, events: &BTreeSet<EventKind>) -> bool {
        match self {
            EventKind::Test => true,
            k => events.contains(&k.recovery_of().unwrap_or(k)),
        }
    }

    /// Events about a job's process: they carry the last lines of its stderr.
    pub fn wants_stderr(self) -> bool {
        matches!(self, EventKind::Fatal | EventKind::CrashLoop | EventKind::Unhealthy | EventKind::Stalled | EventKind::Memory)
    }

    /// A short marker for chat text.
    fn emoji(self) -> &'static str {
        match self {
            EventKind::DatabaseUp | EventKind::Recovered => ":white_check_mark:",
            EventKind::Test => ":bell:",
            EventKind::BudgetHigh | EventKind::ScheduleMissed => ":warning:",
            _ => ":rotating_light:",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert before it is addressed: what happened, to which job, what is known.
///
/// This is the hook other parts of corral use (the watchdog, the scheduler): build one with
/// [`Alert::new`], add [`Alert::detail`]s, and hand it to [`crate::alerts::Hook::alert`]:
///
/// ```
/// use corral::alerts::{Alert, EventKind};
/// let a = Alert::new(EventKind::Stalled, Some("layer1"), "no output for 10m: restarted")
///     .detail("stall_after_s", 600);
/// assert_eq!(a.details["stall_after_s"], 600);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: EventKind,
    pub job: Option<String>,
    pub message: String,
    pub details: Map<String, Value>,
}

impl Alert {
    pub fn new(kind: EventKind, job: Option<&str>, message: impl Into<String>) -> Alert {
        Alert { kind, job: job.map(str::to_string), message: message.into(), details: Map::new() }
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Alert {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// Where the alert comes from: which corral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub service: String,
    pub host: String,
}

/// Slack shows at most this much of a message's text comfortably; the JSON keeps the details.
const MAX_TEXT: usize = 3000;

/// The JSON of SPEC §9: `{"event", "job", "service", "host", "message", "text", "at", "details"}`.
/// `text` is what Slack (and Mattermost, Rocket.Chat, Teams' Slack-compatible hooks) shows.
pub fn payload(alert: &Alert, origin: &Origin, at: SystemTime) -> Value {
    let at = humantime::format_rfc3339_millis(at).to_string();
    json!({
        "event": alert.kind.as_str(),
        "job": alert.job,
        "service": origin.service,
        "host": origin.host,
        "message": alert.message,
        "text": text(alert, origin),
        "at": at,
        "details": alert.details,
    })
}

fn text(alert: &Alert, origin: &Origin) -> String {
    let job = alert.job.as_deref().map(|j| format!(" job `{j}`")).unwrap_or_default();
    let mut t = format!("{} corral `{}` on `{}`{job}: *{}* {}", alert.kind.emoji(), origin.service, origin.host, alert.kind, alert.message);
    if let Some(Value::Array(lines)) = alert.details.get("stderr_tail") {
        if !lines.is_empty() {
            t.push_str("\n```\n");
            for l in lines {
                t.push_str(l.as_str().unwrap_or_default());
                t.push('\n');
            }
            t.push_str("```");
        }
    }
    if t.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let names: BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("fatl"), None);
    }

    #[test]
    fn recoveries_follow_their_problem() {
        let only_fatal: BTreeSet<_> = [EventKind::Fatal].into();
        assert!(EventKind::Recovered.selected_by(&only_fatal));
        assert!(!EventKind::DatabaseUp.selected_by(&only_fatal));
        assert!(EventKind::Test.selected_by(&BTreeSet::new()));
        assert!(!EventKind::Fatal.selected_by(&BTreeSet::new()));
    }

    #[test]
    fn payload_has_the_spec_fields_and_slack_text() {
        let a = Alert::new(EventKind::Fatal, Some("web"), "exit code 3 after 5 restarts")
            .detail("stderr_tail", vec!["Traceback", "boom"]);
        let origin = Origin { service: "scraper".into(), host: "box".into() };
        let p = payload(&a, &origin, std::time::UNIX_EPOCH);
        for key in ["event", "job", "service", "host", "message", "text", "at", "details"] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
        assert_eq!(p["event"], "fatal");
        assert_eq!(p["at"], "1970-01-01T00:00:00.000Z");
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("`web`") && text.contains("*fatal*") && text.contains("```\nTraceback\nboom\n```"), "{text}");
    }

    #[test]
    fn text_is_capped_on_a_char_boundary() {
        let a = Alert::new(EventKind::Fatal, None, "é".repeat(4000));
        let origin = Origin { service: "s".into(), host: "h".into() };
        let t = text(&a, &origin);
        assert!(t.len() <= MAX_TEXT + "…".len());
        assert!(t.ends_with('…'));
    }
}
