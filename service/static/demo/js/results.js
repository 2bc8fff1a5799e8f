// The answer on screen: the overlay, one row per mask (toggle, score, area, box,
// download), the threshold and opacity sliders, the server's timings.
//
// The server's own masks (decoded from its RLE) are shown until the threshold slider
// moves; from then on every mask is thresholded here from its 8-bit probability map, so
// sliding sends no request. Area and box follow the mask on screen.

import { argmaxMaps, decodeGrayPng, maskStats, maskToPng, thresholdMap } from "./masks.js";
import { hexToRgb } from "./overlay.js";
import { decodeRle, encodeRle } from "./rle.js";

export class Results {
  /**
   * @param {Record<string, HTMLElement>} els
   * @param {import("./overlay.js").Overlay} overlay
   */
  constructor(els, overlay) {
    this.els = els;
    this.overlay = overlay;
    this.entries = [];
    this.local = false; // the slider moved since the answer arrived
    els.threshold.addEventListener("input", () => {
      this.local = true;
      this.update();
    });
    els.opacity.addEventListener("input", () => this.draw());
    els.downloadJson.addEventListener("click", () => this.downloadJson());
  }

  /**
   * Show an answer.
   * @param {object} data the server's JSON
   * @param {{colours: string[], combine: string, negatives: boolean, requestId: string|null,
   *          roundTripMs: number}} meta
   */
  async show(data, meta) {
    const softs = await Promise.all(data.masks.map((m) => decodeGrayPng(m.soft_png)));
    this.data = data;
    this.meta = meta;
    this.entries = data.masks.map((m, i) => ({
      label: m.prompt,
      score: m.score,
      hex: meta.colours[i % meta.colours.length],
      visible: true,
      server: { mask: decodeRle(m.rle), area: m.area, bbox: m.bbox, threshold: m.threshold },
      soft: softs[i].data,
    }));
    this.local = false;
    const t = data.masks.length ? data.masks[0].threshold : Number(this.els.threshold.value);
    this.serverThreshold = t;
    this.els.threshold.value = String(t);
    this.renderList();
    this.renderTimings();
    this.els.section.hidden = false;
    this.update();
  }

  clear() {
    this.entries = [];
    this.els.section.hidden = true;
    this.draw();
  }

  /** Recompute each mask for the slider's threshold (no request), then redraw. */
  update() {
    const t = this.local ? Number(this.els.threshold.value) : this.serverThreshold;
    if (this.local) {
      const softs = this.entries.map((e) => e.soft);
      const masks =
        this.meta.combine === "argmax" ? argmaxMaps(softs, t) : softs.map((s) => thresholdMap(s, t));
      this.entries.forEach((e, i) => {
        e.mask = masks[i];
        Object.assign(e, maskStats(masks[i], this.data.width));
      });
    } else {
      for (const e of this.entries) Object.assign(e, e.server);
    }
    this.threshold = t;
    this.els.thresholdValue.value = formatThreshold(t);
    const source = this.local ? "local" : "server";
    this.els.thresholdSource.textContent = source;
    this.els.thresholdSource.dataset.source = source;
    this.els.note.textContent = this.local ? this.localNote() : "";
    this.refreshStats();
    this.draw();
  }

  localNote() {
    const base = "Thresholded in the page from the 8-bit probability maps; area and box recomputed.";
    return this.meta.negatives
      ? `${base} Negative prompts are not applied here: segment again to apply them.`
      : base;
  }

  draw() {
    const opacity = Number(this.els.opacity.value);
    this.els.opacityValue.value = `${Math.round(opacity * 100)}%`;
    const layers = this.entries.map((e) => ({ mask: e.mask, rgb: hexToRgb(e.hex), visible: e.visible }));
    this.overlay.render(layers, opacity);
  }

  renderList() {
    const list = this.els.list;
    list.replaceChildren();
    this.entries.forEach((entry, i) => {
      const item = this.els.template.content.firstElementChild.cloneNode(true);
      item.querySelector(".swatch").style.setProperty("--swatch", entry.hex);
      item.querySelector(".mask-label").textContent = entry.label;
      item.querySelector(".mask-score").textContent = entry.score.toFixed(3);
      const toggle = item.querySelector(".mask-toggle");
      toggle.setAttribute("aria-label", `Show mask: ${entry.label}`);
      toggle.addEventListener("change", () => {
        entry.visible = toggle.checked;
        this.draw();
      });
      const download = item.querySelector(".mask-download");
      download.setAttribute("aria-label", `Download mask PNG: ${entry.label}`);
      download.addEventListener("click", () => this.downloadMask(i));
      entry.item = item;
      list.append(item);
    });
  }

  refreshStats() {
    const pixels = this.data ? this.data.width * this.data.height : 1;
    for (const e of this.entries) {
      const share = ((100 * e.area) / pixels).toFixed(1);
      e.item.querySelector(".mask-area").textContent = `${e.area.toLocaleString("en")} px · ${share}%`;
      const [x, y, w, h] = e.bbox;
      e.item.querySelector(".mask-bbox").textContent = `${x},${y} ${w}×${h}`;
    }
  }

  renderTimings() {
    const rows = Object.entries(this.data.timings_ms || {}).map(([k, v]) => [k.replaceAll("_", " "), v]);
    rows.push(["round trip", this.meta.roundTripMs]);
    const items = rows.map(([name, ms]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = `${ms.toFixed(1)} ms`;
      div.append(dt, dd);
      return div;
    });
    this.els.timings.replaceChildren(...items);
    this.els.timings.title = this.meta.requestId ? `request ${this.meta.requestId}` : "";
  }

  async downloadMask(i) {
    const e = this.entries[i];
    const blob = await maskToPng(e.mask, this.data.width, this.data.height);
    save(blob, `mask-${i + 1}-${slug(e.label)}-t${this.threshold.toFixed(2)}.png`);
  }

  /** The answer as the API gives it with format=rle, for the masks now on screen. */
  downloadJson() {
    const { width, height } = this.data;
    const masks = this.entries.map((e, i) => ({
      prompt: e.label,
      score: e.score,
      area: e.area,
      bbox: e.bbox,
      threshold: this.threshold,
      rle: this.local ? encodeRle(e.mask, height, width) : this.data.masks[i].rle,
    }));
    const body = {
      width,
      height,
      masks,
      threshold_source: this.local ? "local" : "server",
      timings_ms: this.data.timings_ms,
      request_id: this.meta.requestId,
    };
    save(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }), "masks.json");
  }
}

/** Two decimals, or three for a calibrated threshold like 0.375. */
function formatThreshold(t) {
  return Math.abs(t * 100 - Math.round(t * 100)) < 1e-6 ? t.toFixed(2) : t.toFixed(3);
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "mask";
}

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  // Revoked later: the browser may still be reading it when click() returns.
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
