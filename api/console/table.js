// The vehicle table, virtualised: only the rows in view are in the DOM (about 20 of 10,000), a spacer keeps
// the scroll height. A grid with one focusable place: arrow keys, Page Up/Down and Home/End move the
// active row, Enter opens it (roving focus on the grid itself, aria-activedescendant on the row).

const ROW_H = 28;
const COLUMNS = [
  ["id", "Car"], ["plate", "Plate"], ["model", "Model"], ["fleet", "Fleet"], ["env", "Env."],
  ["state", "State"], ["speed", "km/h"], ["seen", "Last seen"],
];

export function timeText(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "–";
}

export class TableView {
  constructor(grid, count, model, { onOpen, filters }) {
    this.grid = grid;
    this.body = grid.querySelector(".grid-body");
    this.spacer = grid.querySelector(".spacer");
    this.count = count;
    this.model = model;
    this.onOpen = onOpen;
    this.filters = filters; // () => {text, fleet, state, env, shown}
    this.rows = []; // filtered, sorted records
    this.active = 0;
    this.sort = { key: "id", dir: 1 };
    this.builtAt = -1;
    this.header();
    grid.addEventListener("scroll", () => this.paint());
    grid.addEventListener("keydown", (e) => this.key(e));
    this.body.addEventListener("click", (e) => {
      const row = e.target.closest(".row");
      if (row) this.onOpen(Number(row.dataset.id));
    });
  }

  header() {
    const head = this.grid.querySelector(".row.head");
    head.innerHTML = "";
    COLUMNS.forEach(([key, label], i) => {
      const cell = document.createElement("div");
      cell.setAttribute("role", "columnheader");
      cell.setAttribute("aria-colindex", String(i + 1));
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.addEventListener("click", () => {
        this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
        this.header();
        this.rebuild();
      });
      if (this.sort.key === key) cell.setAttribute("aria-sort", this.sort.dir > 0 ? "ascending" : "descending");
      cell.append(b);
      head.append(cell);
    });
  }

  /** Re-filter and re-sort (call when the data or the filters changed). */
  rebuild() {
    const f = this.filters();
    const text = f.text.trim().toLowerCase();
    const m = this.model;
    const out = [];
    for (const r of m.cars.values()) {
      const st = m.state(r);
      if (!f.shown.has(st)) continue;
      if (f.state && st !== f.state) continue;
      if (f.fleet && r.fleet !== f.fleet) continue;
      if (f.env && r.env !== f.env) continue;
      if (text && !`${r.id} ${r.plate} ${r.model} ${r.zone}`.toLowerCase().includes(text)) continue;
      out.push(r);
    }
    const { key, dir } = this.sort;
    const val = key === "state" ? (r) => m.state(r) : (r) => r[key];
    out.sort((a, b) => {
      const x = val(a), y = val(b);
      return (x === y ? a.id - b.id : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1) * (x === y ? 1 : dir);
    });
    this.rows = out;
    this.active = Math.min(this.active, Math.max(0, out.length - 1));
    this.builtAt = m.generation;
    this.grid.setAttribute("aria-rowcount", String(out.length + 1));
    this.spacer.style.height = `${out.length * ROW_H}px`;
    this.count.textContent = `${out.length.toLocaleString()} of ${m.cars.size.toLocaleString()} vehicles`;
    this.paint();
  }

  paint() {
    const top = this.grid.scrollTop;
    const height = this.grid.clientHeight;
    const first = Math.max(0, Math.floor(top / ROW_H) - 2);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_H) + 2);
    const m = this.model;
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const r = this.rows[i];
      const st = m.state(r);
      const row = document.createElement("div");
      row.className = i === this.active ? "row active" : "row";
      row.id = `vrow-${i}`;
      row.dataset.id = String(r.id);
      row.setAttribute("role", "row");
      row.setAttribute("aria-rowindex", String(i + 2));
      row.style.top = `${i * ROW_H}px`;
      const cells = [r.id, r.plate, r.model, r.fleet, r.env, st,
        r.speed === null ? "–" : r.speed.toFixed(0), timeText(r.seen)];
      cells.forEach((v, j) => {
        const cell = document.createElement("div");
        cell.setAttribute("role", "gridcell");
        if (j === 5) cell.className = `state ${st}`;
        cell.textContent = String(v);
        row.append(cell);
      });
      frag.append(row);
    }
    this.body.replaceChildren(this.spacer, frag);
    if (this.rows.length) this.grid.setAttribute("aria-activedescendant", `vrow-${this.active}`);
  }

  key(e) {
    const page = Math.max(1, Math.floor(this.grid.clientHeight / ROW_H) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, Home: -Infinity, End: Infinity };
    if (e.key === "Enter" && this.rows[this.active]) { this.onOpen(this.rows[this.active].id); return; }
    if (!(e.key in moves) || !this.rows.length) return;
    e.preventDefault();
    this.active = Math.max(0, Math.min(this.rows.length - 1, this.active + moves[e.key]));
    const y = this.active * ROW_H;
    const head = ROW_H; // the sticky header covers the first row's height
    if (y < this.grid.scrollTop) this.grid.scrollTop = y;
    else if (y + ROW_H > this.grid.scrollTop + this.grid.clientHeight - head) {
      this.grid.scrollTop = y + ROW_H - this.grid.clientHeight + head;
    }
    this.paint();
  }
}
