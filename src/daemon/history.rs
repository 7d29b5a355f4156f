//! What the dashboard shows of the past (SPEC §9): the round trip of corral's database
//! readings over the last hour, and a ring of recent events (exits, restarts, quota
//! changes, warnings). The actor feeds it at a few hook points and answers
//! `history` requests from it; nothing here decides anything about a job.
//!
//! Both are bounded whatever the intervals: readings closer together than
//! [`SAMPLE_SPACING`] share one sample (the slowest wins, a failure sticks), so an hour is at
//! most 360 samples, and the ring keeps the last [`MAX_EVENTS`] events.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::job::State;
pub use crate::protocol::{EventKind as Kind, Reading};
use crate::protocol::{EventRecord, HistoryReport, LatencyHistory, LatencySample};

/// How far back the latency history reaches.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(3600);
/// Readings within this of the previous sample are merged into it.
pub const SAMPLE_SPACING: Duration = Duration::from_secs(10);
/// Events kept; older ones fall off (their counts stay).
pub const MAX_EVENTS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: SystemTime,
    /// None: the reading failed.
    ms: Option<f64>,
    failed: bool,
    reading: Reading,
}

#[derive(Debug, Clone, PartialEq)]
struct Record {
    seq: u64,
    at: SystemTime,
    kind: Kind,
    job: Option<String>,
    message: String,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    events: VecDeque<Record>,
    seq: u64,
    counts: BTreeMap<Kind, u64>,
    /// Jobs over their quota at the last reading: one warning per episode, not per reading.
    over_quota: std::collections::BTreeSet<String>,
}

impl History {
    /// One database reading: its round trip in ms, or None when it failed.
    pub fn reading(&mut self, at: SystemTime, reading: Reading, ms: Option<f64>) {
        let failed = ms.is_none();
        match self.samples.back_mut() {
            Some(last) if at.duration_since(last.at).unwrap_or_default() < SAMPLE_SPACING => {
                last.failed |= failed;
                last.ms = match (last.ms, ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if reading == Reading::Health {
                    last.reading = Reading::Health;
                }
            }
            _ => self.samples.push_back(Sample { at, ms, failed, reading }),
        }
        while self.samples.front().is_some_and(|s| at.duration_since(s.at).unwrap_or_default() > LATENCY_WINDOW) {
            self.samples.pop_front();
        }
    }

    pub fn event(&mut self, at: SystemTime, kind: Kind, job: Option<&str>, message: impl Into<String>) {
        self.seq += 1;
        *self.counts.entry(kind).or_default() += 1;
        self.events.push_back(Record { seq: self.seq, at, kind, job: job.map(str::to_string), message: message.into() });
        if self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// A job's live use at a reading: a warning when it goes over its quota, again only after
    /// it came back within.
    pub fn usage(&mut self, at: SystemTime, job: &str, live: u32, quota: u32) {
        if live <= quota {
            self.over_quota.remove(job);
        } else if self.over_quota.insert(job.to_string()) {
            self.event(at, Kind::Warning, Some(job), format!("uses {live} connections, quota {quota}"));
        }
    }

    /// A job's state change, as the log shows it: the ones worth an event become one.
    pub fn transition(&mut self, at: SystemTime, job: &str, from: State, to: State, reason: &str) {
        let (kind, message) = match to {
            State::Fatal => (Kind::Fatal, format!("{} -> fatal: {reason}", from.as_str())),
            State::Waiting => (Kind::Waiting, format!("waiting: {reason}")),
            State::Backoff => (Kind::Restart, "restarting after backoff".to_string()),
            _ => return,
        };
        self.event(at, kind, Some(job), message);
    }

    /// The `history` reply, the newest event last.
    pub fn report(&self, now: SystemTime) -> HistoryReport {
        let samples = self
            .samples
            .iter()
            .filter(|s| now.duration_since(s.at).unwrap_or_default() <= LATENCY_WINDOW)
            .map(|s| LatencySample { at: secs(s.at), ms: s.ms.map(|m| (m * 1000.0).round() / 1000.0), failed: s.failed, reading: s.reading })
            .collect();
        let events = self
            .events
            .iter()
            .map(|r| EventRecord { seq: r.seq, at: secs(r.at), kind: r.kind, job: r.job.clone(), message: r.message.clone() })
            .collect();
        HistoryReport {
            now: secs(now),
            latency: LatencyHistory { window_s: LATENCY_WINDOW.as_secs(), spacing_s: SAMPLE_SPACING.as_secs(), samples },
            events,
            event_counts: self.counts.clone(),
        }
    }
}

fn secs(t: SystemTime) -> f64 {
    let s = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    (s * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn samples_merge_within_the_spacing_and_expire_after_an_hour() {
        let mut h = History::default();
        h.reading(t(0), Reading::Usage, Some(2.0));
        h.reading(t(3), Reading::Health, Some(5.0));
        h.reading(t(6), Reading::Usage, Some(1.0));
        assert_eq!(h.samples.len(), 1);
        assert_eq!((h.samples[0].ms, h.samples[0].reading, h.samples[0].failed), (Some(5.0), Reading::Health, false));
        h.reading(t(8), Reading::Usage, None);
        assert!(h.samples[0].failed && h.samples[0].ms == Some(5.0));

        h.reading(t(10), Reading::Usage, None);
        assert_eq!(h.samples.len(), 2);
        assert_eq!((h.samples[1].ms, h.samples[1].failed), (None, true));

        h.reading(t(3611), Reading::Usage, Some(1.0));
        let ats: Vec<_> = h.samples.iter().map(|s| s.at).collect();
        assert_eq!(ats, vec![t(3611)], "both older samples are more than an hour old");
    }

    #[test]
    fn an_hour_of_one_second_readings_stays_bounded() {
        let mut h = History::default();
        for s in 0..7200 {
            h.reading(t(s), Reading::Usage, Some(s as f64));
        }
        let n = h.samples.len() as u64;
        assert!(n <= LATENCY_WINDOW.as_secs() / SAMPLE_SPACING.as_secs() + 1, "{n}");
        let json = serde_json::to_value(h.report(t(7200))).unwrap();
        assert_eq!(json["latency"]["samples"].as_array().unwrap().len() as u64, n);
    }

    #[test]
    fn the_event_ring_keeps_the_newest_and_counts_all() {
        let mut h = History::default();
        for i in 0..(MAX_EVENTS as u64 + 5) {
            h.event(t(i), Kind::Exit, Some("w"), format!("exit {i}"));
        }
        h.event(t(500), Kind::DatabaseDown, None, "down");
        assert_eq!(h.events.len(), MAX_EVENTS);
        let json = serde_json::to_value(h.report(t(501))).unwrap();
        let events = json["events"].as_array().unwrap();
        assert_eq!(events.last().unwrap()["kind"], "database_down");
        assert_eq!(events.last().unwrap()["job"], serde_json::Value::Null);
        assert_eq!(events.last().unwrap()["seq"], MAX_EVENTS as u64 + 6);
        assert_eq!(events[0]["message"], "exit 6");
        assert_eq!(json["event_counts"]["exit"], MAX_EVENTS as u64 + 5);
        assert_eq!(json["event_counts"]["database_down"], 1);
    }

    #[test]
    fn over_quota_warns_once_per_episode() {
        let mut h = History::default();
        h.usage(t(0), "w", 3, 4);
        h.usage(t(1), "w", 5, 4);
        h.usage(t(2), "w", 6, 4);
        h.usage(t(3), "other", 9, 1);
        h.usage(t(4), "w", 4, 4);
        h.usage(t(5), "w", 7, 4);
        let msgs: Vec<_> = h.events.iter().map(|e| (e.job.as_deref().unwrap_or(""), e.message.as_str())).collect();
        assert_eq!(
            msgs,
            vec![("w", "uses 5 connections, quota 4"), ("other", "uses 9 connections, quota 1"), ("w", "uses 7 connections, quota 4")]
        );
        assert!(h.events.iter().all(|e| e.kind == Kind::Warning));
    }

    #[test]
    fn only_notable_transitions_become_events() {
        let mut h = History::default();
        for (from, to) in [
            (State::Stopped, State::Starting),
            (State::Starting, State::Running),
            (State::Running, State::Stopping),
            (State::Stopping, State::Stopped),
            (State::Running, State::Exited),
        ] {
            h.transition(t(0), "w", from, to, "");
        }
        assert!(h.events.is_empty());
        h.transition(t(1), "w", State::Running, State::Backoff, "");
        h.transition(t(2), "w", State::Backoff, State::Fatal, "exited 5 times in a row");
        h.transition(t(3), "w", State::Stopped, State::Waiting, "budget: needs 2");
        let kinds: Vec<_> = h.events.iter().map(|e| (e.kind, e.message.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Restart, "restarting after backoff"),
                (Kind::Fatal, "backoff -> fatal: exited 5 times in a row"),
                (Kind::Waiting, "waiting: budget: needs 2"),
            ]
        );
    }
}
