"use strict";
// corral's dashboard: polls /status and /budget (SPEC §4's JSON) every POLL_MS and
// /history less often, and updates the page in place. Text only ever goes in through
// textContent; nothing from the JSON is parsed as HTML.
(() => {
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 10000;
  const HISTORY_EVERY = 3;
  const EVENTS_SHOWN = 40;
  const JOB_COLORS = ["#2f855a", "#2b6cb0", "#c05621", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#3c366b", "#9c4221", "#276749"];
  const SEGMENT_LABELS = { provider: "provider", adhoc: "ad hoc", external: "external", reservations: "reservations", own: "corral", unclaimed: "unclaimed", headroom: "headroom" };

  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(node, text) {
    text = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setClass(node, cls) {
    if (node.className !== cls) node.className = cls;
  }
  // Writes only what changed: an unchanged page costs the browser no style or layout work.
  // (The last value written is kept on the node: the browser normalises what it reads back.)
  function setStyle(node, prop, value) {
    const last = node.corralStyle || (node.corralStyle = {});
    if (last[prop] !== value) {
      node.style[prop] = value;
      last[prop] = value;
    }
  }
  function setData(node, key, value) {
    value = String(value);
    if (node.dataset[key] !== value) node.dataset[key] = value;
  }
  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : 0;
  }
  // Coarse on purpose: a page that changes nothing between polls costs the browser nothing.
  function duration(s) {
    if (s === null || s === undefined) return "";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (d) return d + "d " + two(h) + "h";
    if (h) return h + "h " + two(m) + "m";
    if (m) return m + "m";
    return s + "s";
  }
  function clock(unix) {
    return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
  }
  function limitSource(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") return v;
    if (typeof v === "object") {
      for (const k of ["label", "text", "description", "name", "kind"]) if (typeof v[k] === "string") return v[k];
    }
    return JSON.stringify(v);
  }

  async function get(path) {
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.status === 404 && path === "/budget") return null; // no [database]
    if (r.status === 401) throw new Error("unauthorized: open this page with ?token=…");
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  // ----- header -----
  function renderHeader(status, budget) {
    const s = status.supervisor || {};
    const parts = ["v" + (s.version || "?"), "pid " + s.pid, "up " + duration(s.uptime_s), s.config];
    if (budget) parts.push("service " + budget.service + " (" + (budget.scope || "local") + " scope)");
    setText($("ident"), parts.filter(Boolean).join(" · "));
    const banner = $("config-error");
    if (banner.hidden !== !status.config_error) banner.hidden = !status.config_error;
    setText(banner, status.config_error ? "config reload rejected, the running config is kept:\n" + status.config_error : "");
  }

  // ----- budget bar -----
  function segments(b) {
    const reserved = b.reserved !== undefined ? num(b.reserved) : (b.reservations || []).reduce((n, r) => n + num(r.count), 0);
    const out = [
      { kind: "provider", count: num(b.provider_reserve), live: 0 },
      { kind: "adhoc", count: num(b.adhoc_reserve), live: 0 },
      { kind: "external", count: num(b.external_reserve), live: Math.min(num(b.external_live), num(b.external_reserve)) },
      { kind: "reservations", count: reserved, live: 0 },
      { kind: "own", count: num(b.own), live: 0 },
      { kind: "unclaimed", count: b.scope === "fleet" ? num(b.unclaimed) : 0, live: 0 },
    ];
    const member = b.member;
    (b.jobs || []).forEach((j, i) => {
      if (num(j.quota) > 0) {
        const name = b.scope === "fleet" && j.member !== member ? j.name + "@" + (j.host || j.member) : j.name;
        out.push({ kind: "job", name, count: num(j.quota), live: Math.min(num(j.connections), num(j.quota)), color: JOB_COLORS[i % JOB_COLORS.length] });
      }
    });
    const headroom = b.headroom !== undefined ? num(b.headroom) : Math.max(0, num(b.usable) - num(b.granted));
    out.push({ kind: "headroom", count: headroom, live: 0 });
    return out.filter((s) => s.count > 0);
  }

  function renderBudget(b) {
    if ($("budget-card").hidden !== !b) $("budget-card").hidden = !b;
    if (!b) return;
    const segs = segments(b);
    const span = Math.max(num(b.limit), segs.reduce((n, s) => n + s.count, 0), 1);
    const bar = $("bar");
    while (bar.children.length > segs.length) bar.lastChild.remove();
    segs.forEach((s, i) => {
      let node = bar.children[i];
      if (!node) {
        node = el("div", "seg");
        node.append(el("div", "live"), el("span", "lbl"));
        bar.append(node);
      }
      setClass(node, "seg " + s.kind);
      setData(node, "kind", s.kind);
      setData(node, "count", s.count);
      setData(node, "live", s.live);
      setStyle(node, "width", (100 * s.count / span).toFixed(3) + "%");
      // A job's grant is drawn pale, filled with its colour as far as its live use goes.
      setData(node, "color", s.color || "");
      if (node.dataset.painted !== (s.color || "")) {
        node.style.background = s.color ? "color-mix(in srgb, " + s.color + " 38%, white)" : "";
        node.firstChild.style.background = s.color || "";
        node.dataset.painted = s.color || "";
      }
      setStyle(node.firstChild, "width", (100 * s.live / s.count).toFixed(3) + "%");
      const label = s.kind === "job" ? s.name : SEGMENT_LABELS[s.kind];
      const title = label + ": " + s.count + (s.kind === "job" || s.kind === "external" ? " (" + s.live + " live)" : "");
      if (node.title !== title) node.title = title;
      setText(node.lastChild, label + " " + s.count);
    });
    setText($("scale-end"), span);
    const src = limitSource(b.limit_source);
    const db = b.database || {};
    setText($("limit-line"), "limit " + num(b.limit) + (src ? " (" + src + ")" : "") + " · usable " + num(b.usable) + " · granted " + num(b.granted) +
      " · live " + num(b.live) + " · headroom " + segs.filter((s) => s.kind === "headroom").reduce((n, s) => n + s.count, 0) +
      (db.max_connections ? " · max_connections " + db.max_connections : ""));

    const items = [];
    for (const s of segs) {
      if (s.kind === "job") continue;
      const extra = s.kind === "external" && num(b.external_live) ? ", " + num(b.external_live) + " live" : "";
      items.push({ cls: s.kind, text: SEGMENT_LABELS[s.kind] + " " + s.count + extra });
    }
    const jobsLive = segs.filter((s) => s.kind === "job").reduce((n, s) => n + s.live, 0);
    items.splice(items.length - (items.length && items[items.length - 1].cls === "headroom" ? 1 : 0), 0,
      { cls: "jobs", text: "jobs granted " + num(b.granted) + ", " + num(b.live) + " live" + (jobsLive < num(b.live) ? " (some over quota)" : "") });
    const legend = $("legend");
    while (legend.children.length > items.length) legend.lastChild.remove();
    items.forEach((it, i) => {
      let li = legend.children[i];
      if (!li) {
        li = el("li");
        li.append(el("span", "swatch"), el("span"));
        legend.append(li);
      }
      setClass(li.firstChild, "swatch " + it.cls);
      setText(li.lastChild, it.text);
    });
    const warnings = b.warnings || [];
    const ul = $("warnings");
    while (ul.children.length > warnings.length) ul.lastChild.remove();
    warnings.forEach((w, i) => {
      if (!ul.children[i]) ul.append(el("li"));
      setText(ul.children[i], w);
    });
  }

  // ----- jobs table -----
  const rows = new Map();
  const COLS = ["name", "state", "pid", "uptime", "restarts", "conn", "exit", "reason", "next"];
  function jobRow(name) {
    let r = rows.get(name);
    if (r) return r;
    const tr = el("tr");
    tr.dataset.job = name;
    const cells = {};
    for (const c of COLS) {
      const td = el("td", (c === "pid" || c === "uptime" || c === "restarts" ? "num " : "") + "c-" + c);
      tr.append(td);
      cells[c] = td;
    }
    cells.name.textContent = name;
    const badge = el("span", "state");
    cells.state.append(badge);
    const conn = el("div", "conn");
    const mini = el("div", "mini");
    mini.append(el("div"));
    conn.append(mini, el("span"));
    cells.conn.append(conn);
    r = { tr, cells, badge, mini, connText: conn.lastChild };
    rows.set(name, r);
    return r;
  }
  function exitText(e) {
    if (!e) return "";
    if (e.code !== null && e.code !== undefined) return "exit " + e.code;
    if (e.signal !== null && e.signal !== undefined) return "signal " + e.signal;
    return "";
  }
  function nextRun(v) {
    if (!v) return "";
    const t = Date.parse(v);
    if (isNaN(t)) return String(v);
    const s = Math.round((t - Date.now()) / 1000);
    return s > 0 ? "in " + duration(s) : new Date(t).toLocaleTimeString([], { hour12: false });
  }
  function renderJobs(status) {
    const tbody = $("jobs").tBodies[0];
    const seen = new Set();
    const counts = {};
    status.jobs.forEach((j, i) => {
      seen.add(j.name);
      counts[j.state] = (counts[j.state] || 0) + 1;
      const r = jobRow(j.name);
      if (tbody.children[i] !== r.tr) tbody.insertBefore(r.tr, tbody.children[i] || null);
      setData(r.tr, "state", j.state);
      setText(r.badge, j.state);
      setClass(r.badge, "state " + j.state);
      setText(r.cells.pid, j.pid || "");
      setText(r.cells.uptime, duration(j.uptime_s));
      setText(r.cells.restarts, j.restarts);
      const hasConn = j.quota !== null && j.quota !== undefined || j.connections !== null && j.connections !== undefined;
      if (r.mini.hidden !== !hasConn) r.mini.hidden = !hasConn;
      if (hasConn) {
        const q = num(j.quota), c = num(j.connections);
        setStyle(r.mini.firstChild, "width", (q ? Math.min(100, 100 * c / q) : c ? 100 : 0).toFixed(3) + "%");
        setClass(r.mini, c > q ? "mini over" : "mini");
        setText(r.connText, c + " / " + q);
      } else {
        setText(r.connText, "—");
      }
      setText(r.cells.exit, exitText(j.last_exit));
      setText(r.cells.reason, j.reason || "");
      setText(r.cells.next, nextRun(j.next_run));
    });
    for (const [name, r] of rows) {
      if (!seen.has(name)) {
        r.tr.remove();
        rows.delete(name);
      }
    }
    const order = ["running", "starting", "waiting", "scheduled", "backoff", "stopping", "exited", "stopped", "fatal"];
    const summary = Object.keys(counts).sort((a, b) => order.indexOf(a) - order.indexOf(b)).map((k) => counts[k] + " " + k);
    setText($("jobs-summary"), status.jobs.length + " jobs" + (summary.length ? ": " + summary.join(", ") : ""));
  }

  // ----- database -----
  function renderDatabase(b, history) {
    const db = b && b.database;
    if ($("db-card").hidden !== !db) $("db-card").hidden = !db;
    if (!db) return;
    const pill = $("db-pill");
    setText(pill, db.healthy ? "healthy" : db.checked_at ? "unhealthy" : "not checked yet");
    setClass(pill, "pill " + (db.healthy ? "ok" : db.checked_at ? "bad" : "wait"));
    const facts = [
      ["target", db.target],
      ["latency", db.latency_ms !== null && db.latency_ms !== undefined ? db.latency_ms.toFixed(1) + " ms" : ""],
      ["checked", db.checked_at ? clock(db.checked_at) : ""],
      ["max_connections", db.max_connections],
      ["error", db.error],
    ];
    if (b.coordination) facts.push(["coordination", b.coordination.healthy ? "healthy" : (b.coordination.error || "not synced yet")]);
    const dl = $("db");
    const shown = facts.filter(([, v]) => v !== null && v !== undefined && v !== "");
    while (dl.children.length > shown.length * 2) dl.lastChild.remove();
    shown.forEach(([k, v], i) => {
      if (!dl.children[2 * i]) dl.append(el("dt"), el("dd"));
      setText(dl.children[2 * i], k);
      setText(dl.children[2 * i + 1], v);
    });
    if (history) renderSpark(history);
  }

  function renderSpark(history) {
    const svg = $("spark");
    const lat = history.latency || {};
    const samples = lat.samples || [];
    const now = num(history.now), window = num(lat.window_s) || 3600;
    const W = 360, H = 48;
    const ok = samples.filter((s) => typeof s.ms === "number");
    const max = Math.max(1, ...ok.map((s) => s.ms));
    const x = (at) => Math.max(0, Math.min(W, W - (now - at) / window * W));
    const ns = "http://www.w3.org/2000/svg";
    while (svg.firstChild) svg.firstChild.remove();
    const line = document.createElementNS(ns, "polyline");
    const points = ok.map((s) => [x(s.at), H - 3 - (H - 8) * s.ms / max]);
    // A lone reading still shows, as a dot.
    if (points.length === 1) points.push([points[0][0] - 0.5, points[0][1]]);
    line.setAttribute("points", points.map(([px, py]) => px.toFixed(1) + "," + py.toFixed(1)).join(" "));
    svg.append(line);
    for (const s of samples.filter((s) => s.failed)) {
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("class", "fail");
      r.setAttribute("x", (x(s.at) - 1).toFixed(1));
      r.setAttribute("y", "0");
      r.setAttribute("width", "2");
      r.setAttribute("height", String(H));
      svg.append(r);
    }
    const failed = samples.filter((s) => s.failed).length;
    const min = ok.length ? Math.min(...ok.map((s) => s.ms)) : 0;
    setText($("spark-note"), samples.length
      ? samples.length + (samples.length === 1 ? " reading, " : " readings, ") + min.toFixed(1) + "–" + max.toFixed(1) + " ms" + (failed ? ", " + failed + " failed" : "")
      : "no readings yet");
  }

  // ----- fleet -----
  function renderFleet(b) {
    const fleet = b && b.scope === "fleet";
    if ($("fleet-card").hidden !== !fleet) $("fleet-card").hidden = !fleet;
    if (!fleet) return;
    const members = b.members || [];
    setText($("fleet-line"), members.length + " corral" + (members.length === 1 ? "" : "s") + " · base " + num(b.base) + " · usable " + num(b.usable));
    const tbody = $("members").tBodies[0];
    while (tbody.children.length > members.length) tbody.lastChild.remove();
    members.forEach((m, i) => {
      let tr = tbody.children[i];
      if (!tr) {
        tr = el("tr");
        for (let c = 0; c < 7; c++) tr.append(el("td", c >= 3 ? "num" : ""));
        tbody.append(tr);
      }
      const jobs = (b.jobs || []).filter((j) => j.member === m.id);
      const vals = [m.id + (m.id === b.member ? " (this one)" : ""), m.host, m.service, m.pid, duration(m.heartbeat_age_s) + " ago",
        jobs.length, jobs.reduce((n, j) => n + num(j.quota), 0)];
      vals.forEach((v, c) => setText(tr.children[c], v));
    });
  }

  // ----- events -----
  let lastSeq = -1;
  function renderEvents(history) {
    if (!history) return;
    const events = history.events || [];
    const top = events.length ? events[events.length - 1].seq : 0;
    if (top === lastSeq) return;
    lastSeq = top;
    const ol = $("events");
    while (ol.firstChild) ol.firstChild.remove();
    if (!events.length) ol.append(el("li", "empty", "nothing yet"));
    for (const e of events.slice(-EVENTS_SHOWN).reverse()) {
      const li = el("li");
      li.dataset.kind = e.kind;
      const t = el("time", "", clock(e.at));
      const msg = el("span", "msg");
      if (e.job) msg.append(el("span", "job", e.job));
      msg.append(document.createTextNode(e.message));
      li.append(t, el("span", "kind " + e.kind, e.kind.replace("_", " ")), msg);
      ol.append(li);
    }
  }

  // ----- the loop -----
  let tick = 0;
  async function refresh() {
    const conn = $("conn");
    try {
      const wantHistory = tick % HISTORY_EVERY === 0;
      const [status, budget, h] = await Promise.all([get("/status"), get("/budget"), wantHistory ? get("/history") : Promise.resolve(null)]);
      renderHeader(status, budget);
      renderBudget(budget);
      renderJobs(status);
      renderDatabase(budget, h);
      renderFleet(budget);
      renderEvents(h);
      // The time goes in the tooltip: text that changes every poll would cost a layout.
      setText(conn, "live");
      conn.title = "updated " + clock(Date.now() / 1000) + ", every " + POLL_MS / 1000 + " s";
      setClass(conn, "pill ok");
      document.body.dataset.updates = String(num(Number(document.body.dataset.updates)) + 1);
    } catch (e) {
      setText(conn, "not updating: " + e.message);
      setClass(conn, "pill bad");
    }
    tick++;
    setTimeout(refresh, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) tick = 0;
  });
  refresh();
})();
