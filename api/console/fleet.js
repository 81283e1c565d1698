// The fleet as the console holds it (one small record per vehicle) and the map: every vehicle a dot at its
// last known location within the fleet's bounding box, on one canvas (10,000 dots draw in a few ms; no DOM
// node per vehicle, no map tiles).

export const STATES = ["driving", "parked", "offline", "incident"];
export const COLORS = { driving: "#1a7f37", parked: "#0969da", offline: "#6e7781", incident: "#cf222e" };
export const OFFLINE_MS = 10 * 60 * 1000; // no data for 10 min of the fleet's clock (the device-silent rule)

/** A vehicle record from a summary item or a full state document (SSE). */
export function fromSummary(s) {
  return {
    id: s.car_id, lat: s.location ? s.location.lat : null, lon: s.location ? s.location.lon : null,
    seen: s.last_seen || 0, version: s.version || 0, plate: s.plate || "", model: s.model || "",
    fleet: s.fleet || "", status: s.status || "", env: s.environment || "", stage: s.stage || "",
    zone: s.zone || "", speed: s.speed, engine: s.engine,
  };
}

export function fromDoc(d) {
  const car = d.car || {};
  const sig = d.signals || {};
  const num = (k) => (sig[k] && typeof sig[k].value === "number" ? sig[k].value : null);
  const eng = sig["Vehicle.Powertrain.CombustionEngine.IsRunning"];
  return fromSummary({
    car_id: d.car_id, location: d.location, last_seen: d.last_seen, version: d.version,
    plate: car.plate, model: car.model, fleet: car.fleet, status: car.status, environment: car.environment,
    stage: car.stage, zone: car.zone, speed: num("Vehicle.Speed"),
    engine: eng && typeof eng.value === "boolean" ? eng.value : null,
  });
}

export class FleetModel {
  constructor() {
    this.cars = new Map(); // id -> record
    this.active = new Map(); // id -> Set of firing incident ids
    this.clock = 0; // newest last_seen of the fleet (event time)
    this.generation = 0; // bumped on every change (views re-filter lazily)
  }

  put(rec) {
    const old = this.cars.get(rec.id);
    if (old && old.version > rec.version) return false;
    this.cars.set(rec.id, rec);
    if (rec.seen > this.clock) this.clock = rec.seen;
    this.generation++;
    return true;
  }

  incident(summary) {
    const set = this.active.get(summary.car_id) || new Set();
    if (summary.status === "firing") set.add(summary.incident_id);
    else set.delete(summary.incident_id);
    if (set.size) this.active.set(summary.car_id, set);
    else this.active.delete(summary.car_id);
    this.generation++;
  }

  state(rec) {
    if (this.active.has(rec.id)) return "incident";
    if (this.clock - rec.seen > OFFLINE_MS) return "offline";
    if ((rec.speed !== null && rec.speed > 0.5) || rec.engine === true) return "driving";
    return "parked";
  }

  counts() {
    const c = { driving: 0, parked: 0, offline: 0, incident: 0 };
    for (const rec of this.cars.values()) c[this.state(rec)]++;
    return c;
  }
}

export class MapView {
  constructor(canvas, tip, model, { onOpen, shown }) {
    this.canvas = canvas;
    this.tip = tip;
    this.model = model;
    this.onOpen = onOpen;
    this.shown = shown; // Set of states drawn
    this.points = []; // [x, y, rec] of the last draw, for hit tests
    this.focus = null; // highlighted vehicle (keyboard)
    this.summary = ""; // the fleet's counts, for the map's text
    this.box = null;
    canvas.addEventListener("click", (e) => { const hit = this.hit(e); if (hit) onOpen(hit.id); });
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    canvas.addEventListener("keydown", (e) => this.key(e));
  }

  bounds() {
    let s = 90, n = -90, w = 180, e = -180, any = false;
    for (const r of this.model.cars.values()) {
      if (r.lat === null) continue;
      any = true;
      if (r.lat < s) s = r.lat; if (r.lat > n) n = r.lat;
      if (r.lon < w) w = r.lon; if (r.lon > e) e = r.lon;
    }
    if (!any) return null;
    const padLat = Math.max((n - s) * 0.05, 0.001), padLon = Math.max((e - w) * 0.05, 0.001);
    return { s: s - padLat, n: n + padLat, w: w - padLon, e: e + padLon };
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const W = c.clientWidth, H = c.clientHeight;
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
      c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, W, H);
    const b = (this.box = this.bounds());
    this.points = [];
    if (!b) {
      g.fillStyle = "#57606a"; g.font = "14px sans-serif"; g.fillText("No vehicles with a location yet", 16, 28);
      return;
    }
    // equirectangular, keeping the aspect ratio at the box's latitude
    const kx = Math.cos(((b.s + b.n) / 2) * Math.PI / 180);
    const spanX = (b.e - b.w) * kx, spanY = b.n - b.s;
    const scale = Math.min((W - 40) / spanX, (H - 30) / spanY);
    const ox = 30 + (W - 40 - spanX * scale) / 2, oy = 10 + (H - 30 - spanY * scale) / 2;
    this.proj = (lat, lon) => [ox + (lon - b.w) * kx * scale, oy + (b.n - lat) * scale];
    this.grid(g, b, W, H);
    const byState = { driving: [], parked: [], offline: [], incident: [] };
    for (const r of this.model.cars.values()) {
      if (r.lat === null) continue;
      const st = this.model.state(r);
      if (!this.shown.has(st)) continue;
      const [x, y] = this.proj(r.lat, r.lon);
      byState[st].push(x, y);
      this.points.push([x, y, r]);
    }
    for (const st of ["offline", "parked", "driving"]) {
      const xy = byState[st];
      g.fillStyle = COLORS[st];
      g.beginPath();
      for (let i = 0; i < xy.length; i += 2) g.rect(xy[i] - 1.5, xy[i + 1] - 1.5, 3, 3);
      g.fill();
    }
    const inc = byState.incident; // on top, larger, ringed: not told by colour alone
    g.fillStyle = COLORS.incident; g.strokeStyle = "#fff"; g.lineWidth = 1.5;
    for (let i = 0; i < inc.length; i += 2) {
      g.beginPath(); g.arc(inc[i], inc[i + 1], 5, 0, 2 * Math.PI); g.fill(); g.stroke();
    }
    if (this.focus && this.model.cars.has(this.focus.id)) {
      const r = this.model.cars.get(this.focus.id);
      if (r.lat !== null) {
        const [x, y] = this.proj(r.lat, r.lon);
        g.strokeStyle = "#bf8700"; g.lineWidth = 3;
        g.beginPath(); g.arc(x, y, 9, 0, 2 * Math.PI); g.stroke();
      }
    }
  }

  grid(g, b, W, H) {
    g.strokeStyle = "#eaeef2"; g.fillStyle = "#57606a"; g.lineWidth = 1; g.font = "11px sans-serif";
    const step = niceStep(Math.max(b.n - b.s, b.e - b.w) / 5);
    for (let lat = Math.ceil(b.s / step) * step; lat <= b.n; lat += step) {
      const [, y] = this.proj(lat, b.w);
      g.beginPath(); g.moveTo(30, y); g.lineTo(W - 10, y); g.stroke();
      g.fillText(lat.toFixed(2), 0, y + 4);
    }
    for (let lon = Math.ceil(b.w / step) * step; lon <= b.e; lon += step) {
      const [x] = this.proj(b.s, lon);
      g.beginPath(); g.moveTo(x, 10); g.lineTo(x, H - 20); g.stroke();
      g.fillText(lon.toFixed(2), x - 14, H - 6);
    }
  }

  hit(e) {
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left, y = e.clientY - rect.top;
    let best = null, bestD = 64; // within 8 px
    for (const [px, py, r] of this.points) {
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) { bestD = d; best = r; }
    }
    return best;
  }

  hover(e) {
    const r = this.hit(e);
    if (!r) { this.tip.hidden = true; return; }
    const rect = this.canvas.getBoundingClientRect();
    this.tip.textContent = `car ${r.id} · ${r.plate} · ${r.model} · ${this.model.state(r)}`;
    this.tip.style.left = `${e.clientX - rect.left + 12}px`;
    this.tip.style.top = `${e.clientY - rect.top + 12}px`;
    this.tip.hidden = false;
  }

  key(e) {
    const dirs = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (e.key === "Enter" && this.focus) { this.onOpen(this.focus.id); return; }
    const d = dirs[e.key];
    if (!d || !this.points.length) return;
    e.preventDefault();
    const from = this.focus && this.points.find((p) => p[2].id === this.focus.id);
    if (!from) { this.focus = this.points[0][2]; this.announce(); this.draw(); return; }
    let best = null, bestScore = Infinity;
    for (const p of this.points) { // the nearest vehicle in that direction
      const dx = p[0] - from[0], dy = p[1] - from[1];
      const along = dx * d[0] + dy * d[1];
      if (along <= 0) continue;
      const score = along + 3 * Math.abs(dx * d[1] - dy * d[0]);
      if (score < bestScore) { bestScore = score; best = p; }
    }
    if (best) { this.focus = best[2]; this.announce(); this.draw(); }
  }

  announce() {
    this.label();
  }

  /** The map's text: what is highlighted (keyboard), then the counts (``summary``, set by the page). */
  label() {
    const r = this.focus;
    const focus = r ? `Fleet map. Highlighted: car ${r.id}, ${r.plate}, ${r.model}, ${this.model.state(r)}. ` +
      "Press Enter to open it. " : "";
    this.canvas.setAttribute("aria-label", focus + (this.summary || ""));
  }
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
