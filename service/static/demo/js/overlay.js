// The stage: the query image on a canvas at its own resolution (CSS scales it down), with
// each visible mask blended over it in its colour and outlined, so overlapping masks
// stay readable.

export class Overlay {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.base = null; // ImageData of the bare image
  }

  /** Show a new image (an ImageBitmap); forgets the masks. */
  setImage(bitmap) {
    this.canvas.width = bitmap.width;
    this.canvas.height = bitmap.height;
    this.ctx.drawImage(bitmap, 0, 0);
    this.base = this.ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  }

  get width() {
    return this.canvas.width;
  }

  get height() {
    return this.canvas.height;
  }

  /**
   * Draw the image with the visible layers over it.
   * @param {{mask: Uint8Array, rgb: number[], visible: boolean}[]} layers
   * @param {number} opacity 0..1 for the fill; outlines are stronger
   */
  render(layers, opacity) {
    if (!this.base) return;
    const { width, height } = this.canvas;
    const out = new ImageData(new Uint8ClampedArray(this.base.data), width, height);
    const px = out.data;
    const edgeAlpha = Math.min(1, opacity * 1.8);
    for (const layer of layers) {
      if (!layer.visible || opacity <= 0) continue;
      const { mask, rgb } = layer;
      for (let y = 0; y < height; y++) {
        const row = y * width;
        for (let x = 0; x < width; x++) {
          const i = row + x;
          if (!mask[i]) continue;
          const edge =
            x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
            !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
          const a = edge ? edgeAlpha : opacity;
          const p = i * 4;
          px[p] += (rgb[0] - px[p]) * a;
          px[p + 1] += (rgb[1] - px[p + 1]) * a;
          px[p + 2] += (rgb[2] - px[p + 2]) * a;
        }
      }
    }
    this.ctx.putImageData(out, 0, 0);
  }
}

/** "#rrggbb" -> [r, g, b] */
export function hexToRgb(hex) {
  const n = Number.parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
