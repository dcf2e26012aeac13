// A small line chart on <canvas>: the examples must work offline, so no charting library.
"use strict";

const CHART_COLORS = ["#4fb3a9", "#e0a84f", "#8c9eff", "#e06c6c", "#b5cea8", "#c586c0"];

/**
 * Draw named series of numbers as lines on a canvas.
 * @param {HTMLCanvasElement} canvas
 * @param {{name: string, values: ArrayLike<number>}[]} series
 * @param {{min?: number, max?: number, points?: number}} options fixed y range and x length
 */
function drawLines(canvas, series, options = {}) {
  // Match the backing store to the displayed size, so lines stay sharp on any screen.
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#11161c";
  ctx.fillRect(0, 0, width, height);

  let min = options.min, max = options.max;
  if (min === undefined || max === undefined) {
    const all = series.flatMap((s) => Array.from(s.values));
    min = min ?? Math.min(...all, 0);
    max = max ?? Math.max(...all, 1);
  }
  if (max <= min) max = min + 1;
  const pad = 6 * ratio;
  const y = (v) => height - pad - ((Math.min(Math.max(v, min), max) - min) / (max - min)) * (height - 2 * pad);

  ctx.strokeStyle = "#2a333d";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const gy = pad + (i / 4) * (height - 2 * pad);
    ctx.beginPath();
    ctx.moveTo(0, gy);
    ctx.lineTo(width, gy);
    ctx.stroke();
  }
  ctx.fillStyle = "#8a96a3";
  ctx.font = `${11 * ratio}px system-ui, sans-serif`;
  ctx.fillText(String(+max.toFixed(2)), 4, pad + 11 * ratio);
  ctx.fillText(String(+min.toFixed(2)), 4, height - pad - 2);

  series.forEach((s, index) => {
    const n = options.points || s.values.length;
    if (s.values.length < 2) return;
    ctx.strokeStyle = CHART_COLORS[index % CHART_COLORS.length];
    ctx.lineWidth = 1.5 * ratio;
    ctx.beginPath();
    for (let i = 0; i < s.values.length; i++) {
      const x = (i / Math.max(1, n - 1)) * width;
      if (i === 0) ctx.moveTo(x, y(s.values[i]));
      else ctx.lineTo(x, y(s.values[i]));
    }
    ctx.stroke();
  });
}

/** Fill a legend element with one colored swatch per series name. */
function drawLegend(element, names) {
  element.innerHTML = names
    .map((name, i) => `<span><i style="background:${CHART_COLORS[i % CHART_COLORS.length]}"></i>${escapeHtml(name)}</span>`)
    .join("");
}

/** The WebSocket URL of the router that served this page (override: ?server_url=...). */
function routerUrl() {
  const param = new URL(location.href).searchParams.get("server_url");
  return param || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Text for innerHTML: names and values come from other clients. */
function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
