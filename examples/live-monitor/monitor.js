// Live monitor page: subscribes to the producer's public `live-monitor` service and renders
// what arrives. The producer calls our callbacks (an `_rintf` object: it stays callable after
// `subscribe` returns), which works across workspaces. The page connects with rhizomorph-client
// on API v4 (`?wire=3`: on v3) and shows how many frames carried how many messages.
import { connect, requestedWire, wireSummary } from "../common/client.js";

const HISTORY = 200;
const STALE_MS = 5000; // no status for this long: the producer is gone, find one again

// Everything the page knows, also read by the end-to-end test.
const monitor = (window.liveMonitor = {
  connected: false, service: null, subscriber: null, error: null,
  status: null, series: null, meta: null,
  counts: { status: 0, series: 0, meta: 0 },
  lastArrival: 0,
  requestedWire, wire: null, // frames and messages each way (wireSummary), refreshed on render
  latencies: [], // ms from the producer's send to arrival, of the last LATENCIES status updates
});
const LATENCIES = 1000;
let server = null;
const history = { temperature: [], load: [] };
const arrivals = []; // [time ms, bytes] of recent messages, for the rate figures

const $ = (selector) => document.querySelector(selector);
const field = (name) => $(`[data-field="${name}"]`);

function setConnection(text, ok) {
  const el = $("#connection");
  el.textContent = text;
  el.className = `status ${ok ? "ok" : "bad"}`;
}

function arrived(bytes) {
  const now = Date.now();
  monitor.lastArrival = now;
  arrivals.push([now, bytes]);
  while (arrivals.length && arrivals[0][0] < now - 2000) arrivals.shift();
  scheduleRender();
}

function onStatus(status) {
  monitor.status = status;
  monitor.counts.status += 1;
  monitor.latencies.push(Date.now() - status.time * 1000);
  if (monitor.latencies.length > LATENCIES) monitor.latencies.shift();
  history.temperature.push(status.temperature);
  history.load.push(status.load);
  for (const values of Object.values(history)) if (values.length > HISTORY) values.shift();
  arrived(200);
}

function onSeries(series) {
  // float32 little-endian bytes (every browser platform is little-endian); slice() copies the
  // bytes into an aligned buffer, which Float32Array needs.
  const channels = {};
  let bytes = 0;
  for (const [name, raw] of Object.entries(series.channels)) {
    channels[name] = new Float32Array(raw.slice().buffer);
    bytes += raw.byteLength;
  }
  const summary = {};
  for (const [name, values] of Object.entries(channels)) {
    let min = Infinity, max = -Infinity, sum = 0;
    for (const v of values) { min = Math.min(min, v); max = Math.max(max, v); sum += v; }
    summary[name] = { min, max, mean: sum / values.length };
  }
  monitor.series = { seq: series.seq, channels, summary, sentSummary: series.summary };
  monitor.counts.series += 1;
  arrived(bytes);
}

function onMeta(meta) {
  monitor.meta = meta;
  monitor.counts.meta += 1;
  arrived(300);
}

let renderPending = false;
function scheduleRender() {
  // Coalesce: messages arrive faster than the screen refreshes.
  if (!renderPending) {
    renderPending = true;
    requestAnimationFrame(render);
  }
}

function render() {
  renderPending = false;
  if (server) {
    const wire = (monitor.wire = wireSummary(server));
    field("wire").textContent = `v${wire.protocol}`;
    field("frames_in").textContent = `${wire.framesIn} / ${wire.messagesIn}`;
    field("frames_out").textContent = `${wire.framesOut} / ${wire.messagesOut}`;
  }
  const s = monitor.status;
  if (s) {
    field("seq").textContent = s.seq;
    field("state").textContent = s.state;
    field("temperature").textContent = s.temperature.toFixed(3);
    field("pressure").textContent = s.pressure.toFixed(2);
    field("load").textContent = s.load.toFixed(4);
    field("subscribers").textContent = s.subscribers;
    field("dropped").textContent = s.dropped;
    field("latency").textContent = Math.max(0, Date.now() - s.time * 1000).toFixed(0);
    const span = arrivals.length > 1 ? (arrivals[arrivals.length - 1][0] - arrivals[0][0]) / 1000 : 0;
    if (span > 0) {
      field("rate").textContent = ((arrivals.length - 1) / span).toFixed(1);
      field("throughput").textContent = (arrivals.reduce((a, [, b]) => a + b, 0) / 1024 / span).toFixed(1);
    }
  }
  const series = monitor.series;
  if (series) {
    field("series_seq").textContent = `#${series.seq}`;
    const names = Object.keys(series.channels);
    drawLines($("#series-chart"), names.map((name) => ({ name, values: series.channels[name] })), { min: -1.5, max: 1.5 });
    if ($("#series-legend").childElementCount !== names.length) drawLegend($("#series-legend"), names);
    $("#series-table tbody").innerHTML = names
      .map((name) => {
        const m = series.summary[name];
        const safe = escapeHtml(name);
        return `<tr data-channel="${safe}" data-seq="${series.seq}"><td>${safe}</td>` +
          `<td class="num">${m.min.toFixed(4)}</td><td class="num">${m.max.toFixed(4)}</td>` +
          `<td class="num" data-field="mean">${m.mean.toFixed(4)}</td></tr>`;
      })
      .join("");
  }
  if (history.temperature.length > 1) {
    // Both on one 0..1 scale: temperature 17..25 °C mapped into it.
    drawLines($("#history-chart"), [
      { name: "temperature", values: history.temperature.map((t) => (t - 17) / 8) },
      { name: "load", values: history.load },
    ], { min: 0, max: 1, points: HISTORY });
    if (!$("#history-legend").childElementCount) drawLegend($("#history-legend"), ["temperature (17–25 °C)", "load"]);
  }
  const meta = monitor.meta;
  if (meta) {
    const rows = {
      name: meta.name, "rate (Hz)": meta.rate_hz, channels: meta.channels.join(", "),
      samples: `${meta.samples} × ${meta.dtype}`, "started at": new Date(meta.started_at * 1000).toLocaleTimeString(),
      service: monitor.service, "metadata updates": monitor.counts.meta,
    };
    $("#meta-table tbody").innerHTML = Object.entries(rows)
      .map(([k, v]) => `<tr><th>${k}</th><td class="wrap">${escapeHtml(v)}</td></tr>`).join("");
  }
}

async function findProducer() {
  const pinned = new URL(location.href).searchParams.get("service");
  if (pinned) return pinned;
  // Public services of every workspace; the producer is anonymous, so its workspace is random.
  const found = await server.listServices({ workspace: "*", service_id: "live-monitor" });
  return found.length ? found[0].id : null;
}

async function subscribe() {
  const id = await findProducer();
  if (!id) {
    setConnection("connected; waiting for a producer (python examples/live-monitor/producer.py)", false);
    return;
  }
  const producer = await server.getService(id);
  const reply = await producer.subscribe({ _rintf: true, on_status: onStatus, on_series: onSeries, on_meta: onMeta });
  Object.assign(monitor, { service: id, subscriber: reply.subscriber, lastArrival: Date.now() });
  onMeta(reply.meta);
  setConnection(`subscribed to ${id}`, true);
}

async function main() {
  try {
    server = await connect({ server_url: routerUrl(), method_timeout: 15 });
    monitor.connected = true;
    setConnection(`connected as ${server.config.workspace}/${server.config.client_id} (v${wireSummary(server).protocol})`, true);
    for (;;) {
      if (!monitor.service || Date.now() - monitor.lastArrival > STALE_MS) {
        monitor.service = null;
        try {
          await subscribe();
        } catch (err) {
          monitor.error = String(err);
          setConnection(`subscribe failed: ${err}`, false);
        }
      }
      await sleep(1000);
    }
  } catch (err) {
    monitor.error = String(err);
    setConnection(`cannot connect to ${routerUrl()}: ${err}`, false);
  }
}

// A page that is left (navigated away, tab closed) closes its connection: browsers may keep the
// socket of a page they hold in their back/forward cache open, and the producer would keep
// calling a subscriber that never answers until its calls time out.
window.addEventListener("pagehide", () => {
  if (server) server.disconnect();
});

main();
