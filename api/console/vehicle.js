// The vehicle page: current signals, car / device / reservation rows, incidents with their delivery log,
// and the last hour of speed, 12 V battery and charge / fuel level — live through the vehicle's events.

import { lineChart } from "./chart.js";
import { EventStream } from "./net.js";
import { timeText } from "./table.js";

const HOUR = 3600 * 1000;
export const CHARTS = [
  ["Vehicle.Speed", "Speed", "km/h", "#0969da"],
  ["Vehicle.LowVoltageBattery.CurrentVoltage", "12 V battery", "V", "#8250df"],
  ["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "Charge", "%", "#1a7f37"],
  ["Vehicle.Powertrain.FuelSystem.RelativeLevel", "Fuel", "%", "#9a6700"],
];

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v; else if (k === "text") el.textContent = v; else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function kv(obj, skip = []) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of Object.entries(obj || {})) {
    if (skip.includes(k)) continue;
    const text = v === null ? "–" : /(_at|ts)$/.test(k) && typeof v === "number" ? new Date(v).toLocaleString() : String(v);
    dl.append(h("dt", { text: k }), h("dd", { text }));
  }
  return dl;
}

export class VehiclePage {
  constructor(root, api, key, onState) {
    this.root = root;
    this.api = api;
    this.key = key;
    this.onState = onState; // the page's car changed (keeps the fleet model fresh)
    this.stream = null;
    this.car = null;
  }

  close() {
    if (this.stream) this.stream.close();
    this.stream = null;
    this.car = null;
  }

  async open(car) {
    this.close();
    this.car = car;
    this.root.replaceChildren(h("p", { text: `Loading vehicle ${car} …` }));
    let doc;
    try {
      doc = await this.api.get(`/v1/vehicles/${car}`);
    } catch (e) {
      this.root.replaceChildren(
        h("p", {}, h("a", { href: "#/", text: "← Fleet" })),
        h("h2", { id: "vehicle-title", text: `Vehicle ${car}` }),
        h("p", { class: "error", role: "alert", text: e.status === 404 ? "No such vehicle, or not visible with this key." : `Could not load it: ${e.message}` }),
      );
      return;
    }
    if (this.car !== car) return;
    this.doc = doc;
    this.history = { ts: [], signals: {} };
    const [devices, history] = await Promise.all([
      Promise.all((doc.devices || []).map((d) => this.api.get(`/v1/devices/${encodeURIComponent(d)}`).catch(() => null))),
      this.api.get(`/v1/vehicles/${car}/history`, { minutes: 60 }).catch(() => null),
    ]);
    if (this.car !== car) return;
    if (history) this.history = history;
    this.render(devices.filter(Boolean));
    await this.loadIncidents();
    this.stream = new EventStream(`/v1/vehicles/${car}/events`, this.key, {
      onEvent: (type, data) => this.event(type, data),
    });
  }

  render(devices) {
    const d = this.doc, car = d.car || {};
    this.signalsBox = h("section", { class: "wide", "aria-labelledby": "sig-title" }, h("h3", { id: "sig-title", text: "Current signals" }));
    this.incidentsBox = h("section", { "aria-labelledby": "inc-title" }, h("h3", { id: "inc-title", text: "Incidents" }));
    this.chartBox = h("div", { class: "charts" });
    const deviceBox = h("section", { "aria-labelledby": "dev-title" }, h("h3", { id: "dev-title", text: "Devices" }));
    if (!devices.length) deviceBox.append(h("p", { class: "muted", text: (d.devices || []).join(", ") || "none" }));
    for (const dev of devices) deviceBox.append(h("h4", { text: dev.device_id }), kv(dev.device, ["device_id", "car_id"]));
    this.root.replaceChildren(
      h("p", {}, h("a", { href: "#/", text: "← Fleet" })),
      h("h2", { id: "vehicle-title", tabindex: "-1", text: `Car ${d.car_id} · ${car.plate || ""} · ${car.model || ""}` }),
      h("p", { class: "muted", id: "vehicle-meta" }),
      this.chartBox,
      h("div", { class: "vgrid" },
        this.signalsBox,
        h("section", { "aria-labelledby": "car-title" }, h("h3", { id: "car-title", text: "Car" }), kv(car)),
        h("section", { "aria-labelledby": "res-title" }, h("h3", { id: "res-title", text: "Reservation" }),
          d.reservation ? kv(d.reservation) : h("p", { class: "muted", text: "no active reservation" })),
        deviceBox,
        this.incidentsBox,
      ),
    );
    this.root.querySelector("#vehicle-title").focus();
    this.renderSignals();
    this.charts = CHARTS.map(([path, label, unit, color]) => {
      const canvas = h("canvas", { role: "img", "data-signal": path });
      const fig = h("figure", {}, h("figcaption", { text: `${label} (${unit}), last hour` }), canvas);
      return { path, label, unit, color, canvas, fig };
    });
    this.renderCharts();
  }

  renderSignals() {
    const d = this.doc;
    const meta = this.root.querySelector("#vehicle-meta");
    const tags = Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    meta.textContent = `last seen ${timeText(d.last_seen)} · version ${d.version}` +
      (d.location ? ` · ${d.location.lat.toFixed(5)}, ${d.location.lon.toFixed(5)}` : "") + (tags ? ` · ${tags}` : "");
    const rows = Object.entries(d.signals || {}).sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k.replace(/^Vehicle\./, "") }),
        h("td", { text: String(v.value) }), h("td", { text: timeText(v.ts) }), h("td", { text: v.device_id })));
    const table = h("table", { class: "plain" },
      h("caption", { class: "visually-hidden", text: "Current signals" }),
      h("thead", {}, h("tr", {}, ...["signal", "value", "event time", "device"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...rows));
    this.signalsBox.replaceChildren(this.signalsBox.firstChild, table);
  }

  renderCharts() {
    const { ts, signals } = this.history;
    const figs = [];
    for (const c of this.charts) {
      const values = signals[c.path] || [];
      // fuel is charted only for cars that report it; charge only for those with a traction battery
      if (c.path.includes("FuelSystem") && !values.some((v) => v !== null)) continue;
      figs.push(c);
    }
    this.chartBox.replaceChildren(...figs.map((c) => c.fig));
    for (const c of figs) lineChart(c.canvas, ts, signals[c.path] || [], c);
  }

  async loadIncidents() {
    const car = this.car;
    let items = [];
    try {
      items = (await this.api.get("/v1/incidents", { car_id: car, limit: 20 })).items;
    } catch { /* shown as none */ }
    const details = await Promise.all(items.slice(0, 10).map((i) =>
      this.api.get(`/v1/incidents/${encodeURIComponent(i.incident_id)}`).catch(() => i)));
    if (this.car !== car) return;
    const list = h("ul", { class: "incident-list" });
    for (const inc of details) {
      const deliveries = Object.entries(inc.deliveries || {});
      const log = deliveries.length
        ? h("table", { class: "plain deliveries" },
          h("caption", { class: "visually-hidden", text: `Deliveries of ${inc.incident_id}` }),
          h("thead", {}, h("tr", {}, ...["receiver", "status", "attempts", "HTTP", "when", "last error"].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, ...deliveries.map(([rcv, dl]) => h("tr", {}, h("td", { text: rcv }), h("td", { text: dl.status }),
            h("td", { text: String(dl.attempts) }), h("td", { text: dl.http_status ?? "–" }), h("td", { text: timeText(dl.at) }),
            h("td", { text: dl.last_error || "" })))))
        : h("p", { class: "muted small", text: "no deliveries recorded" });
      list.append(h("li", { "data-incident-id": inc.incident_id },
        h("span", { class: "what", text: `${inc.rule_id} ` }),
        h("span", { class: "badge", text: inc.status }), " ",
        h("span", { class: "muted", text: `${inc.severity || ""} · since ${timeText(inc.starts_at)}${inc.ends_at ? ` until ${timeText(inc.ends_at)}` : ""}` }),
        inc.annotations && inc.annotations.summary ? h("div", { text: inc.annotations.summary }) : null,
        log));
    }
    if (!details.length) list.append(h("li", { class: "muted", text: "no incidents" }));
    this.incidentsBox.replaceChildren(this.incidentsBox.firstChild, list);
  }

  event(type, data) {
    if (type === "state" && data.car_id === this.car) {
      if (data.version < this.doc.version) return;
      this.doc = { ...this.doc, ...data };
      this.onState(data);
      this.renderSignals();
      const { ts, signals } = this.history;
      const t = data.last_seen;
      if (!ts.length || t > ts[ts.length - 1]) { // live points between the stored 30 s samples
        ts.push(t);
        for (const [path] of CHARTS) {
          const v = data.signals && data.signals[path];
          (signals[path] = signals[path] || new Array(ts.length - 1).fill(null)).push(v && typeof v.value === "number" ? v.value : null);
        }
        while (ts.length && ts[0] < t - HOUR) { ts.shift(); for (const k in signals) signals[k].shift(); }
        this.renderCharts();
      }
    } else if (type === "incident" && data.car_id === this.car) {
      this.loadIncidents();
    }
  }
}
