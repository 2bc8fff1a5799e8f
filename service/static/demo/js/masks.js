// Masks in the page: decoding the server's 8-bit probability maps, thresholding them
// locally (the threshold slider sends no request), and each mask's area and box.

/**
 * Decode a base64 8-bit grayscale PNG (the server's soft map) into a Uint8Array.
 * Decoded from a Blob rather than fetched from a data: URL: the page's CSP only lets
 * fetch() reach its own origin.
 * @param {string} base64
 * @returns {Promise<{data: Uint8Array, width: number, height: number}>}
 */
export async function decodeGrayPng(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return decodeGrayBlob(new Blob([bytes], { type: "image/png" }));
}

/**
 * Decode any image Blob to one channel (red) of its pixels, for gray PNG maps and masks.
 * @param {Blob} blob
 */
export async function decodeGrayBlob(blob) {
  // No colour conversion: the map's bytes are probabilities, not colours.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const data = new Uint8Array(width * height);
  for (let i = 0; i < data.length; i++) data[i] = rgba[i * 4];
  return { data, width, height };
}

/**
 * The server's rule on the 8-bit map: foreground where p > t, with p = value / 255.
 * @param {Uint8Array} soft
 * @param {number} t threshold in [0, 1]
 */
export function thresholdMap(soft, t) {
  const mask = new Uint8Array(soft.length);
  const cut = t * 255;
  for (let i = 0; i < soft.length; i++) mask[i] = soft[i] > cut ? 1 : 0;
  return mask;
}

/**
 * combine=argmax: each pixel goes to its most probable prompt if that is above t.
 * @param {Uint8Array[]} softs
 * @param {number} t
 */
export function argmaxMaps(softs, t) {
  const n = softs[0].length;
  const masks = softs.map(() => new Uint8Array(n));
  const cut = t * 255;
  for (let i = 0; i < n; i++) {
    let best = -1;
    let value = cut;
    for (let m = 0; m < softs.length; m++) {
      if (softs[m][i] > value) {
        value = softs[m][i];
        best = m;
      }
    }
    if (best >= 0) masks[best][i] = 1;
  }
  return masks;
}

/**
 * Foreground pixel count and [x, y, width, height] box ([0, 0, 0, 0] when empty).
 * @param {Uint8Array} mask row-major
 * @param {number} width
 */
export function maskStats(mask, width) {
  let area = 0;
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -1;
  let y1 = -1;
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    area++;
    const y = Math.floor(i / width);
    const x = i - y * width;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  if (!area) return { area, bbox: [0, 0, 0, 0] };
  return { area, bbox: [x0, y0, x1 - x0 + 1, y1 - y0 + 1] };
}

/**
 * A mask as a PNG Blob at the image's size: 0 background, 255 foreground.
 * @param {Uint8Array} mask
 * @param {number} width
 * @param {number} height
 * @returns {Promise<Blob>}
 */
export function maskToPng(mask, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const px = image.data;
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    px[i * 4] = v;
    px[i * 4 + 1] = v;
    px[i * 4 + 2] = v;
    px[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}
