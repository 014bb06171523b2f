// Ephemera operator console: the admin API only (PROTOCOL 8), polled every
// 2 s. The admin token stays in this tab's sessionStorage and goes out as
// a bearer header; nothing here shows content (the API has none to show).

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const KINDS = ["conversation", "user", "story"];
const HISTORY = 90; // chart points kept (3 minutes)

let token = sessionStorage.getItem("ephemera.admin") || null;
let timer = null;
let lastMetrics = null; // {at, sent, delivered}
const history = []; // {at, oldest, backlog}
const rates = []; // {at, sockets, sent}

async function admin(method, path) {
  const r = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` } });
  if (r.status === 401) {
    lock("That admin token was refused.");
    throw new Error("unauthorized");
  }
  if (!r.ok) {
    const j = await r.json().catch(() => null);
    throw new Error((j && j.error && j.error.message) || `HTTP ${r.status}`);
  }
  return r;
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

// One series of OpenMetrics text: the sum over its label sets.
function metric(text, name) {
  let sum = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/);
    if (m && m[1] === name) sum = (sum || 0) + Number(m[3]);
  }
  return sum;
}

async function pollMetrics() {
  const text = await (await admin("GET", "/metrics")).text();
  const now = Date.now();
  const cur = {
    at: now,
    sent: metric(text, "ephemera_messages_sent_total"),
    delivered: metric(text, "ephemera_messages_delivered_total"),
  };
  const sockets = metric(text, "ephemera_connections");
  $("m-connections").textContent = String(sockets ?? "–");
  $("m-sent").textContent = String(cur.sent ?? "–");
  if (lastMetrics && cur.sent !== null) {
    const dt = (now - lastMetrics.at) / 1000;
    const sent = (cur.sent - lastMetrics.sent) / dt;
    $("m-sent-rate").textContent = sent.toFixed(1);
    $("m-delivered-rate").textContent = ((cur.delivered - lastMetrics.delivered) / dt).toFixed(1);
    rates.push({ at: now, sockets: sockets || 0, sent });
    if (rates.length > HISTORY) rates.shift();
    drawChart("rates-chart", rates, ["sockets", "sent"], "rates-max", "sockets", "msg/s");
  }
  lastMetrics = cur;
}

function secs(v) {
  return v === null || v === undefined ? "–" : `${Number(v).toFixed(1)} s`;
}

async function pollDeletion() {
  const d = await (await admin("GET", "/admin/deletion")).json();
  $("d-window-met").textContent = d.window_met ? "yes" : "NO";
  $("d-window-met").className = d.window_met ? "stat good" : "stat bad";
  $("d-oldest").textContent = secs(d.oldest_expired_on_disk_seconds);
  $("d-keylag").textContent = secs(d.key_shred_lag_seconds);
  $("d-backlog").textContent = String(d.logical_backlog);
  $("d-blobs").textContent = String(d.blobs_pending_deletion);
  $("d-lastpass").textContent = d.last_full_pass_at ? new Date(d.last_full_pass_at).toLocaleTimeString() : "not yet";
  history.push({ at: Date.now(), oldest: Number(d.oldest_expired_on_disk_seconds) || 0, backlog: Number(d.logical_backlog) || 0 });
  if (history.length > HISTORY) history.shift();
  drawChart("chart", history, ["oldest", "backlog"], "chart-max", "s", "rows");
}

// Two series over time in one SVG, each scaled to its own maximum.
function drawChart(svgId, points, [k1, k2], maxId, unit1, unit2) {
  const svg = $(svgId);
  const W = 600, H = 160, pad = 6;
  const max1 = Math.max(1, ...points.map((p) => p[k1]));
  const max2 = Math.max(1, ...points.map((p) => p[k2]));
  const x = (i) => pad + (i * (W - 2 * pad)) / Math.max(1, HISTORY - 1);
  const line = (key, max) =>
    points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${(H - pad - (p[key] / max) * (H - 2 * pad)).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const path = (cls, d) => {
    const p = document.createElementNS(ns, "path");
    p.setAttribute("class", cls);
    p.setAttribute("d", d || "M0,0");
    return p;
  };
  svg.replaceChildren(path("l1", line(k1, max1)), path("l2", line(k2, max2)));
  svg.dataset.points = String(points.length);
  $(maxId).textContent = `max ${Number(max1.toFixed(1))} ${unit1}, ${Number(max2.toFixed(1))} ${unit2}`;
}

async function pollActors() {
  const box = $("actors");
  const tables = [];
  for (const kind of KINDS) {
    const { actors } = await (await admin("GET", `/admin/actors?kind=${kind}`)).json();
    const body = el("tbody");
    for (const a of actors) {
      body.append(
        el("tr", { dataset: { kind, id: a.id } },
          el("td", {}, el("code", {}, a.id)),
          el("td", {}, String(a.attached ?? "")),
          el("td", {}, String(a.timers_armed ?? "")),
          el("td", {}, String(a.mailbox_depth ?? "")),
          el("td", {}, String(a.uptime_seconds ?? "")),
          el("td", { class: "restarts" }, String(a.restarts ?? "")),
          el("td", {}, el("button", { type: "button", "aria-label": `Restart ${kind} ${a.id}`, onclick: () => restart(kind, a.id) }, "Restart")),
        ),
      );
    }
    tables.push(
      el("h3", {}, `${kind[0].toUpperCase()}${kind.slice(1)} actors (${actors.length})`),
      el("table", { dataset: { kind } },
        el("thead", {}, el("tr", {}, ...["id", kind === "user" ? "devices" : "members", "timers", "mailbox", "uptime (s)", "restarts", ""].map((h) => el("th", { scope: "col" }, h)))),
        body,
      ),
    );
  }
  box.replaceChildren(...tables);
}

async function restart(kind, id) {
  try {
    await admin("POST", `/admin/actors/${kind}/${encodeURIComponent(id)}/restart`);
    $("alert").textContent = "";
    $("status").textContent = `Restarted ${kind} ${id}`;
    poll();
  } catch (e) {
    $("alert").textContent = `Restart failed: ${e.message}`;
  }
}

async function poll() {
  if (!token) return;
  try {
    await Promise.all([pollMetrics(), pollDeletion(), pollActors()]);
    if (!$("status").textContent.startsWith("Restarted")) $("status").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (token) $("alert").textContent = `Poll failed: ${e.message}`;
  }
}

function unlock(t) {
  token = t;
  sessionStorage.setItem("ephemera.admin", t);
  $("unlock").hidden = true;
  $("console").hidden = false;
  $("lock").hidden = false;
  $("status").textContent = "Loading…";
  poll();
  clearInterval(timer);
  timer = setInterval(poll, POLL_MS);
}

function lock(why) {
  token = null;
  sessionStorage.removeItem("ephemera.admin");
  clearInterval(timer);
  $("console").hidden = true;
  $("unlock").hidden = false;
  $("lock").hidden = true;
  $("status").textContent = "Locked";
  $("alert").textContent = why || "";
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  unlock($("token").value.trim());
  $("token").value = "";
});
$("lock").addEventListener("click", () => lock());
if (token) unlock(token);
