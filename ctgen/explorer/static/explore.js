// ctgen explore: sliders over the latent units; the server decodes, this page only asks and shows.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDER_LIMIT = 4; // prior N(0, 1): ±4 covers all but 1e-4 of it; larger values widen their slider

const state = {
  z: [],            // the current latent vector
  origin: [],       // what Reset returns to: the last prior mean / sample / DICOM
  originLabel: "",
  edited: false,
  window: "brain",
  a: null, b: null, // interpolation ends
  maxUploadBytes: Infinity, // from the server, which enforces it too (413)
};
const sliders = new Map(); // unit -> {input, output}

// ---------------------------------------------------------------------------------- errors
function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function postJson(path, payload) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)});
}

// ---------------------------------------------------------------------------------- rendering
// At most one decode request in flight; while it runs, later changes only mark the view dirty, and the
// next request carries the latest vector. Latency: from the newest change a frame includes to its display.
const render = {inFlight: false, dirty: false, changedAt: 0, frame: 0, history: []};

function changed() {
  render.dirty = true;
  render.changedAt = performance.now();
  $("image").dataset.busy = "true";
  pump();
}

async function pump() {
  if (render.inFlight || !render.dirty) return;
  render.dirty = false;
  render.inFlight = true;
  const since = render.changedAt;
  try {
    const response = await postJson("api/decode", {z: state.z, window: state.window});
    // createImageBitmap + canvas: a few ms faster than <img> + object URL + decode()
    const bitmap = await createImageBitmap(await response.blob());
    const image = $("image");
    if (image.width !== bitmap.width || image.height !== bitmap.height) {
      image.width = bitmap.width;
      image.height = bitmap.height;
    }
    image.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    showLatency(performance.now() - since);
    render.frame += 1;
    image.dataset.frame = String(render.frame);
  } catch (error) {
    showError(`decode: ${error.message}`);
  } finally {
    render.inFlight = false;
    if (render.dirty) pump();
    else $("image").dataset.busy = "false"; // the image shows the latest vector (tests wait for this)
  }
}

function showLatency(ms) {
  const history = render.history;
  history.push(ms);
  if (history.length > 50) history.shift();
  const sorted = [...history].sort((x, y) => x - y);
  const median = sorted[Math.floor(sorted.length / 2)];
  const output = $("latency");
  output.dataset.ms = ms.toFixed(1);
  output.dataset.median = median.toFixed(1);
  output.textContent = `${Math.round(ms)} ms (median ${Math.round(median)} of ${history.length})`;
}

// ---------------------------------------------------------------------------------- the vector
function setZ(z, {origin = null, status = null} = {}) {
  state.z = z.map(Number);
  for (const [unit, {input}] of sliders) {
    const value = state.z[unit];
    if (Math.abs(value) > SLIDER_LIMIT) {
      const reach = Math.ceil(Math.abs(value));
      input.min = String(-reach);
      input.max = String(reach);
    }
    input.value = String(value);
    showValue(unit);
  }
  if (origin !== null) {
    state.origin = state.z.slice();
    state.originLabel = origin;
    state.edited = false;
  }
  $("status").textContent = status || state.originLabel + (state.edited ? " (edited)" : "");
  changed();
}

// A bound unit's value in its factor's unit of measure: value = mean + std * z (the card's binding), written as
// ctgen.latent.physical_text writes it ("15°", "142 mm", "40.2 mm2").
const SYMBOLS = {deg: "°", "mm²": " mm2"};

function physicalText(value, unitOfMeasure) {
  if (!Number.isFinite(value)) return "n/a";
  const size = Math.abs(value);
  const digits = size >= 100 || value === Math.round(value) ? 0 : size >= 1 ? 1 : 2;
  const suffix = unitOfMeasure in SYMBOLS ? SYMBOLS[unitOfMeasure] : (unitOfMeasure ? ` ${unitOfMeasure}` : "");
  return (value + 0).toFixed(digits) + suffix;
}

function showValue(unit) {
  const value = state.z[unit];
  const {output, bound} = sliders.get(unit);
  const latent = (value >= 0 ? "+" : "") + value.toFixed(2);
  if (!bound) {
    output.textContent = latent;
    return;
  }
  const physical = bound.mean + bound.std * value;
  output.textContent = physicalText(physical, bound.unit_of_measure);
  output.title = `z ${latent}`;
  output.dataset.value = String(physical);
}

function buildSliders(units, visible) {
  const main = $("sliders");
  const more = $("more-sliders");
  for (const info of units) {
    const row = document.createElement("div");
    row.className = "unit";
    const id = `unit-${info.unit}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = `u${info.unit}` + (info.kl === null ? "" : ` · KL ${info.kl.toFixed(2)}`);
    if (info.factor) {
      const factor = document.createElement("span");
      factor.className = info.bound ? "factor bound" : "factor";
      const measure = info.bound && info.bound.unit_of_measure ? ` (${info.bound.unit_of_measure})` : "";
      factor.textContent = ` · ${info.factor}${measure}`;
      label.append(factor);
    }
    label.title = label.textContent + ` (rank ${info.rank})`;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", id, min: String(-SLIDER_LIMIT), max: String(SLIDER_LIMIT), step: "0.01",
                          value: "0"});
    input.dataset.unit = String(info.unit);
    input.dataset.rank = String(info.rank);
    input.addEventListener("input", () => {
      state.z[info.unit] = Number(input.value);
      showValue(info.unit);
      if (!state.edited) {
        state.edited = true;
        $("status").textContent = `${state.originLabel} (edited)`;
      }
      changed();
    });
    input.addEventListener("dblclick", () => { input.value = "0"; input.dispatchEvent(new Event("input")); });
    const output = document.createElement("output");
    output.id = `${id}-value`;
    output.htmlFor = id;
    row.append(label, input, output);
    (info.rank <= visible ? main : more).append(row);
    sliders.set(info.unit, {input, output, bound: info.bound || null});
  }
  $("more-units").hidden = units.length <= visible;
  $("more-units").querySelector("summary").textContent = `${Math.max(0, units.length - visible)} more units`;
}

// ---------------------------------------------------------------------------------- interpolation
// The same formulas as ctgen.latent.lerp / slerp, for one fraction t.
function lerp(a, b, t) { return a.map((value, i) => (1 - t) * value + t * b[i]); }

function slerp(a, b, t) {
  const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
  const normA = norm(a), normB = norm(b);
  if (normA === 0 || normB === 0) return lerp(a, b, t);
  const cos = Math.min(1, Math.max(-1, a.reduce((sum, x, i) => sum + x * b[i], 0) / (normA * normB)));
  const omega = Math.acos(cos);
  const sin = Math.sin(omega);
  if (sin < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * omega) / sin, wb = Math.sin(t * omega) / sin;
  return a.map((value, i) => wa * value + wb * b[i]);
}

function setEnd(which) {
  state[which] = state.z.slice();
  const label = state.originLabel + (state.edited ? " (edited)" : "");
  $(`${which}-label`).textContent = `${which.toUpperCase()}: ${label}`;
  $(`${which}-label`).dataset.set = "true";
  $("blend").disabled = !(state.a && state.b);
}

function blend() {
  if (!(state.a && state.b)) return;
  const t = Number($("blend").value);
  const method = $("interp-method").value;
  $("blend-value").textContent = t.toFixed(2);
  setZ((method === "lerp" ? lerp : slerp)(state.a, state.b, t), {status: `A → B ${t.toFixed(2)} (${method})`});
}

// ---------------------------------------------------------------------------------- actions
function action(handler) {
  return async (event) => {
    showError("");
    try {
      await handler(event);
    } catch (error) {
      showError(error.message);
    }
  };
}

async function randomSample() {
  const seedInput = $("seed");
  const seed = Math.trunc(Number(seedInput.value) || 0);
  const result = await (await api(`api/sample?seed=${seed}`)).json();
  setZ(result.z, {origin: `random sample, seed ${seed}`});
  seedInput.value = String(seed + 1); // the next click draws a new one; the status keeps this seed
}

async function loadDicom(event) {
  const input = event.target;
  const file = input.files && input.files[0];
  if (!file) return;
  input.value = ""; // the same file can be chosen again
  const mib = (bytes) => (bytes / 2 ** 20).toFixed(1);
  if (file.size > state.maxUploadBytes) {
    throw new Error(`${file.name}: too large: ${mib(file.size)} MiB (limit ${mib(state.maxUploadBytes)} MiB)`);
  }
  $("status").textContent = `encoding ${file.name}…`;
  try {
    const response = await api("api/encode", {method: "POST", body: file,
                                              headers: {"X-Filename": encodeURIComponent(file.name)}});
    const result = await response.json();
    setZ(result.z, {origin: result.label});
    $("dicom-file").dataset.loaded = result.label;
  } catch (error) {
    $("status").textContent = state.originLabel + (state.edited ? " (edited)" : "");
    throw new Error(`${file.name}: ${error.message.replace(`${file.name}: `, "")}`);
  }
}

async function exportCurrent(event) {
  const format = event.currentTarget.dataset.format;
  const response = await postJson("api/export", {z: state.z, format, window: state.window});
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = match ? match[1] : `ctgen-explore.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function selectWindow(name) {
  state.window = name;
  for (const button of document.querySelectorAll("#windows button")) {
    button.setAttribute("aria-pressed", String(button.dataset.window === name));
  }
  changed();
}

function buildWindows(windows, selected) {
  const group = $("windows");
  for (const [name, [center, width]] of Object.entries(windows)) {
    const button = document.createElement("button");
    button.type = "button";
    button.id = `window-${name}`;
    button.dataset.window = name;
    button.textContent = name;
    button.title = `center ${center} HU, width ${width} HU`;
    button.addEventListener("click", () => selectWindow(name));
    group.append(button);
  }
  state.window = selected;
  for (const button of group.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.window === selected));
  }
}

async function main() {
  const info = await (await api("api/state")).json();
  const model = info.model;
  $("model-name").textContent = `${model.name} · ${model.image_size}² px · ${info.latent_size} units · ` +
                                `${model.provider.replace("ExecutionProvider", "")}`;
  document.title = `ctgen explore · ${model.name}`;
  $("seed").value = String(info.seed);
  state.maxUploadBytes = info.max_upload_bytes;
  buildWindows(info.windows, info.window);
  buildSliders(info.units, info.visible_units);
  const zeros = new Array(info.latent_size).fill(0);

  $("prior-mean").addEventListener("click", action(() => setZ(zeros, {origin: "prior mean"})));
  $("random").addEventListener("click", action(randomSample));
  $("reset").addEventListener("click", action(() => {
    state.edited = false;
    setZ(state.origin, {});
  }));
  $("dicom-file").addEventListener("change", action(loadDicom));
  $("set-a").addEventListener("click", action(() => setEnd("a")));
  $("set-b").addEventListener("click", action(() => setEnd("b")));
  $("blend").addEventListener("input", blend);
  $("interp-method").addEventListener("change", blend);
  for (const id of ["export-png", "export-dcm", "export-json"]) $(id).addEventListener("click", action(exportCurrent));

  setZ(info.start.z, {origin: info.start.label});
  document.body.dataset.ready = "true";
}

main().catch((error) => showError(`cannot start: ${error.message}`));
