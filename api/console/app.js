// The console's entry: sign-in with an API key, the fleet page (map, table, incident feed) kept live by the
// fleet event stream, and the vehicle page (#/vehicles/<id>). Everything comes from /v1 with the key.

import { FleetModel, MapView, STATES, COLORS, fromDoc, fromSummary } from "./fleet.js";
import { Api, ApiError, EventStream } from "./net.js";
import { TableView, timeText } from "./table.js";
import { VehiclePage, h } from "./vehicle.js";

const $ = (id) => document.getElementById(id);
const FEED_MAX = 100;
const REFUSED = "This key is not valid (unknown, revoked or expired).";
// Figures a test (or a curious operator) can read: window.consoleMetrics
const metrics = (window.consoleMetrics = {
  fleetFirstPaint: null, fleetComplete: null, vehicles: 0, latencies: [], updates: 0, feedShown: {}, feedWritten: {}, events: 0, reconnects: 0,
});

let api = null, key = null, model = null, map = null, table = null, vehicle = null, stream = null;
let dirty = false, tableDirty = false, ready = false, pending = [], frameLatencies = [];
const shown = new Set(STATES);

function signedIn(k) {
  key = k;
  api = new Api(k);
  $("login").hidden = true;
  $("signout").hidden = false;
  start();
}

function signOut(reason) {
  sessionStorage.removeItem("fleet-key");
  if (reason) sessionStorage.setItem("fleet-reason", reason);
  location.hash = "#/";
  location.reload();
}

async function boot() {
  $("signout").addEventListener("click", signOut);
  const m = /(?:^#|&)key=([^&]+)/.exec(location.hash);
  if (m) { // a link with the key in the fragment (never sent to a server): keep it in this tab only
    sessionStorage.setItem("fleet-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search + "#/");
  }
  const stored = sessionStorage.getItem("fleet-key");
  if (stored) return signedIn(stored); // a refused key signs out again, with the reason (see load)
  $("login").hidden = false;
  $("login-error").textContent = sessionStorage.getItem("fleet-reason") || "";
  sessionStorage.removeItem("fleet-reason");
  $("key-input").focus();
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const k = $("key-input").value.trim();
    $("login-error").textContent = "";
    if (await check(k, true)) { sessionStorage.setItem("fleet-key", k); signedIn(k); }
  });
}

async function check(k, report = false) {
  try {
    await new Api(k).get("/v1/rules");
    return true;
  } catch (e) {
    if (report) $("login-error").textContent = e instanceof ApiError && e.status === 401
      ? REFUSED : `The server did not answer: ${e.message}`;
    return false;
  }
}

function start() {
  model = new FleetModel();
  map = new MapView($("map"), $("map-tip"), model, { onOpen: (id) => { location.hash = `#/vehicles/${id}`; }, shown });
  table = new TableView($("grid"), $("table-count"), model, {
    onOpen: (id) => { location.hash = `#/vehicles/${id}`; },
    filters: () => ({ text: $("f-text").value, fleet: $("f-fleet").value, state: $("f-state").value, env: $("f-env").value, shown }),
  });
  vehicle = new VehiclePage($("vehicle-page"), api, key, (doc) => apply(fromDoc(doc)));
  legend();
  for (const id of ["f-text", "f-fleet", "f-state", "f-env"]) $(id).addEventListener("input", () => table.rebuild());
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => { dirty = true; });
  $("feed-panel").hidden = false;
  route();
  // live first (events are held until the first load is done, so nothing falls between the two)
  stream = new EventStream("/v1/events", key, {
    onEvent: (type, data, id) => { metrics.events++; if (ready) handle(type, data, id); else pending.push([type, data, id]); },
    onStatus: (s) => { if (s !== "live") metrics.reconnects++; const c = $("conn"); c.textContent = s === "live" ? "live" : "reconnecting …"; c.className = `conn ${s === "live" ? "live" : "down"}`; },
    onFatal: () => signOut(REFUSED),
  });
  load();
  requestAnimationFrame(frame);
}

async function load() {
  // vehicles, firing incidents and the feed's newest incidents load side by side; the map is drawn as
  // soon as the first (small) page of vehicles is in
  const firing = api.pages("/v1/incidents", { status: "firing", limit: 500 }, (items) => {
    items.forEach((i) => model.incident(i));
    dirty = tableDirty = true;
  }, 20);
  const recent = api.get("/v1/incidents", { limit: 50 }).then((p) => p.items.reverse().forEach((i) => feedItem(i, false)));
  let first = true;
  const vehicles = api.pages("/v1/vehicles", { view: "summary", limit: 500 }, (items, next) => {
    next.limit = 5000; // a small first page paints soon; then few, large pages
    for (const s of items) model.put(fromSummary(s));
    dirty = tableDirty = true;
    if (first) { first = false; map.draw(); metrics.fleetFirstPaint = performance.now(); }
  });
  try {
    await Promise.all([vehicles, firing, recent.catch(() => null)]);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut(REFUSED);
    $("conn").textContent = `could not load the fleet: ${e.message}`;
    return;
  }
  map.draw();
  table.rebuild();
  counts();
  metrics.fleetComplete = performance.now();
  metrics.vehicles = model.cars.size;
  options();
  ready = true;
  for (const [type, data, id] of pending) handle(type, data, id);
  pending = [];
}

function handle(type, data, id) {
  if (type === "state") {
    if (apply(fromDoc(data)) && data.updated_at) frameLatencies.push(data.updated_at);
  } else if (type === "incident") {
    model.incident(data);
    // the event id starts with the change stream's entry id: the ms the incident was written to the store
    if (id && !(data.incident_id in metrics.feedWritten)) metrics.feedWritten[data.incident_id] = parseInt(id, 10);
    feedItem(data, true);
    dirty = tableDirty = true;
  } else if (type === "reset") {
    location.reload(); // events were lost: start over from the current state
  }
}

function apply(rec) {
  if (!model.put(rec)) return false;
  dirty = tableDirty = true;
  return true;
}

let lastTable = 0;
function frame(now) {
  if (dirty && !$("fleet-page").hidden) {
    map.draw();
    counts();
    dirty = false;
  }
  if (tableDirty && now - lastTable > 500 && !$("fleet-page").hidden) { // the table: at most twice a second
    table.rebuild();
    tableDirty = false;
    lastTable = now;
  }
  if (frameLatencies.length) { // from the flow's write of the state to this frame on screen
    const shownAt = performance.timeOrigin + performance.now();
    for (const t of frameLatencies) metrics.latencies.push(shownAt - t);
    metrics.updates += frameLatencies.length;
    if (metrics.latencies.length > 100000) metrics.latencies.splice(0, metrics.latencies.length - 100000);
    frameLatencies = [];
  }
  requestAnimationFrame(frame);
}

function counts() {
  const c = model.counts();
  for (const st of STATES) {
    const b = document.querySelector(`#legend [data-state="${st}"] .n`);
    if (b) b.textContent = c[st].toLocaleString();
  }
  $("fleet-clock").textContent = model.clock ? `fleet clock ${timeText(model.clock)}` : "";
  map.summary = `Fleet map of ${model.cars.size.toLocaleString()} vehicles: ` +
    STATES.map((s) => `${c[s]} ${s}`).join(", ") + ". Arrow keys highlight a vehicle.";
  map.label();
}

function legend() {
  const box = $("legend");
  for (const st of STATES) {
    const b = h("button", { type: "button", "aria-pressed": "true", "data-state": st },
      h("span", { class: `swatch ${st}`, "aria-hidden": "true" }), `${st} `, h("span", { class: "n", text: "0" }));
    b.addEventListener("click", () => {
      if (shown.has(st)) shown.delete(st); else shown.add(st);
      b.setAttribute("aria-pressed", String(shown.has(st)));
      dirty = tableDirty = true;
    });
    box.append(b);
  }
  box.dataset.colors = JSON.stringify(COLORS);
}

function options() {
  const fill = (id, values) => {
    const sel = $(id);
    for (const v of [...values].filter(Boolean).sort()) sel.append(h("option", { text: v }));
  };
  const recs = [...model.cars.values()];
  fill("f-fleet", new Set(recs.map((r) => r.fleet)));
  fill("f-env", new Set(recs.map((r) => r.env)));
}

function feedItem(inc, live) {
  const feed = $("feed");
  const existing = feed.querySelector(`li[data-incident-id="${CSS.escape(inc.incident_id)}"]`);
  const li = h("li", { class: inc.status, "data-incident-id": inc.incident_id },
    h("div", { class: "what" }, `${inc.rule_id} `, h("span", { class: "badge", text: inc.status })),
    h("div", {}, h("a", { href: `#/vehicles/${inc.car_id}`, text: `car ${inc.car_id}` }),
      h("span", { class: "muted", text: ` · ${inc.severity || ""} · since ${timeText(inc.starts_at)}` })));
  if (existing) existing.replaceWith(li); else feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  if (live && !(inc.incident_id in metrics.feedShown)) metrics.feedShown[inc.incident_id] = performance.timeOrigin + performance.now();
  const n = model.active.size;
  $("feed-count").textContent = `${n} ${n === 1 ? "vehicle" : "vehicles"} with firing incidents`;
}

function route() {
  const m = /^#\/vehicles\/(\d+)/.exec(location.hash);
  if (m) {
    $("fleet-page").hidden = true;
    $("vehicle-page").hidden = false;
    vehicle.open(Number(m[1]));
  } else {
    vehicle.close();
    $("vehicle-page").hidden = true;
    $("fleet-page").hidden = false;
    dirty = tableDirty = true;
  }
}

boot();
