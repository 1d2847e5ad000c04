// Helpers shared by the adapter's and the sandbox's status pages. Text from the server is
// always set with textContent (never parsed as HTML).

/** Create an element: el("td", {class: "num", dataset: {label: "Name"}}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") {
      for (const [name, data] of Object.entries(value)) node.dataset[name] = String(data);
    } else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/**
 * Run `render` (which rebuilds `container`'s children) and give the focus back to the
 * equivalent element afterwards: the same tag inside the row with the same data-key.
 * Keeps a keyboard user's place while a table refreshes.
 */
export function keepFocus(container, render) {
  const active = document.activeElement;
  const row = active && container.contains(active) ? active.closest("[data-key]") : null;
  const key = row?.dataset.key;
  const tag = active?.tagName;
  render();
  if (key === undefined) return;
  for (const candidate of container.querySelectorAll("[data-key]")) {
    if (candidate.dataset.key === key) {
      const target = candidate.querySelector(tag) ?? candidate;
      target.focus?.();
      return;
    }
  }
}

/** A badge: kind is "good", "bad", "warn" or "none"; the text says it, not only the colour. */
export function badge(kind, text) {
  return el("span", { class: `badge ${kind}` }, text);
}

/** An HTTP error with the status and the server's JSON error, if any. */
export class HttpError extends Error {
  constructor(status, body) {
    const text = body && typeof body === "object" && body.error ? body.error : `HTTP ${status}`;
    super(text);
    this.status = status;
    this.body = body;
  }
}

/**
 * fetch() relative to the page, JSON in and out. `headers()` adds e.g. the bearer token.
 * Resolves to {status, body}; rejects with HttpError for a status >= 400 unless `accept`
 * lists it.
 */
export async function request(path, { method = "GET", body, headers = {}, accept = [] } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const answer = await fetch(path, init);
  const text = await answer.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text
  }
  if (answer.status >= 400 && !accept.includes(answer.status)) {
    throw new HttpError(answer.status, parsed);
  }
  return { status: answer.status, body: parsed };
}

// --- formatting ----------------------------------------------------------------------------

/** "3 s", "4 min", "2 h 5 min", "3 d 4 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/** An instant as "2024-05-01 14:03:12" in the viewer's time zone. */
export function localTime(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** A <time> element: relative text ("12 s ago"), the exact local time as its title. */
export function timeAgo(value, now = Date.now()) {
  if (value === null || value === undefined || value === "") return el("span", { class: "muted" }, "never");
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return el("span", {}, String(value));
  const seconds = (now - date.getTime()) / 1000;
  const text = seconds < 1 ? "just now" : `${duration(seconds)} ago`;
  return el("time", { datetime: date.toISOString(), title: localTime(date) }, text);
}

/** A number with at most 3 decimals, without trailing zeros. */
export function number(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "–" : String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US").replace(/,/g, " ");
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 1 : abs >= 1 ? 2 : 3;
  return String(Number(value.toFixed(digits)));
}

/** Pretty JSON of a text that may hold JSON; the text itself otherwise. */
export function prettyJson(text) {
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** Say something to screen-reader users without moving the focus. */
export function announce(text) {
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}

/** Parse "#/device/x?a=1" into {parts: ["device", "x"], params: URLSearchParams}. */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  const parts = path ? path.split("/").map((p) => decodeURIComponent(p)) : [];
  return { parts, params: new URLSearchParams(query) };
}
