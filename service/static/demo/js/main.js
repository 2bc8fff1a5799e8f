// The demo page's wiring: which mode, which prompts and supports, the key, the Segment
// button, and what to say when something goes wrong. The server validates every field
// (one source of rules); the page sends what was typed and shows the server's answer.

import { postForm, readiness } from "./api.js";
import { wireImageInput } from "./imagein.js";
import { Overlay } from "./overlay.js";
import { SupportCard } from "./painter.js";
import { Results } from "./results.js";

const PALETTE = ["#ff4d6d", "#3b82f6", "#22c55e", "#f59e0b", "#a855f7", "#06b6d4", "#ec4899", "#84cc16"];
const VISUAL_COLOUR = "#a855f7";
const KEY_STORAGE = "clipseg-api-key"; // sessionStorage: gone when the tab closes

const $ = (selector) => document.querySelector(selector);
const config = JSON.parse($('meta[name="clipseg-config"]').content);

const state = { mode: "text", image: null, supports: [], busyUntil: 0 };
const overlay = new Overlay($("#stage-canvas"));
const results = new Results(
  {
    section: $("#results"),
    list: $("#mask-list"),
    template: $("#mask-item"),
    threshold: $("#threshold"),
    thresholdValue: $("#threshold-value"),
    thresholdSource: $("#threshold-source"),
    note: $("#threshold-note"),
    opacity: $("#opacity"),
    opacityValue: $("#opacity-value"),
    timings: $("#timings"),
    downloadJson: $("#download-json"),
  },
  overlay,
);

// ---------- the query image ----------

async function setImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    showMessage({ code: "unreadable_image", message: "this browser cannot read that file as an image" });
    return;
  }
  state.image = file;
  overlay.setImage(bitmap);
  bitmap.close();
  results.clear();
  $("#drop-zone").dataset.empty = "false";
  const kb = Math.round(file.size / 1024);
  $("#image-info").textContent = `${file.name || "pasted image"} · ${overlay.width}×${overlay.height} · ${kb} KB`;
  hideMessage();
}

// ---------- tabs ----------

function selectMode(mode) {
  state.mode = mode;
  for (const name of ["text", "visual"]) {
    const tab = $(`#tab-${name}`);
    const selected = name === mode;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`#panel-${name}`).hidden = !selected;
  }
}

function wireTabs() {
  const tabs = [$("#tab-text"), $("#tab-visual")];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectMode(i === 0 ? "text" : "visual"));
    // Arrow keys move between tabs, as in every tab widget (WAI-ARIA pattern).
    tab.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      const next = tabs[(i + 1) % 2];
      next.focus();
      next.click();
    });
  });
}

// ---------- prompts ----------

function addPrompt(text = "") {
  const list = $("#prompt-list");
  if (list.children.length >= config.maxPrompts) return null;
  const row = $("#prompt-row").content.firstElementChild.cloneNode(true);
  const used = new Set([...list.querySelectorAll(".prompt-colour")].map((c) => c.value));
  row.querySelector(".prompt-colour").value = PALETTE.find((c) => !used.has(c)) || PALETTE[0];
  const input = row.querySelector(".prompt-text");
  input.value = text;
  input.maxLength = config.maxPromptChars * 4; // the server says when it is too long
  row.querySelector(".remove-prompt").addEventListener("click", () => {
    row.remove();
    if (!list.children.length) addPrompt();
    updatePromptButtons();
  });
  list.append(row);
  updatePromptButtons();
  return input;
}

function updatePromptButtons() {
  const rows = $("#prompt-list").children.length;
  $("#add-prompt").disabled = rows >= config.maxPrompts;
  for (const [i, row] of [...$("#prompt-list").children].entries()) {
    row.querySelector(".prompt-text").setAttribute("aria-label", `Prompt ${i + 1}`);
    row.querySelector(".prompt-colour").setAttribute("aria-label", `Colour of prompt ${i + 1}`);
  }
}

/** The typed prompts (blank rows skipped) and their colours. */
function typedPrompts() {
  const rows = [...$("#prompt-list").children];
  return rows
    .map((row) => ({ text: row.querySelector(".prompt-text").value.trim(), colour: row.querySelector(".prompt-colour").value }))
    .filter((p) => p.text);
}

function negatives() {
  return $("#negatives").value.split("\n").map((s) => s.trim()).filter(Boolean);
}

// ---------- supports ----------

function addSupport() {
  const list = $("#support-list");
  if (state.supports.length >= config.maxSupports) return;
  const root = $("#support-card").content.firstElementChild.cloneNode(true);
  const card = new SupportCard(root, () => {});
  root.querySelector(".remove-support").addEventListener("click", () => {
    state.supports = state.supports.filter((c) => c !== card);
    root.remove();
    if (!state.supports.length) addSupport();
    updateSupportTitles();
  });
  state.supports.push(card);
  list.append(root);
  updateSupportTitles();
}

function updateSupportTitles() {
  state.supports.forEach((card, i) => {
    card.root.querySelector(".support-title").textContent = `Support ${i + 1}`;
    card.maskCanvas.setAttribute("aria-label", `Support ${i + 1}: paint the object's mask here`);
  });
  $("#add-support").disabled = state.supports.length >= config.maxSupports;
}

// ---------- the request ----------

async function buildRequest() {
  const form = new FormData();
  form.append("image", state.image, state.image.name || "image.png");
  form.append("format", "rle");
  form.append("soft", "true"); // the maps the threshold slider works from
  if (results.local) form.append("threshold", $("#threshold").value);
  // The soft maps come back refined too, so the slider thresholds the refined maps.
  form.append("refine", $("#refine").value);
  if (state.mode === "text") {
    const prompts = typedPrompts();
    for (const p of prompts) form.append("prompt", p.text);
    for (const n of negatives()) form.append("negative_prompt", n);
    const combine = $("#combine").value;
    form.append("combine", combine);
    form.append("template", $("#template").value);
    const colours = prompts.map((p) => p.colour);
    const one = combine === "union" || combine === "intersection";
    return {
      path: "v1/segment/text",
      form,
      meta: { colours: one ? colours.slice(0, 1) : colours, combine, negatives: negatives().length > 0 },
    };
  }
  const supports = state.supports.filter((card) => card.file);
  for (const [i, card] of supports.entries()) {
    form.append("support_image", card.file, card.file.name || `support-${i + 1}.png`);
    form.append("support_mask", await card.maskBlob(), `support-${i + 1}-mask.png`);
  }
  const hybrid = $("#hybrid-prompt").value.trim();
  if (hybrid) {
    form.append("prompt", hybrid);
    form.append("text_weight", $("#text-weight").value);
  }
  return { path: "v1/segment/visual", form, meta: { colours: [VISUAL_COLOUR], combine: "none", negatives: false } };
}

async function run(event) {
  event.preventDefault();
  if (Date.now() < state.busyUntil) return;
  if (!state.image) {
    showMessage({ code: "no_image", message: "choose, drop or paste an image first" });
    $("#image-input").focus();
    return;
  }
  if (state.mode === "visual" && !state.supports.some((c) => c.file)) {
    showMessage({ code: "no_support", message: "add a support image and paint the object on it" });
    return;
  }
  hideMessage();
  setBusy(true);
  let answer;
  try {
    const request = await buildRequest();
    answer = await postForm(request.path, request.form, $("#api-key").value.trim());
    if (answer.ok) {
      await results.show(answer.data, { ...request.meta, requestId: answer.requestId, roundTripMs: answer.roundTripMs });
    }
  } finally {
    setBusy(false);
  }
  // After the button is released: a 429 holds it again until the retry time.
  if (!answer.ok) onError(answer.error);
}

function setBusy(busy) {
  $("#busy").hidden = !busy;
  $("#run").disabled = busy;
  $("#run").setAttribute("aria-busy", String(busy));
}

// ---------- messages ----------

function onError(error) {
  if (error.status === 401) showKeyField(true);
  showMessage(error);
  if (error.status === 429 && error.retryAfterS !== null) countDown(error.retryAfterS);
}

/** @param {{code: string, message: string, requestId?: string|null, status?: number}} error */
function showMessage(error, kind = "error") {
  const box = $("#message");
  const code = document.createElement("span");
  code.className = "error-code";
  code.textContent = error.status ? `${error.status} ${error.code}` : error.code;
  const text = document.createElement("span");
  text.className = "error-message";
  text.textContent = `: ${error.message}`;
  const parts = [code, text];
  if (error.status === 429) {
    const retry = document.createElement("span");
    retry.className = "retry";
    parts.push(document.createElement("br"), retry);
  }
  if (error.requestId) {
    const rid = document.createElement("span");
    rid.className = "request-id";
    rid.textContent = `request ID ${error.requestId}`;
    parts.push(rid);
  }
  box.replaceChildren(...parts);
  box.dataset.kind = kind;
  box.hidden = false;
}

function hideMessage() {
  $("#message").hidden = true;
}

/** 429: say when a retry will be admitted and hold the button until then. */
function countDown(seconds) {
  state.busyUntil = Date.now() + seconds * 1000;
  const retry = $("#message .retry");
  const tick = () => {
    const left = Math.max(0, (state.busyUntil - Date.now()) / 1000);
    if (left <= 0) {
      retry.textContent = "The server should accept a retry now.";
      $("#run").disabled = false;
      return;
    }
    retry.textContent = `Busy: retry in ${Math.ceil(left)} s.`;
    $("#run").disabled = true;
    setTimeout(tick, Math.min(1000, left * 1000));
  };
  tick();
}

// ---------- the key ----------

function showKeyField(focus = false) {
  $("#api-key-field").hidden = false;
  if (focus) $("#api-key").focus();
}

function wireKey() {
  const input = $("#api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("input", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  if (config.auth) showKeyField();
}

// ---------- readiness ----------

async function watchReadiness() {
  const pill = $("#status");
  const status = await readiness();
  pill.dataset.state = status;
  pill.textContent = { ready: "model ready", loading: "loading weights…", down: "unavailable" }[status];
  if (status !== "ready") setTimeout(watchReadiness, 3000);
}

// ---------- start ----------

function start() {
  wireImageInput({ input: $("#image-input"), zone: $("#drop-zone") }, setImage);
  wireTabs();
  wireKey();
  addPrompt();
  addSupport();
  $("#add-prompt").addEventListener("click", () => addPrompt()?.focus());
  $("#add-support").addEventListener("click", addSupport);
  $("#hybrid-prompt").addEventListener("input", () => {
    $("#text-weight").disabled = !$("#hybrid-prompt").value.trim();
  });
  $("#text-weight").addEventListener("input", () => {
    $("#text-weight-value").value = Number($("#text-weight").value).toFixed(2);
  });
  $("#request-form").addEventListener("submit", run);
  if (!config.docs) $("#docs-link").hidden = true;
  watchReadiness();
}

start();
