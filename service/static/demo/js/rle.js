// COCO run-length encoding, compressed string form, exactly as pycocotools writes it:
// runs over the mask in column-major order, starting with a run of zeros; each count
// after the second stored as the difference to the count two before it, in 5-bit groups
// offset by 48 (see pycocotools' maskApi.c, rleToString / rleFrString). Arithmetic
// instead of bit shifts: counts can pass 2^31 bits' worth of groups for huge images.

/**
 * Decode {size: [h, w], counts: string} into a row-major Uint8Array of 0/1.
 * @param {{size: number[], counts: string}} rle
 * @returns {Uint8Array}
 */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = parseCounts(rle.counts);
  const mask = new Uint8Array(h * w);
  let pos = 0; // column-major position
  for (let i = 0; i < counts.length; i++) {
    const run = counts[i];
    if (i % 2 === 1) {
      for (let p = pos; p < pos + run; p++) {
        const x = Math.floor(p / h);
        mask[(p - x * h) * w + x] = 1;
      }
    }
    pos += run;
  }
  return mask;
}

/**
 * Encode a row-major 0/1 mask of h x w as COCO compressed RLE.
 * @param {Uint8Array} mask
 * @param {number} h
 * @param {number} w
 * @returns {{size: number[], counts: string}}
 */
export function encodeRle(mask, h, w) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = mask[y * w + x] ? 1 : 0;
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run++;
    }
  }
  counts.push(run);
  return { size: [h, w], counts: countsToString(counts) };
}

function countsToString(counts) {
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = ((x % 32) + 32) % 32; // x & 0x1f, also for negative x
      x = Math.floor(x / 32); // arithmetic shift right by 5
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

function parseCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x -= 2 ** (5 * k); // sign-extend the last group
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}
