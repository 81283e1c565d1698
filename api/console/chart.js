// A small line chart on a canvas: time on x, one signal on y, gaps where a value is missing.

import { timeText } from "./table.js";

export function lineChart(canvas, times, values, { unit, color, label }) {
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 300, H = canvas.clientHeight || 160;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  g.font = "11px sans-serif";
  const pts = [];
  for (let i = 0; i < times.length; i++) if (values[i] !== null && values[i] !== undefined) pts.push(i);
  if (!pts.length) {
    g.fillStyle = "#57606a";
    g.fillText("no data in the last hour", 12, H / 2);
    canvas.setAttribute("aria-label", `${label}: no data in the last hour`);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const i of pts) { lo = Math.min(lo, values[i]); hi = Math.max(hi, values[i]); }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const t0 = times[0], t1 = Math.max(times[times.length - 1], t0 + 1);
  const L = 44, R = 8, T = 8, B = 20;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  g.strokeStyle = "#d0d7de"; g.fillStyle = "#57606a"; g.lineWidth = 1;
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    g.beginPath(); g.moveTo(L, y(v)); g.lineTo(W - R, y(v)); g.stroke();
    g.fillText(v.toFixed(Math.abs(hi - lo) < 10 ? 1 : 0), 2, y(v) + 4);
  }
  g.fillText(timeText(t0), L, H - 4);
  const endText = timeText(t1);
  g.fillText(endText, W - R - g.measureText(endText).width, H - 4);
  g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
  let pen = false;
  for (let i = 0; i < times.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) { pen = false; continue; }
    if (pen) g.lineTo(x(times[i]), y(v)); else g.moveTo(x(times[i]), y(v));
    pen = true;
  }
  g.stroke();
  if (pts.length === 1) { g.fillStyle = color; g.beginPath(); g.arc(x(times[pts[0]]), y(values[pts[0]]), 3, 0, 7); g.fill(); }
  const last = values[pts[pts.length - 1]];
  let mn = Infinity, mx = -Infinity;
  for (const i of pts) { mn = Math.min(mn, values[i]); mx = Math.max(mx, values[i]); }
  canvas.setAttribute("aria-label", `${label}, ${pts.length} samples from ${timeText(t0)} to ` +
    `${timeText(t1)}: now ${last} ${unit}, lowest ${mn} ${unit}, highest ${mx} ${unit}`);
  canvas.dataset.points = String(pts.length);
}
