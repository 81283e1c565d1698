// The console's only way to the server: the /v1 API with the operator's key (fetch), and its server-sent
// events read through fetch too (EventSource cannot send an Authorization header), resumed with
// Last-Event-ID after a dropped connection.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  async get(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const r = await fetch(url, { headers: { Authorization: `Bearer ${this.key}` }, cache: "no-store" });
    if (!r.ok) {
      let detail = "";
      try { detail = (await r.json()).detail; } catch { /* not a problem document */ }
      throw new ApiError(r.status, detail);
    }
    return r.json();
  }

  /** Every page of a cursor-paged list; onPage(items, params) is called as each page arrives (and may
   * change the parameters of the next request, e.g. its limit). */
  async pages(path, params, onPage, maxPages = 1000) {
    let cursor = null;
    const next = { ...params };
    for (let i = 0; i < maxPages; i++) {
      const page = await this.get(path, { ...next, cursor });
      onPage(page.items, next);
      cursor = page.next_cursor;
      if (!cursor) return;
    }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A server-sent event stream; handlers: onEvent(type, data, id), onStatus("live"|"down"), onFatal(status). */
export class EventStream {
  constructor(url, key, handlers) {
    this.url = url;
    this.key = key;
    this.h = handlers;
    this.lastId = null;
    this.stopped = false;
    this.retry = 2000;
    this.ctrl = null;
    this.run();
  }

  close() {
    this.stopped = true;
    if (this.ctrl) this.ctrl.abort();
  }

  async run() {
    while (!this.stopped) {
      this.ctrl = new AbortController();
      try {
        const headers = { Authorization: `Bearer ${this.key}`, Accept: "text/event-stream" };
        if (this.lastId) headers["Last-Event-ID"] = this.lastId;
        const r = await fetch(this.url, { headers, signal: this.ctrl.signal, cache: "no-store" });
        if (r.status === 401 || r.status === 403 || r.status === 404) {
          this.h.onFatal?.(r.status);
          return;
        }
        if (!r.ok || !r.body) throw new ApiError(r.status);
        this.h.onStatus?.("live");
        await this.read(r.body.getReader());
      } catch (e) {
        if (this.stopped) return;
      }
      this.h.onStatus?.("down");
      await sleep(this.retry);
    }
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      const end = buf.lastIndexOf("\n\n");
      if (end < 0) continue;
      const complete = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const block of complete.split("\n\n")) this.dispatch(block);
    }
  }

  dispatch(block) {
    let type = "message", id = null, data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(line[5] === " " ? 6 : 5);
      else if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("id:")) id = line.slice(3).trim();
      else if (line.startsWith("retry:")) this.retry = Number(line.slice(6)) || this.retry;
    }
    if (id) this.lastId = id;
    if (!data) return;
    let parsed;
    try { parsed = JSON.parse(data); } catch { return; }
    this.h.onEvent(type, parsed, id);
  }
}
