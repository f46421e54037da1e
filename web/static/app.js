/* The operator page: upload a file of users, follow its batch, watch the system.
 *
 * Plain browser JavaScript, no build step. It talks to the same API as any client:
 *   POST /api/users (the file as the body, its content type from its name, an Idempotency-Key per file),
 *   GET  /api/batches/<id>?limit=&cursor=   (polled until "completed"),
 *   GET  /api/reports/age-distribution, /api/users/newest, /api/overview, /readyz,
 *   GET  /api/batches (the recent batches, polled), /api/reports/throughput (drawn as SVG),
 *   GET  /api/batches/<id>/invalid.csv|.ndjson (downloaded), GET /api/failed, POST /api/failed/replay|purge.
 * Data from the API is put in the page with textContent only, never as HTML.
 */
"use strict";
(() => {
  const TOKEN_KEY = "bup.apiToken";
  const PAGE_SIZE = 20;
  const BATCH_POLL_MS = 700;
  const SYSTEM_POLL_MS = 5000;
  const BATCHES_POLL_MS = 2000;
  const BATCHES_PAGE = 10;
  const NAMES_KEY = "bup.batchNames";
  const STACKED = ["stored", "duplicate", "invalid", "failed"];
  const OUTCOMES = ["queued", "stored", "duplicate", "invalid", "failed"];
  // Answers after which the same upload may be sent again (0: the connection failed).
  const RETRIED = new Set([0, 409, 429, 502, 503, 504]);
  const TYPES = { csv: "text/csv", json: "application/json", ndjson: "application/x-ndjson", jsonl: "application/x-ndjson" };

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat();
  const storedAt = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // --- the token (only when the service sets API_TOKEN) -------------------------------------------------
  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY) || "",
    set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
    forget: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  function authHeaders() {
    const value = token.get();
    return value ? { Authorization: `Bearer ${value}` } : {};
  }

  function askForToken(message) {
    $("auth").hidden = false;
    $("auth-message").textContent = message;
  }

  /** The error of an answer, in the API's one shape `{"error": {"code", "message"}}` when it has it. */
  function errorOf(status, body, fallback) {
    const error = body && body.error ? body.error : {};
    return new ApiError(status, error.code || `http_${status}`, error.message || fallback || `HTTP ${status}`);
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch { return null; }
  }

  async function api(path, options = {}) {
    let response;
    const headers = { Accept: "application/json", ...authHeaders() };
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    const init = { method: options.method || "GET", headers };
    if (options.json !== undefined) init.body = JSON.stringify(options.json);
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network_error", "the service cannot be reached");
    }
    const body = parseJson(await response.text());
    if (response.status === 401) {
      askForToken(token.get() ? "The token was refused; enter the right one." : "This service asks for a bearer token.");
    }
    if (!response.ok && !(response.status === 503 && path === "/readyz")) {
      throw errorOf(response.status, body, response.statusText);
    }
    return body;
  }

  // --- small DOM helpers -----------------------------------------------------------------------------
  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.append(cell);
    return tr;
  }

  function badge(id, text, state) {
    const node = $(id);
    node.textContent = text;
    node.dataset.state = state;
  }

  function say(text, kind) {
    const node = $("upload-status");
    node.textContent = text;
    node.dataset.kind = kind || "info";
  }

  // --- upload --------------------------------------------------------------------------------------------
  function contentTypeOf(file) {
    const extension = (file.name.split(".").pop() || "").toLowerCase();
    return TYPES[extension] || (Object.values(TYPES).includes(file.type) ? file.type : "text/csv");
  }

  // One Idempotency-Key per chosen file, kept for as long as that file stays chosen: pressing Upload again
  // after a 503 or a dropped connection is then the same submission, answered with the first attempt's
  // batch when that one was in fact taken. Choosing a file again (even the same one) makes a new key.
  const uploadKeys = new WeakMap();

  function keyOf(file) {
    if (!uploadKeys.has(file)) uploadKeys.set(file, newKey());
    return uploadKeys.get(file);
  }

  function newKey() {
    if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
    // randomUUID exists only in secure contexts (https, localhost); getRandomValues in every page.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** POST the file as the request body; XMLHttpRequest because fetch reports no upload progress. */
  function send(file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/users");
      xhr.setRequestHeader("Content-Type", contentTypeOf(file));
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("Idempotency-Key", keyOf(file));
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
      xhr.upload.onload = () => onProgress(file.size, file.size, true);
      xhr.onload = () =>
        resolve({
          status: xhr.status,
          body: parseJson(xhr.responseText),
          replayed: xhr.getResponseHeader("Idempotent-Replayed") === "true",
        });
      xhr.onerror = () => reject(new ApiError(0, "network_error", "the upload was interrupted"));
      xhr.send(file);
    });
  }

  async function upload(event) {
    event.preventDefault();
    const file = $("file").files[0];
    if (!file) return;
    const button = $("upload-button");
    button.disabled = true;
    $("upload-progress").hidden = false;
    say(`Sending ${file.name} (${number.format(file.size)} bytes)…`);
    try {
      const answer = await send(file, (sent, total, done) => {
        $("upload-bar").max = Math.max(total, 1);
        $("upload-bar").value = sent;
        $("upload-bar-text").textContent = `${percent(sent, total)} %`;
        if (done) say(`Sent ${file.name}; the API is putting every record on the queue…`);
      });
      if (answer.status === 401) askForToken("This service asks for a bearer token.");
      if (answer.status !== 202) throw errorOf(answer.status, answer.body);
      const again = answer.replayed ? " (an earlier attempt had been accepted)" : "";
      say(`Accepted ${number.format(answer.body.count)} records as batch ${answer.body.batch_id}${again}.`, "ok");
      names.remember(answer.body.batch_id, file.name);
      refreshBatches();
      follow(answer.body.batch_id, answer.body.count);
    } catch (e) {
      const retry = RETRIED.has(e.status) ? " Press Upload again to retry: it is sent as the same upload." : "";
      say(`Upload refused: ${describe(e)}.${retry}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  function describe(e) {
    return e instanceof ApiError ? `${e.message} (${e.status ? e.status + " " : ""}${e.code})` : String(e);
  }

  function percent(done, total) {
    // Floor, so that 100 % means everything, never "almost".
    return total > 0 ? Math.floor((done * 100) / total) : 100;
  }

  // --- following a batch -------------------------------------------------------------------------------
  const batch = { id: null, expected: null, cursors: [0], timer: null, generation: 0 };

  function follow(batchId, expected) {
    batch.id = batchId;
    batch.expected = expected ?? null;
    batch.cursors = [0];
    batch.generation += 1;
    clearTimeout(batch.timer);
    $("batch").hidden = false;
    $("batch-id").textContent = batchId;
    $("batch-id-input").value = batchId;
    history.replaceState(null, "", `#batch=${encodeURIComponent(batchId)}`);
    pollBatch(batch.generation);
  }

  async function pollBatch(generation) {
    if (generation !== batch.generation) return; // a newer batch is followed now
    let report = null;
    try {
      const cursor = batch.cursors[batch.cursors.length - 1];
      report = await api(`/api/batches/${encodeURIComponent(batch.id)}?limit=${PAGE_SIZE}&cursor=${cursor}`);
    } catch (e) {
      if (generation !== batch.generation) return;
      badge("batch-state", e.status === 404 ? "unknown batch" : "unavailable", "error");
      if (e.status === 404) return;
    }
    if (generation !== batch.generation) return;
    if (report) showBatch(report);
    if (!report || report.state !== "completed") {
      batch.timer = setTimeout(() => pollBatch(generation), BATCH_POLL_MS);
    } else {
      refreshSystem(); // the batch changed the report, the newest users and maybe the failed count
    }
  }

  function showBatch(report) {
    const counts = report.counts || {};
    const total = report.count ?? batch.expected;
    const processed = ["stored", "duplicate", "invalid", "failed"].reduce((sum, s) => sum + (counts[s] || 0), 0);
    const completed = report.state === "completed";
    badge("batch-state", completed ? "completed" : "processing", completed ? "ok" : "busy");
    const bar = $("batch-bar");
    const text = $("batch-progress-text");
    if (total === null || total === undefined) {
      bar.removeAttribute("value"); // indeterminate until the worker has registered the batch
      text.textContent = `${number.format(processed)} processed`;
      text.dataset.percent = "";
    } else {
      const done = completed ? total : Math.min(processed, total);
      bar.max = Math.max(total, 1);
      bar.value = total > 0 ? done : 1;
      const p = completed ? 100 : Math.min(percent(done, total), 99);
      text.textContent = `${number.format(done)} / ${number.format(total)} records (${p} %)`;
      text.dataset.percent = String(p);
    }
    const queued = counts.queued ?? (total != null ? Math.max(0, total - processed) : null);
    for (const status of OUTCOMES) {
      const value = status === "queued" ? queued : counts[status] || 0;
      $(`count-${status}`).textContent = value === null ? "–" : number.format(value);
    }
    showItems(report.items || [], report.next_cursor);
  }

  function showItems(items, nextCursor) {
    const body = $("items").tBodies[0];
    body.replaceChildren(
      ...items.map((item) => {
        const errors = element("ul", null, "errors");
        for (const error of item.errors || []) {
          const li = element("li");
          li.append(element("code", error.field), document.createTextNode(" " + error.message));
          errors.append(li);
        }
        return row([element("td", item.row, "num"), element("td", item.status, `status-${item.status}`), wrap("td", errors)]);
      })
    );
    $("items-empty").hidden = items.length > 0 || batch.cursors.length > 1;
    batch.next = nextCursor;
    $("items-next").disabled = !nextCursor;
    $("items-prev").disabled = batch.cursors.length <= 1;
    $("items-page").textContent = `Page ${batch.cursors.length}`;
  }

  function wrap(tag, child) {
    const node = element(tag);
    node.append(child);
    return node;
  }

  function page(step) {
    if (step > 0 && batch.next) batch.cursors.push(batch.next);
    else if (step < 0 && batch.cursors.length > 1) batch.cursors.pop();
    else return;
    batch.generation += 1;
    clearTimeout(batch.timer);
    pollBatch(batch.generation);
  }

  // --- the system: health, lag, failed messages, report, newest users ----------------------------------
  async function refreshHealth() {
    try {
      const ready = await api("/readyz");
      for (const name of ["kafka", "database"]) {
        const state = ready[name] || "unknown";
        badge(`health-${name}`, state === "ok" ? "up" : state, state === "ok" ? "ok" : "error");
      }
    } catch (e) {
      badge("health-kafka", "unknown", "error");
      badge("health-database", "unknown", "error");
    }
    try {
      const overview = await api("/api/overview");
      const lags = Object.values(overview.lag || {}).filter((v) => v !== null);
      if (lags.length) {
        const lag = lags.reduce((a, b) => a + b, 0);
        badge("lag", `${number.format(lag)} waiting`, lag > 0 ? "busy" : "ok");
      } else badge("lag", "n/a", "unknown");
      const count = overview.failed_messages;
      if (count === null || count === undefined) badge("failed-messages", "n/a", "unknown");
      else badge("failed-messages", number.format(count), count > 0 ? "error" : "ok");
      if (count !== failed.count) {
        failed.count = count; // the list is Kafka's records: read again only when their number changed
        refreshFailed();
      }
      const under = overview.under_replicated;
      if (under === null || under === undefined) badge("replicas", "n/a", "unknown");
      else if (under === 0) badge("replicas", "in sync", "ok");
      else badge("replicas", `${number.format(under)} under-replicated`, "busy");
    } catch (e) {
      badge("lag", "unavailable", "error");
      badge("failed-messages", "unavailable", "error");
      badge("replicas", "unavailable", "error");
    }
    $("health-checked").textContent = `Checked ${new Date().toLocaleTimeString()}`;
  }

  async function refreshAges() {
    const body = $("ages").tBodies[0];
    try {
      const report = await api("/api/reports/age-distribution");
      // Bars are drawn relative to the largest group, so that small differences stay visible.
      const largest = Math.max(...report.groups.map((group) => Number(group.share) || 0), 0);
      body.replaceChildren(
        ...report.groups.map((group) => {
          const share = Number(group.share) || 0;
          const bar = element("span", null, "bar");
          bar.style.setProperty("--fill", String(largest > 0 ? share / largest : 0));
          const cell = element("td", null, "bar-cell");
          cell.append(bar, element("span", `${(share * 100).toFixed(1)} %`, "share"));
          return row([element("th", group.group), cell, element("td", number.format(group.count), "num")]);
        })
      );
      body.parentElement.dataset.total = String(report.total);
      $("ages-total").textContent = `${number.format(report.total)} stored users. Groups: under 20, 20 to 40 and 41 to 60 (inclusive), over 60.`;
    } catch (e) {
      $("ages-total").textContent = `Report unavailable: ${describe(e)}`;
    }
  }

  async function refreshNewest() {
    const body = $("newest").tBodies[0];
    try {
      const answer = await api("/api/users/newest?limit=10");
      body.replaceChildren(
        ...answer.items.map((user) =>
          row([
            element("td", user.id, "num"),
            element("td", user.name),
            element("td", user.age, "num"),
            element("td", user.email || "–"),
            element("td", user.created_at ? storedAt.format(new Date(user.created_at)) : "–", "nowrap"),
          ])
        )
      );
      $("newest-empty").hidden = answer.items.length > 0;
      $("newest-empty").textContent = "No user stored yet.";
    } catch (e) {
      $("newest-empty").hidden = false;
      $("newest-empty").textContent = `Users unavailable: ${describe(e)}`;
    }
  }

  let refreshing = null;
  function refreshSystem() {
    // One refresh at a time: a slow Kafka must not pile requests up.
    refreshing ??= Promise.allSettled([refreshHealth(), refreshAges(), refreshNewest(), refreshThroughput()]).finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  // --- recent batches: a list polled every BATCHES_POLL_MS, one cheap query per refresh -----------------
  // File names are the browser's only: the API knows a batch's form (csv, json, ndjson), not its file.
  const names = {
    all() {
      return parseJson(sessionStorage.getItem(NAMES_KEY) || "{}") || {};
    },
    remember(batchId, name) {
      const all = names.all();
      all[batchId] = name;
      const kept = Object.entries(all).slice(-50); // the newest few are enough
      sessionStorage.setItem(NAMES_KEY, JSON.stringify(Object.fromEntries(kept)));
    },
  };
  const batches = { cursors: [null], next: null, refreshing: null };
  const duration = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  function age(seconds) {
    if (seconds < 90) return `${duration.format(seconds)} s`;
    if (seconds < 5400) return `${duration.format(seconds / 60)} min`;
    if (seconds < 172800) return `${duration.format(seconds / 3600)} h`;
    return `${duration.format(seconds / 86400)} d`;
  }

  /** A bar of the batch's outcomes: one segment per outcome, its width the outcome's share of the batch. */
  function outcomeBar(item) {
    const bar = element("div", null, "stack");
    // The count is null until a worker has registered the batch: no share to draw, a hatched bar instead.
    const known = item.count !== null && item.count !== undefined;
    const total = Math.max(known ? item.count : item.processed, 1);
    const p = item.state === "completed" ? 100 : known ? Math.min(percent(item.processed, item.count), 99) : null;
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    if (known) bar.setAttribute("aria-valuemax", String(item.count));
    bar.setAttribute("aria-valuenow", String(item.processed));
    bar.setAttribute("aria-label", p === null ? `${number.format(item.processed)} processed` : `${p} % processed`);
    bar.dataset.percent = p === null ? "" : String(p);
    bar.classList.toggle("unknown", !known);
    for (const status of known ? STACKED : []) {
      const n = item.counts[status] || 0;
      if (!n) continue;
      const segment = element("span", null, "segment");
      segment.dataset.status = status;
      segment.style.width = `${(n * 100) / total}%`;
      segment.title = `${status}: ${number.format(n)}`;
      bar.append(segment);
    }
    const cell = element("td", null, "progress-col");
    const counts = STACKED.filter((s) => item.counts[s]).map((s) => `${number.format(item.counts[s])} ${s}`);
    const head = p === null ? "registering" : `${p} %`;
    cell.append(bar, element("span", `${head}${counts.length ? " · " + counts.join(", ") : ""}`, "small muted"));
    return cell;
  }

  function invalidLink(item) {
    const cell = element("td");
    if (!item.counts.invalid) {
      cell.textContent = "–";
      return cell;
    }
    const suffix = item.source === "csv" || item.source === null ? "csv" : "ndjson";
    const link = element("a", `invalid.${suffix}`, "invalid-link");
    link.href = `/api/batches/${encodeURIComponent(item.batch_id)}/invalid.${suffix}`;
    link.download = `${item.batch_id}-invalid.${suffix}`;
    link.addEventListener("click", (event) => download(event, link));
    cell.append(link);
    return cell;
  }

  /** A plain link downloads by itself; with a token, the file is fetched with it and handed over as a blob. */
  async function download(event, link) {
    if (!token.get()) return;
    event.preventDefault();
    try {
      const response = await fetch(link.href, { headers: authHeaders() });
      if (!response.ok) throw errorOf(response.status, parseJson(await response.text()), response.statusText);
      const url = URL.createObjectURL(await response.blob());
      const save = element("a");
      save.href = url;
      save.download = link.download;
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      $("batches-checked").textContent = `Download failed: ${describe(e)}`;
    }
  }

  function batchRow(item) {
    const open = element("button", item.batch_id.slice(-10), "link");
    open.type = "button";
    open.title = `Follow batch ${item.batch_id}`;
    open.addEventListener("click", () => follow(item.batch_id, item.count));
    const name = names.all()[item.batch_id];
    const first = element("td", null, "batch-cell");
    first.append(open);
    if (name) first.append(element("span", name, "small muted file-name"));
    const state = element("span", item.state, "badge");
    state.dataset.state = item.state === "completed" ? (item.counts.failed ? "error" : "ok") : "busy";
    const tr = row([
      first,
      element("td", item.source || "–"),
      element("td", item.count === null ? "…" : number.format(item.count), "num"),
      wrap("td", state),
      outcomeBar(item),
      element("td", item.rate === null ? "–" : `${number.format(item.rate)}/s`, "num nowrap"),
      element("td", age(item.age_seconds), "num nowrap"),
      invalidLink(item),
    ]);
    tr.dataset.batchId = item.batch_id;
    tr.dataset.state = item.state;
    return tr;
  }

  async function loadBatches() {
    const cursor = batches.cursors[batches.cursors.length - 1];
    const query = `limit=${BATCHES_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    try {
      const page = await api(`/api/batches?${query}`);
      $("batches").tBodies[0].replaceChildren(...page.items.map(batchRow));
      $("batches-empty").hidden = page.items.length > 0;
      batches.next = page.next_cursor;
      $("batches-older").disabled = !page.next_cursor;
      $("batches-newest").disabled = batches.cursors.length <= 1;
      $("batches-checked").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("batches-checked").textContent = `Batches unavailable: ${describe(e)}`;
    }
  }

  function refreshBatches() {
    batches.refreshing ??= loadBatches().finally(() => { batches.refreshing = null; });
    return batches.refreshing;
  }

  function pageBatches(older) {
    if (older && batches.next) batches.cursors.push(batches.next);
    else if (!older) batches.cursors = [null];
    refreshBatches();
  }

  // --- throughput: outcomes per minute over the last hour, stacked bars in SVG, and the lag -------------
  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    return node;
  }

  function drawThroughput(report) {
    const chart = $("throughput-chart");
    const [width, height, top] = [600, 160, 4];
    const totals = report.series.map((point) => STACKED.reduce((sum, s) => sum + point[s], 0));
    const largest = Math.max(...totals, 1);
    const step = width / Math.max(report.series.length, 1);
    const nodes = [svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" })];
    report.series.forEach((point, index) => {
      let y = height;
      for (const status of STACKED) {
        if (!point[status]) continue;
        const h = ((height - top) * point[status]) / largest;
        y -= h;
        const rect = svg("rect", { x: index * step + 0.5, y, width: Math.max(step - 1, 1), height: h, class: `bar-${status}` });
        const title = svg("title", {});
        title.textContent = `${storedAt.format(new Date(point.start))}: ${number.format(point[status])} ${status}`;
        rect.append(title);
        nodes.push(rect);
      }
    });
    $("throughput-scale").textContent = `top: ${number.format(largest)} records / ${report.interval_seconds / 60} min`;
    chart.replaceChildren(...nodes);
    const all = totals.reduce((a, b) => a + b, 0);
    chart.dataset.total = String(all);
    const recent = totals.slice(-Math.max(1, Math.round(300 / report.interval_seconds))).reduce((a, b) => a + b, 0);
    $("throughput-recent").textContent = number.format(recent);
    $("throughput-total").textContent = number.format(all);
    const parts = STACKED.map((s) => `${number.format(report.totals[s])} ${s}`).join(", ");
    $("throughput-summary").textContent = `Records reaching an outcome per minute since ${new Date(report.since).toLocaleTimeString()}: ${parts}.`;
    const lags = report.lag ? Object.values(report.lag) : null;
    $("throughput-lag").textContent = lags ? `${number.format(lags.reduce((a, b) => a + b, 0))} waiting` : "n/a";
  }

  async function refreshThroughput() {
    try {
      drawThroughput(await api("/api/reports/throughput?interval=60"));
    } catch (e) {
      $("throughput-summary").textContent = `Throughput unavailable: ${describe(e)}`;
    }
  }

  // --- failed messages: the list, and replay or purge of exactly the messages listed ---------------------
  const failed = { snapshot: null, listed: 0, count: null };

  function failedStatus(text, kind) {
    $("failed-status").textContent = text;
    $("failed-status").dataset.kind = kind || "info";
  }

  async function refreshFailed() {
    try {
      const page = await api("/api/failed?limit=50");
      $("failed").tBodies[0].replaceChildren(
        ...page.items.map((item) =>
          row([
            element("td", item.failed_at ? storedAt.format(new Date(item.failed_at)) : "–", "nowrap"),
            element("td", item.actor || "(not a message)"),
            element("td", item.reason || "–", "reason"),
            element("td", item.records === null || item.records === undefined ? "–" : number.format(item.records), "num"),
          ])
        )
      );
      failed.snapshot = page.snapshot;
      failed.listed = page.listed;
      const more = page.more ? ` The topic holds ${number.format(page.held - page.listed)} more: replay or purge these first.` : "";
      $("failed-summary").textContent = page.listed ? `${number.format(page.listed)} listed.${more}` : "No failed message.";
      $("failed-replay").disabled = $("failed-purge").disabled = !page.listed;
      $("failed-card").dataset.listed = String(page.listed);
    } catch (e) {
      failed.snapshot = null;
      $("failed-replay").disabled = $("failed-purge").disabled = true;
      $("failed").tBodies[0].replaceChildren();
      $("failed-summary").textContent = e.code === "no_failed_topic" ? "This broker has no failed-message topic." : `Failed messages unavailable: ${describe(e)}`;
    }
  }

  async function actOnFailed(action) {
    if (!failed.snapshot || !failed.listed) return;
    const what = `${number.format(failed.listed)} failed message${failed.listed === 1 ? "" : "s"}`;
    const question = action === "replay"
      ? `Replay the ${what} listed? They go back on the queue; messages that failed since are left alone.`
      : `Purge the ${what} listed? They are deleted for good; messages that failed since are left alone.`;
    if (!window.confirm(question)) return;
    $("failed-replay").disabled = $("failed-purge").disabled = true;
    try {
      const answer = await api(`/api/failed/${action}`, { method: "POST", json: { snapshot: failed.snapshot } });
      if (action === "replay") {
        const left = answer.left ? `; ${number.format(answer.left)} left (not messages: purge them)` : "";
        failedStatus(`Replayed ${number.format(answer.replayed)}${left}.`, "ok");
      } else failedStatus(`Purged ${number.format(answer.purged)}.`, "ok");
    } catch (e) {
      const again = e.code === "failed_messages_changed" ? " The list changed since: look again." : "";
      failedStatus(`${action === "replay" ? "Replay" : "Purge"} refused: ${describe(e)}.${again}`, "error");
    }
    await refreshFailed();
    refreshSystem();
  }

  // --- start -------------------------------------------------------------------------------------------
  function start() {
    $("upload-form").addEventListener("submit", upload);
    $("follow-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = $("batch-id-input").value.trim();
      if (id) follow(id, null);
    });
    $("items-next").addEventListener("click", () => page(1));
    $("items-prev").addEventListener("click", () => page(-1));
    $("batches-older").addEventListener("click", () => pageBatches(true));
    $("batches-newest").addEventListener("click", () => pageBatches(false));
    $("failed-replay").addEventListener("click", () => actOnFailed("replay"));
    $("failed-purge").addEventListener("click", () => actOnFailed("purge"));
    $("failed-refresh").addEventListener("click", () => { failedStatus(""); refreshFailed(); });
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token.set($("token").value.trim());
      $("token").value = "";
      $("auth").hidden = true;
      refreshSystem();
      refreshBatches();
      refreshFailed();
      if (batch.id) follow(batch.id, batch.expected);
    });
    $("token-forget").addEventListener("click", () => {
      token.forget();
      askForToken("Token forgotten.");
    });
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("batch");
    if (fromHash) follow(fromHash, null);
    refreshSystem();
    refreshBatches();
    setInterval(() => { if (!document.hidden) refreshSystem(); }, SYSTEM_POLL_MS);
    setInterval(() => { if (!document.hidden) refreshBatches(); }, BATCHES_POLL_MS);
  }

  start();
})();
