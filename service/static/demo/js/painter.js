// A support card: a support image and its mask, painted with pointer events (mouse,
// touch and pen alike) or uploaded. The mask canvas has the support image's own size,
// as the API requires; strokes are scaled from screen pixels to image pixels.

import { decodeGrayBlob } from "./masks.js";

const INK = "#ff3d7f"; // what painted pixels look like over the image

let cards = 0;

export class SupportCard {
  /**
   * @param {HTMLElement} root the cloned #support-card template's <li>
   * @param {() => void} onChange called when the image or the mask changes
   */
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;
    this.file = null;
    this.painted = false;
    this.imageCanvas = root.querySelector(".support-image");
    this.maskCanvas = root.querySelector(".support-mask");
    this.mask = this.maskCanvas.getContext("2d", { willReadFrequently: true });
    this.last = null; // the previous point of the stroke in progress
    const name = `tool-${++cards}`;
    for (const radio of root.querySelectorAll(".tool")) radio.name = name;
    this.wire();
  }

  wire() {
    const root = this.root;
    root.querySelector(".support-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) this.setImage(file);
    });
    root.querySelector(".mask-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) this.loadMask(file);
    });
    root.querySelector(".clear-mask").addEventListener("click", () => this.clear());
    const c = this.maskCanvas;
    c.addEventListener("pointerdown", (e) => this.strokeStart(e));
    c.addEventListener("pointermove", (e) => this.strokeMove(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      c.addEventListener(type, () => this.strokeEnd());
    }
  }

  get tool() {
    return this.root.querySelector(".tool:checked").value;
  }

  get ready() {
    return Boolean(this.file) && this.painted;
  }

  /** @param {File|Blob} file */
  async setImage(file) {
    const bitmap = await createImageBitmap(file);
    this.file = file;
    for (const canvas of [this.imageCanvas, this.maskCanvas]) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    this.imageCanvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    this.painted = false;
    this.root.querySelector(".paint").dataset.empty = "false";
    this.onChange();
  }

  /** An uploaded mask: nonzero pixels are the object (scaled to the image if needed). */
  async loadMask(file) {
    if (!this.file) return;
    const { data, width, height } = await decodeGrayBlob(file);
    const ink = new ImageData(width, height);
    for (let i = 0; i < data.length; i++) {
      if (data[i]) ink.data.set([255, 61, 127, 255], i * 4);
    }
    const layer = new OffscreenCanvas(width, height);
    layer.getContext("2d").putImageData(ink, 0, 0);
    this.mask.clearRect(0, 0, this.maskCanvas.width, this.maskCanvas.height);
    this.mask.imageSmoothingEnabled = false;
    this.mask.drawImage(layer, 0, 0, this.maskCanvas.width, this.maskCanvas.height);
    this.painted = data.some((v) => v > 0);
    this.onChange();
  }

  clear() {
    this.mask.clearRect(0, 0, this.maskCanvas.width, this.maskCanvas.height);
    this.painted = false;
    this.onChange();
  }

  /** Screen point -> image pixel, and the brush radius in image pixels. */
  locate(event) {
    const rect = this.maskCanvas.getBoundingClientRect();
    const scale = this.maskCanvas.width / rect.width;
    const size = Number(this.root.querySelector(".brush-size").value);
    return {
      x: (event.clientX - rect.left) * scale,
      y: (event.clientY - rect.top) * scale,
      r: (size / 2) * scale,
    };
  }

  strokeStart(event) {
    if (!this.file || event.button > 0) return;
    event.preventDefault();
    this.maskCanvas.setPointerCapture(event.pointerId);
    this.last = this.locate(event);
    this.paint(this.last, this.last);
  }

  strokeMove(event) {
    if (!this.last) return;
    // Coalesced events: a fast stroke stays a continuous line, not a row of dots.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const point = this.locate(e);
      this.paint(this.last, point);
      this.last = point;
    }
  }

  strokeEnd() {
    if (!this.last) return;
    this.last = null;
    this.painted = this.hasInk();
    this.onChange();
  }

  paint(from, to) {
    const ctx = this.mask;
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = to.r * 2;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(to.x, to.y, to.r, 0, Math.PI * 2);
    ctx.fill();
    ctx.globalCompositeOperation = "source-over";
  }

  hasInk() {
    const { width, height } = this.maskCanvas;
    const alpha = this.mask.getImageData(0, 0, width, height).data;
    for (let i = 3; i < alpha.length; i += 4) if (alpha[i]) return true;
    return false;
  }

  /** The mask as the API wants it: a gray PNG of the support's size, object = 255. */
  async maskBlob() {
    const { width, height } = this.maskCanvas;
    const ink = this.mask.getImageData(0, 0, width, height).data;
    const out = new ImageData(width, height);
    for (let i = 0; i < width * height; i++) {
      const v = ink[i * 4 + 3] >= 128 ? 255 : 0; // drop the faint antialiased rim
      out.data[i * 4] = v;
      out.data[i * 4 + 1] = v;
      out.data[i * 4 + 2] = v;
      out.data[i * 4 + 3] = 255;
    }
    const canvas = new OffscreenCanvas(width, height);
    canvas.getContext("2d").putImageData(out, 0, 0);
    return canvas.convertToBlob({ type: "image/png" });
  }
}
