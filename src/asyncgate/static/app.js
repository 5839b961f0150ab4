// asyncgate's runs dashboard. Plain JavaScript, no build step, no dependencies.
//
// Safety rules, kept everywhere below: data from the API (paths, results, messages, headers) is
// only ever written with textContent or as a text node (never parsed as markup); links are built from
// "#/" and an encoded run id, never from data; results are previewed as text, or as a raster
// image from a blob; the caller's token lives in this tab's sessionStorage and travels only in
// the access header of requests to this gateway's API, never in a URL.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).getAttribute("content");
  const PREFIX = meta("asyncgate-prefix");
  const OPEN = meta("asyncgate-mode") === "open";
  const HEADER = meta("asyncgate-header");
  const TOKEN_KEY = "asyncgate.token";
  const STATES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"];
  const FINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);
  const DELIVERY_FINAL = new Set(["delivered", "failed", "gone"]);
  // SVG is left out on purpose: it can carry script, and is offered as a download instead.
  const RASTER = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"]);
  const TEXT_TYPES = new Set([
    "application/xml", "application/javascript", "application/x-ndjson", "application/yaml",
    "application/x-www-form-urlencoded", "application/csv",
  ]);
  const PREVIEW_BYTES = 512 * 1024;
  const API_PAGE = 200;
  // With a path or time filter the pages are filtered here; this many API pages are read at most.
  const SCAN_PAGES = 10;
  const REFRESH_MS = 5000;
  // Counting reads up to 10,000 runs from the store: less often than the page of runs.
  const COUNTS_REFRESH_MS = 30000;
  const PAGE_SIZES = [25, 50, 100, 200];

  // --- DOM, text only ------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const main = document.getElementById("main");
  const toastBox = document.getElementById("toast");
  let toastTimer = 0;

  function toast(message, kind = "info") {
    toastBox.textContent = message;
    toastBox.dataset.kind = kind;
    toastBox.classList.add("shown");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toastBox.classList.remove("shown"), 4000);
  }

  function runHref(runId) {
    return `#/runs/${encodeURIComponent(runId)}`;
  }

  const BADGES = new Set([...STATES, "webhook", "pending", "delivering", "delivered", "gone"]);

  function badge(status) {
    return el("span", { class: `badge s-${BADGES.has(status) ? status : "other"}`, text: status });
  }

  // --- time ----------------------------------------------------------------------------------

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  function formatTime(iso, withMs = false) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    return `${date} ${time}${withMs ? "." + pad(d.getMilliseconds(), 3) : ""}`;
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${pad(Math.floor(s % 60))} s`;
    return `${Math.floor(m / 60)} h ${pad(m % 60)} min`;
  }

  function between(from, to) {
    if (!from) return null;
    return (to ? Date.parse(to) : Date.now()) - Date.parse(from);
  }

  function timeCell(iso) {
    return el("time", { datetime: iso || "", title: iso || "", text: formatTime(iso) });
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  // --- the caller's token --------------------------------------------------------------------

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY) || "",
    set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    const value = token.get();
    if (value && !OPEN) headers[HEADER] = value;
    return headers;
  }

  // --- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorOf(response) {
    let code = "http_error";
    let message = `the gateway answered ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch {
      // Not the gateway's JSON error: keep the generic message.
    }
    return new ApiError(response.status, String(code), String(message));
  }

  function apiUrl(path, params = {}) {
    const url = new URL(PREFIX + path, location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    return url;
  }

  async function api(method, path, { params, signal, accept = [200] } = {}) {
    const response = await fetch(apiUrl(path, params), {
      method,
      headers: authHeaders({ Accept: "application/json" }),
      signal,
      cache: "no-store",
    });
    if (!accept.includes(response.status)) {
      const error = await errorOf(response);
      if (error.status === 401) signOut("The gateway asks for credentials: sign in.");
      throw error;
    }
    return { status: response.status, body: await response.json() };
  }

  // --- routing -------------------------------------------------------------------------------

  // Whatever the current view keeps running (timers, streams, object URLs), stopped on leaving.
  let view = { stop() {} };

  function leave() {
    view.stop();
    view = { stop() {} };
  }

  function route(focus = true) {
    leave();
    delete document.body.dataset.loaded;
    renderSession();
    const [path, query] = (location.hash.slice(1) || "/").split("?");
    main.replaceChildren();
    if (!OPEN && !token.get()) {
      showSignIn();
    } else {
      const match = path.match(/^\/runs\/([^/]+)$/);
      if (match) showRun(decodeHashPart(match[1]));
      else showList(new URLSearchParams(query || ""));
    }
    if (focus) main.querySelector("h1")?.focus();
  }

  function decodeHashPart(text) {
    try {
      return decodeURIComponent(text);
    } catch {
      return text; // malformed escapes: looked up as typed, and not found
    }
  }

  function signOut(message) {
    token.clear();
    route();
    if (message) toast(message, "error");
  }

  function renderSession() {
    const box = document.getElementById("session");
    if (OPEN) {
      box.replaceChildren(el("span", { class: "pill", title: "access.mode: open", text: "Open access" }));
    } else if (token.get()) {
      box.replaceChildren(
        el("span", { class: "pill ok", text: "Signed in" }),
        el("button", { type: "button", class: "ghost", id: "sign-out", onclick: () => signOut() }, "Sign out"),
      );
    } else {
      box.replaceChildren();
    }
  }

  // --- sign in -------------------------------------------------------------------------------

  function showSignIn() {
    document.body.dataset.view = "signin";
    const input = el("input", {
      id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false", required: true,
      placeholder: HEADER.toLowerCase() === "authorization" ? "Bearer …" : "",
      oninput: () => input.setCustomValidity(""),
    });
    const form = el(
      "form",
      {
        class: "signin-form",
        onsubmit: (event) => {
          event.preventDefault();
          const value = input.value.trim();
          if (!value) return;
          // What fetch() would refuse to send as a header value (a line break, say).
          if (!/^[\x20-\x7e\x80-\xff\t]+$/.test(value)) {
            input.setCustomValidity("A header value holds printable characters only.");
            input.reportValidity();
            return;
          }
          token.set(value);
          route();
        },
      },
      el("label", { for: "token", text: `Value of your ${HEADER} header` }),
      el("div", { class: "row" }, input, el("button", { type: "submit", class: "primary", text: "Sign in" })),
    );
    main.append(
      el(
        "section",
        { class: "card signin" },
        el("h1", { tabindex: "-1", text: "Sign in to see your runs" }),
        el(
          "p",
          {},
          "Runs belong to the caller who submitted them. Enter the exact value of the ",
          el("code", { text: HEADER }),
          " header you send with your requests; the admin token shows every caller's runs.",
        ),
        form,
        el("p", { class: "hint", text: "The value stays in this browser tab only (sessionStorage) and is sent only to this gateway's API, in that header." }),
      ),
    );
    input.focus();
  }

  // --- the list of runs ----------------------------------------------------------------------

  function readFilters(params) {
    const limit = Number(params.get("limit"));
    return {
      status: STATES.includes(params.get("status")) ? params.get("status") : "",
      path: params.get("path") || "",
      since: params.get("since") || "",
      until: params.get("until") || "",
      limit: PAGE_SIZES.includes(limit) ? limit : 50,
    };
  }

  function filtersHash(filters) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) {
      if (value && !(key === "limit" && value === 50)) params.set(key, value);
    }
    const query = params.toString();
    return query ? `#/?${query}` : "#/";
  }

  function localMs(value) {
    const ms = value ? new Date(value).getTime() : NaN;
    return Number.isNaN(ms) ? null : ms;
  }

  // One page of runs matching the filters, from ``position`` ({cursor, skip}). The API filters by
  // status and pages by time (its cursor is a creation time); path and "since" are applied here.
  async function fetchPage(filters, position, signal) {
    const sinceMs = localMs(filters.since);
    const filtered = Boolean(filters.path) || sinceMs !== null;
    const runs = [];
    let { cursor, skip } = position;
    for (let scanned = 1; ; scanned++) {
      const limit = filtered ? API_PAGE : filters.limit;
      const { body } = await api("GET", "/runs", { params: { status: filters.status, limit, cursor }, signal });
      let consumed = skip;
      for (const run of body.runs.slice(skip)) {
        consumed++;
        if (sinceMs !== null && Date.parse(run.created_at) < sinceMs) return { runs, next: null };
        if (filters.path && !run.path.includes(filters.path)) continue;
        runs.push(run);
        if (runs.length === filters.limit) {
          const next = consumed < body.runs.length ? { cursor, skip: consumed } : body.next_cursor ? { cursor: body.next_cursor, skip: 0 } : null;
          return { runs, next };
        }
      }
      if (!body.next_cursor) return { runs, next: null };
      cursor = body.next_cursor;
      skip = 0;
      if (scanned >= SCAN_PAGES) return { runs, next: { cursor, skip: 0 }, partial: true };
    }
  }

  function firstPosition(filters) {
    const until = localMs(filters.until);
    return { cursor: until === null ? undefined : String(until / 1000), skip: 0 };
  }

  function runRow(run) {
    const duration = run.started_at ? between(run.started_at, run.finished_at) : null;
    return el(
      "tr",
      { "data-run-id": run.run_id, "data-status": run.status },
      el("td", {}, badge(run.status)),
      el("td", {}, el("a", { class: "mono", href: runHref(run.run_id), text: run.run_id })),
      el("td", { class: "mono", text: run.method }),
      el("td", { class: "path mono", title: run.path, text: run.path }),
      el("td", {}, timeCell(run.created_at)),
      el("td", { class: "num", text: run.started_at && !run.finished_at ? `${formatDuration(duration)} …` : formatDuration(duration) }),
      el("td", { class: "num", text: run.upstream_status ?? "—" }),
    );
  }

  function renderRows(tbody, runs) {
    performance.mark("asyncgate:list-start");
    const rows = runs.map(runRow);
    if (!rows.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: "7", text: "No runs match." })));
    tbody.replaceChildren(...rows);
    performance.measure("asyncgate:list-render", "asyncgate:list-start");
  }

  function countsBar(filters, onPick) {
    const bar = el("div", { class: "counts", role: "group", "aria-label": "Runs by status", id: "counts" });
    const chip = (status, label) =>
      el(
        "button",
        {
          type: "button", class: `chip ${status ? "s-" + status : "all"}`, "data-status": status || "all",
          "aria-pressed": String(filters.status === status), onclick: () => onPick(status),
        },
        el("span", { class: "chip-label", text: label }),
        el("span", { class: "chip-count", text: "…" }),
      );
    bar.append(chip("", "All"), ...STATES.map((s) => chip(s, s[0].toUpperCase() + s.slice(1))));
    return bar;
  }

  function fillCounts(bar, data) {
    const set = (key, n) => {
      const node = bar.querySelector(`[data-status="${key}"] .chip-count`);
      if (node) node.textContent = String(n);
    };
    set("all", data.complete ? data.total : `${data.total}+`);
    for (const state of STATES) set(state, data.counts[state] ?? 0);
  }

  function filterForm(filters) {
    const field = (id, label, control) => el("div", { class: "field" }, el("label", { for: id, text: label }), control);
    const status = el("select", { id: "f-status", name: "status" }, el("option", { value: "", text: "Any" }));
    for (const s of STATES) status.append(el("option", { value: s, text: s, selected: s === filters.status }));
    const limit = el("select", { id: "f-limit", name: "limit" });
    for (const n of PAGE_SIZES) limit.append(el("option", { value: n, text: n, selected: n === filters.limit }));
    const input = (id, name, type, value, placeholder) =>
      el("input", { id, name, type, value, placeholder, spellcheck: "false", autocomplete: "off" });
    const form = el(
      "form",
      {
        class: "filters", id: "filters", "aria-label": "Filter runs",
        onsubmit: (event) => {
          event.preventDefault();
          const data = new FormData(form);
          const next = { status: data.get("status"), path: data.get("path").trim(), since: data.get("since"), until: data.get("until"), limit: Number(data.get("limit")) };
          location.hash = filtersHash(next);
        },
      },
      field("f-status", "Status", status),
      field("f-path", "Path contains", input("f-path", "path", "text", filters.path, "/predict")),
      field("f-since", "Created after", input("f-since", "since", "datetime-local", filters.since)),
      field("f-until", "Created before", input("f-until", "until", "datetime-local", filters.until)),
      field("f-limit", "Per page", limit),
      el(
        "div",
        { class: "field actions" },
        el("button", { type: "submit", class: "primary", text: "Apply" }),
        el("a", { class: "button ghost", href: "#/", text: "Reset" }),
      ),
    );
    return form;
  }

  function showList(params) {
    document.body.dataset.view = "list";
    const filters = readFilters(params);
    const controller = new AbortController();
    const positions = [firstPosition(filters)];
    let next = null;
    let timer = 0;
    let loading = false;
    let countedAt = 0;

    const tbody = el("tbody", { id: "runs-body" });
    const status = el("p", { class: "list-status", id: "list-status", role: "status" });
    const newer = el("button", { type: "button", id: "newer", text: "← Newer", onclick: () => go(-1) });
    const older = el("button", { type: "button", id: "older", text: "Older →", onclick: () => go(1) });
    const pageLabel = el("span", { class: "page-label", id: "page-label" });
    const auto = el("input", { type: "checkbox", id: "auto-refresh", checked: true });
    const counts = countsBar(filters, (picked) => (location.hash = filtersHash({ ...filters, status: picked })));
    const head = ["Status", "Run", "Method", "Path", "Created", "Duration", "Upstream"];

    main.append(
      el(
        "div",
        { class: "page-head" },
        el("h1", { tabindex: "-1", text: "Runs" }),
        el(
          "div",
          { class: "tools" },
          el("label", { class: "check" }, auto, " Auto-refresh"),
          el("button", { type: "button", id: "refresh", text: "Refresh", onclick: () => load(true) }),
        ),
      ),
      counts,
      filterForm(filters),
      el(
        "div",
        { class: "card table-card" },
        el(
          "table",
          { class: "runs", id: "runs" },
          el("caption", { class: "visually-hidden", text: "Runs, newest first" }),
          el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col", text: h })))),
          tbody,
        ),
      ),
      el("div", { class: "pager" }, newer, pageLabel, older, status),
    );

    async function load(withCounts) {
      if (loading) return;
      loading = true;
      const position = positions[positions.length - 1];
      try {
        const countsRequest = withCounts ? api("GET", "/runs/counts", { signal: controller.signal }) : null;
        const page = await fetchPage(filters, position, controller.signal);
        next = page.next;
        renderRows(tbody, page.runs);
        status.textContent = page.partial ? "Only part of the history was searched: go to older runs for more." : "";
        if (countsRequest) {
          fillCounts(counts, (await countsRequest).body);
          countedAt = Date.now();
        }
      } catch (error) {
        if (error.name === "AbortError") return;
        status.textContent = `Could not load the runs: ${error.message}`;
      } finally {
        loading = false;
        newer.disabled = positions.length === 1;
        older.disabled = next === null;
        pageLabel.textContent = `Page ${positions.length}`;
        document.body.dataset.loaded = "list";
      }
    }

    function go(step) {
      if (step > 0 && next) positions.push(next);
      if (step < 0 && positions.length > 1) positions.pop();
      load(false).then(() => (step < 0 ? newer : older).focus());
    }

    function tick() {
      if (auto.checked && positions.length === 1 && !document.hidden) load(Date.now() - countedAt >= COUNTS_REFRESH_MS);
    }

    timer = setInterval(tick, REFRESH_MS);
    view = { stop: () => (clearInterval(timer), controller.abort()) };
    load(true);
  }

  // --- one run -------------------------------------------------------------------------------

  function shellQuote(text) {
    return `'${text.replaceAll("'", "'\\''")}'`;
  }

  function resultCurl(runId) {
    const url = `${location.origin}${PREFIX}/runs/${encodeURIComponent(runId)}/result`;
    // The token stays out of the clipboard and the page: the command reads it from the shell.
    const auth = OPEN ? "" : ` -H "${HEADER}: $ASYNCGATE_TOKEN"`;
    return `curl -sS${auth} ${shellQuote(url)}`;
  }

  function definition(list, term, value, id) {
    list.append(el("dt", { text: term }), el("dd", { id }, value instanceof Node ? value : String(value ?? "—")));
  }

  function describeEvent(data) {
    const parts = [];
    if (data.attempt) parts.push(`attempt ${data.attempt}`);
    if (data.upstream_status !== undefined && data.upstream_status !== null) parts.push(`upstream ${data.upstream_status}`);
    if (data.error) parts.push(`${data.error.code}: ${data.error.message}`);
    if (data.webhook) {
      const w = data.webhook;
      parts.push(`webhook ${w.state}`);
      if (w.attempts) parts.push(`${w.attempts} attempt${w.attempts === 1 ? "" : "s"}`);
      if (w.last_status) parts.push(`receiver answered ${w.last_status}`);
      if (w.last_error) parts.push(w.last_error);
    }
    const known = new Set(["event", "status", "attempt", "at", "run_id", "upstream_status", "error", "webhook"]);
    const rest = Object.fromEntries(Object.entries(data).filter(([key]) => !known.has(key)));
    if (Object.keys(rest).length) parts.push(JSON.stringify(rest));
    return parts.join(" · ");
  }

  function parseEventBlock(block) {
    let id = null;
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    let payload;
    try {
      payload = JSON.parse(data.join("\n"));
    } catch {
      payload = { text: data.join("\n") };
    }
    return { id, name, data: payload };
  }

  // Reads the run's Server-Sent Events with fetch, so the token goes in a header (EventSource
  // cannot send one, and a token in the URL would reach logs). Resolves when the stream ends.
  async function readEvents(runId, lastId, signal, onEvent) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(apiUrl(`/runs/${encodeURIComponent(runId)}/events`), { headers, signal, cache: "no-store" });
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const event = parseEventBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) onEvent(event);
      }
    }
  }

  function mediaTypeOf(contentType) {
    return (contentType || "").split(";")[0].trim().toLowerCase();
  }

  function isJson(media) {
    return media === "application/json" || media.endsWith("+json");
  }

  function isText(media) {
    return media.startsWith("text/") || TEXT_TYPES.has(media) || media.endsWith("+xml");
  }

  function extensionOf(media) {
    const known = { "application/json": ".json", "text/plain": ".txt", "text/html": ".html.txt", "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp", "image/svg+xml": ".svg" };
    return known[media] || ".bin";
  }

  async function decodeText(blob) {
    const bytes = new Uint8Array(await blob.slice(0, PREVIEW_BYTES).arrayBuffer());
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return null;
    }
  }

  async function previewResult(run, box, urls, signal) {
    if (run.upstream_status === null || run.upstream_status === undefined || run.error?.code === "result_too_large") {
      box.replaceChildren(el("p", { class: "muted", id: "result-none", text: run.error ? `No stored upstream response: ${run.error.message}` : "No stored upstream response." }));
      return;
    }
    // redirect: "manual": a stored 3xx must not send this tab (and its token) anywhere.
    const response = await fetch(apiUrl(`/runs/${encodeURIComponent(run.run_id)}/result`), {
      headers: authHeaders(), signal, cache: "no-store", redirect: "manual",
    });
    if (response.type === "opaqueredirect") {
      box.replaceChildren(el("p", { class: "muted", id: "result-redirect", text: "The upstream answered with a redirect; it is not followed here." }));
      return;
    }
    const contentType = response.headers.get("content-type") || "";
    const media = mediaTypeOf(contentType);
    const blob = await response.blob();
    // Downloads are typed as opaque bytes, so that opening one can never render it as a page.
    const downloadUrl = URL.createObjectURL(new Blob([blob], { type: "application/octet-stream" }));
    urls.push(downloadUrl);
    const facts = el(
      "p",
      { class: "result-facts" },
      el("span", { id: "result-status", text: `HTTP ${response.status}` }),
      el("span", { id: "result-type", class: "mono", text: contentType || "no content type" }),
      el("span", { text: formatBytes(blob.size) }),
      el("a", { class: "button small", id: "result-download", href: downloadUrl, download: `${run.run_id}${extensionOf(media)}`, text: "Download" }),
    );
    const body = await previewBody(blob, media, urls);
    box.replaceChildren(facts, body);
  }

  async function previewBody(blob, media, urls) {
    if (blob.size === 0) return el("p", { class: "muted", id: "result-empty", text: "The body is empty." });
    if (RASTER.has(media)) {
      const url = URL.createObjectURL(new Blob([blob], { type: media }));
      urls.push(url);
      return el("div", { class: "image-frame" }, el("img", { id: "result-image", src: url, alt: "The result image" }));
    }
    if (media === "image/svg+xml") {
      return el("p", { class: "muted", id: "result-svg", text: "SVG images are not previewed, because they can carry scripts. Download the file to view it." });
    }
    const textual = isJson(media) || isText(media) || !media;
    const text = textual ? await decodeText(blob) : null;
    if (text === null) return el("p", { class: "muted", id: "result-binary", text: `No preview for ${media || "binary content"}: download the file.` });
    let shown = text;
    let kind = "text";
    if (isJson(media) || (!media && /^\s*[[{]/.test(text))) {
      try {
        shown = JSON.stringify(JSON.parse(text), null, 2);
        kind = "json";
      } catch {
        // Not valid JSON after all (or cut at the preview limit): shown as it is.
      }
    }
    const note = blob.size > PREVIEW_BYTES ? el("p", { class: "muted", text: `Showing the first ${formatBytes(PREVIEW_BYTES)}.` }) : null;
    const caption = media === "text/html" ? el("p", { class: "muted", text: "HTML is shown as its source text, never rendered." }) : null;
    return el("div", {}, caption, el("pre", { class: `result-body ${kind}`, id: "result-body", "data-kind": kind, tabindex: "0", text: shown }), note);
  }

  function showRun(runId) {
    document.body.dataset.view = "run";
    document.body.dataset.live = "connecting";
    const controller = new AbortController();
    const urls = [];
    let run = null;
    let lastEventId = null;
    let seenState = null;
    let seenDelivery = null;
    let following = false;
    let resultShown = false;
    let refreshing = null;

    const title = el("h1", { tabindex: "-1" }, "Run ", el("span", { class: "mono", text: runId }));
    const state = el("span", { id: "run-status" });
    const live = el("span", { class: "live", id: "live", text: "Connecting…" });
    const cancel = el("button", { type: "button", id: "cancel", class: "danger", text: "Cancel run", disabled: true, onclick: onCancel });
    const redeliver = el("button", { type: "button", id: "redeliver", text: "Redeliver webhook", disabled: true, onclick: onRedeliver });
    const copy = el("button", { type: "button", id: "copy-curl", text: "Copy curl", onclick: onCopy });
    const details = el("dl", { class: "facts", id: "details" });
    const webhook = el("div", { id: "webhook" });
    const history = el("tbody", { id: "webhook-history" });
    const historyTable = el(
      "table",
      { class: "history", hidden: true },
      el("caption", { text: "Delivery history" }),
      el("thead", {}, el("tr", {}, ["Time", "State", "Attempts", "Receiver", "Error"].map((h) => el("th", { scope: "col", text: h })))),
      history,
    );
    const timeline = el("ol", { class: "timeline", id: "timeline" });
    const result = el("div", { id: "result" }, el("p", { class: "muted", text: "Shown when the run has finished." }));
    const curl = el("code", { id: "curl", text: resultCurl(runId) });
    const message = el("p", { class: "error-box", id: "run-error", hidden: true });

    const tools = el("div", { class: "tools" }, cancel, redeliver, copy);
    const content = el(
      "div",
      { id: "run-content" },
      el(
        "div",
        { class: "grid" },
        el("section", { class: "card", "aria-labelledby": "h-details" }, el("h2", { id: "h-details", text: "Details" }), details),
        el("section", { class: "card", "aria-labelledby": "h-webhook" }, el("h2", { id: "h-webhook", text: "Webhook" }), webhook, historyTable),
      ),
      el("section", { class: "card", "aria-labelledby": "h-timeline" }, el("div", { class: "card-head" }, el("h2", { id: "h-timeline", text: "Timeline" }), live), timeline),
      el("section", { class: "card", "aria-labelledby": "h-result" }, el("h2", { id: "h-result", text: "Result" }), result),
      el("section", { class: "card", "aria-labelledby": "h-curl" }, el("h2", { id: "h-curl", text: "Fetch the result" }), el("pre", { class: "command" }, curl)),
    );
    main.append(
      el("p", { class: "crumbs" }, el("a", { href: "#/", id: "back", text: "← All runs" })),
      el("div", { class: "page-head" }, el("div", { class: "title" }, title, state), tools),
      message,
      content,
    );

    function fail(error) {
      if (error.name === "AbortError") return;
      message.hidden = false;
      if (error.status === 404) {
        // Nothing about a run that is not the caller's (or does not exist) is left on the page.
        message.textContent = "No run with this id, or not one of yours.";
        content.hidden = true;
        tools.hidden = true;
        controller.abort();
      } else {
        message.textContent = `Error: ${error.message}`;
      }
    }

    function renderRun() {
      state.replaceChildren(badge(run.status));
      curl.textContent = resultCurl(run.run_id);
      state.dataset.status = run.status;
      details.replaceChildren();
      definition(details, "Method", el("span", { class: "mono", text: run.method }), "d-method");
      definition(details, "Path", el("span", { class: "mono wrap", text: run.path }), "d-path");
      definition(details, "Status", run.status, "d-status");
      definition(details, "Attempt", run.attempt, "d-attempt");
      if (run.priority) definition(details, "Priority", run.priority, "d-priority");
      if (run.queue) {
        const wait = run.queue.estimated_wait === null ? "" : `, about ${formatDuration(run.queue.estimated_wait * 1000)}`;
        definition(details, "In the queue", `${run.queue.ahead} ahead${wait}`, "d-queue");
      }
      definition(details, "Created", timeCell(run.created_at), "d-created");
      definition(details, "Started", timeCell(run.started_at), "d-started");
      definition(details, "Finished", timeCell(run.finished_at), "d-finished");
      definition(details, "Queue wait", formatDuration(between(run.created_at, run.started_at ?? run.finished_at)), "d-wait");
      definition(details, "Duration", run.started_at ? formatDuration(between(run.started_at, run.finished_at)) : "—", "d-duration");
      definition(details, "Upstream status", run.upstream_status ?? "—", "d-upstream");
      definition(details, "Error", run.error ? `${run.error.code}: ${run.error.message}` : "—", "d-error");
      renderWebhook();
      cancel.disabled = FINAL.has(run.status);
      redeliver.disabled = !(run.webhook && run.webhook.state !== null && FINAL.has(run.status));
      document.body.dataset.status = run.status;
    }

    function renderWebhook() {
      const w = run.webhook;
      historyTable.hidden = !w;
      if (!w) {
        webhook.replaceChildren(el("p", { class: "muted", id: "webhook-none", text: "This run has no webhook." }));
        return;
      }
      const list = el("dl", { class: "facts" });
      definition(list, "URL", el("span", { class: "mono wrap", text: w.url }), "w-url");
      // null: the run asked only for other events (start, output, progress), none at its end.
      const state = w.state === null ? el("span", { class: "muted", text: "none: completed not asked for" }) : badge(w.state);
      definition(list, "State", state, "w-state");
      definition(list, "Events", w.events.join(", "), "w-events");
      definition(list, "Attempts", w.attempts, "w-attempts");
      definition(list, "Last status", w.last_status ?? "—", "w-last-status");
      definition(list, "Last error", w.last_error ?? "—", "w-last-error");
      definition(list, "Next attempt", timeCell(w.next_attempt_at), "w-next");
      webhook.replaceChildren(list);
      webhook.dataset.state = w.state ?? "none";
    }

    async function refresh() {
      // One status read at a time; events arriving meanwhile are folded into the next one.
      if (refreshing) return refreshing;
      refreshing = (async () => {
        try {
          run = (await api("GET", `/runs/${encodeURIComponent(runId)}`, { signal: controller.signal })).body;
          renderRun();
          if (FINAL.has(run.status) && !resultShown) {
            resultShown = true;
            await previewResult(run, result, urls, controller.signal);
          }
        } finally {
          refreshing = null;
        }
      })();
      return refreshing;
    }

    function addEvent(event) {
      lastEventId = event.id ?? lastEventId;
      const data = event.data;
      if (STATES.includes(event.name)) seenState = event.name;
      if (data.webhook) seenDelivery = data.webhook.state;
      timeline.append(
        el(
          "li",
          { "data-event": event.name },
          el("time", { datetime: data.at || "", text: formatTime(data.at, true) }),
          badge(event.name),
          el("span", { class: "event-text", text: describeEvent(data) }),
        ),
      );
      if (data.webhook) {
        const w = data.webhook;
        history.append(
          el(
            "tr",
            { "data-state": w.state },
            el("td", {}, timeCell(data.at)),
            el("td", {}, badge(w.state)),
            el("td", { class: "num", text: w.attempts }),
            el("td", { class: "num", text: w.last_status ?? "—" }),
            el("td", { class: "wrap", text: w.last_error ?? "—" }),
          ),
        );
      }
      refresh().catch(fail);
    }

    // Whether the events read so far say nothing more will happen: the run is final, and so is
    // its webhook's delivery. Judged by the events, not the status, so that the timeline gets
    // every change, and a reopened stream (which would wait for more) is closed.
    function settled() {
      const delivery = run?.webhook?.state;
      return FINAL.has(seenState) && (!run?.webhook || delivery === null || DELIVERY_FINAL.has(seenDelivery));
    }

    // The stream ends after the final state; it is opened again (from the last event) while a
    // webhook delivery is under way, or after a redelivery, to show its progress.
    async function follow() {
      if (following) return;
      following = true;
      let failures = 0;
      let first = true;
      try {
        // Read once whatever the run's state (to show its history), then as long as it changes.
        while (!controller.signal.aborted && (first || !settled())) {
          first = false;
          live.textContent = "Live";
          document.body.dataset.live = "open";
          const stream = new AbortController();
          const stop = () => stream.abort();
          controller.signal.addEventListener("abort", stop);
          try {
            await readEvents(runId, lastEventId, stream.signal, (event) => {
              addEvent(event);
              if (settled()) stream.abort();
            });
            failures = 0;
          } catch (error) {
            if (controller.signal.aborted) return;
            if (error.status === 404) throw error;
            if (error.name !== "AbortError") failures++;
          } finally {
            controller.signal.removeEventListener("abort", stop);
          }
          await refresh();
          if (!settled()) await new Promise((resolve) => setTimeout(resolve, Math.min(250 * 2 ** failures, 5000)));
        }
      } catch (error) {
        fail(error);
      } finally {
        following = false;
        if (!controller.signal.aborted) {
          live.textContent = "Ended";
          document.body.dataset.live = "closed";
        }
      }
    }

    async function onCancel() {
      cancel.disabled = true;
      try {
        const { status } = await api("DELETE", `/runs/${encodeURIComponent(runId)}`, { accept: [200, 202], signal: controller.signal });
        toast(status === 200 ? "The run is cancelled." : "Cancellation was asked; the run is still stopping.");
      } catch (error) {
        toast(`Could not cancel: ${error.message}`, "error");
      }
      refresh().catch(fail);
    }

    async function onRedeliver() {
      redeliver.disabled = true;
      const path = `/runs/${encodeURIComponent(runId)}/webhook`;
      try {
        try {
          await api("POST", path, { accept: [202], signal: controller.signal });
        } catch (error) {
          // The gateway deletes a webhook URL once its delivery is final: ask for it again.
          if (error.code !== "webhook_url_deleted") throw error;
          const url = window.prompt("The gateway deleted this run's webhook URL when its delivery ended. Deliver to:");
          if (!url) throw new Error("no webhook URL given");
          await api("POST", path, { params: { webhookEndpoint: url }, accept: [202], signal: controller.signal });
        }
        toast("The webhook will be delivered again.");
        seenDelivery = null;
      } catch (error) {
        toast(`Could not redeliver: ${error.message}`, "error");
      }
      await refresh().catch(fail);
      follow();
    }

    async function onCopy() {
      const text = resultCurl(run ? run.run_id : runId);
      try {
        await navigator.clipboard.writeText(text);
        toast("Copied the curl command. It reads your token from $ASYNCGATE_TOKEN.");
      } catch {
        // No clipboard (a page over plain http on another host): select the command instead.
        const range = document.createRange();
        range.selectNodeContents(curl);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        toast("Select-and-copy: the command is selected.");
      }
    }

    view = {
      stop() {
        controller.abort();
        for (const url of urls) URL.revokeObjectURL(url);
      },
    };
    refresh().then(follow, fail);
  }

  window.addEventListener("hashchange", () => route());
  route(false);
})();
