//! Everything the CLI prints. Human output looks like supervisorctl's; `--json`
//! prints the reply's data with the stable field names of SPEC §4.

use crate::budget::plan::{LimitSource, Plan};
use crate::config::Config;
use crate::job::machine::signal_name;
use crate::protocol::{BudgetReport, BudgetScope, DbHealth, JobState, JobStatus, LogLine, Reply, Request, Response, StatusReport};

/// Colour in human output (states as systemctl colours them): only when stdout is a terminal,
/// and never when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn colour_wanted(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn colour() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        use std::io::IsTerminal;
        colour_wanted(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
    })
}

/// The SGR code systemctl would use for a job state: green running, yellow on the way, red failed.
fn state_style(state: JobState) -> Option<&'static str> {
    match state {
        JobState::Running => Some("32"),
        JobState::Starting | JobState::Stopping | JobState::Backoff | JobState::Waiting => Some("33"),
        JobState::Fatal => Some("1;31"),
        JobState::Stopped | JobState::Exited | JobState::Scheduled => None,
    }
}

fn paint(text: &str, style: Option<&str>, on: bool) -> String {
    match style {
        Some(code) if on => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_string(),
    }
}

pub fn response(request: &Request, resp: &Response, json: bool) {
    if !resp.ok {
        let err = resp.error.as_ref();
        if json {
            println!("{}", serde_json::to_string(&resp.error).unwrap_or_default());
        } else if let Some(Reply::Actions { jobs }) = err.and_then(|e| e.result.as_deref()) {
            match request {
                // What was signalled before the refusal.
                Request::Signal { signal, .. } => print!("{}", signalled(jobs, signal)),
                _ => print!("{}", status_table_styled(jobs, colour())),
            }
        }
        if let Some(e) = err {
            // Config errors already read `error: file:line:col: ...`.
            if e.message.starts_with("error: ") {
                eprintln!("{}", e.message);
            } else {
                eprintln!("error: {}", e.message);
            }
        }
        return;
    }
    let Some(reply) = &resp.result else { return };
    if json {
        let value = match reply {
            Reply::Status(s) => serde_json::to_value(s),
            Reply::Actions { jobs } => serde_json::to_value(serde_json::json!({ "jobs": jobs })),
            Reply::Reload(r) => serde_json::to_value(r),
            Reply::Logs { lines } => serde_json::to_value(serde_json::json!({ "lines": lines })),
            Reply::Log(l) => serde_json::to_value(l),
            Reply::Budget(b) => serde_json::to_value(b),
            Reply::History(h) => serde_json::to_value(h),
            Reply::Health(h) => serde_json::to_value(h),
            Reply::Done { message } => Ok(serde_json::json!({ "message": message })),
        };
        println!("{}", value.map(|v| v.to_string()).unwrap_or_default());
        return;
    }
    match reply {
        Reply::Status(s) => print!("{}", status(s)),
        Reply::Actions { jobs } => {
            let verb = match request {
                Request::Start { .. } => "started",
                Request::Stop { .. } => "stopped",
                Request::Restart { .. } => "restarted",
                Request::Signal { signal, .. } => {
                    print!("{}", signalled(jobs, signal));
                    return;
                }
                _ => "done",
            };
            for j in jobs {
                match (&j.reason, j.state) {
                    // Answered while still held back: it starts by itself once the budget frees up.
                    (Some(reason), JobState::Waiting) => println!("{}: queued (waiting: {reason})", j.name),
                    _ => println!("{}: {verb} ({})", j.name, paint(j.state.as_str(), state_style(j.state), colour())),
                }
            }
        }
        Reply::Reload(r) => {
            let applied = if r.applied { "applied" } else { "dry run, nothing applied" };
            println!("reload: {applied}");
            let p = &r.plan;
            for (list, label) in [(&p.added, "add"), (&p.removed, "remove"), (&p.restart, "restart"), (&p.update, "update (no restart)")] {
                for name in list {
                    println!("  {label}: {name}");
                }
            }
            for item in &p.needs_restart {
                println!("  needs a corral restart: {item}");
            }
        }
        Reply::Logs { lines } => {
            for l in lines {
                println!("{}", log_line(request, l, colour()));
            }
        }
        Reply::Log(l) => println!("{}", log_line(request, l, colour())),
        Reply::Budget(b) => print!("{}", budget(b)),
        // Only `corral top` and the dashboard ask for it.
        Reply::History(_) => {}
        Reply::Health(h) => {
            let (word, style) = if h.healthy { ("healthy", "32") } else { ("UNHEALTHY", "1;31") };
            println!("{}: {}", paint(word, Some(style), colour()), h.message)
        }
        Reply::Done { message } => println!("{message}"),
    }
}

/// `corral signal`: one line per job signalled.
fn signalled(jobs: &[JobStatus], signal: &str) -> String {
    jobs.iter()
        .map(|j| format!("{}: sent {signal} to pid {}\n", j.name, j.pid.map_or_else(|| "-".into(), |p| p.to_string())))
        .collect()
}

/// One job's lines as the job wrote them; several jobs' with time, job and stream in front:
/// `2026-05-01T10:00:00.123Z layer1 stderr: message`.
pub fn log_line(request: &Request, l: &LogLine, colour: bool) -> String {
    // `logs NAME` of a job with `instances` merges NAME.0, NAME.1, ...: those keep their name.
    if matches!(request, Request::Logs { job: Some(j), .. } if *j == l.job) {
        return l.line.clone();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(l.ts.max(0.0));
    let stream_style = (l.stream == "stderr").then_some("33");
    format!(
        "{} {} {}: {}",
        humantime::format_rfc3339_millis(at),
        paint(&l.job, Some("1"), colour),
        paint(&l.stream, stream_style, colour),
        l.line
    )
}

fn status(s: &StatusReport) -> String {
    let mut out = status_table_styled(&s.jobs, colour());
    if let Some(b) = &s.budget {
        let offline = if b.offline { ", planned offline" } else { "" };
        out.push_str(&format!("\nbudget: limit {} ({}), usable {}, granted {}{offline}\n", b.limit, b.limit_reason, b.usable, b.granted));
        out.push_str(&database_line(&b.database));
    }
    if let Some(err) = &s.config_error {
        out.push_str(&format!("\nconfig error (running config kept):\n{err}\n"));
    }
    out
}

/// Aligned columns, one line per job, like `supervisorctl status`.
pub fn status_table(jobs: &[JobStatus]) -> String {
    status_table_styled(jobs, false)
}

/// [`status_table`], with the STATE column coloured when `colour`.
pub fn status_table_styled(jobs: &[JobStatus], colour: bool) -> String {
    let header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "QUOTA", "CONN", "REASON"];
    let rows: Vec<[String; 9]> = jobs
        .iter()
        .map(|j| {
            [
                j.name.clone(),
                j.state.as_str().to_uppercase(),
                j.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                j.uptime_s.map(uptime).unwrap_or_else(|| "-".into()),
                j.restarts.to_string(),
                j.last_exit
                    .map(|e| match (e.code, e.signal) {
                        (Some(c), _) => format!("exit {c}"),
                        (_, Some(s)) => signal_name(s),
                        _ => "-".into(),
                    })
                    .unwrap_or_else(|| "-".into()),
                j.quota.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
                j.connections.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
                { let r = reason_or_schedule(j); if r.is_empty() { watch_note(j) } else { r } },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Padding is computed on the plain text; colour wraps the word only.
    let line = |cells: &[String], style: Option<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let text = if i == 1 { paint(c, style, colour) } else { c.clone() };
                s.push_str(&text);
                s.extend(std::iter::repeat_n(' ', widths[i].saturating_sub(c.chars().count()) + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from), None);
    for (r, j) in rows.iter().zip(jobs) {
        out.push_str(&line(r, state_style(j.state)));
    }
    out
}

/// The REASON column: the reason, or for a scheduled job its next run, last run and misses.
pub fn reason_or_schedule(j: &JobStatus) -> String {
    match (&j.reason, &j.schedule) {
        (None, Some(s)) => schedule_summary(s),
        (r, _) => r.clone().unwrap_or_default(),
    }
}

/// `next 2026-12-01T14:00:00Z · last succeeded in 1.2s · 2 missed`.
pub fn schedule_summary(s: &crate::protocol::ScheduleStatus) -> String {
    let mut parts = Vec::new();
    match &s.next_run {
        Some(n) => parts.push(format!("next {n}")),
        None if !s.armed => parts.push("schedule stopped (corral start follows it again)".to_string()),
        None => {}
    }
    if let Some(l) = &s.last_run {
        let took = l.duration_s.map(|d| format!(" in {}", short_secs(d))).unwrap_or_default();
        let why = l.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        parts.push(format!("last {}{took}{why}", l.result));
    }
    if s.missed > 0 {
        parts.push(format!("{} missed", s.missed));
    }
    if s.skipped > 0 {
        parts.push(format!("{} skipped", s.skipped));
    }
    parts.join(" · ")
}

fn short_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        uptime(s)
    }
}

/// The watchdog's word on a job without a reason: a running process that is not ready yet,
/// or what the last forced restart was for (SPEC §4).
fn watch_note(j: &JobStatus) -> String {
    match (j.state.as_str(), j.ready, &j.restart_reason) {
        ("running", false, _) => "not ready".into(),
        (_, _, Some(r)) => format!("last restart: {r}"),
        _ => String::new(),
    }
}

/// `0:01:21`, `2d 3:04:05` — supervisorctl's uptime style.
pub fn uptime(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}:{m:02}:{sec:02}")
    } else {
        format!("{h}:{m:02}:{sec:02}")
    }
}

/// `corral check` output: the parsed jobs, and with `--online` what the connection found.
pub fn check(cfg: &Config, plan: Option<&Plan>, minimums: u32, online: Option<&super::check::Online>, online_flag: bool, json: bool) {
    if json {
        let jobs: Vec<_> = cfg
            .jobs
            .values()
            .map(|j| {
                serde_json::json!({
                    "name": j.name, "command": j.command, "autostart": j.autostart,
                    "restart": restart_name(j.restart), "priority": j.priority,
                    "connections": j.connections.map(|c| serde_json::json!({"min": c.min, "max": c.max, "overflow": c.overflow})),
                    "schedule": j.schedule.as_ref().map(|s| s.spec.text.clone()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "config": cfg.path.display().to_string(), "valid": true, "jobs": jobs,
                                "budget": plan, "autostart_minimums": minimums, "online": online })
        );
        return;
    }
    println!("{}: ok, {} job(s)", cfg.path.display(), cfg.jobs.len());
    if let Some(a) = &cfg.alerts {
        println!("{}", alerts_line(a));
    }
    let rows: Vec<[String; 5]> = cfg
        .jobs
        .values()
        .map(|j| {
            [
                j.name.clone(),
                match &j.schedule {
                    Some(s) => format!("schedule \"{}\" {}", s.spec.text, s.spec.tz.name()),
                    None if j.autostart => "autostart".into(),
                    None => "manual".into(),
                },
                format!("restart={}", restart_name(j.restart)),
                j.connections.map(|c| format!("conn {}..{}", c.min, c.max)).unwrap_or_else(|| "no db".into()),
                j.command.join(" "),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    for r in rows.iter() {
        println!(
            "  {}{}{}{}{}",
            pad(&r[0], widths[0]), pad(&r[1], widths[1]), pad(&r[2], widths[2]), pad(&r[3], widths[3]), r[4]
        );
    }
    if let Some(o) = online {
        online_lines(o);
    }
    if let Some(p) = plan {
        let no_url = cfg.database.as_ref().is_some_and(|d| d.url.is_none());
        budget_plan(p, minimums, online_flag && !no_url, no_url);
        if cfg.budget.scope == crate::config::Scope::Fleet {
            println!("  fleet scope: this is one corral alone; at run time the fleet shares the smallest base");
            println!("  of its members, minus 1 own connection per corral and fleet-wide reservations (`corral budget`)");
        }
    }
}

fn online_lines(o: &super::check::Online) {
    let target = o.target.as_deref().unwrap_or("the database");
    if !o.connected {
        println!("online: cannot connect to {target}");
        return;
    }
    println!("online: connected to {target} in {:.1} ms", o.connect_ms.unwrap_or(0.0));
    match &o.tls {
        Some(t) => println!("  tls     {}", t.describe()),
        None => println!("  tls     none (plaintext)"),
    }
    if let Some(l) = &o.server {
        let v = l.server_version_num;
        println!(
            "  server  max_connections {}, {} reserved for superusers, {} reserved_connections (PostgreSQL {}.{})",
            l.max_connections,
            l.superuser_reserved_connections,
            l.reserved_connections,
            v / 10000,
            v % 10000
        );
    }
    if let Some(r) = &o.pooler {
        println!(
            "  pooler  PgBouncer {} mode, pool_size {}, max_client_conn {}, {} client(s) now",
            r.mode.as_str(),
            r.session_cap(),
            r.max_client_conn,
            r.clients.iter().map(|c| c.count).sum::<u32>()
        );
    }
    if let Some(e) = &o.pooler_error {
        println!("  pooler  admin console UNREADABLE: {e}");
    }
}

fn budget_plan(p: &Plan, minimums: u32, online: bool, no_url: bool) {
    println!("connection budget:");
    if let Some(pl) = &p.pooler {
        let mode = pl.mode.map_or("unknown mode", |m| match m {
            crate::budget::plan::PoolerMode::Session => "session mode",
            crate::budget::plan::PoolerMode::Transaction => "transaction mode",
        });
        let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        println!("  jobs connect through {} ({mode}, pool_size {}, client limit {})", pl.via, n(pl.pool_size), n(pl.client_limit));
    }
    match p.limit_source {
        LimitSource::Unknown => {
            println!("  limit            auto: read from the server at startup (set `preset` or an integer to check offline)");
            for w in &p.warnings {
                println!("  warning: {w}");
            }
            return;
        }
        LimitSource::Preset if no_url => println!("  limit            {:>4}  (preset; planned offline: no url, nothing is measured)", p.limit),
        LimitSource::Preset if !online => println!("  limit            {:>4}  (preset; the server's value wins at run time)", p.limit),
        _ => println!("  limit            {:>4}  ({})", p.limit, p.limit_reason),
    }
    println!("  provider_reserve {:>4}", format!("-{}", p.provider_reserve));
    println!("  adhoc_reserve    {:>4}", format!("-{}", p.adhoc_reserve));
    println!("  external_reserve {:>4}", format!("-{}", p.external_reserve));
    println!("  corral itself    {:>4}", format!("-{}", p.own));
    println!("  usable for jobs  {:>4}  (autostart minimums: {minimums})", p.usable);
    for w in &p.warnings {
        println!("  warning: {w}");
    }
}

fn restart_name(r: crate::config::RestartPolicy) -> &'static str {
    match r {
        crate::config::RestartPolicy::Always => "always",
        crate::config::RestartPolicy::OnFailure => "on-failure",
        crate::config::RestartPolicy::Never => "never",
    }
}

/// `corral budget`: the SPEC §5 arithmetic, then one line per job.
pub fn budget(b: &BudgetReport) -> String {
    let reserved: u32 = b.reservations.iter().map(|r| r.count).sum();
    let mut out = String::new();
    let fleet = b.scope == BudgetScope::Fleet;
    let reason = if b.limit_reason.is_empty() { serde_json::to_value(b.limit_source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "?".into()) } else { b.limit_reason.clone() };
    let opt = |n: Option<u32>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    if b.offline {
        out.push_str("budget planned offline (no database url): nothing is measured, jobs get their grants from the preset\n");
    }
    if fleet {
        let c = b.coordination.clone().unwrap_or_default();
        let health = match (b.coordination.as_ref().map(|c| c.healthy), &c.error) {
            (_, Some(e)) => format!("coordination FAILING: {e}"),
            (Some(true), _) => format!("coordination healthy (last sync {:.1}s ago)", c.last_sync_age_s.unwrap_or(0.0)),
            _ => "coordination not synced yet".into(),
        };
        out.push_str(&format!(
            "fleet: {} corral(s); this one is {}; {health}\n",
            b.members.as_ref().map_or(0, |m| m.len()),
            b.member.as_deref().unwrap_or("?")
        ));
        out.push_str(&format!(
            "limit {} ({})  - provider {}  - ad hoc {}  - external {}  = base {}  - reserved {}  - corrals {}  - unclaimed {}  = usable {}\n",
            b.limit,
            reason,
            b.provider_reserve,
            b.adhoc_reserve,
            b.external_reserve,
            opt(b.base),
            reserved,
            b.own,
            opt(b.unclaimed),
            b.usable
        ));
    } else {
        out.push_str(&format!(
            "limit {} ({})  - provider {}  - ad hoc {}  - external {}  - reserved {}  - corral {}  = usable {}\n",
            b.limit, reason, b.provider_reserve, b.adhoc_reserve, b.external_reserve, reserved, b.own, b.usable
        ));
    }
    out.push_str(&format!("granted {}  headroom {}  live {}  external live {}\n", b.granted, b.headroom, b.live, b.external_live));
    if fleet {
        let srows: Vec<Vec<String>> = b
            .services
            .iter()
            .flatten()
            .map(|s| {
                vec![
                    s.service.clone(),
                    s.corrals.to_string(),
                    s.jobs.to_string(),
                    s.granted.to_string(),
                    s.live.to_string(),
                    format!("{:.0}%", s.share * 100.0),
                ]
            })
            .collect();
        out.push_str(&table(&["SERVICE", "CORRALS", "JOBS", "GRANTED", "LIVE", "SHARE"], &srows));
    }
    let mut header = vec!["JOB", "PRIORITY", "MIN", "MAX", "QUOTA", "LIVE", "IDLE", "WAITING"];
    if fleet {
        header.insert(1, "SERVICE");
        header.insert(2, "HOST");
    }
    let rows: Vec<Vec<String>> = b
        .jobs
        .iter()
        .map(|j| {
            let mut row = vec![
                j.name.clone(),
                j.priority.to_string(),
                j.min.to_string(),
                j.max.to_string(),
                j.quota.to_string(),
                j.connections.to_string(),
                if j.idle { "idle".into() } else { "-".into() },
                j.state_waiting.clone().unwrap_or_default(),
            ];
            if fleet {
                row.insert(1, j.service.clone());
                row.insert(2, j.host.clone().flatten().unwrap_or_else(|| "?".into()));
            }
            row
        })
        .collect();
    out.push_str(&table(&header, &rows));
    for r in &b.reservations {
        let ttl = r.expires_in_s.map(|s| format!(", expires in {:.0}s", s)).unwrap_or_default();
        out.push_str(&format!("reservation {}: {}{ttl}\n", r.name, r.count));
    }
    for e in &b.external {
        out.push_str(&format!(
            "external: {} connection(s) as role {} ({})\n",
            e.connections,
            e.role,
            Some(e.application_name.as_str()).filter(|a| !a.is_empty()).unwrap_or("no application_name")
        ));
    }
    out.push_str(&database_line(&b.database));
    for w in &b.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// `c` left-aligned in `width` columns plus the two-space gap. Not `{:<w$}`: a width above
/// 65,535 panics in `format!`, and no cell's length should be able to do that.
fn pad(c: &str, width: usize) -> String {
    let mut s = String::with_capacity(width + 2);
    s.push_str(c);
    s.extend(std::iter::repeat_n(' ', width.saturating_sub(c.chars().count()) + 2));
    s
}

/// The database's state in one line, the same in `budget` and `status`.
pub fn database_line(db: &DbHealth) -> String {
    let tls = match &db.tls {
        None => String::new(),
        Some(t) => format!(", {} {}", t.version, t.sslmode),
    };
    match (db.healthy, &db.error) {
        (_, Some(e)) => format!("database UNHEALTHY: {e}\n"),
        (true, None) => format!("database healthy ({:.1} ms{tls})\n", db.latency_ms.unwrap_or(0.0)),
        _ if db.offline => "database: none (no url; budget planned offline)\n".to_string(),
        _ => "database not checked yet\n".to_string(),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&pad(c, widths[i]));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// `check`'s line about `[alerts]`: where alerts go (the webhook without its secret path).
fn alerts_line(a: &crate::config::AlertsConfig) -> String {
    let mut to: Vec<String> = a.webhook.iter().map(|w| format!("webhook {}", w.shown())).collect();
    to.extend(a.command.iter().map(|c| format!("command `{}`", c.join(" "))));
    if to.is_empty() {
        to.push("nowhere (webhook is empty)".into());
    }
    let events: Vec<&str> = a.events.iter().map(|e| e.as_str()).collect();
    format!("alerts: to {}; events {}; min_interval {}", to.join(" and "), events.join(", "), humantime::format_duration(a.min_interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, state: &str) -> JobStatus {
        JobStatus { pid: Some(7), uptime_s: Some(61.0), ..JobStatus::named(name, JobState::parse(state).unwrap()) }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        // no-color.org: an empty NO_COLOR does not count.
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn coloured_states_keep_the_columns_aligned() {
        let jobs = [job("a", "running"), job("longer", "fatal"), job("c", "stopped")];
        let plain = status_table_styled(&jobs, false);
        let coloured = status_table_styled(&jobs, true);
        assert!(!plain.contains('\x1b'));
        assert!(coloured.contains("\x1b[32mRUNNING\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[1;31mFATAL\x1b[0m"), "{coloured}");
        assert!(!coloured.lines().nth(3).unwrap().contains('\x1b'), "stopped is not coloured: {coloured}");
        let strip = |s: &str| s.replace("\x1b[32m", "").replace("\x1b[1;31m", "").replace("\x1b[0m", "");
        assert_eq!(strip(&coloured), plain);
    }

    #[test]
    fn every_jobs_lines_carry_time_job_and_stream() {
        let l = LogLine { job: "layer1".into(), stream: "stderr".into(), ts: 1_777_000_000.25, line: "boom".into() };
        let all = Request::Logs { job: None, lines: 20, follow: false, since: None };
        assert_eq!(log_line(&all, &l, false), "2026-04-24T03:06:40.250Z layer1 stderr: boom");
        let one = Request::Logs { job: Some("layer1".into()), lines: 20, follow: false, since: None };
        assert_eq!(log_line(&one, &l, false), "boom");
        assert_eq!(log_line(&all, &l, true), "2026-04-24T03:06:40.250Z \x1b[1mlayer1\x1b[0m \x1b[33mstderr\x1b[0m: boom");
    }
}
