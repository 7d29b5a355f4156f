//! The budget JSON of SPEC §4 (`corral budget --json`, `/budget`) read into a typed view for
//! the Rust clients that draw it: `/metrics` and `corral top`. This is the one place that
//! reads that JSON by key (the dashboard page reads it in JavaScript); the typed protocol
//! replaces it later. Missing keys read as zero or none, so an older or newer corral's
//! JSON still draws.
//!
//! [`BudgetView::segments`] splits the limit into the parts the bar shows, in order: the
//! reserves, corral's own connections, each job's grant (with its live use), headroom.
//! [`HistoryView`] reads the `history` reply (recent events) the same way.

use serde_json::Value;

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

fn count(v: &Value, key: &str) -> u32 {
    v.get(key).and_then(Value::as_u64).map_or(0, |n| n.min(u32::MAX as u64) as u32)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// `limit_source` as a user reads it: a string as is; an object by its label or as JSON.
fn source_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["label", "text", "description", "name", "kind"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string))
            .or_else(|| Some(v.to_string())),
        other => Some(other.to_string()),
    }
}

impl BudgetView {
    pub fn from_json(v: &Value) -> BudgetView {
        let fleet = v.get("scope").and_then(Value::as_str) == Some("fleet");
        let reservations: Vec<(String, u32)> = v
            .get("reservations")
            .and_then(Value::as_array)
            .map(|rs| rs.iter().map(|r| (text(r, "name").unwrap_or_default(), count(r, "count"))).collect())
            .unwrap_or_default();
        let jobs = v
            .get("jobs")
            .and_then(Value::as_array)
            .map(|js| {
                js.iter()
                    .map(|j| JobGrant {
                        name: text(j, "name").unwrap_or_default(),
                        service: text(j, "service").unwrap_or_default(),
                        member: text(j, "member"),
                        quota: count(j, "quota"),
                        min: count(j, "min"),
                        max: count(j, "max"),
                        connections: count(j, "connections"),
                        idle: j.get("idle").and_then(Value::as_bool).unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let members = v
            .get("members")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| Member {
                        id: text(m, "id").unwrap_or_default(),
                        host: text(m, "host").unwrap_or_default(),
                        service: text(m, "service").unwrap_or_default(),
                        pid: m.get("pid").and_then(Value::as_i64).unwrap_or(0),
                        heartbeat_age_s: m.get("heartbeat_age_s").and_then(Value::as_f64).unwrap_or(0.0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let db = v.get("database").cloned().unwrap_or(Value::Null);
        let coordination = v.get("coordination").filter(|c| c.is_object()).map(|c| {
            (c.get("healthy").and_then(Value::as_bool).unwrap_or(false), text(c, "error"))
        });
        BudgetView {
            scope: text(v, "scope").unwrap_or_else(|| "local".into()),
            service: text(v, "service").unwrap_or_default(),
            limit: count(v, "limit"),
            limit_source: v.get("limit_source").and_then(source_text),
            provider_reserve: count(v, "provider_reserve"),
            adhoc_reserve: count(v, "adhoc_reserve"),
            external_reserve: count(v, "external_reserve"),
            reservations,
            own: count(v, "own"),
            unclaimed: if fleet { count(v, "unclaimed") } else { 0 },
            usable: count(v, "usable"),
            granted: count(v, "granted"),
            headroom: v.get("headroom").map_or_else(|| count(v, "usable").saturating_sub(count(v, "granted")), |_| count(v, "headroom")),
            live: count(v, "live"),
            external_live: count(v, "external_live"),
            jobs,
            members,
            warnings: v
                .get("warnings")
                .and_then(Value::as_array)
                .map(|ws| ws.iter().filter_map(|w| w.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            database: Database {
                healthy: db.get("healthy").and_then(Value::as_bool).unwrap_or(false),
                latency_ms: db.get("latency_ms").and_then(Value::as_f64),
                error: text(&db, "error"),
                max_connections: db.get("max_connections").and_then(Value::as_u64).map(|n| n.min(u32::MAX as u64) as u32),
                target: text(&db, "target"),
            },
            coordination,
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
    pub fn from_json(v: &Value) -> HistoryView {
        let events = v
            .get("events")
            .and_then(Value::as_array)
            .map(|es| {
                es.iter()
                    .map(|e| EventView {
                        seq: e.get("seq").and_then(Value::as_u64).unwrap_or(0),
                        at: e.get("at").and_then(Value::as_f64).unwrap_or(0.0),
                        kind: text(e, "kind").unwrap_or_default(),
                        job: text(e, "job"),
                        message: text(e, "message").unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
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
    fn limit_source_is_rendered_whatever_its_shape() {
        for (v, want) in [
            (json!("preset"), Some("preset")),
            (json!({"label": "session pooler pool_size", "value": 15}), Some("session pooler pool_size")),
            (json!({"value": 15}), Some("{\"value\":15}")),
            (Value::Null, None),
        ] {
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
        let v = json!({"events": [
            {"seq": 1, "at": 10.5, "kind": "exit", "job": "w", "message": "exited: exit code 1 after 2.0s"},
            {"seq": 2, "at": 11.0, "kind": "database_down", "job": null, "message": "down"},
        ]});
        let h = HistoryView::from_json(&v);
        assert_eq!(h.events.len(), 2);
        assert_eq!((h.events[0].seq, h.events[0].kind.as_str(), h.events[0].job.as_deref()), (1, "exit", Some("w")));
        assert_eq!((h.events[1].at, h.events[1].job.as_deref()), (11.0, None));
        assert!(HistoryView::from_json(&json!(null)).events.is_empty());
    }
}
