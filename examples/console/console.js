// Router console: polls the workspace manager once a second and shows rhizomorph itself.
// With `get_router_stats` (per-worker connections, batching counters, queue depths) it shows
// rates and batching; without it, what `list_services` / `list_clients` tell. The page connects
// with rhizomorph-client on API v4 (`?wire=3`: on v3).
import { connect, requestedWire, wireSummary } from "../common/client.js";

const POLL_MS = 1000;
const HISTORY = 120; // polls kept for the traffic chart

// Everything the page knows, also read by the end-to-end test.
const routerConsole = (window.routerConsole = {
  connected: false, source: null, polls: 0, error: null,
  stats: null, totals: null, rates: null, services: [], clients: 0, rtt: null,
  requestedWire, wire: null,
});
const traffic = { messages: [], flushes: [] };
let previous = null; // {time, perWorker: {id: totals}} of the last poll, for the rates

const $ = (selector) => document.querySelector(selector);
const field = (name) => $(`[data-field="${name}"]`);
const fmt = (value, digits = 0) => (value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits));

function setConnection(text, ok) {
  const el = $("#connection");
  el.textContent = text;
  el.className = `status ${ok ? "ok" : "bad"}`;
}

/** Per-second rates between two polls. Totals only cover connected clients, so a client that
 *  leaves takes its counts with it: a negative difference counts as zero. */
function rates(workers, now) {
  const perWorker = {};
  const sum = { messages: 0, flushes: 0 };
  for (const w of workers) {
    const before = previous && previous.perWorker[w.worker_id];
    const seconds = previous ? (now - previous.time) / 1000 : 0;
    const t = w.totals || {};
    const r = { messages: null, flushes: null };
    if (before && seconds > 0) {
      r.messages = Math.max(0, (t.messages || 0) - (before.messages || 0)) / seconds;
      r.flushes = Math.max(0, (t.flushes || 0) - (before.flushes || 0)) / seconds;
      sum.messages += r.messages;
      sum.flushes += r.flushes;
    }
    perWorker[w.worker_id] = r;
  }
  previous = { time: now, perWorker: Object.fromEntries(workers.map((w) => [w.worker_id, w.totals || {}])) };
  return { perWorker, ...sum, known: Object.values(perWorker).some((r) => r.messages !== null) };
}

function renderStats(stats, now) {
  const workers = stats.workers || [];
  const r = rates(workers, now);
  const totals = { connections: 0, messages: 0, flushes: 0, depth: 0, dropped: 0, reasons: {}, sizes: {} };
  for (const w of workers) {
    totals.connections += w.connections || 0;
    totals.dropped += w.dropped || 0;
    for (const key of ["messages", "flushes", "depth"]) totals[key] += (w.totals || {})[key] || 0;
    for (const [reason, n] of Object.entries((w.totals || {}).reasons || {})) {
      totals.reasons[reason] = (totals.reasons[reason] || 0) + n;
    }
    // Not in every router's totals: shown only when present (bucket upper bound -> flushes).
    for (const [bucket, n] of Object.entries((w.totals || {}).batch_sizes || {})) {
      totals.sizes[bucket] = (totals.sizes[bucket] || 0) + n;
    }
  }
  Object.assign(routerConsole, { stats, totals, rates: r });

  field("workers").textContent = workers.length;
  field("connections").textContent = totals.connections;
  field("depth").textContent = totals.depth;
  field("dropped").textContent = totals.dropped;
  if (r.known) {
    field("messages_per_s").textContent = fmt(r.messages, 1);
    field("flushes_per_s").textContent = fmt(r.flushes, 1);
    field("batch_size").textContent = r.flushes > 0 ? fmt(r.messages / r.flushes, 2) : "–";
    traffic.messages.push(r.messages);
    traffic.flushes.push(r.flushes);
    for (const values of Object.values(traffic)) if (values.length > HISTORY) values.shift();
    drawLines($("#traffic-chart"), [
      { name: "messages/s", values: traffic.messages },
      { name: "flushes/s", values: traffic.flushes },
    ], { min: 0, points: HISTORY });
    if (!$("#traffic-legend").childElementCount) drawLegend($("#traffic-legend"), ["messages / s", "flushes / s"]);
  }

  $("#workers-table tbody").innerHTML = workers.map((w) => {
    const t = w.totals || {};
    const wr = r.perWorker[w.worker_id] || {};
    const peerCalls = Object.values(w.peer_calls || {}).reduce((a, b) => a + b, 0);
    const policy = w.batch_policy
      ? (w.batch_policy.enabled ? `${w.batch_policy.max_messages} msg / ${w.batch_policy.timeout_ms} ms` : "off")
      : "–";
    return `<tr data-worker="${escapeHtml(w.worker_id)}"><td>${escapeHtml(w.worker_id)}</td>` +
      `<td class="num">${w.pid ?? "–"}</td><td class="num">${w.connections ?? "–"}</td>` +
      `<td class="num" data-field="worker_messages">${t.messages ?? "–"}</td><td class="num">${fmt(wr.messages, 1)}</td>` +
      `<td class="num">${t.flushes ?? "–"}</td>` +
      `<td class="num">${t.flushes ? fmt(t.messages / t.flushes, 2) : "–"}</td>` +
      `<td class="num">${t.depth ?? "–"}</td><td class="num">${w.dropped ?? "–"}</td>` +
      `<td class="num">${peerCalls}</td><td>${escapeHtml(policy)}</td></tr>`;
  }).join("");

  const flushes = Object.values(totals.reasons).reduce((a, b) => a + b, 0);
  $("#reasons-table tbody").innerHTML = Object.entries(totals.reasons).map(([reason, n]) =>
    `<tr data-reason="${escapeHtml(reason)}"><td>${escapeHtml(reason)}</td><td class="num">${n}</td>` +
    `<td class="num">${flushes ? fmt((100 * n) / flushes, 1) + " %" : "–"}</td></tr>`).join("");
  const sizes = Object.entries(totals.sizes);
  $("#sizes").hidden = sizes.length === 0;
  $("#sizes-table tbody").innerHTML = sizes.map(([bucket, n]) =>
    `<tr><td>≤ ${escapeHtml(bucket)}</td><td class="num">${n}</td></tr>`).join("");
}

function renderServices(services) {
  // Every client registers a public `built-in` service: counting them counts clients everywhere.
  const mine = services.filter((s) => s.type !== "built-in");
  routerConsole.services = mine.map((s) => s.id);
  routerConsole.clients = services.length - mine.length;
  field("clients").textContent = routerConsole.clients;
  field("services").textContent = mine.length;
  $("#services-table tbody").innerHTML = mine.map((s) =>
    `<tr data-service="${escapeHtml(s.id)}"><td class="wrap">${escapeHtml(s.id)}</td>` +
    `<td>${escapeHtml(s.name || "")}</td></tr>`).join("");
}

async function poll(server) {
  const getStats = server.get_router_stats || server.getRouterStats;
  const started = performance.now();
  await server.echo("ping");
  routerConsole.rtt = performance.now() - started;
  field("rtt").textContent = fmt(routerConsole.rtt, 1);

  if (getStats) {
    routerConsole.source = "get_router_stats";
    renderStats(await getStats(), Date.now());
  } else {
    // An older router: only what every hypha-compatible server answers.
    routerConsole.source = "list_services";
    const note = $("#note");
    note.hidden = false;
    note.textContent = "This router has no get_router_stats: connections, rates and batching are unknown; " +
      `clients of this workspace: ${(await server.listClients()).length}.`;
  }
  renderServices(await server.listServices({ workspace: "*" }));
  const wire = (routerConsole.wire = wireSummary(server));
  field("wire").textContent = `v${wire.protocol}`;
  field("frames_in").textContent = `${wire.framesIn} / ${wire.messagesIn}`;
  routerConsole.polls += 1;
}

async function main() {
  let server;
  try {
    server = await connect({ server_url: routerUrl(), method_timeout: 15 });
  } catch (err) {
    routerConsole.error = String(err);
    setConnection(`cannot connect to ${routerUrl()}: ${err}`, false);
    return;
  }
  routerConsole.connected = true;
  const info = server.config;
  const serverId = info.server_id || String(info.manager_id || "?").replace(/^manager-/, "");
  const connected = `connected to ${routerUrl()} · server ${serverId} · hypha ${info.hypha_version || "?"}`;
  for (;;) {
    try {
      await poll(server);
      routerConsole.error = null;
      setConnection(connected, true);
    } catch (err) {
      routerConsole.error = String(err);
      setConnection(`poll failed: ${err}`, false);
    }
    await sleep(POLL_MS);
  }
}

main();
