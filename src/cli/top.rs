//! `corral top` (SPEC §1): the dashboard in a terminal. A ratatui client of the control
//! socket: the budget as one bar, the jobs with live connections against quota, recent
//! events; keys start, stop and restart the selected job and show its logs; `q` quits.
//!
//! It costs nothing while nothing happens: the screen is drawn once a second (the refresh)
//! and after a key, never in a loop, and between the two the process sleeps in `poll`.
//! Verbs run on their own thread (a stop can take `stop_timeout`), so the screen stays live.
//! Only crossterm's escape sequences are used (no terminfo), so it works wherever a TTY is,
//! `docker exec -it` included.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::client;
use crate::protocol::{JobState, JobStatus, LogLine, Reply, Request, Response, StatusReport};
use crate::view::{BudgetView, EventView, HistoryView, Segment, SegmentKind};

const REFRESH: Duration = Duration::from_secs(1);
/// A daemon slower than this is shown as not answering; top stays responsive.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// While a verb runs, look for its answer this often.
const VERB_POLL: Duration = Duration::from_millis(100);
const LOG_LINES: usize = 500;
const JOB_COLORS: [Color; 6] = [Color::Green, Color::Blue, Color::Cyan, Color::LightGreen, Color::LightBlue, Color::LightCyan];

/// What the daemon said at the last refresh.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub status: Option<StatusReport>,
    /// None without a `[database]`.
    pub budget: Option<BudgetView>,
    pub events: Vec<EventView>,
    /// The job shown in the logs view, and its last lines.
    pub logs: Vec<LogLine>,
    /// Why the last refresh failed (the daemon went away, timed out).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Jobs,
    Logs(String),
}

/// What a key asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    /// Redraw and refresh now (a new view needs data).
    Refresh,
    Verb(&'static str, String),
    Quit,
}

#[derive(Debug)]
pub struct App {
    pub snap: Snapshot,
    /// Kept by name, so a refresh that adds or removes jobs does not move it.
    pub selected: Option<String>,
    pub mode: Mode,
    pub message: Option<String>,
    pub pending: usize,
}

impl App {
    pub fn new(snap: Snapshot) -> App {
        let mut app = App { snap, selected: None, mode: Mode::Jobs, message: None, pending: 0 };
        app.keep_selection();
        app
    }

    fn jobs(&self) -> &[JobStatus] {
        self.snap.status.as_ref().map_or(&[], |s| &s.jobs)
    }

    pub fn selected_index(&self) -> Option<usize> {
        let name = self.selected.as_deref()?;
        self.jobs().iter().position(|j| j.name == name)
    }

    /// After a refresh: the same job if it still exists, else the nearest row.
    pub fn keep_selection(&mut self) {
        if self.selected_index().is_none() {
            self.selected = self.jobs().first().map(|j| j.name.clone());
        }
    }

    fn move_by(&mut self, delta: isize) {
        let n = self.jobs().len();
        if n == 0 {
            return;
        }
        let i = self.selected_index().unwrap_or(0) as isize;
        let to = (i + delta).clamp(0, n as isize - 1) as usize;
        self.selected = Some(self.jobs()[to].name.clone());
    }

    /// The job a verb or the logs view acts on.
    fn target(&self) -> Option<String> {
        match &self.mode {
            Mode::Logs(job) => Some(job.clone()),
            Mode::Jobs => self.selected.clone(),
        }
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind != KeyEventKind::Press {
            return Action::Nothing;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('c') if ctrl => Action::Quit,
            KeyCode::Esc | KeyCode::Backspace if matches!(self.mode, Mode::Logs(_)) => {
                self.mode = Mode::Jobs;
                Action::Refresh
            }
            KeyCode::Up | KeyCode::Char('k') => self.moved(-1),
            KeyCode::Down | KeyCode::Char('j') => self.moved(1),
            KeyCode::PageUp => self.moved(-10),
            KeyCode::PageDown => self.moved(10),
            KeyCode::Home | KeyCode::Char('g') => self.moved(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.moved(isize::MAX / 2),
            KeyCode::Char('s') => self.verb("start"),
            KeyCode::Char('x') => self.verb("stop"),
            KeyCode::Char('r') => self.verb("restart"),
            KeyCode::Char('l') | KeyCode::Enter => match (&self.mode, self.target()) {
                (Mode::Logs(_), _) => {
                    self.mode = Mode::Jobs;
                    Action::Refresh
                }
                (Mode::Jobs, Some(job)) => {
                    self.mode = Mode::Logs(job);
                    self.snap.logs.clear();
                    Action::Refresh
                }
                (Mode::Jobs, None) => Action::Nothing,
            },
            _ => Action::Nothing,
        }
    }

    fn moved(&mut self, delta: isize) -> Action {
        if self.mode != Mode::Jobs {
            return Action::Nothing;
        }
        self.move_by(delta);
        Action::Redraw
    }

    fn verb(&mut self, verb: &'static str) -> Action {
        match self.target() {
            Some(job) => {
                self.message = Some(format!("{verb} {job} …"));
                self.pending += 1;
                Action::Verb(verb, job)
            }
            None => Action::Nothing,
        }
    }
}

/// Run `corral top` against `socket`; returns the exit code.
pub fn run(socket: &Path) -> i32 {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!("error: corral top needs a terminal");
        eprintln!("  hint: in a container, run it with `docker exec -it CONTAINER corral top`; for scripts use `corral status --json`");
        return super::EXIT_USAGE;
    }
    let first = fetch(socket, None);
    if first.status.is_none() {
        eprintln!("error: no corral answers on {}: {}", socket.display(), first.error.as_deref().unwrap_or("no answer"));
        eprintln!("  hint: start one with `corral run`, or point to its socket with -s PATH or $CORRAL_SOCKET");
        return super::EXIT_NO_DAEMON;
    }
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            eprintln!("error: cannot set up the terminal: {e}");
            return super::EXIT_USAGE;
        }
    };
    let result = event_loop(&mut terminal, socket, App::new(first));
    ratatui::restore();
    match result {
        Ok(()) => super::EXIT_OK,
        Err(e) => {
            eprintln!("error: corral top: {e}");
            super::EXIT_REFUSED
        }
    }
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, socket: &Path, mut app: App) -> std::io::Result<()> {
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut next_refresh = Instant::now() + REFRESH;
    let mut dirty = true;
    loop {
        if dirty {
            terminal.draw(|f| draw(f, &app))?;
            dirty = false;
        }
        let mut wait = next_refresh.saturating_duration_since(Instant::now());
        if app.pending > 0 {
            wait = wait.min(VERB_POLL);
        }
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) => match app.key(k) {
                    Action::Quit => return Ok(()),
                    Action::Nothing => {}
                    Action::Redraw => dirty = true,
                    Action::Refresh => {
                        dirty = true;
                        next_refresh = Instant::now();
                    }
                    Action::Verb(verb, job) => {
                        dirty = true;
                        spawn_verb(socket.to_path_buf(), verb, job, done_tx.clone());
                    }
                },
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(msg) = done_rx.try_recv() {
            app.pending = app.pending.saturating_sub(1);
            app.message = Some(msg);
            next_refresh = Instant::now();
        }
        if Instant::now() >= next_refresh {
            let logs_of = match &app.mode {
                Mode::Logs(job) => Some(job.as_str()),
                Mode::Jobs => None,
            };
            let snap = fetch(socket, logs_of);
            // A failed refresh keeps the last picture and says why.
            if snap.status.is_some() {
                app.snap = snap;
            } else {
                app.snap.error = snap.error;
            }
            app.keep_selection();
            next_refresh = Instant::now() + REFRESH;
            dirty = true;
        }
    }
}

fn spawn_verb(socket: PathBuf, verb: &'static str, job: String, done: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let jobs = vec![job.clone()];
        let req = match verb {
            "start" => Request::Start { jobs },
            "stop" => Request::Stop { jobs },
            _ => Request::Restart { jobs },
        };
        let msg = match client::call(&socket, &req, |_| {}) {
            Ok(Response { ok: true, result: Some(Reply::Actions { jobs }), .. }) => {
                let state = jobs.first().map(|j| j.state.as_str()).unwrap_or("done");
                format!("{verb} {job}: {state}")
            }
            Ok(Response { ok: true, .. }) => format!("{verb} {job}: done"),
            Ok(Response { error: Some(e), .. }) => format!("{verb} {job} failed: {}", e.message),
            Ok(_) => format!("{verb} {job} failed"),
            Err(e) => format!("{verb} {job}: no answer: {e}"),
        };
        let _ = done.send(msg);
    });
}

/// Ask for status, budget and history (and a job's logs in the logs view).
pub fn fetch(socket: &Path, logs_of: Option<&str>) -> Snapshot {
    let mut snap = Snapshot::default();
    match client::ask(socket, &Request::Status { jobs: Vec::new() }, ASK_TIMEOUT) {
        Ok(Response { result: Some(Reply::Status(s)), .. }) => snap.status = Some(s),
        Ok(Response { error: Some(e), .. }) => snap.error = Some(e.message),
        Ok(_) => snap.error = Some("unexpected answer to status".into()),
        Err(e) => snap.error = Some(e.to_string()),
    }
    if snap.status.is_none() {
        return snap;
    }
    if let Ok(Response { result: Some(Reply::Budget(b)), .. }) = client::ask(socket, &Request::Budget, ASK_TIMEOUT) {
        snap.budget = Some(BudgetView::from_report(&b));
    }
    if let Ok(Response { result: Some(Reply::History(h)), .. }) = client::ask(socket, &Request::History, ASK_TIMEOUT) {
        snap.events = HistoryView::from_report(&h).events;
    }
    if let Some(job) = logs_of {
        let req = Request::Logs { job: Some(job.to_string()), lines: LOG_LINES, follow: false, since: None };
        if let Ok(Response { result: Some(Reply::Logs { lines }), .. }) = client::ask(socket, &req, ASK_TIMEOUT) {
            snap.logs = lines;
        }
    }
    snap
}

// ----- drawing (pure: a frame from the app) -----

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let budget_h = app.snap.budget.as_ref().map_or(0, |b| 4 + b.warnings.len().min(2) as u16);
    let events_h = if area.height >= 30 && !app.snap.events.is_empty() { 7 } else { 0 };
    let [header, budget, body, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(budget_h),
        Constraint::Min(3),
        Constraint::Length(events_h),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, app);
    if let Some(b) = &app.snap.budget {
        draw_budget(f, budget, b);
    }
    match &app.mode {
        Mode::Jobs => draw_jobs(f, body, app),
        Mode::Logs(job) => draw_logs(f, body, job, &app.snap.logs),
    }
    if events_h > 0 {
        draw_events(f, events, &app.snap.events);
    }
    draw_footer(f, footer, app);
}

fn draw_header(f: &mut Frame, area: Rect, app: &App) {
    let mut spans = vec![Span::styled("corral top", Style::new().add_modifier(Modifier::BOLD))];
    if let Some(s) = &app.snap.status {
        let sup = &s.supervisor;
        spans.push(Span::raw(format!("  v{} · pid {} · up {}", sup.version, sup.pid, duration(sup.uptime_s))));
        let running = s.jobs.iter().filter(|j| j.state == JobState::Running).count();
        spans.push(Span::raw(format!(" · {running}/{} running", s.jobs.len())));
    }
    if let Some(b) = &app.snap.budget {
        spans.push(Span::raw(format!(" · {} ({})", b.service, b.scope)));
        let db = &b.database;
        let (text, color) = match (db.healthy, db.latency_ms) {
            (true, Some(ms)) => (format!(" db healthy {ms:.1} ms"), Color::Green),
            (true, None) => (" db healthy".to_string(), Color::Green),
            (false, _) => (format!(" db UNHEALTHY{}", db.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()), Color::Red),
        };
        spans.push(Span::raw(" ·"));
        spans.push(Span::styled(text, Style::new().fg(color)));
    }
    if let Some(e) = &app.snap.error {
        spans.push(Span::styled(format!("  not updating: {e}"), Style::new().fg(Color::Red)));
    }
    if let Some(e) = app.snap.status.as_ref().and_then(|s| s.config_error.as_ref()) {
        spans.push(Span::styled(format!("  config rejected: {}", e.lines().next().unwrap_or("")), Style::new().fg(Color::Red)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn segment_style(kind: SegmentKind, job_index: usize) -> (Color, char, char) {
    // (colour, cell for live use, cell for the rest)
    match kind {
        SegmentKind::Provider => (Color::DarkGray, '▒', '▒'),
        SegmentKind::Adhoc => (Color::Gray, '▒', '▒'),
        SegmentKind::External => (Color::Yellow, '█', '▒'),
        SegmentKind::Reservations => (Color::Magenta, '▒', '▒'),
        SegmentKind::Own => (Color::White, '▒', '▒'),
        SegmentKind::Unclaimed => (Color::Red, '▒', '▒'),
        SegmentKind::Job => (JOB_COLORS[job_index % JOB_COLORS.len()], '█', '░'),
        SegmentKind::Headroom => (Color::DarkGray, '·', '·'),
    }
}

/// Cells of the bar: for each of `width` cells, (segment index, inside its live part).
/// Cells are shared in proportion by largest remainder, so they add up to `width` exactly;
/// then every non-empty segment that got none takes one from the widest, when there is room.
pub fn bar_cells(segments: &[Segment], width: usize) -> Vec<(usize, bool)> {
    let total: u64 = segments.iter().map(|s| u64::from(s.count)).sum();
    if total == 0 || width == 0 {
        return Vec::new();
    }
    let share = |s: &Segment| u64::from(s.count) * width as u64;
    let mut cells: Vec<usize> = segments.iter().map(|s| (share(s) / total) as usize).collect();
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(share(&segments[i]) % total));
    let left = width - cells.iter().sum::<usize>();
    for &i in order.iter().take(left) {
        cells[i] += 1;
    }
    if width >= segments.len() {
        for i in 0..segments.len() {
            if cells[i] == 0 && segments[i].count > 0 {
                let widest = (0..cells.len()).max_by_key(|&j| cells[j]).expect("not empty");
                cells[widest] -= 1;
                cells[i] = 1;
            }
        }
    }
    let mut out = Vec::with_capacity(width);
    for (i, (s, n)) in segments.iter().zip(cells).enumerate() {
        let live = ((u64::from(s.live) * n as u64 + u64::from(s.count) / 2) / u64::from(s.count.max(1))) as usize;
        let live = if s.live > 0 { live.max(1).min(n) } else { live };
        out.extend((0..n).map(|c| (i, c < live)));
    }
    out
}

fn draw_budget(f: &mut Frame, area: Rect, b: &BudgetView) {
    let source = b.limit_source.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
    let max = b.database.max_connections.map(|n| format!(" · max_connections {n}")).unwrap_or_default();
    let title = format!(
        " budget: limit {}{source} · usable {} · granted {} · live {} · headroom {}{max} ",
        b.limit, b.usable, b.granted, b.live, b.headroom
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let segments = b.segments();
    let job_index = |i: usize| segments[..i].iter().filter(|s| s.kind == SegmentKind::Job).count();
    let cells = bar_cells(&segments, inner.width as usize);
    let bar: Vec<Span> = cells
        .iter()
        .map(|&(i, live)| {
            let (color, on, off) = segment_style(segments[i].kind, job_index(i));
            Span::styled(String::from(if live { on } else { off }), Style::new().fg(color))
        })
        .collect();
    let mut legend: Vec<Span> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let (color, _, off) = segment_style(s.kind, job_index(i));
        let mark = if s.kind == SegmentKind::Job { '█' } else { off };
        let live = match s.kind {
            SegmentKind::Job | SegmentKind::External if s.live > 0 => format!(" ({} live)", s.live),
            _ => String::new(),
        };
        legend.push(Span::styled(format!("{mark} "), Style::new().fg(color)));
        legend.push(Span::raw(format!("{} {}{live}  ", s.label, s.count)));
    }
    let mut lines = vec![Line::from(bar), Line::from(legend)];
    for w in b.warnings.iter().take(2) {
        lines.push(Line::styled(format!("! {w}"), Style::new().fg(Color::Yellow)));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn state_color(state: JobState) -> Color {
    match state {
        JobState::Running => Color::Green,
        JobState::Starting | JobState::Stopping | JobState::Backoff => Color::Yellow,
        JobState::Waiting | JobState::Scheduled => Color::Cyan,
        JobState::Fatal => Color::Red,
        JobState::Stopped | JobState::Exited => Color::DarkGray,
    }
}

/// "▮▮▮▯▯ 3/5": live connections against quota.
fn conn_cell(j: &JobStatus) -> Line<'static> {
    let (Some(q), c) = (j.quota.or(j.connections.map(|_| 0)), j.connections.unwrap_or(0)) else {
        return Line::raw("—");
    };
    const W: u32 = 6;
    let filled = if q == 0 { if c > 0 { W } else { 0 } } else { (c.min(q) * W).div_ceil(q) };
    let color = if c > q { Color::Red } else { Color::Green };
    Line::from(vec![
        Span::styled("▮".repeat(filled as usize), Style::new().fg(color)),
        Span::styled("▯".repeat((W - filled) as usize), Style::new().fg(Color::DarkGray)),
        Span::raw(format!(" {c}/{q}")),
    ])
}

fn exit_text(j: &JobStatus) -> String {
    match j.last_exit {
        Some(e) if e.code.is_some() => format!("exit {}", e.code.unwrap_or_default()),
        Some(e) if e.signal.is_some() => crate::job::machine::signal_name(e.signal.unwrap_or_default()),
        _ => String::new(),
    }
}

fn draw_jobs(f: &mut Frame, area: Rect, app: &App) {
    let jobs = app.jobs();
    let name_w = jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(4).clamp(4, 40) as u16;
    let header = Row::new(["JOB", "STATE", "PID", "UPTIME", "RESTARTS", "CONNECTIONS", "LAST EXIT", "REASON"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = jobs.iter().map(|j| {
        Row::new(vec![
            Cell::from(j.name.clone()),
            Cell::from(Span::styled(j.state.as_str(), Style::new().fg(state_color(j.state)))),
            Cell::from(j.pid.map(|p| p.to_string()).unwrap_or_default()),
            Cell::from(j.uptime_s.map(duration).unwrap_or_default()),
            Cell::from(j.restarts.to_string()),
            Cell::from(conn_cell(j)),
            Cell::from(exit_text(j)),
            Cell::from(super::render::reason_or_schedule(j)),
        ])
    });
    let widths = [
        Constraint::Length(name_w),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let running = jobs.iter().filter(|j| j.state == JobState::Running).count();
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(format!(" jobs: {} ({running} running) ", jobs.len())))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(app.selected_index());
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_logs(f: &mut Frame, area: Rect, job: &str, lines: &[LogLine]) {
    let block = Block::default().borders(Borders::ALL).title(format!(" logs: {job} (last {} lines; Esc back) ", lines.len()));
    let inner = block.inner(area);
    let shown = lines.len().saturating_sub(inner.height as usize);
    let text: Vec<Line> = lines[shown..]
        .iter()
        .map(|l| {
            let style = if l.stream == "stderr" { Style::new().fg(Color::Red) } else { Style::new() };
            Line::styled(l.line.clone(), style)
        })
        .collect();
    let text = if text.is_empty() { vec![Line::styled("(no output yet)", Style::new().fg(Color::DarkGray))] } else { text };
    f.render_widget(Paragraph::new(text).block(block), area);
}

fn draw_events(f: &mut Frame, area: Rect, events: &[EventView]) {
    let block = Block::default().borders(Borders::ALL).title(" recent events ");
    let n = block.inner(area).height as usize;
    let lines: Vec<Line> = events
        .iter()
        .rev()
        .take(n)
        .map(|e| {
            let color = match e.kind.as_str() {
                "fatal" | "database_down" | "warning" => Color::Red,
                "restart" | "exit" | "waiting" => Color::Yellow,
                "database_up" | "quota" => Color::Green,
                _ => Color::Gray,
            };
            Line::from(vec![
                Span::styled(format!("{} ", clock(e.at)), Style::new().fg(Color::DarkGray)),
                Span::styled(format!("{:<13} ", e.kind), Style::new().fg(color)),
                Span::styled(e.job.as_ref().map(|j| format!("{j} ")).unwrap_or_default(), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(e.message.clone()),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let keys = match app.mode {
        Mode::Jobs => "↑↓ select  s start  x stop  r restart  l logs  q quit",
        Mode::Logs(_) => "Esc back  s start  x stop  r restart  q quit",
    };
    let mut spans = vec![Span::styled(keys, Style::new().fg(Color::DarkGray))];
    if let Some(m) = &app.message {
        spans.push(Span::raw("   "));
        spans.push(Span::styled(m.clone(), Style::new().add_modifier(Modifier::BOLD)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// HH:MM:SS in UTC (the daemon's logs are UTC too).
fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ExitInfo, SupervisorInfo};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn job(name: &str, state: &str, quota: Option<u32>, conns: Option<u32>) -> JobStatus {
        JobStatus {
            pid: (state == "running").then_some(4242),
            uptime_s: (state == "running").then_some(75.0),
            restarts: 2,
            last_exit: Some(ExitInfo { code: Some(1), signal: None }),
            quota,
            connections: conns,
            reason: (state == "fatal").then(|| "exited too quickly 5 times".into()),
            ..JobStatus::named(name, JobState::parse(state).unwrap())
        }
    }

    fn app() -> App {
        let status = StatusReport {
            jobs: vec![job("alpha", "running", Some(5), Some(3)), job("beta", "fatal", None, None), job("gamma", "running", Some(2), Some(4))],
            config_error: None,
            supervisor: SupervisorInfo { pid: 7, version: "0.1.0".into(), uptime_s: 3725.0, ..Default::default() },
            budget: None,
        };
        let budget = BudgetView::from_json(&serde_json::json!({
            "scope": "local", "service": "scraper", "limit": 20, "limit_source": "server", "provider_reserve": 2, "adhoc_reserve": 3,
            "external_reserve": 0, "reservations": [], "own": 1, "usable": 14, "granted": 7, "headroom": 7, "live": 7,
            "jobs": [{"name": "alpha", "quota": 5, "connections": 3}, {"name": "gamma", "quota": 2, "connections": 4}],
            "database": {"healthy": true, "latency_ms": 0.8, "max_connections": 23},
        }));
        let events = vec![EventView { seq: 1, at: 3661.0, kind: "exit".into(), job: Some("beta".into()), message: "exited: exit code 1".into() }];
        App::new(Snapshot { status: Some(status), budget: Some(budget), events, logs: vec![], error: None })
    }

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn the_screen_shows_budget_jobs_and_events() {
        let s = screen(&app(), 120, 32);
        for needle in [
            "corral top",
            "pid 7",
            "up 1h02m",
            "2/3 running",
            "db healthy 0.8 ms",
            "budget: limit 20 (server) · usable 14 · granted 7 · live 7 · headroom 7 · max_connections 23",
            "provider 2",
            "ad hoc 3",
            "alpha 5 (3 live)",
            "headroom 7",
            "> alpha",
            "▮▮▮▮▯▯ 3/5",
            "▮▮▮▮▮▮ 4/2",
            "exited too quickly 5 times",
            "01:01:01 exit",
            "s start  x stop  r restart  l logs  q quit",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        // Without a database: no budget box, the jobs still show.
        let mut a = app();
        a.snap.budget = None;
        let s = screen(&a, 100, 20);
        assert!(!s.contains("budget:") && s.contains("beta") && s.contains("—"), "{s}");
    }

    #[test]
    fn keys_move_select_act_and_quit() {
        let mut a = app();
        assert_eq!(a.selected.as_deref(), Some("alpha"));
        assert_eq!(a.key(key(KeyCode::Down)), Action::Redraw);
        assert_eq!(a.key(key(KeyCode::Char('j'))), Action::Redraw);
        assert_eq!(a.key(key(KeyCode::Down)), Action::Redraw);
        assert_eq!(a.selected.as_deref(), Some("gamma"), "stops at the last row");
        assert_eq!(a.key(key(KeyCode::Home)), Action::Redraw);
        assert_eq!(a.selected.as_deref(), Some("alpha"));
        a.key(key(KeyCode::Char('j')));
        assert_eq!(a.key(key(KeyCode::Char('x'))), Action::Verb("stop", "beta".into()));
        assert_eq!(a.key(key(KeyCode::Char('s'))), Action::Verb("start", "beta".into()));
        assert_eq!(a.key(key(KeyCode::Char('r'))), Action::Verb("restart", "beta".into()));
        assert_eq!(a.pending, 3);
        assert_eq!(a.key(key(KeyCode::Char('l'))), Action::Refresh);
        assert_eq!(a.mode, Mode::Logs("beta".into()));
        assert_eq!(a.key(key(KeyCode::Down)), Action::Nothing, "no moving in the logs view");
        assert_eq!(a.key(key(KeyCode::Char('x'))), Action::Verb("stop", "beta".into()));
        assert_eq!(a.key(key(KeyCode::Esc)), Action::Refresh);
        assert_eq!(a.mode, Mode::Jobs);
        assert_eq!(a.key(key(KeyCode::Char('?'))), Action::Nothing);
        assert_eq!(a.key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(a.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
    }

    #[test]
    fn selection_follows_the_job_across_refreshes() {
        let mut a = app();
        a.key(key(KeyCode::End));
        assert_eq!(a.selected.as_deref(), Some("gamma"));
        // A new job sorts before it: the selection stays on gamma.
        let st = a.snap.status.as_mut().unwrap();
        st.jobs.insert(0, job("aaa", "stopped", None, None));
        a.keep_selection();
        assert_eq!(a.selected_index(), Some(3));
        // gamma is removed: the first row is selected.
        a.snap.status.as_mut().unwrap().jobs.retain(|j| j.name != "gamma");
        a.keep_selection();
        assert_eq!(a.selected.as_deref(), Some("aaa"));
        let mut empty = App::new(Snapshot::default());
        assert_eq!(empty.key(key(KeyCode::Char('x'))), Action::Nothing);
        assert_eq!(empty.key(key(KeyCode::Down)), Action::Redraw);
    }

    #[test]
    fn the_logs_view_shows_the_last_lines_that_fit() {
        let mut a = app();
        a.key(key(KeyCode::Char('l')));
        a.snap.logs = (0..50).map(|i| LogLine { job: "alpha".into(), stream: "stdout".into(), ts: 0.0, line: format!("line {i}") }).collect();
        let s = screen(&a, 80, 24);
        assert!(s.contains("logs: alpha") && s.contains("line 49") && !s.contains("line 0 "), "{s}");
        assert!(s.contains("Esc back"), "{s}");
    }

    fn seg(kind: SegmentKind, count: u32, live: u32) -> Segment {
        Segment { kind, label: String::new(), count, live }
    }

    #[test]
    fn bar_cells_fill_the_width_exactly_and_keep_every_part_visible() {
        let segs = vec![seg(SegmentKind::Provider, 6, 0), seg(SegmentKind::Own, 1, 0), seg(SegmentKind::Job, 30, 15), seg(SegmentKind::Headroom, 23, 0)];
        for width in [0usize, 1, 3, 4, 5, 17, 60, 61, 200] {
            let cells = bar_cells(&segs, width);
            assert_eq!(cells.len(), width, "width {width}");
            if width >= segs.len() {
                for i in 0..segs.len() {
                    assert!(cells.iter().any(|(s, _)| *s == i), "segment {i} missing at width {width}");
                }
            }
            // In order, left to right.
            assert!(cells.windows(2).all(|w| w[0].0 <= w[1].0));
        }
        let cells = bar_cells(&segs, 60);
        let job: Vec<_> = cells.iter().filter(|(s, _)| *s == 2).collect();
        assert_eq!(job.len(), 30);
        assert_eq!(job.iter().filter(|(_, live)| *live).count(), 15);
        assert!(bar_cells(&[], 40).is_empty());
        // One live connection in a large grant is still drawn; a 1-cell part of 100 stays visible.
        let cells = bar_cells(&[seg(SegmentKind::Job, 100, 1)], 10);
        assert_eq!(cells.iter().filter(|(_, l)| *l).count(), 1);
        let cells = bar_cells(&[seg(SegmentKind::Own, 1, 0), seg(SegmentKind::Headroom, 1000, 0)], 10);
        assert_eq!(cells.iter().filter(|(s, _)| *s == 0).count(), 1);
    }

    #[test]
    fn durations_and_clock() {
        assert_eq!(duration(5.9), "5s");
        assert_eq!(duration(65.0), "1m05s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(90000.0), "1d01h");
        assert_eq!(clock(1_700_000_000.0 + 3661.0), "23:14:21");
    }
}
