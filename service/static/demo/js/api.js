// Calls to the segmentation API, same-origin and relative to the page (so the page also
// works behind a path prefix). Every answer becomes {ok, data} or {ok: false, error}
// with the server's JSON error fields, the request ID and, for 429, when to retry.

/**
 * @typedef {{code: string, message: string, requestId: string|null, status: number,
 *            retryAfterS: number|null}} ApiError
 */

/**
 * POST a multipart form and parse the JSON answer.
 * @param {string} path e.g. "v1/segment/text"
 * @param {FormData} form
 * @param {string} key API key, or "" for none
 * @returns {Promise<{ok: true, data: object, requestId: string|null, roundTripMs: number}
 *                  |{ok: false, error: ApiError}>}
 */
export async function postForm(path, form, key) {
  // JSON even for a single mask: with Accept allowing image/png the server would answer
  // the raw PNG.
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form, headers, credentials: "omit" });
  } catch (err) {
    return { ok: false, error: networkError(err) };
  }
  const requestId = response.headers.get("X-Request-ID");
  const body = await readJson(response);
  if (response.ok && body && Array.isArray(body.masks)) {
    return { ok: true, data: body, requestId, roundTripMs: performance.now() - started };
  }
  return { ok: false, error: toError(response, body, requestId) };
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null; // not JSON (a proxy's HTML page, say): described from the status
  }
}

function networkError(err) {
  return {
    code: "network_error",
    message: `the server could not be reached (${err && err.message ? err.message : err})`,
    requestId: null,
    status: 0,
    retryAfterS: null,
  };
}

/** @returns {ApiError} */
function toError(response, body, requestId) {
  const detail = body && typeof body.error === "object" && body.error ? body.error : {};
  return {
    code: String(detail.code || `http_${response.status}`),
    message: String(detail.message || response.statusText || "unexpected answer"),
    requestId: detail.request_id || requestId,
    status: response.status,
    retryAfterS: retryAfter(response, detail),
  };
}

/** Seconds to wait: the body's precise estimate, else the Retry-After header. */
function retryAfter(response, detail) {
  if (typeof detail.retry_after_s === "number") return detail.retry_after_s;
  const header = response.headers.get("Retry-After");
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return seconds;
  const date = Date.parse(header); // Retry-After may also be an HTTP date
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

/**
 * GET readyz: "ready", "loading" or "down".
 * @returns {Promise<string>}
 */
export async function readiness() {
  try {
    const response = await fetch("readyz", { credentials: "omit" });
    if (response.ok) return "ready";
    const body = await readJson(response);
    return body && body.error && body.error.code === "not_ready" ? "loading" : "down";
  } catch {
    return "down";
  }
}
