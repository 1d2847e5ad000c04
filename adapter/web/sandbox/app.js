// The sandbox platform's page: gateways, devices, the last events (polled), and a form
// that sends a command (POST /commands) and shows its response.

import {
  HttpError,
  announce,
  badge,
  keepFocus,
  el,
  fill,
  localTime,
  number,
  prettyJson,
  request,
  timeAgo,
} from "./common.js";

const REFRESH_MS = 2000;
const EVENTS_SHOWN = 50;

const $ = (id) => document.getElementById(id);
const state = { lastSeq: null, events: [], paused: false, busy: false, refreshing: false };

async function get(path) {
  try {
    const { body } = await request(path);
    showLoadError(null);
    return body;
  } catch (error) {
    if (!(error instanceof HttpError)) showLoadError(`The sandbox did not answer (${error.message}).`);
    throw error;
  }
}

function showLoadError(text) {
  $("load-error").hidden = !text;
  $("load-error").textContent = text ?? "";
}

function card(id, value, detail) {
  fill($(id).querySelector('[data-field="state"]'), value);
  fill($(id).querySelector('[data-field="detail"]'), detail);
}

// --- events: the newest ones, then whatever comes after -------------------------------

async function newestAfter(seq) {
  const rows = await get(`events?after=${seq}&limit=1`);
  return rows.length > 0;
}

/** The highest event number, found with few requests (GET /events pages from the oldest). */
async function latestSeq() {
  if (!(await newestAfter(0))) return 0;
  let low = 0; // an event exists after low
  let high = 64;
  while (await newestAfter(high)) {
    low = high;
    high *= 8;
  }
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2);
    if (await newestAfter(middle)) low = middle;
    else high = middle;
  }
  return high;
}

function eventSummary(event) {
  const parts = event.parts ?? {};
  try {
    const metadata = JSON.parse(parts.metadata ?? "");
    const readings = metadata.readings ?? {};
    const names = Object.keys(readings);
    if (names.length) {
      return el(
        "ul",
        { class: "readings" },
        names.map((n) => el("li", {}, el("span", { class: "name" }, n), " ", el("strong", {}, number(readings[n])))),
      );
    }
  } catch {
    // no JSON metadata: show the data
  }
  const data = String(parts.data ?? "");
  return el("code", {}, data.length > 160 ? `${data.slice(0, 160)}…` : data);
}

function renderEvents() {
  keepFocus($("events"), () => fill(
    $("events"),
    state.events.length
      ? state.events.map((e) =>
          el(
            "tr",
            { dataset: { seq: e.seq, device: e.device_uri, key: e.seq } },
            el("td", { class: "num", dataset: { label: "#" } }, e.seq),
            el("td", { dataset: { label: "Received" } }, timeAgo(e.received)),
            el("td", { class: "mono", dataset: { label: "Device" } }, e.device_uri),
            el("td", { class: "mono", dataset: { label: "Service" } }, e.service_uri),
            el("td", { dataset: { label: "Readings / data" } }, eventSummary(e)),
          ),
        )
      : el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No event yet.")),
  ));
}

async function refreshEvents() {
  if (state.lastSeq === null) {
    const latest = await latestSeq();
    state.events = (await get(`events?after=${Math.max(0, latest - EVENTS_SHOWN)}&limit=${EVENTS_SHOWN}`)).reverse();
    state.lastSeq = latest;
  } else {
    const fresh = await get(`events?after=${state.lastSeq}&limit=1000`);
    if (fresh.length) {
      state.lastSeq = fresh[fresh.length - 1].seq;
      state.events = [...fresh.reverse(), ...state.events].slice(0, EVENTS_SHOWN);
    }
  }
  card("card-events", el("span", {}, number(state.lastSeq)), state.events.length
    ? ["newest ", timeAgo(state.events[0].received), ` from ${state.events[0].device_uri}`]
    : "none yet");
  renderEvents();
}

// --- gateways and devices -----------------------------------------------------------------

async function refreshPlatform() {
  const [gateways, devices, sessions] = await Promise.all([get("gateways"), get("devices"), get("sessions")]);
  const connected = new Set(sessions.open.map((s) => s.gateway));
  const attached = devices.filter((d) => d.attached);

  card("card-gateways", el("span", {}, number(gateways.length)),
    `${connected.size} connected · ${sessions.opened} ${sessions.opened === 1 ? "session" : "sessions"} since start`);
  card("card-devices", el("span", {}, number(devices.length)), `${attached.length} attached`);

  fill(
    $("gateways"),
    gateways.length
      ? gateways.map((g) =>
          el(
            "tr",
            { dataset: { gateway: g.id } },
            el("td", { class: "mono", dataset: { label: "Gateway" } }, g.id),
            el("td", { dataset: { label: "Name" } }, g.name || "–"),
            el("td", { dataset: { label: "Owner" } }, g.owner || "–"),
            el("td", { dataset: { label: "Connected" } }, connected.has(g.id) ? badge("good", "connected") : badge("none", "not connected")),
            el("td", { class: "num", dataset: { label: "Devices" } }, number(g.devices.length)),
            el("td", { class: "mono", dataset: { label: "Hash" } }, g.hash ? g.hash.slice(0, 12) : "–"),
          ),
        )
      : el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No gateway has connected yet.")),
  );

  fill(
    $("devices"),
    devices.length
      ? devices.map((d) =>
          el(
            "tr",
            { dataset: { uri: d.uri } },
            el("td", { class: "mono", dataset: { label: "URI" } }, d.uri),
            el("td", { dataset: { label: "Name" } }, d.name),
            el("td", { class: "mono", dataset: { label: "Type" } }, d.type),
            el("td", { dataset: { label: "Attached" } }, d.attached ? badge("good", "attached") : badge("none", "not attached")),
            el("td", { dataset: { label: "Owner" } }, d.owner || "–"),
          ),
        )
      : el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No device yet.")),
  );

  // The command form's device list: attached devices; keep the choice across updates.
  const select = $("command-device");
  const chosen = select.value;
  const uris = [...new Set(attached.map((d) => d.uri))].sort();
  const same = uris.length === select.options.length && uris.every((u, i) => select.options[i].value === u);
  if (!same) {
    fill(
      select,
      uris.length
        ? uris.map((u) => el("option", { value: u }, u))
        : el("option", { value: "" }, "no device is attached"),
    );
    if (uris.includes(chosen)) select.value = chosen;
  }
  select.disabled = uris.length === 0;
  $("command-send").disabled = uris.length === 0 || state.busy;
}

// --- commands --------------------------------------------------------------------------

function fact(name, value, id) {
  return [el("dt", {}, name), el("dd", id ? { id } : {}, value)];
}

function partsOf(message) {
  const parts = {};
  for (const part of message?.protocol_parts ?? []) parts[part.name] = part.value;
  return parts;
}

function renderCommand(status, body, seconds) {
  const section = $("command-result");
  section.hidden = false;
  section.dataset.status = String(status);
  const rows = [fact("HTTP status", `${status} after ${seconds.toFixed(1)} s`)];
  let outcome;
  if (status === 200 && body.response) {
    outcome = "The device answered";
    const parts = partsOf(body.response);
    for (const [name, value] of Object.entries(parts)) {
      rows.push(fact(`Response part ${name}`, el("pre", {}, prettyJson(value)), `command-part-${name}`));
    }
  } else if (status === 504) {
    outcome = "No response in time";
    rows.push(fact("Error", body.error ?? "timeout"));
  } else if (status >= 400) {
    outcome = "Not sent";
    rows.push(fact("Error", body?.error ?? JSON.stringify(body)));
  } else {
    outcome = "Sent";
  }
  if (body?.task_id) rows.push(fact("Task id", el("code", {}, body.task_id)));
  rows.push(
    fact(
      "Full answer",
      el("details", {}, el("summary", {}, "request and response as JSON"), el("pre", { id: "command-answer" }, JSON.stringify(body, null, 2))),
    ),
  );
  $("command-outcome").textContent = outcome;
  fill($("command-facts"), rows);
  announce(`${outcome} (HTTP ${status})`);
}

$("command-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const device = $("command-device").value;
  const service = $("command-service").value.trim();
  const timeout = Number($("command-timeout").value) || 10;
  if (!device || !service) return;
  const data = $("command-data").value;
  const body = { device, service, timeout, ...(data.trim() ? { data } : {}) };
  state.busy = true;
  $("command-send").disabled = true;
  $("command-outcome").textContent = "Waiting for the response…";
  $("command-result").hidden = false;
  $("command-result").dataset.status = "pending";
  fill($("command-facts"));
  const started = performance.now();
  try {
    const answer = await request("commands", { method: "POST", body, accept: [202, 400, 409, 504] });
    renderCommand(answer.status, answer.body, (performance.now() - started) / 1000);
  } catch (error) {
    renderCommand(error.status ?? 0, error.body ?? { error: error.message }, (performance.now() - started) / 1000);
  } finally {
    state.busy = false;
    $("command-send").disabled = $("command-device").disabled;
  }
});

// --- refresh loop ----------------------------------------------------------------------

$("events-pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("events-pause").setAttribute("aria-pressed", String(state.paused));
  $("events-pause").textContent = state.paused ? "Resume updates" : "Pause updates";
  $("events-hint").textContent = state.paused
    ? "Updates paused."
    : "Newest first, updated every 2 seconds.";
});

$("skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});

async function refresh(force = false) {
  if (state.refreshing) return;
  if (!force && (state.paused || document.visibilityState === "hidden")) return;
  state.refreshing = true;
  try {
    await Promise.all([refreshPlatform(), refreshEvents()]);
    $("updated").textContent = `Updated ${localTime(new Date()).slice(11)}`;
  } catch {
    // shown by get()
  } finally {
    state.refreshing = false;
  }
}

refresh(true);
setInterval(refresh, REFRESH_MS);
