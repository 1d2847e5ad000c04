// The adapter's status page: overview, devices, one device with its history chart, and
// explain. Plain ES module, no build step; data from the adapter's local API (relative
// URLs, so the page also works behind a reverse proxy under a sub-path).

import { drawChart, fullTime } from "./chart.js";
import {
  HttpError,
  announce,
  keepFocus,
  badge,
  duration,
  el,
  fill,
  localTime,
  number,
  parseHash,
  prettyJson,
  request,
  timeAgo,
} from "./common.js";

const TOKEN_KEY = "sepl-adapter-token";
const TOKEN_COOKIE = "sepl_adapter_token";
const REFRESH_MS = 5000;
const CHART_REFRESH_MS = 30000;
const TASMOTA_EXAMPLE = {
  topic: "tele/kitchen/SENSOR",
  payload: JSON.stringify(
    {
      Time: "2024-05-01T12:00:00",
      ENERGY: { Total: 6.294, Today: 0.954, Power: 42, Voltage: 230, Current: 0.27 },
    },
    null,
    2,
  ),
};
// The granularity offered first for each window: a few dozen points.
const SUGGESTED_GRANULARITY = {
  "1h": "minute",
  "6h": "fifteen_minute",
  "12h": "thirty_minute",
  "24h": "hour",
  "168h": "hour",
  "720h": "day",
  all: "day",
};

const $ = (id) => document.getElementById(id);
const state = {
  token: readToken(),
  needToken: false,
  view: null,
  devices: [],
  overview: null,
  firstSeen: {}, // link name -> {up, at}: when this page first saw the link in its state
  device: null, // the device page's uri
  chartRows: null,
  chartWidth: 0,
  chartKey: "",
  chartLoadedAt: 0,
  timer: null,
};

// --- the token -------------------------------------------------------------------------

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...value] = part.trim().split("=");
    if (key === name) return decodeURIComponent(value.join("="));
  }
  return "";
}

function readToken() {
  try {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) return saved;
  } catch {
    // storage disabled
  }
  return readCookie(TOKEN_COOKIE);
}

function saveToken(token) {
  state.token = token;
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: the token lives as long as the page
  }
  const base = location.pathname.replace(/[^/]*$/, "");
  document.cookie =
    `${TOKEN_COOKIE}=${encodeURIComponent(token)}; Path=${base}; SameSite=Lax` +
    (location.protocol === "https:" ? "; Secure" : "");
}

function forgetToken() {
  state.token = "";
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled
  }
  const base = location.pathname.replace(/[^/]*$/, "");
  document.cookie = `${TOKEN_COOKIE}=; Path=${base}; Max-Age=0; SameSite=Lax`;
  location.reload();
}

$("forget-token").hidden = !state.token;
$("forget-token").addEventListener("click", forgetToken);

function askForToken() {
  if (state.needToken) return;
  state.needToken = true;
  $("token-panel").hidden = false;
  $("token-input").focus();
  announce("The adapter needs its API token.");
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  saveToken(token);
  $("forget-token").hidden = false;
  state.needToken = false;
  $("token-panel").hidden = true;
  $("token-input").value = "";
  route(true);
});

/** GET or POST the API with the token; a 401 asks for the token. */
async function api(path, options = {}) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  try {
    const { body } = await request(path, { ...options, headers });
    showLoadError(null);
    return body;
  } catch (error) {
    if (error instanceof HttpError && error.status === 401) askForToken();
    else if (!(error instanceof HttpError)) showLoadError(`The adapter did not answer (${error.message}).`);
    throw error;
  }
}

function showLoadError(text) {
  const box = $("load-error");
  box.hidden = !text;
  box.textContent = text ?? "";
}

function stamp() {
  $("updated").textContent = `Updated ${localTime(new Date()).slice(11)}`;
}

// --- shared bits -----------------------------------------------------------------------

const family = (uri) => (uri.includes(":") ? uri.slice(0, uri.indexOf(":")) : "");
const familyOf = (d) => d.family || family(d.uri);
// The readings a device list shows first: what SEPL is for, then the usual climate.
const KEY_READINGS = ["power", "energy", "temperature", "humidity", "co2", "illuminance", "voltage"];
const KEY_COUNT = 4;

/** "85.3 W" — a reading's value with its unit. */
function withUnit(entry) {
  const value = number(entry?.value);
  return entry?.unit ? `${value} ${entry.unit}` : value;
}

/** The on/off state of each channel (state, state_2, state_relay ...) as badges. */
function channelBadges(channels) {
  const names = Object.keys(channels ?? {}).sort((a, b) => (a === "state" ? -1 : b === "state" ? 1 : a.localeCompare(b)));
  if (!names.length) return el("span", { class: "muted" }, "–");
  return names.map((name, i) => {
    const label = name === "state" ? "" : `${name.slice(6)} `;
    const on = channels[name];
    const b = badge(on === true ? "good" : on === false ? "none" : "warn", `${label}${on === true ? "on" : on === false ? "off" : "?"}`);
    b.dataset.channel = name;
    return i ? [" ", b] : b;
  });
}

/** The device's key readings with units: its primary first, then KEY_READINGS. */
function keyReadings(d) {
  const readings = d.readings ?? {};
  const names = Object.keys(readings).filter((n) => !n.startsWith("state"));
  const rank = (n) => (n === d.primary ? -1 : KEY_READINGS.includes(n) ? KEY_READINGS.indexOf(n) : 99);
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  const shown = names.slice(0, KEY_COUNT).map((name) =>
    el(
      "li",
      {},
      el("span", { class: "name" }, name === d.primary ? `${name} (primary)` : name),
      " ",
      el("strong", {}, withUnit(readings[name])),
    ),
  );
  if (names.length > KEY_COUNT) shown.push(el("li", { class: "muted" }, `+${names.length - KEY_COUNT} more`));
  return shown;
}
const deviceHref = (uri) => `#/device/${encodeURIComponent(uri)}`;

function onlineBadge(online) {
  if (online === true) return badge("good", "online");
  if (online === false) return badge("bad", "offline");
  const unknown = badge("none", "unknown");
  unknown.title = "No availability message (LWT) seen yet";
  return unknown;
}

/** The readings of a device, its primary one first and marked. */
function readingItems(readings, primary) {
  const names = Object.keys(readings ?? {}).sort((a, b) =>
    a === primary ? -1 : b === primary ? 1 : a.localeCompare(b),
  );
  return names.map((name) =>
    el(
      "li",
      {},
      el("span", { class: "name" }, name === primary ? `${name} (primary)` : name),
      " ",
      el("strong", {}, number(readings[name])),
    ),
  );
}

async function loadDevices() {
  state.devices = await api("devices");
  return state.devices;
}

// --- overview --------------------------------------------------------------------------

/** "for 3 min (since 14:03:12)" from seconds the server reports, or what this page saw. */
function sinceText(name, up, reportedSeconds) {
  if (typeof reportedSeconds === "number") {
    const at = new Date(Date.now() - reportedSeconds * 1000);
    return `for ${duration(reportedSeconds)} (since ${localTime(at).slice(11)})`;
  }
  const seen = state.firstSeen[name];
  if (!seen || seen.up !== up) state.firstSeen[name] = { up, at: Date.now() };
  // The adapter does not say since when: the moment this page first saw the state.
  return `since ${localTime(new Date(state.firstSeen[name].at)).slice(11)} or earlier`;
}

function card(id, value, details) {
  const node = $(id);
  fill(node.querySelector('[data-field="state"]'), value);
  const fields = ["since", "detail"];
  for (const field of fields) {
    const target = node.querySelector(`[data-field="${field}"]`);
    if (target) fill(target, details[field] ?? "");
  }
}

function renderOverview(o, devices) {
  const mqttUp = Boolean(o.mqtt?.up);
  card("card-mqtt", badge(mqttUp ? "good" : "bad", mqttUp ? "connected" : "disconnected"), {
    since: sinceText("mqtt", mqttUp, mqttUp ? o.mqtt?.up_for_s : o.mqtt?.down_for_s),
    detail: o.mqtt?.client_id ? `client id ${o.mqtt.client_id}` : "",
  });

  const p = o.platform ?? {};
  const platformUp = Boolean(p.up);
  card("card-platform", badge(platformUp ? "good" : "bad", platformUp ? "connected" : "down"), {
    since: sinceText("platform", platformUp, platformUp ? p.up_for_s : p.down_for_s),
    detail: [
      p.gateway ? `gateway ${p.gateway}` : "no gateway yet",
      p.last_error ? ` · last error: ${p.last_error}` : "",
    ].join(""),
  });

  const behind = o.oldest_waiting_s;
  const full = o.disk_full_for_s;
  const outboxKind = full != null ? "bad" : !o.outbox_depth ? "good" : behind > 60 ? "warn" : "none";
  card(
    "card-outbox",
    badge(outboxKind, full != null ? "disk full" : `${number(o.outbox_depth)} waiting`),
    {
      detail:
        full != null
          ? `the disk has been full for ${duration(full)}: messages wait at the broker`
          : behind === null || behind === undefined
            ? "nothing waiting: up to date"
            : `${duration(behind)} behind (the oldest event has waited that long)`,
    },
  );

  card(
    "card-dead",
    badge(o.dead_letters ? "warn" : "good", number(o.dead_letters ?? 0)),
    {
      detail: o.dead_letters
        ? "kept for you: sepl-adapter deadletters list / replay / purge"
        : "nothing was refused",
    },
  );

  const online = devices.filter((d) => d.online === true).length;
  const quarantined = Object.keys(o.quarantined ?? {});
  card("card-devices", el("span", {}, number(devices.length)), {
    detail: `${online} online · ${o.devices ?? 0} managed by the gateway` +
      (quarantined.length ? ` · ${quarantined.length} quarantined` : ""),
  });

  const c = o.counts ?? {};
  card("card-messages", el("span", {}, number(c.received ?? 0)), {
    detail: `received · ${number(c.mapped ?? 0)} mapped · ${number(c.unmapped ?? 0)} unmapped · ` +
      `${number(c.rejected ?? 0)} rejected`,
  });

  const list = $("overview-devices");
  keepFocus(list, () => fill(
    list,
    devices.length
      ? devices.map((d) =>
          el(
            "li",
            { dataset: { uri: d.uri, key: d.uri } },
            el("a", { href: deviceHref(d.uri) }, d.name || d.uri),
            " ",
            onlineBadge(d.online),
            " ",
            el("span", { class: "muted" }, "last seen "),
            timeAgo(d.last_seen),
          ),
        )
      : el("li", { class: "empty" }, "No device yet: nothing a rule takes was published."),
  ));

  fill(
    $("quarantined"),
    quarantined.length
      ? quarantined.map((uri) =>
          el("li", {}, el("a", { href: deviceHref(uri) }, uri), `: ${o.quarantined[uri]}`),
        )
      : el("li", { class: "empty" }, "None"),
  );

  const topics = o.unmapped_topics ?? [];
  keepFocus($("unmapped"), () => fill(
    $("unmapped"),
    topics.length
      ? topics.map((t) =>
          el(
            "tr",
            { dataset: { key: t.topic } },
            el("td", { dataset: { label: "Topic" } }, el("code", {}, t.topic)),
            el("td", { class: "num", dataset: { label: "Messages" } }, number(t.count)),
            el(
              "td",
              { dataset: { label: "Action" } },
              el(
                "a",
                {
                  href: `#/explain?topic=${encodeURIComponent(t.topic)}`,
                  "aria-label": `Explain ${t.topic}`,
                },
                "Explain",
              ),
            ),
          ),
        )
      : el("tr", {}, el("td", { colspan: 3, class: "empty" }, "None: every topic has a rule.")),
  ));
}

async function refreshOverview() {
  const [overview, devices] = await Promise.all([api("api/overview"), loadDevices()]);
  state.overview = overview;
  renderOverview(overview, devices);
}

// --- devices ---------------------------------------------------------------------------

function deviceText(d) {
  return [d.name, d.uri, familyOf(d), ...Object.keys(d.readings ?? d.last_readings ?? {})].join(" ").toLowerCase();
}

function renderDevices() {
  const query = $("device-filter").value.trim().toLowerCase();
  const words = query.split(/\s+/).filter(Boolean);
  const shown = state.devices.filter((d) => words.every((w) => deviceText(d).includes(w)));
  $("device-count").textContent =
    `${shown.length} of ${state.devices.length} ${state.devices.length === 1 ? "device" : "devices"}`;
  keepFocus($("devices"), () => fill(
    $("devices"),
    shown.length
      ? shown.map((d) =>
          el(
            "tr",
            { dataset: { uri: d.uri, key: d.uri } },
            el("td", { dataset: { label: "Name" } }, el("a", { href: deviceHref(d.uri) }, d.name || d.uri)),
            el("td", { class: "mono", dataset: { label: "URI" } }, d.uri),
            el("td", { dataset: { label: "Family" } }, familyOf(d) || "–"),
            el(
              "td",
              { dataset: { label: "Online" } },
              onlineBadge(d.online),
              d.quarantined ? [" ", badge("warn", "quarantined")] : null,
            ),
            el("td", { dataset: { label: "Last seen" } }, timeAgo(d.last_seen)),
            el("td", { dataset: { label: "On/off" } }, channelBadges(d.channels)),
            el(
              "td",
              { dataset: { label: "Readings" } },
              Object.keys(d.readings ?? {}).length
                ? el("ul", { class: "readings" }, keyReadings(d))
                : el("span", { class: "muted" }, "none"),
            ),
          ),
        )
      : el(
          "tr",
          {},
          el(
            "td",
            { colspan: 7, class: "empty" },
            state.devices.length ? "No device matches the filter." : "No device yet.",
          ),
        ),
  ));
}

$("device-filter").addEventListener("input", () => {
  renderDevices();
  const q = $("device-filter").value;
  history.replaceState(null, "", q ? `#/devices?q=${encodeURIComponent(q)}` : "#/devices");
});

async function refreshDevices() {
  await loadDevices();
  renderDevices();
}

// --- one device ------------------------------------------------------------------------

function chartSettings() {
  return {
    measurement: $("chart-measurement").value,
    window: $("chart-window").value,
    granularity: $("chart-granularity").value,
    kind: $("chart-kind").value,
  };
}

function writeChartHash() {
  const s = chartSettings();
  const params = new URLSearchParams();
  if (s.measurement) params.set("measurement", s.measurement);
  params.set("window", s.window);
  params.set("granularity", s.granularity);
  if (s.kind !== "line") params.set("kind", s.kind);
  history.replaceState(null, "", `${deviceHref(state.device)}?${params}`);
}

function renderDevice(d) {
  $("device-title").textContent = d.name || d.uri;
  document.title = `${d.name || d.uri} · SEPL MQTT adapter`;
  const commands = (d.commands ?? []).map((c) =>
    el("span", { class: "mono", title: c.channel ? `the data names the channel: ${c.channel}` : "" }, c.service),
  );
  const facts = [
    ["URI", el("span", { class: "mono" }, d.uri)],
    ["Name", d.name || "–"],
    ["Device type", el("span", { class: "mono" }, d.type || "–")],
    ["Family", familyOf(d) || "–"],
    ["Online", onlineBadge(d.online)],
    ["On/off", channelBadges(d.channels)],
    ["Commands", commands.length ? commands.flatMap((c, i) => (i ? [", ", c] : [c])) : "–"],
    ["Last seen", timeAgo(d.last_seen)],
    ["Attached to the platform", d.attached ? "yes" : "no"],
    ["Quarantined", d.quarantined ? badge("warn", d.quarantine_reason || "yes") : "no"],
    ["Primary reading", d.primary || "–"],
  ];
  fill($("device-facts"), facts.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  const readings = d.readings ?? {};
  const names = Object.keys(readings).sort((a, b) =>
    a === d.primary ? -1 : b === d.primary ? 1 : a.localeCompare(b),
  );
  // Every reading with its unit and age; each opens its own chart.
  const items = names.map((name) =>
    el(
      "li",
      { dataset: { reading: name } },
      el("span", { class: "name" }, name === d.primary ? `${name} (primary)` : name),
      " ",
      el("strong", {}, withUnit(readings[name])),
      " ",
      el("span", { class: "muted" }, timeAgo(readings[name].time)),
      " ",
      el("a", { href: "#chart-heading", class: "chart-link", dataset: { measurement: name } }, "chart"),
    ),
  );
  fill($("device-readings"), items.length ? items : el("li", { class: "empty" }, "No readings yet."));
}

$("device-readings").addEventListener("click", (event) => {
  const link = event.target.closest("a.chart-link");
  if (!link) return;
  event.preventDefault();
  $("chart-measurement").value = link.dataset.measurement;
  $("chart-measurement").dispatchEvent(new Event("change"));
  $("chart-heading").scrollIntoView();
});

function fillMeasurements(d, wanted) {
  const select = $("chart-measurement");
  const readings = d.readings ?? {};
  const names = Object.keys(readings).filter((n) => typeof readings[n]?.value === "number");
  names.sort((a, b) => (a === d.primary ? -1 : b === d.primary ? 1 : a.localeCompare(b)));
  if (d.primary && !names.includes(d.primary)) names.unshift(d.primary);
  const current = wanted ?? select.value;
  const label = (n) => {
    const unit = readings[n]?.unit ? ` (${readings[n].unit})` : "";
    return n === d.primary ? `${n}${unit}, primary` : `${n}${unit}`;
  };
  fill(
    select,
    names.length
      ? names.map((n) => el("option", { value: n }, label(n)))
      : el("option", { value: "" }, "primary reading"),
  );
  if (current && names.includes(current)) select.value = current;
}

async function enterDevice(parts, params) {
  const uri = parts.slice(1).join("/");
  const fresh = state.device !== uri;
  state.device = uri;
  if (fresh) {
    state.chartRows = null;
    state.chartKey = "";
    fill($("chart"));
    fill($("device-facts"));
    fill($("device-readings"));
    $("device-title").textContent = uri;
  }
  // The last hour by minute: a new device has points at once (24 hours by hour is one dot).
  const windowValue = params.get("window") ?? "1h";
  $("chart-window").value = SUGGESTED_GRANULARITY[windowValue] ? windowValue : "1h";
  $("chart-granularity").value = params.get("granularity") ?? SUGGESTED_GRANULARITY[$("chart-window").value];
  if (!$("chart-granularity").value) $("chart-granularity").value = "hour";
  $("chart-kind").value = params.get("kind") === "bar" ? "bar" : "line";
  const d = await refreshDevice();
  if (d) {
    fillMeasurements(d, params.get("measurement"));
    await loadChart(true);
  }
}

async function refreshDevice() {
  try {
    const d = await api(`devices/${encodeURIComponent(state.device)}`);
    renderDevice(d);
    return d;
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) {
      $("device-title").textContent = state.device;
      fill($("device-facts"), el("dt", {}, "Unknown"), el("dd", {}, `The adapter knows no device ${state.device}.`));
    }
    throw error;
  }
}

function averageUrl() {
  const s = chartSettings();
  const params = new URLSearchParams();
  if (s.window !== "all") params.set("time_window", s.window);
  params.set("granularity", s.granularity);
  if (s.measurement) params.set("measurement", s.measurement);
  return `devices/${encodeURIComponent(state.device)}/average?${params}`;
}

async function loadChart(force = false) {
  const url = averageUrl();
  if (!force && url === state.chartKey && Date.now() - state.chartLoadedAt < CHART_REFRESH_MS) return;
  const target = $("chart");
  target.setAttribute("aria-busy", "true");
  try {
    const rows = await api(url);
    state.chartRows = rows;
    state.chartKey = url;
    state.chartLoadedAt = Date.now();
    target.dataset.source = url;
    $("chart-source").textContent = `Data: GET ${url} (the D9 average query)`;
    renderChart();
  } catch (error) {
    state.chartRows = null;
    fill(target, el("p", { class: "notice error", role: "alert" }, `No chart: ${error.message}`));
    $("chart-legend").textContent = "";
    throw error;
  } finally {
    target.removeAttribute("aria-busy");
  }
}

function renderChart() {
  const rows = state.chartRows;
  const target = $("chart");
  const s = chartSettings();
  const tbody = $("chart-table").querySelector("tbody");
  if (!rows) return;
  if (!rows.length) {
    fill(target, el("p", { class: "empty" }, "No readings in this window."));
    $("chart-legend").textContent = "";
    fill(tbody);
    return;
  }
  state.chartWidth = target.clientWidth;
  fill(
    target,
    drawChart(rows, {
      kind: s.kind,
      width: target.clientWidth || 720,
      measurement: s.measurement || "primary reading",
      granularity: s.granularity,
    }),
  );
  const values = rows.map((r) => r.result);
  const readings = rows.reduce((sum, r) => sum + r.data_points, 0);
  $("chart-legend").textContent =
    `${rows.length} ${rows.length === 1 ? "bucket" : "buckets"} from ${number(readings)} readings · ` +
    `lowest ${number(Math.min(...values))} · highest ${number(Math.max(...values))} · times in UTC`;
  fill(
    tbody,
    rows.map((r) =>
      el(
        "tr",
        {},
        el("td", { dataset: { label: "Bucket (UTC)" } }, fullTime(Date.parse(r.time_stamp))),
        el("td", { class: "num", dataset: { label: "Average" } }, number(r.result)),
        el("td", { class: "num", dataset: { label: "Readings" } }, number(r.data_points)),
      ),
    ),
  );
}

for (const id of ["chart-measurement", "chart-granularity", "chart-kind"]) {
  $(id).addEventListener("change", () => {
    writeChartHash();
    if (id === "chart-kind") renderChart();
    else loadChart(true).catch(() => {});
  });
}
$("chart-window").addEventListener("change", () => {
  $("chart-granularity").value = SUGGESTED_GRANULARITY[$("chart-window").value] ?? "hour";
  writeChartHash();
  loadChart(true).catch(() => {});
});

new ResizeObserver(() => {
  const width = $("chart").clientWidth;
  if (state.chartRows && width && Math.abs(width - state.chartWidth) > 8) renderChart();
}).observe($("chart"));

// --- explain ---------------------------------------------------------------------------

function fact(name, value, id) {
  return [el("dt", {}, name), el("dd", id ? { id } : {}, value)];
}

function renderExplain(result) {
  const section = $("explain-result");
  section.hidden = false;
  section.dataset.outcome = result.outcome;
  const heading = $("explain-outcome");
  const ruleText = result.rule ? el("code", {}, result.rule) : null;
  const rows = [];
  if (result.rule) rows.push(fact("Rule", [ruleText, " ", el("span", { class: "muted" }, `(${result.where})`)], "explain-rule"));
  switch (result.outcome) {
    case "event": {
      heading.textContent = `Rule ${result.rule} takes this message: it becomes an event`;
      const device = result.device;
      rows.push(
        fact("Topic pattern", el("code", {}, result.pattern)),
        fact("Placeholders", el("code", {}, JSON.stringify(result.placeholders))),
        fact("Device", [
          el("a", { href: deviceHref(device.uri), class: "mono" }, device.uri),
          ` · ${device.name} · `,
          el("span", { class: "mono" }, device.type),
        ], "explain-device"),
        fact("Tags", el("code", {}, JSON.stringify(device.tags))),
        fact("Service", el("code", {}, result.service)),
        fact(
          "Readings",
          Object.keys(result.readings).length
            ? el("ul", { class: "readings" }, readingItems(result.readings, result.primary))
            : el("span", { class: "muted" }, "none"),
          "explain-readings",
        ),
      );
      if (result.missing.length) rows.push(fact("Missing readings", result.missing.join(", ")));
      rows.push(
        fact("Event part data", el("pre", {}, result.parts.data)),
        fact("Event part metadata", el("pre", {}, prettyJson(result.parts.metadata))),
      );
      break;
    }
    case "ignored":
      heading.textContent = `Rule ${result.rule} ignores this topic on purpose: no event`;
      break;
    case "availability": {
      const states = { true: "online", false: "offline", null: "an unknown payload" };
      heading.textContent = `Availability: ${result.device.uri} is ${states[String(result.online)]} (no event is sent)`;
      rows.push(fact("Device", el("a", { href: deviceHref(result.device.uri), class: "mono" }, result.device.uri), "explain-device"));
      break;
    }
    case "rejected":
      heading.textContent = `Rule ${result.rule} takes the topic but rejects the payload`;
      rows.push(fact("Why", result.reason, "explain-why"));
      break;
    default:
      heading.textContent = "No rule takes this message";
      rows.push(
        fact(
          "Why",
          (result.why ?? []).length ? el("ul", {}, result.why.map((line) => el("li", {}, line))) : "no rule's topic matches",
          "explain-why",
        ),
      );
  }
  fill($("explain-facts"), rows);
  announce(heading.textContent);
}

$("explain-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const topic = $("explain-topic").value.trim();
  if (!topic) return;
  const button = event.submitter ?? $("explain-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    renderExplain(await api("api/explain", { method: "POST", body: { topic, payload: $("explain-payload").value } }));
  } catch (error) {
    const section = $("explain-result");
    section.hidden = false;
    section.dataset.outcome = "error";
    $("explain-outcome").textContent = `Could not explain: ${error.message}`;
    fill($("explain-facts"));
  } finally {
    button.disabled = false;
  }
});

$("explain-example").addEventListener("click", () => {
  $("explain-topic").value = TASMOTA_EXAMPLE.topic;
  $("explain-payload").value = TASMOTA_EXAMPLE.payload;
  $("explain-topic").focus();
});

// --- routing and refresh ---------------------------------------------------------------

const VIEWS = {
  overview: { title: "Overview", refresh: refreshOverview },
  devices: {
    title: "Devices",
    enter: (parts, params) => {
      if (params.has("q")) $("device-filter").value = params.get("q");
      return refreshDevices();
    },
    refresh: refreshDevices,
  },
  device: {
    title: "Device",
    enter: enterDevice,
    refresh: async () => {
      await refreshDevice();
      await loadChart();
    },
  },
  explain: {
    title: "Explain",
    enter: (parts, params) => {
      if (params.has("topic")) $("explain-topic").value = params.get("topic");
    },
  },
};

function route(initial = false) {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor
  const { parts, params } = parseHash();
  const name = VIEWS[parts[0]] ? parts[0] : "overview";
  const view = VIEWS[name];
  const changed = state.view !== name;
  state.view = name;
  for (const section of document.querySelectorAll("main > section[data-view]")) {
    section.hidden = section.dataset.view !== name;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    const current = link.dataset.nav === name || (name === "device" && link.dataset.nav === "devices");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name !== "device") document.title = `${view.title} · SEPL MQTT adapter`;
  if (changed && !initial) {
    const heading = document.querySelector(`#view-${name} h2`);
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
  const entered = (view.enter ?? view.refresh)?.(parts, params);
  Promise.resolve(entered).then(stamp, () => {});
}

async function tick() {
  const view = VIEWS[state.view];
  if (!view?.refresh || state.needToken || document.visibilityState === "hidden") return;
  try {
    await view.refresh();
    stamp();
  } catch {
    // shown by api()
  }
}

$("skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});
window.addEventListener("hashchange", () => route());
route(true);
state.timer = setInterval(tick, REFRESH_MS);
