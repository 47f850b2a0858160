// The dashboard: plain DOM, only the relay's JSON APIs. Everything a tenant or Stencil controls
// (payloads, names, URLs, errors) is put in the page as text (textContent), never as markup.

const KEY = "stencil-relay.credential";
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
let refresher = null;

/** Calls the API with the credential of this tab; the answer's JSON, or an Error with its message. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const error = new Error((data && data.message) || `the relay answered ${res.status}`);
    error.status = res.status;
    throw error;
  }
  return data;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.className = isError ? "error" : "";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "never";
}

function cell(content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "—";
  return td;
}

function button(label, onClick, description) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (description) b.setAttribute("aria-label", description);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
    } catch (e) {
      say(e.message, true);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells.map(cell));
    return tr;
  }));
  $(`${tableId}-empty`).hidden = rows.length > 0;
  $(tableId).hidden = rows.length === 0;
}

/** A hook URL short enough for a table: host and the start of the path. */
function shortUrl(url) {
  try {
    const u = new URL(url);
    const path = u.pathname.length > 18 ? `${u.pathname.slice(0, 16)}…` : u.pathname;
    return `${u.host}${path}`;
  } catch {
    return url;
  }
}

function hookName(hooks, id) {
  const hook = hooks.find((h) => h.id === id);
  return hook ? shortUrl(hook.url) : id;
}

function hookStatus(h) {
  if (h.status === "paused") return `paused until ${when(h.paused_until)}`;
  return h.status;
}

// ---- connection view ------------------------------------------------------------------------

async function showConnection(connection) {
  $("who").textContent = `Connection ${connection.name} (${connection.id})`;
  const facts = $("connection-facts");
  const rows = [
    ["Ingest URL", connection.ingest_url],
    ["Verification", connection.ingest_auth],
  ];
  if (connection.ingest_auth !== "signature") {
    rows.push(["Header for Stencil", "Authorization: Bearer <the connection's signing secret>"]);
  }
  facts.replaceChildren(...rows.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
  const templateUrl = () => {
    const t = $("template-id").value.trim();
    $("template-ingest-url").textContent = t
      ? `${connection.ingest_url}?template_id=${encodeURIComponent(t)}`
      : connection.ingest_url;
  };
  $("template-id").oninput = templateUrl;
  templateUrl();
  const r = connection.rejected_ingests;
  const reasons = Object.entries(r.by_reason).map(([reason, n]) => `${reason}: ${n}`).join(", ");
  $("rejections").textContent = r.total ? `${r.total} refused (${reasons})` : "None refused.";
  $("connection").hidden = false;
  await refreshConnection();
  refresher = setInterval(() => refreshConnection().catch((e) => say(e.message, true)), REFRESH_MS);
}

async function refreshConnection() {
  const [hooks, events, dead, stats] = await Promise.all([
    api("GET", "/v1/hooks"),
    api("GET", "/v1/events?limit=20"),
    api("GET", "/v1/dead-letters?limit=50"),
    api("GET", "/v1/stats"),
  ]);
  drawChart(stats.minutes);
  fill("hooks", hooks.data.map((h) => [
    shortUrl(h.url),
    h.template_id ?? "any",
    hookStatus(h),
    when(h.last_success_at),
    String(h.consecutive_failures),
    actionsFor(h),
  ]));
  const outcomes = await Promise.all(events.data.map((e) =>
    api("GET", `/v1/events/${encodeURIComponent(e.id)}/deliveries`).then((a) => a.data, () => [])));
  const templates = [...new Set(events.data.map((e) => e.template_id).filter(Boolean))];
  const chosen = $("filter-template").value;
  $("filter-template").replaceChildren(...["", ...templates].map((t) => {
    const option = document.createElement("option");
    option.value = t;
    option.textContent = t || "any";
    return option;
  }));
  $("filter-template").value = templates.includes(chosen) ? chosen : "";
  const outcome = $("filter-outcome").value;
  const shown = events.data
    .map((e, i) => ({ event: e, deliveries: outcomes[i] }))
    .filter(({ event }) => !$("filter-template").value || event.template_id === $("filter-template").value)
    .filter(({ deliveries }) => !outcome || deliveries.some((d) => d.state === outcome));
  fill("events", shown.map(({ event, deliveries }) => [
    button(event.id, () => showEvent(event, hooks.data), `Open event ${event.id}`),
    event.template_id ?? "—",
    when(event.received_at),
    deliveries.map((d) => `${hookName(hooks.data, d.hook_id)}: ${d.state}`).join(", ") || "no hook",
  ]));
  fill("dead-letters", dead.data.map((d) => [
    d.event_id,
    d.hook_id,
    String(d.attempts),
    d.last_status ? String(d.last_status) : (d.last_error ?? "—"),
    when(d.dead_at),
    button("Replay", async () => {
      await api("POST", `/v1/dead-letters/${encodeURIComponent(d.id)}/retry`);
      say(`Replaying ${d.event_id}.`);
      await refreshConnection();
    }, `Replay ${d.event_id} to its hook`),
  ]));
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/** Stacked bars of attempts per minute and a line of the p95 latency, drawn from /v1/stats. */
function drawChart(minutes) {
  const [width, height] = [600, 150];
  const step = width / minutes.length;
  const most = Math.max(1, ...minutes.map((m) => m.delivered + m.retried + m.dead_lettered + m.detached));
  const slowest = Math.max(1, ...minutes.map((m) => m.latency_p95_ms ?? 0));
  const shapes = [svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, stroke: "currentColor", "stroke-opacity": 0.3 })];
  minutes.forEach((m, i) => {
    let top = height;
    for (const [count, colour] of [[m.delivered, "#2e7d32"], [m.retried, "#ef6c00"], [m.dead_lettered + m.detached, "#c62828"]]) {
      if (!count) continue;
      const h = (count / most) * (height - 10);
      top -= h;
      shapes.push(svg("rect", { x: i * step + 1, y: top, width: Math.max(step - 2, 1), height: h, fill: colour }));
    }
  });
  const points = minutes
    .map((m, i) => (m.latency_p95_ms == null ? null : `${i * step + step / 2},${height - (m.latency_p95_ms / slowest) * (height - 10)}`))
    .filter(Boolean);
  if (points.length) shapes.push(svg("polyline", { points: points.join(" "), fill: "none", stroke: "#1565c0", "stroke-width": 2 }));
  $("chart").replaceChildren(...shapes);
  const sum = (key) => minutes.reduce((n, m) => n + m[key], 0);
  const latest = [...minutes].reverse().find((m) => m.latency_p95_ms != null);
  $("chart-summary").textContent = `${sum("delivered")} delivered, ${sum("retried")} retried, ` +
    `${sum("dead_lettered")} dead letters` +
    (latest ? `; latency p95 up to ${latest.latency_p95_ms} ms in the latest minute with deliveries.` : ".");
}

function actionsFor(hook) {
  const actions = document.createElement("span");
  if (hook.status === "disabled") {
    actions.append(button("Enable", async () => {
      await api("POST", `/v1/hooks/${encodeURIComponent(hook.id)}/enable`);
      say("Hook enabled.");
      await refreshConnection();
    }, `Enable hook ${shortUrl(hook.url)}`));
  }
  actions.append(button("Detach", async () => {
    if (!window.confirm(`Detach ${hook.url}? Its scenario gets nothing more.`)) return;
    await api("DELETE", `/v1/hooks/${encodeURIComponent(hook.id)}`);
    say("Hook detached.");
    await refreshConnection();
  }, `Detach hook ${shortUrl(hook.url)}`));
  return actions;
}

async function showEvent(event, hooks) {
  $("event-detail-title").textContent = `Event ${event.id}`;
  $("event-payload").textContent = JSON.stringify(event.payload, null, 2);
  const deliveries = (await api("GET", `/v1/events/${encodeURIComponent(event.id)}/deliveries`)).data;
  $("event-deliveries").replaceChildren(...deliveries.map((d) => {
    const li = document.createElement("li");
    li.append(`${hookName(hooks, d.hook_id)}: ${d.state} after ${d.attempts} attempt(s) `);
    if (d.state !== "pending") {
      li.append(button("Replay to this hook", async () => {
        await api("POST", `/v1/deliveries/${encodeURIComponent(d.id)}/replay`);
        say(`Sending ${event.id} to ${hookName(hooks, d.hook_id)} again.`);
      }, `Replay ${event.id} to ${hookName(hooks, d.hook_id)}`));
    }
    return li;
  }));
  const lists = await Promise.all(hooks.map((h) => api("GET", `/v1/hooks/${encodeURIComponent(h.id)}/deliveries?limit=100`)
    .then((answer) => answer.data.filter((a) => a.event_id === event.id).map((a) => ({ hook: h, attempt: a })))));
  const attempts = lists.flat();
  $("event-attempts").replaceChildren(...(attempts.length ? attempts : [null]).map((found) => {
    const li = document.createElement("li");
    if (!found) {
      li.textContent = "No attempt recorded yet.";
      return li;
    }
    const { hook, attempt } = found;
    const outcome = attempt.status_code ? `answered ${attempt.status_code}` : attempt.error;
    li.textContent = `${shortUrl(hook.url)}: attempt ${attempt.attempt}, ${outcome}, ${attempt.duration_ms} ms, ${when(attempt.at)}`;
    return li;
  }));
  $("event-detail").hidden = false;
}

// ---- operator view --------------------------------------------------------------------------

async function showOperator() {
  $("who").textContent = "Operator";
  $("operator").hidden = false;
  await refreshOperator();
  refresher = setInterval(() => refreshOperator().catch((e) => say(e.message, true)), REFRESH_MS);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function refreshOperator() {
  const [answer, overview] = await Promise.all([api("GET", "/admin/v1/connections"), api("GET", "/admin/v1/overview")]);
  const facts = [
    ["Pending deliveries", String(overview.pending)],
    ["Oldest pending", overview.pending ? `${overview.oldest_pending_age_seconds} s` : "—"],
    ["Store size", bytes(overview.store_size_bytes)],
    ["Hooks", `${overview.hooks.active} active, ${overview.hooks.paused} paused, ${overview.hooks.disabled} disabled`],
  ];
  $("overview").replaceChildren(...facts.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
  fill("failing", overview.failing_hooks.map((h) => [
    shortUrl(h.url),
    h.connection_id,
    h.status,
    String(h.consecutive_failures),
    when(h.last_success_at),
  ]));
  const backlog = new Map(overview.connections.map((c) => [c.id, c]));
  fill("connections", answer.data.map((c) => [
    button(c.id, () => manage(c), `Manage connection ${c.id}`),
    c.name,
    String(c.hook_count),
    String(backlog.get(c.id)?.pending ?? 0),
    String(backlog.get(c.id)?.dead_letters ?? 0),
    String(backlog.get(c.id)?.events_24h ?? 0),
    c.ingest_auth,
    String(c.rejected_ingests ? c.rejected_ingests.total : 0),
  ]));
}

/** The operator's panel for one connection: settings, key and secret rotation. */
function manage(connection) {
  const path = `/admin/v1/connections/${encodeURIComponent(connection.id)}`;
  $("manage-title").textContent = `Connection ${connection.id}`;
  $("ingest-auth").value = connection.ingest_auth;
  $("ingest-rate").value = connection.ingest_rate ?? "";
  $("rotated").replaceChildren();
  $("settings").onsubmit = async (submitted) => {
    submitted.preventDefault();
    const rate = $("ingest-rate").value.trim();
    try {
      await api("PATCH", path, { ingest_auth: $("ingest-auth").value, ingest_rate: rate ? Number(rate) : null });
      say(`Saved ${connection.id}.`);
      await refreshOperator();
    } catch (e) {
      say(e.message, true);
    }
  };
  $("rotate-key").onclick = async () => {
    if (!window.confirm(`Rotate the API key of ${connection.id}? The current key stops working at once.`)) return;
    try {
      const rotated = await api("POST", `${path}/api-key`);
      $("rotated").replaceChildren(...copyable("new API key", rotated.api_key));
      say(`Rotated the API key of ${connection.id}: shown once.`);
    } catch (e) {
      say(e.message, true);
    }
  };
  $("rotate-secret").onclick = async () => {
    try {
      const rotated = await api("POST", `${path}/signing-secret`, { grace_seconds: 3600 });
      $("rotated").replaceChildren(...copyable("new signing secret", rotated.signing_secret));
      say(`Rotated the signing secret of ${connection.id}; the old one verifies until ${when(rotated.previous_expires_at)}.`);
    } catch (e) {
      say(e.message, true);
    }
  };
  $("manage").hidden = false;
}

function copyable(term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  const code = document.createElement("code");
  code.textContent = value;
  dd.append(code, " ", button("Copy", () => navigator.clipboard.writeText(value), `Copy the ${term}`));
  return [dt, dd];
}

async function createConnection(form) {
  const body = { name: $("new-name").value.trim() };
  const id = $("new-id").value.trim();
  if (id) body.id = id;
  const created = await api("POST", "/admin/v1/connections", body);
  $("created-secrets").replaceChildren(
    ...copyable("API key", created.api_key),
    ...copyable("signing secret", created.signing_secret),
    ...copyable("ingest URL", created.ingest_url),
  );
  $("created").hidden = false;
  form.reset();
  say(`Created connection ${created.id}.`);
  await refreshOperator();
}

// ---- signing in and out ---------------------------------------------------------------------

async function enter() {
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  try {
    await showConnection(await api("GET", "/v1/connection"));
    return;
  } catch (e) {
    if (e.status !== 401) throw e;
  }
  await showOperator();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  clearInterval(refresher);
  for (const id of ["connection", "operator", "event-detail", "created", "manage"]) $(id).hidden = true;
  for (const id of ["connection-facts", "created-secrets", "event-attempts", "event-deliveries", "rotated"]) {
    $(id).replaceChildren();
  }
  $("event-payload").textContent = "";
  $("who").textContent = "";
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  say("Signed out.");
}

async function start() {
  $("sign-in-form").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    sessionStorage.setItem(KEY, $("credential").value.trim());
    $("credential").value = "";
    try {
      await enter();
      say("");
    } catch (e) {
      signOut();
      say(e.status === 401 ? "That is neither a connection's API key nor the admin token." : e.message, true);
    }
  });
  $("sign-out").addEventListener("click", signOut);
  $("send-test").addEventListener("click", async () => {
    try {
      const sent = await api("POST", "/v1/test-events");
      say(`Sent test event ${sent.event_id} to ${sent.deliveries} hook(s).`);
      await refreshConnection();
    } catch (e) {
      say(e.message, true);
    }
  });
  for (const filter of ["filter-template", "filter-outcome"]) {
    $(filter).addEventListener("change", () => refreshConnection().catch((e) => say(e.message, true)));
  }
  $("create-connection").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    try {
      await createConnection(submitted.target);
    } catch (e) {
      say(e.message, true);
    }
  });
  if (sessionStorage.getItem(KEY)) {
    try {
      await enter();
    } catch (e) {
      signOut();
      say(e.message, true);
    }
  }
}

start();
