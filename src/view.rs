//! The budget JSON of SPEC §4 (`corral budget --json`, `/budget`) read into a typed view for
//! the Rust clients that draw it: `/metrics` and `corral top`, from the typed
//! [`BudgetReport`] of the protocol (the dashboard page reads the same JSON in JavaScript).
//!
//! [`BudgetView::segments`] splits the limit into the parts the bar shows, in order: the
//! reserves, corral's own connections, each job's grant (with its live use), headroom.
//! [`HistoryView`] reads the `history` reply (recent events) the same way.

use serde_json::Value;

use crate::protocol::{BudgetReport, BudgetScope};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetView {
    /// "local" or "fleet".
    pub scope: String,
    pub service: String,
    pub limit: u32,
    /// What binds the limit ("server", "preset", a pooler's pool size, ...), as the JSON says it.
    pub limit_source: Option<String>,
    pub provider_reserve: u32,
    pub adhoc_reserve: u32,
    pub external_reserve: u32,
    /// Every active reservation (fleet scope: fleet-wide ones).
    pub reservations: Vec<(String, u32)>,
    pub own: u32,
    /// Fleet scope: corral connections no live member claims; never handed out.
    pub unclaimed: u32,
    pub usable: u32,
    pub granted: u32,
    pub headroom: u32,
    /// Live connections of the jobs.
    pub live: u32,
    pub external_live: u32,
    pub jobs: Vec<JobGrant>,
    pub members: Vec<Member>,
    pub warnings: Vec<String>,
    pub database: Database,
    /// Fleet scope: whether the coordination works, and why not.
    pub coordination: Option<(bool, Option<String>)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobGrant {
    pub name: String,
    pub service: String,
    /// Fleet scope: the member running it.
    pub member: Option<String>,
    pub quota: u32,
    pub min: u32,
    pub max: u32,
    pub connections: u32,
    pub idle: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Member {
    pub id: String,
    pub host: String,
    pub service: String,
    pub pid: i64,
    pub heartbeat_age_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Database {
    pub healthy: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub max_connections: Option<u32>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    Provider,
    Adhoc,
    External,
    Reservations,
    Own,
    Unclaimed,
    Job,
    Headroom,
}

/// One part of the budget bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub label: String,
    pub count: u32,
    /// Live use inside the part (jobs: their connections; external: external_live).
    pub live: u32,
}

impl BudgetView {
    /// Read a budget reply's JSON (`/budget`, `corral budget --json`); what does not read is empty.
    pub fn from_json(v: &Value) -> BudgetView {
        let mut view = BudgetView::from_report(&serde_json::from_value(v.clone()).unwrap_or_default());
        // What an older corral left out is not known, rather than zero.
        if v.get("limit_source").is_none() {
            view.limit_source = None;
        }
        if v.get("headroom").is_none() {
            view.headroom = view.usable.saturating_sub(view.granted);
        }
        view
    }

    pub fn from_report(b: &BudgetReport) -> BudgetView {
        let fleet = b.scope == BudgetScope::Fleet;
        BudgetView {
            scope: if fleet { "fleet".into() } else { "local".into() },
            service: b.service.clone(),
            limit: b.limit,
            limit_source: serde_json::to_value(b.limit_source).ok().and_then(|v| v.as_str().map(str::to_string)),
            provider_reserve: b.provider_reserve,
            adhoc_reserve: b.adhoc_reserve,
            external_reserve: b.external_reserve,
            reservations: b.reservations.iter().map(|r| (r.name.clone(), r.count)).collect(),
            own: b.own,
            unclaimed: if fleet { b.unclaimed.unwrap_or(0) } else { 0 },
            usable: b.usable,
            granted: b.granted,
            headroom: b.headroom,
            live: b.live,
            external_live: b.external_live,
            jobs: b
                .jobs
                .iter()
                .map(|j| JobGrant {
                    name: j.name.clone(),
                    service: j.service.clone(),
                    member: j.member.clone(),
                    quota: j.quota,
                    min: j.min,
                    max: j.max,
                    connections: j.connections,
                    idle: j.idle,
                })
                .collect(),
            members: b
                .members
                .iter()
                .flatten()
                .map(|m| Member { id: m.id.clone(), host: m.host.clone(), service: m.service.clone(), pid: i64::from(m.pid), heartbeat_age_s: m.heartbeat_age_s })
                .collect(),
            warnings: b.warnings.clone(),
            database: Database {
                healthy: b.database.healthy,
                latency_ms: b.database.latency_ms,
                error: b.database.error.clone(),
                max_connections: b.database.max_connections,
                target: b.database.target.clone(),
            },
            coordination: b.coordination.as_ref().map(|c| (c.healthy, c.error.clone())),
        }
    }

    pub fn reserved(&self) -> u32 {
        self.reservations.iter().map(|(_, n)| n).sum()
    }

    /// The bar's parts, left to right; empty parts are left out. Job grants are those of
    /// jobs that hold one (quota > 0).
    pub fn segments(&self) -> Vec<Segment> {
        let seg = |kind, label: &str, count, live| Segment { kind, label: label.to_string(), count, live };
        let mut out = vec![
            seg(SegmentKind::Provider, "provider", self.provider_reserve, 0),
            seg(SegmentKind::Adhoc, "ad hoc", self.adhoc_reserve, 0),
            seg(SegmentKind::External, "external", self.external_reserve, self.external_live.min(self.external_reserve)),
            seg(SegmentKind::Reservations, "reservations", self.reserved(), 0),
            seg(SegmentKind::Own, "corral", self.own, 0),
            seg(SegmentKind::Unclaimed, "unclaimed", self.unclaimed, self.unclaimed),
        ];
        for j in self.jobs.iter().filter(|j| j.quota > 0) {
            out.push(seg(SegmentKind::Job, &j.name, j.quota, j.connections.min(j.quota)));
        }
        out.push(seg(SegmentKind::Headroom, "headroom", self.headroom, 0));
        out.retain(|s| s.count > 0);
        out
    }

    /// What the bar spans: the limit, or more when the parts add up to more (members of a
    /// fleet that disagree, a job over its quota).
    pub fn span(&self) -> u32 {
        self.limit.max(self.segments().iter().map(|s| s.count).sum())
    }
}

/// One of the recent events of the `history` reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventView {
    pub seq: u64,
    /// Unix seconds.
    pub at: f64,
    pub kind: String,
    pub job: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryView {
    /// Oldest first.
    pub events: Vec<EventView>,
}

impl HistoryView {
    pub fn from_report(h: &crate::protocol::HistoryReport) -> HistoryView {
        let events = h
            .events
            .iter()
            .map(|e| EventView { seq: e.seq, at: e.at, kind: e.kind.as_str().to_string(), job: e.job.clone(), message: e.message.clone() })
            .collect();
        HistoryView { events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local() -> Value {
        json!({
            "scope": "local", "service": "scraper", "limit": 57, "limit_source": "server",
            "provider_reserve": 6, "adhoc_reserve": 5, "external_reserve": 2,
            "reservations": [{"name": "migration", "count": 3, "expires_in_s": null}],
            "own": 1, "usable": 40, "granted": 30, "headroom": 10, "live": 12, "external_live": 1,
            "jobs": [
                {"name": "a", "service": "scraper", "quota": 20, "min": 2, "max": 20, "priority": 10, "connections": 9, "idle": false},
                {"name": "b", "service": "scraper", "quota": 10, "min": 1, "max": 10, "priority": 0, "connections": 12, "idle": false},
                {"name": "off", "service": "scraper", "quota": 0, "min": 1, "max": 4, "priority": 0, "connections": 0, "idle": false},
            ],
            "warnings": ["w1"],
            "database": {"healthy": true, "latency_ms": 1.5, "checked_at": 1.0, "error": null, "target": "postgres://u@h/db", "max_connections": 60},
        })
    }

    #[test]
    fn local_budget_reads_every_part() {
        let b = BudgetView::from_json(&local());
        assert_eq!((b.limit, b.usable, b.granted, b.headroom, b.live, b.external_live), (57, 40, 30, 10, 12, 1));
        assert_eq!(b.limit_source.as_deref(), Some("server"));
        assert_eq!(b.reserved(), 3);
        assert_eq!(b.database.max_connections, Some(60));
        assert_eq!(b.database.latency_ms, Some(1.5));
        assert!(b.database.healthy && b.coordination.is_none() && b.members.is_empty());
        let segs = b.segments();
        let parts: Vec<_> = segs.iter().map(|s| (s.label.as_str(), s.count, s.live)).collect();
        assert_eq!(
            parts,
            vec![
                ("provider", 6, 0),
                ("ad hoc", 5, 0),
                ("external", 2, 1),
                ("reservations", 3, 0),
                ("corral", 1, 0),
                ("a", 20, 9),
                // Live use over the quota is drawn full, not past its part.
                ("b", 10, 10),
                ("headroom", 10, 0),
            ]
        );
        assert_eq!(segs.iter().map(|s| s.count).sum::<u32>(), 57);
        assert_eq!(b.span(), 57);
    }

    #[test]
    fn missing_keys_read_as_nothing() {
        let b = BudgetView::from_json(&json!({}));
        assert_eq!(b, BudgetView { scope: "local".into(), ..Default::default() });
        assert!(b.segments().is_empty());
        assert_eq!(b.span(), 0);
        let b = BudgetView::from_json(&json!({"usable": 10, "granted": 4}));
        assert_eq!(b.headroom, 6);
    }

    #[test]
    fn limit_source_is_rendered_by_its_stable_name() {
        for (v, want) in [(json!("preset"), Some("preset")), (json!("pooler"), Some("pooler")), (json!("unknown"), Some("unknown"))] {
            let b = BudgetView::from_json(&json!({ "limit_source": v }));
            assert_eq!(b.limit_source.as_deref(), want);
        }
    }

    #[test]
    fn fleet_budget_has_members_unclaimed_and_coordination() {
        let v = json!({
            "scope": "fleet", "service": "api", "member": "h1:/s", "limit": 60, "limit_source": "server",
            "provider_reserve": 6, "adhoc_reserve": 5, "external_reserve": 0, "base": 49,
            "reservations": [{"name": "x", "count": 2, "created_by": "h1:/s"}], "reserved": 2,
            "own": 4, "unclaimed": 1, "usable": 42, "granted": 8, "headroom": 34, "live": 3, "external_live": 0,
            "members": [{"id": "h1:/s", "service": "api", "host": "h1", "pid": 7, "heartbeat_age_s": 0.5, "own": 2, "base": 49}],
            "jobs": [{"name": "w", "service": "api", "member": "h1:/s", "host": "h1", "quota": 8, "min": 1, "max": 8, "connections": 3, "idle": false}],
            "coordination": {"healthy": false, "error": "timeout"},
            "database": {"healthy": true},
        });
        let b = BudgetView::from_json(&v);
        assert_eq!(b.scope, "fleet");
        assert_eq!(b.members, vec![Member { id: "h1:/s".into(), host: "h1".into(), service: "api".into(), pid: 7, heartbeat_age_s: 0.5 }]);
        assert_eq!(b.jobs[0].member.as_deref(), Some("h1:/s"));
        assert_eq!(b.coordination, Some((false, Some("timeout".into()))));
        let labels: Vec<_> = b.segments().into_iter().map(|s| (s.kind, s.count)).collect();
        assert_eq!(
            labels,
            vec![
                (SegmentKind::Provider, 6),
                (SegmentKind::Adhoc, 5),
                (SegmentKind::Reservations, 2),
                (SegmentKind::Own, 4),
                (SegmentKind::Unclaimed, 1),
                (SegmentKind::Job, 8),
                (SegmentKind::Headroom, 34),
            ]
        );
        assert_eq!(b.span(), 60);
    }

    #[test]
    fn history_events_read_oldest_first() {
        let v = json!({"now": 12.0, "latency": {"window_s": 3600, "spacing_s": 10, "samples": []}, "event_counts": {}, "events": [
            {"seq": 1, "at": 10.5, "kind": "exit", "job": "w", "message": "exited: exit code 1 after 2.0s"},
            {"seq": 2, "at": 11.0, "kind": "database_down", "job": null, "message": "down"},
        ]});
        let h = HistoryView::from_report(&serde_json::from_value(v).unwrap());
        assert_eq!(h.events.len(), 2);
        assert_eq!((h.events[0].seq, h.events[0].kind.as_str(), h.events[0].job.as_deref()), (1, "exit", Some("w")));
        assert_eq!((h.events[1].at, h.events[1].job.as_deref()), (11.0, None));
        assert!(HistoryView::from_report(&Default::default()).events.is_empty());
    }
}
