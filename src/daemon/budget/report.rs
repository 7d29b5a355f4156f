//! What the budget shows (SPEC §4, §6): `corral budget --json` in both scopes, the `budget`
//! object of `status`, the database's health. Read-only views of [`Budget`] and the job table.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::{Budget, FleetState};
use crate::budget::allocate::Wants;
use crate::daemon::jobs::JobTable;
use crate::db::fleet::FleetView;
use crate::protocol::{BudgetJob, BudgetReport, BudgetScope, BudgetSummary, Coordination, DbHealth, ExternalGroup, HealthReport, ReservationRow, ServiceRow, TlsReport};

impl Budget {
    /// `corral health` with a `[database]` (SPEC §6): healthy when the last check passed and
    /// the fleet coordination (if any) works; planned offline there is nothing to check.
    pub fn health(&self, supervisor: bool) -> HealthReport {
        let fleet_error = self.fleet.as_ref().and_then(|f| f.last_error.clone());
        let ok = self.status.healthy == Some(true) && fleet_error.is_none();
        let message = match (&self.status.error, self.status.latency_ms) {
            (Some(e), _) => format!("database unhealthy: {e}"),
            (None, _) if fleet_error.is_some() => format!("fleet coordination failing: {}", fleet_error.clone().unwrap_or_default()),
            (None, Some(l)) => format!("supervisor running; database healthy ({l:.1} ms)"),
            (None, None) if self.offline() => "supervisor running; no database url (budget planned offline)".to_string(),
            (None, None) => "database not checked yet".to_string(),
        };
        HealthReport { healthy: ok || (self.offline() && fleet_error.is_none()), supervisor, database: Some(self.db_health()), message }
    }

    /// Connections outside corral, grouped by role and application_name (SPEC §5).
    fn external_groups(&self) -> Vec<ExternalGroup> {
        let Some(u) = self.usage.as_ref() else { return Vec::new() };
        let mut m: BTreeMap<(String, String), u32> = BTreeMap::new();
        for g in &u.groups {
            if let crate::db::Attribution::External { role, application_name } = &g.attribution {
                *m.entry((role.clone(), application_name.clone())).or_default() += g.count;
            }
        }
        m.into_iter().map(|((role, application_name), connections)| ExternalGroup { role, application_name, connections }).collect()
    }

    /// `corral budget --json` (SPEC §4); in fleet scope, the whole fleet.
    pub fn report(&self, jobs: &JobTable, now: Instant) -> BudgetReport {
        if let Some(f) = &self.fleet {
            return self.fleet_report(f, jobs, now);
        }
        let p = self.plan(now);
        let service = &self.cfg.service;
        let job_rows: Vec<_> = jobs
            .values()
            .filter_map(|j| {
                let c = j.cfg.connections?;
                let b = j.ledger.clone().unwrap_or_default();
                Some(BudgetJob {
                    name: j.cfg.name.clone(),
                    service: service.clone(),
                    quota: if j.live() || j.wants_to_run() { b.grant } else { 0 },
                    min: c.min,
                    max: c.max,
                    priority: j.cfg.priority,
                    connections: b.live.unwrap_or(0),
                    idle: j.live() && self.is_idle(&b, now),
                    state_waiting: b.waiting,
                    ..BudgetJob::default()
                })
            })
            .collect();
        let granted: u32 = jobs
            .values()
            .filter(|j| j.cfg.connections.is_some() && (j.live() || j.wants_to_run()))
            .map(|j| j.ledger.as_ref().map_or(0, |b| b.grant))
            .sum();
        let live = self.usage.as_ref().map(|u| u.sum(|a| matches!(a, crate::db::Attribution::Job { service: s, .. } if s == service)));
        let external_live = self.usage.as_ref().map(|u| u.external());
        let reservations: Vec<_> = self
            .reservations
            .iter()
            .map(|(name, r)| ReservationRow {
                name: name.clone(),
                count: r.count,
                created_by: None,
                expires_in_s: r.expires.map(|e| e.saturating_duration_since(now).as_secs_f64()),
            })
            .collect();
        let usable_f = p.usable.max(1) as f64;
        let live_jobs = live.unwrap_or(0);
        let mut warnings = p.warnings.clone();
        if p.usable > 0 && (live_jobs as f64) / usable_f > self.cfg.warn_at {
            warnings.push(format!(
                "live use {live_jobs} is above warn_at {:.0}% of usable {}",
                self.cfg.warn_at * 100.0,
                p.usable
            ));
        }
        if let Some(e) = &self.pooler_error {
            warnings.push(format!("the PgBouncer admin console did not answer (sizes from its last answer, live use from pg_stat_activity): {e}"));
        }
        BudgetReport {
            scope: BudgetScope::Local,
            service: service.clone(),
            member: None,
            limit: p.limit,
            limit_source: p.limit_source,
            limit_reason: p.limit_reason,
            pooler: p.pooler,
            offline: self.offline(),
            provider_reserve: p.provider_reserve,
            adhoc_reserve: p.adhoc_reserve,
            external_reserve: p.external_reserve,
            base: None,
            reservations,
            reserved: None,
            own: p.own,
            unclaimed: None,
            usable: p.usable,
            granted,
            headroom: p.usable.saturating_sub(granted),
            live: live.unwrap_or(0),
            external_live: external_live.unwrap_or(0),
            external: self.external_groups(),
            services: None,
            members: None,
            jobs: job_rows,
            warnings,
            coordination: None,
            database: self.db_health(),
        }
    }

    /// The fleet as the last sync saw it: every member's jobs, per-service totals,
    /// fleet-wide reservations and the health of the coordination.
    fn fleet_report(&self, f: &FleetState, jobs: &JobTable, now: Instant) -> BudgetReport {
        let local = self.plan(now);
        let fp = f.plan.clone().unwrap_or_default();
        let empty = FleetView::default();
        let view = f.view.as_ref().unwrap_or(&empty);
        let host_of = |member: &str| view.members.iter().find(|m| m.id == member).map(|m| m.host.clone());
        let job_rows: Vec<_> = view
            .jobs
            .iter()
            .map(|j| {
                let mine = j.member == f.member;
                let b = jobs.get(&j.name).filter(|_| mine).and_then(|v| v.ledger.as_ref());
                BudgetJob {
                    name: j.name.clone(),
                    service: j.service.clone(),
                    member: Some(j.member.clone()),
                    host: Some(host_of(&j.member)),
                    quota: if j.wants == Wants::Off { 0 } else { j.quota },
                    min: j.min,
                    max: j.max,
                    priority: j.priority,
                    // Our own jobs: the freshest reading; others': what their corral reported.
                    connections: b.and_then(|b| b.live).or(j.connections).unwrap_or(0),
                    idle: j.wants == Wants::Idle,
                    wants: Some(j.wants),
                    state_waiting: j.waiting.clone(),
                }
            })
            .collect();
        let granted: u32 = view.jobs.iter().filter(|j| j.wants != Wants::Off).map(|j| j.quota).sum();
        let live_of_service = |svc: &str| -> u32 {
            view.backends
                .iter()
                .filter(|(app, _)| matches!(crate::db::Attribution::classify(app, ""), crate::db::Attribution::Job { service, .. } if service == svc))
                .map(|(_, n)| *n)
                .sum()
        };
        let services: BTreeMap<&str, ()> = view.members.iter().map(|m| (m.service.as_str(), ())).collect();
        let usable_f = fp.usable.max(1) as f64;
        let service_rows: Vec<_> = services
            .keys()
            .map(|svc| {
                let g: u32 = view.jobs.iter().filter(|j| j.service == *svc && j.wants != Wants::Off).map(|j| j.quota).sum();
                ServiceRow {
                    service: svc.to_string(),
                    corrals: view.members.iter().filter(|m| m.service == *svc).count() as u32,
                    jobs: view.jobs.iter().filter(|j| j.service == *svc).count() as u32,
                    granted: g,
                    live: live_of_service(svc),
                    share: ((g as f64 / usable_f) * 1000.0).round() / 1000.0,
                }
            })
            .collect();
        let live: u32 = services.keys().map(|s| live_of_service(s)).sum();
        let mut warnings = local.warnings.clone();
        if fp.disagree {
            warnings.push(format!(
                "fleet members disagree on limit or reserves; the smallest base ({}) is used",
                fp.base
            ));
        }
        let shared = self.shared_service();
        if !shared.is_empty() {
            warnings.push(format!(
                "service {:?} is also used by {}: their jobs' connections are indistinguishable; give each corral its own service",
                self.cfg.service,
                shared.join(", ")
            ));
        }
        if fp.unclaimed > 0 {
            warnings.push(format!(
                "{} connection(s) carry a corral application_name no live member claims (an expired corral's jobs?); they are not handed out",
                fp.unclaimed
            ));
        }
        let reservations = view
            .reservations
            .iter()
            .map(|r| ReservationRow { name: r.name.clone(), count: r.count, created_by: Some(r.created_by.clone()), expires_in_s: r.expires_in_s })
            .collect();
        let members = view.members.clone();
        BudgetReport {
            scope: BudgetScope::Fleet,
            service: self.cfg.service.clone(),
            member: Some(f.member.clone()),
            limit: local.limit,
            limit_source: local.limit_source,
            limit_reason: local.limit_reason,
            pooler: local.pooler,
            offline: false,
            provider_reserve: local.provider_reserve,
            adhoc_reserve: local.adhoc_reserve,
            external_reserve: local.external_reserve,
            base: Some(fp.base),
            reservations,
            reserved: Some(fp.reserved),
            own: fp.own,
            unclaimed: Some(fp.unclaimed),
            usable: fp.usable,
            granted,
            headroom: fp.usable.saturating_sub(granted),
            live,
            external_live: self.usage.as_ref().map(|u| u.external()).unwrap_or(0),
            external: self.external_groups(),
            services: Some(service_rows),
            members: Some(members),
            jobs: job_rows,
            warnings,
            coordination: Some(Coordination {
                syncs: Some(f.syncs),
                lease_losses: Some(f.lease_losses),
                expired: Some(view.expired.clone()),
                ..coordination(f, now)
            }),
            database: self.db_health(),
        }
    }

    /// What `status` shows of the budget: the limit that binds and why, and the database.
    pub fn summary(&self, jobs: &JobTable, now: Instant) -> BudgetSummary {
        let p = self.plan(now);
        let (usable, granted) = match self.fleet.as_ref().and_then(|f| f.plan.as_ref().map(|fp| (f, fp))) {
            Some((f, fp)) => (fp.usable, f.view.as_ref().map_or(0, |v| v.jobs.iter().filter(|j| j.wants != Wants::Off).map(|j| j.quota).sum())),
            None => (p.usable, jobs.values().filter_map(|j| j.ledger.as_ref()).map(|b| b.grant).sum()),
        };
        BudgetSummary {
            limit: p.limit,
            limit_source: p.limit_source,
            limit_reason: p.limit_reason,
            usable,
            granted,
            offline: self.offline(),
            scope: if self.fleet.is_some() { BudgetScope::Fleet } else { BudgetScope::Local },
            database: self.db_health(),
        }
    }

    pub fn db_health(&self) -> DbHealth {
        let s = &self.status;
        DbHealth {
            healthy: s.healthy.unwrap_or(false),
            latency_ms: s.latency_ms,
            checked_at: s.checked_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()),
            error: s.error.clone(),
            target: self.db.url.as_ref().map(|u| crate::db::redact(u.as_str())),
            tls: s.tls.as_ref().map(|t| TlsReport {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
                sslmode: t.sslmode.as_str().to_string(),
                verified: t.verified.to_string(),
            }),
            offline: self.offline(),
            // The server's own setting as last read (the dashboard and /metrics show it).
            max_connections: self.limits.map(|l| l.max_connections),
            coordination: self.fleet.as_ref().map(|f| coordination(f, Instant::now())),
        }
    }
}

/// The coordination's health as `database` and `budget` show it.
fn coordination(f: &FleetState, now: Instant) -> Coordination {
    Coordination {
        healthy: f.last_error.is_none() && f.last_ok.is_some(),
        member: f.member.clone(),
        last_sync_age_s: f.last_ok.map(|t| now.duration_since(t).as_secs_f64()),
        error: f.last_error.clone(),
        ..Coordination::default()
    }
}
