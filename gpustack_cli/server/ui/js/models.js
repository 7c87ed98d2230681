// Models: what this key may use, which are loaded (`/api/ps`: slots busy, queue, context), an
// unload button each, and live charts of tokens per second and requests waiting from `/metrics`.
// The management routes need a key with the management scope: without one the buttons are
// disabled and the page says why.

import { ApiError, call, getJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const EVERY = 2000; // ms between polls while the tab is shown
const POINTS = 90;
let ui;
let known = [];
let timer = null;
let managed = true;
let last = null; // {time, generated: {model: count}}
const history = { tps: [], queue: [] };

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function unload(name) {
  try {
    await call("/api/stop", { method: "POST", json: { model: name } });
    ui.notice(`Unloaded ${name}.`);
    refresh();
  } catch (error) {
    ui.notice(`Could not unload ${name}: ${error.message}`, true);
  }
}

function drawTable(loaded) {
  const byName = new Map(loaded.map((m) => [m.name, m]));
  $("models-table").tBodies[0].replaceChildren(
    ...known.map((model) => {
      const state = byName.get(model.id);
      const row = document.createElement("tr");
      row.append(
        cell(model.id),
        cell(model.categories.join(", ")),
        cell(state ? "loaded" : model.loaded ? "loaded" : "not loaded"),
        cell(state ? `${state.active} / ${state.concurrency}` : "–"),
        cell(state ? String(state.waiting) : "–"),
        cell(state?.context ? `${state.context} tokens` : "–"),
      );
      const action = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiet";
      button.textContent = "Unload";
      button.disabled = !managed || !state;
      button.setAttribute("aria-label", `Unload ${model.id}`);
      button.addEventListener("click", () => unload(model.id));
      action.append(button);
      row.append(action);
      return row;
    }),
  );
}

/** The samples of a Prometheus text exposition, by metric name: [{labels, value}]. */
function samples(text) {
  const found = {};
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    const labels = Object.fromEntries([...(match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    (found[match[1]] ||= []).push({ labels, value: Number(match[3]) });
  }
  return found;
}

function chart(canvas, values, unit) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const style = getComputedStyle(document.body);
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...values);
  context.fillStyle = style.color;
  context.font = "12px system-ui";
  context.fillText(`${top.toFixed(top < 10 ? 1 : 0)} ${unit}`, 4, 14);
  context.fillText(`now: ${(values.at(-1) ?? 0).toFixed(1)}`, width - 80, 14);
  context.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--accent") || "#2f6fed";
  context.lineWidth = 2;
  context.beginPath();
  values.forEach((v, i) => {
    const x = (i / (POINTS - 1)) * width;
    const y = height - 4 - (v / top) * (height - 24);
    if (i) context.lineTo(x, y);
    else context.moveTo(x, y);
  });
  context.stroke();
}

async function metrics() {
  const text = await (await call("/metrics")).text();
  const found = samples(text);
  const now = performance.now();
  const generated = Object.fromEntries(
    (found.gpustack_generated_tokens_total || []).map((s) => [s.labels.model, s.value]),
  );
  let tps = 0;
  if (last) {
    const seconds = (now - last.time) / 1000;
    for (const [model, count] of Object.entries(generated)) tps += Math.max(0, count - (last.generated[model] ?? count)) / seconds;
  }
  last = { time: now, generated };
  const waiting = (found.gpustack_model_requests_waiting || []).reduce((sum, s) => sum + s.value, 0);
  history.tps = [...history.tps, tps].slice(-POINTS);
  history.queue = [...history.queue, waiting].slice(-POINTS);
  chart($("chart-tps"), history.tps, "tokens/s");
  chart($("chart-queue"), history.queue, "waiting");
}

async function refresh() {
  let loaded = [];
  try {
    known = (await getJSON("/v1/models")).data;
    loaded = (await getJSON("/api/ps")).models;
    managed = true;
    $("models-note").textContent = "";
    await metrics();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      managed = false;
      $("models-note").textContent = "This key lacks the management scope: loaded models, unloading and metrics are not shown.";
    } else {
      $("models-note").textContent = `Could not read the models' state: ${error.message}`;
    }
  }
  document.querySelector("#panel-models .charts").hidden = !managed;
  drawTable(loaded);
}

export function init(context) {
  ui = context;
}

export function setModels(list) {
  known = list;
}

export function show() {
  refresh();
  clearInterval(timer);
  timer = setInterval(() => {
    if ($("panel-models").hidden) clearInterval(timer);
    else refresh();
  }, EVERY);
}
