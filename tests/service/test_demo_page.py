"""The demo page at ``/`` in a real browser (Debian's Chromium driven by Playwright) against
the live tiny-model server: overlays, local re-thresholding, painted visual prompts,
errors from the JSON body, API keys, phone width; nothing leaves the origin."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api
from pycocotools import mask as coco_mask

from clipseg_serve.service.app import create_app
from clipseg_serve.service.demo import CONTENT_SECURITY_POLICY
from tests.service.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    BodyRecorder,
    PageLog,
    RecordedRequest,
    bare_image_pixels,
    canvas_pixels,
    soft_map,
)
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
QUERY = ROOT / "docs" / "samples" / "query.jpg"
SUPPORT = ROOT / "docs" / "samples" / "support.jpg"
SCREENSHOT = ROOT / "docs" / "demo.png"
ASSETS = ROOT / "service" / "static" / "demo"


@pytest.fixture
def recorded_serve(factory):
    """``with recorded_serve(**settings) as (server, recorded)``: the tiny-model app with
    every /v1/ request's head and body recorded as the server received it."""

    @contextlib.contextmanager
    def start(**overrides):
        recorded: list[RecordedRequest] = []
        app = create_app(make_settings(**overrides), factory)
        app.add_middleware(BodyRecorder, recorded=recorded)
        with LiveServer(app) as server:
            yield server, recorded

    return start


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test opens its own context (fresh storage)."""
    assert Path(CHROMIUM).is_file(), "Chromium missing: apt-get install chromium (.ci/run does)"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, **context_args):
    """A fresh page on ``url`` with a ``PageLog`` recording it from the first request."""
    context = browser.new_context(accept_downloads=True, **context_args)
    page = context.new_page()
    log = PageLog()
    log.attach(page)
    page.goto(url + "/")
    page.wait_for_selector("#status[data-state='ready']")
    return page, log


def type_prompts(page, *prompts: str) -> None:
    for i, text in enumerate(prompts):
        if i:
            page.click("#add-prompt")
        page.fill(f"#prompt-list li:nth-child({i + 1}) .prompt-text", text)


def segment(page, endpoint: str = "text") -> dict:
    """Press Segment, wait for the answer and for the page to show it; the JSON."""
    with page.expect_response(lambda r: r.url.endswith(f"/v1/segment/{endpoint}")) as answer:
        page.click("#run")
    body = answer.value.json()
    page.wait_for_selector("#results:not([hidden])")
    page.wait_for_selector("#mask-list .mask-item")
    return body


def overlay_change(page) -> np.ndarray:
    """bool [H, W]: where the stage differs from the bare image (same browser decode)."""
    shown = canvas_pixels(page, "#stage-canvas").astype(int)
    bare = bare_image_pixels(page, "#image-input").astype(int)
    return np.abs(shown - bare)[..., :3].max(axis=2) > 0


def partial_threshold(maps: list[np.ndarray], avoid: float | None = None) -> float:
    """A slider value (multiple of 0.01) at which every map is a partial mask, the union
    nearest half the image: the tiny model's random weights give narrow, flat maps."""
    best, best_gap = None, 2.0
    for t in np.round(np.arange(0.01, 1.0, 0.01), 2):
        if avoid is not None and abs(t - avoid) < 0.005:
            continue
        masks = [m > t * 255 for m in maps]
        if not all(0.05 < m.mean() < 0.95 for m in masks):
            continue
        gap = abs(np.logical_or.reduce(masks).mean() - 0.5)
        if gap < best_gap:
            best, best_gap = float(t), gap
    assert best is not None, "no threshold gives partial masks"
    return best


def assert_overlay_is(page, expected: np.ndarray) -> None:
    """The overlay changes (nearly) every pixel inside ``expected`` and none outside."""
    changed = overlay_change(page)
    assert not changed[~expected].any(), "the overlay touched pixels outside the masks"
    if expected.any():
        assert changed[expected].mean() > 0.97


def save_screenshot(page) -> None:
    """docs/demo.png for the README; 256 colours keep the random model's speckled masks
    (they compress badly) under the size limit."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    if SCREENSHOT.exists() and _nearly_equal(Image.open(SCREENSHOT).convert("RGB"), shot):
        return  # only the timings' digits differ: keep the committed file (no churn)
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)


def _nearly_equal(old: Image.Image, new: Image.Image) -> bool:
    """Same size and under 1 % of pixels clearly different (the timings' text changes
    every run; a changed layout, colour or mask changes far more)."""
    if old.size != new.size:
        return False
    diff = np.abs(np.asarray(old, np.int16) - np.asarray(new, np.int16)).max(axis=2)
    return float((diff > 48).mean()) < 0.01


def shown_area(page, index: int) -> int:
    text = page.inner_text(f"#mask-list li:nth-child({index + 1}) .mask-area")
    return int(text.split(" px")[0].replace(",", ""))


# --- the page as HTTP sees it ----------------------------------------------------------------


def test_page_is_served_with_a_strict_csp_and_public_assets(serve):
    with serve(api_keys=["k1"]) as server:
        page = httpx.get(server.url + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert csp == CONTENT_SECURITY_POLICY
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["img-src"] == "'self' blob: data:"
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
        assert directives["form-action"] in ("'none'", "'self'")
        assert "unsafe" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        html = page.text
        # Nothing inline for the CSP to refuse: no inline scripts, styles, handlers.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert "<style" not in html and not re.search(r"\sstyle=", html)
        assert not re.search(r"\son[a-z]+=", html)
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
        config = json.loads(
            re.search(r'name="clipseg-config" content="([^"]+)"', html)[1].replace("&quot;", '"')
        )
        assert config["auth"] is True and config["maxPrompts"] == 16
        for asset in ["demo.css", "js/main.js", "js/rle.js", "favicon.svg"]:
            answer = httpx.get(f"{server.url}/demo-assets/{asset}")  # no key needed
            assert answer.status_code == 200, asset
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert (
            httpx.get(server.url + "/demo-assets/js/main.js")
            .headers["content-type"]
            .startswith(("text/javascript", "application/javascript"))
        )
        # The API itself still needs the key.
        assert httpx.get(server.url + "/info").status_code == 401


def test_page_is_not_in_the_api_schema_and_can_be_turned_off(serve):
    with serve() as server:
        assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]
    with serve(demo=False) as server:
        assert httpx.get(server.url + "/").status_code == 404
        assert httpx.get(server.url + "/demo-assets/js/main.js").status_code == 404


def test_every_asset_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["clipseg_serve.service"]
    files = [p.relative_to(ROOT / "service").as_posix() for p in ASSETS.rglob("*") if p.is_file()]
    assert len(files) >= 8
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == [], f"not shipped in the wheel: {missing}"


# --- in the browser -------------------------------------------------------------------------


def test_two_prompts_overlay_and_threshold_slides_without_a_request(recorded_serve, browser):
    with recorded_serve() as (server, recorded):
        page, log = open_page(browser, server.url, viewport={"width": 1280, "height": 900})
        page.set_input_files("#image-input", str(QUERY))
        type_prompts(page, "a red mug", "a yellow ball")
        body = segment(page)
        (call,) = recorded
        fields = call.fields()
        assert fields["format"] == b"rle" and fields["soft"] == b"true"
        assert fields["refine"] == b"none"  # the default: as predicted
        assert call.values("prompt") == [b"a red mug", b"a yellow ball"]
        assert fields["image"] == QUERY.read_bytes()
        assert call.headers["accept"] == "application/json"
        height, width = body["height"], body["width"]
        assert page.eval_on_selector("#stage-canvas", "c => [c.width, c.height]") == [width, height]

        # The server's own masks first.
        server_masks = [coco_mask.decode(m["rle"]).astype(bool) for m in body["masks"]]
        assert_overlay_is(page, np.logical_or.reduce(server_masks))
        assert page.text_content("#threshold-source") == "server"
        assert shown_area(page, 0) == body["masks"][0]["area"]
        assert "total" in page.inner_text("#timings")

        # Slide: thresholded in the page from the soft maps, no new request.
        maps = [soft_map(m) for m in body["masks"]]
        t = partial_threshold(maps)
        page.fill("#threshold", f"{t:.2f}")
        expected = [m > t * 255 for m in maps]
        assert_overlay_is(page, expected[0] | expected[1])
        assert page.text_content("#threshold-source") == "local"
        assert shown_area(page, 0) == int(expected[0].sum())
        ys, xs = np.nonzero(expected[0])
        box = f"{xs.min()},{ys.min()} {xs.max() - xs.min() + 1}×{ys.max() - ys.min() + 1}"
        assert page.inner_text("#mask-list li:nth-child(1) .mask-bbox") == box
        save_screenshot(page)

        before = overlay_change(page)
        page.focus("#threshold")
        page.keyboard.press("ArrowRight")  # the keyboard moves it too
        t2 = round(t + 0.01, 2)
        assert float(page.input_value("#threshold")) == pytest.approx(t2)
        expected2 = [m > t2 * 255 for m in maps]
        assert_overlay_is(page, expected2[0] | expected2[1])
        assert (overlay_change(page) != before).any()

        # Per-mask toggle: hiding the second leaves only the first drawn.
        page.uncheck("#mask-list li:nth-child(2) .mask-toggle")
        assert_overlay_is(page, expected2[0])

        # Downloads at the current threshold: the PNG at the image's size, the RLE JSON.
        with page.expect_download() as download:
            page.click("#mask-list li:nth-child(1) .mask-download")
        png = np.array(Image.open(download.value.path()).convert("L"))
        assert png.shape == (height, width)
        assert np.array_equal(png > 127, expected2[0]) and set(np.unique(png)) <= {0, 255}
        with page.expect_download() as download:
            page.click("#download-json")
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved["threshold_source"] == "local"
        assert saved["masks"][0]["threshold"] == pytest.approx(t2)
        for entry, mask in zip(saved["masks"], expected2, strict=True):
            rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
            assert np.array_equal(coco_mask.decode(rle).astype(bool), mask)  # pycocotools' RLE
            assert entry["area"] == int(mask.sum())

        assert len(log.api_calls()) == len(recorded) == 1, "moving the slider sent a request"
        log.assert_clean(server.url)
    assert SCREENSHOT.stat().st_size < 300 * 1024


def test_painted_support_mask_runs_a_visual_prompt(recorded_serve, browser):
    with recorded_serve() as (server, recorded):
        page, log = open_page(browser, server.url)
        page.set_input_files("#image-input", str(QUERY))
        page.click("#tab-visual")
        page.set_input_files("#support-list .support-file", str(SUPPORT))
        canvas = page.locator("#support-list .support-mask")
        canvas.wait_for()
        box = canvas.bounding_box()
        # A stroke with the mouse across the middle of the support image.
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), y)
        page.mouse.up()
        page.fill("#hybrid-prompt", "a mug")
        page.fill("#text-weight", "0.3")
        body = segment(page, "visual")

        (call,) = recorded
        assert call.path == "/v1/segment/visual"
        assert [r.url for r in log.api_calls()] == [server.url + "/v1/segment/visual"]
        fields = call.fields()
        assert fields["prompt"] == b"a mug" and fields["text_weight"] == b"0.3"
        mask = np.array(Image.open(io.BytesIO(fields["support_mask"])).convert("L"))
        support = Image.open(SUPPORT)
        assert mask.shape == (support.height, support.width)  # the support's own size
        middle = mask[support.height // 2]
        assert middle[int(support.width * 0.45)] == 255  # painted along the stroke
        assert mask[: support.height // 5].max() == 0  # and nowhere near the top
        assert fields["support_image"] == SUPPORT.read_bytes()

        assert [m["prompt"] for m in body["masks"]] == [
            page.inner_text("#mask-list li:nth-child(1) .mask-label")
        ]
        t = partial_threshold([soft_map(body["masks"][0])])
        page.fill("#threshold", f"{t:.2f}")
        assert_overlay_is(page, soft_map(body["masks"][0]) > t * 255)
        log.assert_clean(server.url)


def test_refine_choice_is_sent_and_its_masks_shown(recorded_serve, browser):
    with recorded_serve() as (server, recorded):
        page, log = open_page(browser, server.url)
        page.set_input_files("#image-input", str(QUERY))
        type_prompts(page, "a red mug")
        page.select_option("#refine", "guided")
        body = segment(page)
        (call,) = recorded
        assert call.fields()["refine"] == b"guided"
        assert_overlay_is(page, coco_mask.decode(body["masks"][0]["rle"]).astype(bool))
        log.assert_clean(server.url)


def test_server_422_is_shown_with_its_request_id(serve, browser):
    with serve() as server:
        page, log = open_page(browser, server.url)
        page.set_input_files("#image-input", str(QUERY))
        # No prompt typed: the page sends what is there and the server says what is wrong.
        with page.expect_response(lambda r: "/v1/segment/text" in r.url) as answer:
            page.click("#run")
        assert answer.value.status == 422
        error = answer.value.json()["error"]
        message = page.locator("#message")
        message.wait_for()
        text = message.inner_text()
        assert "422 invalid_field" in text and error["message"] in text
        assert f"request ID {answer.value.headers['x-request-id']}" in text
        assert page.is_hidden("#results")
        log.assert_clean(server.url, expected_statuses=(422,))


def test_429_says_when_to_retry(serve, browser):
    with serve() as server:
        page, log = open_page(browser, server.url)
        error = {"code": "queue_full", "message": "the queue is full", "request_id": "r429"}
        # The server's answer when its queue is full, with the header only: Retry-After.
        page.route(
            "**/v1/segment/text",
            lambda route: route.fulfill(
                status=429,
                headers={"Retry-After": "7", "Content-Type": "application/json"},
                body=json.dumps({"error": error}),
            ),
        )
        page.set_input_files("#image-input", str(QUERY))
        type_prompts(page, "a mug")
        page.click("#run")
        message = page.locator("#message")
        message.wait_for()
        text = message.inner_text()
        assert "429 queue_full" in text and "the queue is full" in text
        assert "retry in 7 s" in text and "request ID r429" in text
        assert page.is_disabled("#run")
        log.assert_clean(server.url, expected_statuses=(429,))


def test_api_key_field_appears_and_the_call_uses_it(serve, browser):
    with serve(api_keys=["sekrit"]) as server:
        page, log = open_page(browser, server.url)
        assert page.is_visible("#api-key")
        page.set_input_files("#image-input", str(QUERY))
        type_prompts(page, "a mug")
        with page.expect_response(lambda r: "/v1/segment/text" in r.url) as answer:
            page.click("#run")
        assert answer.value.status == 401
        page.wait_for_selector("#message:has-text('401 unauthorized')")
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.fill("#api-key", "sekrit")
        body = segment(page)
        assert body["masks"] and log.api_calls()[-1].headers["authorization"] == "Bearer sekrit"
        assert page.is_hidden("#message")
        assert page.evaluate("sessionStorage.getItem('clipseg-api-key')") == "sekrit"
        assert page.evaluate("localStorage.length") == 0
        log.assert_clean(server.url, expected_statuses=(401,))


def test_phone_width_has_no_horizontal_overflow(serve, browser):
    with serve() as server:
        page, log = open_page(
            browser, server.url, viewport={"width": 390, "height": 844}, is_mobile=True
        )
        overflow = "document.scrollingElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(overflow)
        page.set_input_files("#image-input", str(QUERY))
        type_prompts(page, "a red mug", "a yellow ball with a long descriptive phrase")
        segment(page)
        assert page.evaluate(overflow)
        page.click("#tab-visual")
        page.set_input_files("#support-list .support-file", str(SUPPORT))
        page.locator("#support-list .support-mask").wait_for()
        assert page.evaluate(overflow)
        log.assert_clean(server.url)


def test_image_by_drop_and_by_paste(serve, browser):
    with serve() as server:
        page, log = open_page(browser, server.url)
        data = list(QUERY.read_bytes())
        make_file = "bytes => new File([new Uint8Array(bytes)], 'q.jpg', {type: 'image/jpeg'})"
        page.evaluate(
            f"""bytes => {{
                const dt = new DataTransfer();
                dt.items.add(({make_file})(bytes));
                const zone = document.querySelector('#drop-zone');
                zone.dispatchEvent(new DragEvent('drop', {{dataTransfer: dt, bubbles: true}}));
            }}""",
            data,
        )
        page.wait_for_selector("#drop-zone[data-empty='false']")
        assert page.eval_on_selector("#stage-canvas", "c => [c.width, c.height]") == [400, 300]
        small = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(small, "PNG")
        page.evaluate(
            """bytes => {
                const dt = new DataTransfer();
                dt.items.add(new File([new Uint8Array(bytes)], 'p.png', {type: 'image/png'}));
                document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
            }""",
            list(small.getvalue()),
        )
        # A selector wait: wait_for_function would eval() its text, which the CSP refuses.
        page.wait_for_selector("#image-info:has-text('64×48')")
        assert page.eval_on_selector("#stage-canvas", "c => c.width") == 64
        type_prompts(page, "red")
        body = segment(page)
        assert (body["width"], body["height"]) == (64, 48)  # the pasted image was sent
        log.assert_clean(server.url)
