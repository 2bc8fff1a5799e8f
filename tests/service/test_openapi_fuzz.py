"""Schemathesis against the app's own OpenAPI document (tiny model, live on loopback).

Every operation the document lists gets requests generated from its schema — valid ones
(positive) and ones that break it (negative) — and every answer must be no 5xx
(``not_a_server_error``), with a status, content type and body the document declares.
The segmentation endpoints' uploads are swapped for a real image (and support pair) in
part of the examples, so the post-processing fields' generated values run through the
model rather than stopping at "undecodable image". Deterministic and bounded: a fixed
number of examples per operation and mode (``tests.properties``).
"""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import encode, random_image
from tests.properties import examples
from tests.service.test_post_limits_api import patient

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Examples per operation and generation mode: the segmentation endpoints run the model.
SEGMENT_EXAMPLES = 30
OTHER_EXAMPLES = 10
#: (query, support, support mask) PNGs the uploads are swapped for.
QUERY = encode(random_image(40, 24, seed=7))
FLAT = encode(Image.new("RGB", (17, 9), (30, 30, 30)))
SUPPORT = encode(random_image(32, 32, seed=8))
_MASK = np.zeros((32, 32), np.uint8)
_MASK[4:20, 6:26] = 255
SUPPORT_MASK = encode(Image.fromarray(_MASK))


def with_real_uploads(case: Case, image: bytes, refine: str | None) -> None:
    """Make a generated case reach the model: decodable images (the query, and one support
    pair on the visual endpoint), a non-blank prompt where the endpoint needs one, and no
    null fields (multipart cannot say null: schemathesis sends the text "None"); and, when
    ``refine`` is given, that refinement, so the generated radius and eps are used. The
    other post-processing fields keep their generated values."""
    body = case.body
    if not isinstance(body, dict):
        return
    for name in [name for name, value in body.items() if value is None]:
        del body[name]
    body["image"] = image
    if "support_image" in body or "support_mask" in body:
        body["support_image"], body["support_mask"] = [SUPPORT], [SUPPORT_MASK]
    prompts = body.get("prompt")
    if isinstance(prompts, list):
        body["prompt"] = [p if isinstance(p, str) and p.strip() else "a cat" for p in prompts]
        body["prompt"] = body["prompt"] or ["a cat"]
    if refine is not None:
        body["refine"] = refine


def fuzz(operation: APIOperation, mode: GenerationMode, url: str) -> None:
    """Cases of one operation, each answered and validated against ``CHECKS``."""
    segment = "/segment/" in operation.path
    # Hypothesis leans to the first choices: real uploads and refinement most of the time.
    uploads = st.sampled_from([QUERY, FLAT, None]) if segment else st.none()
    refines = st.sampled_from(["guided", "pamr", None])

    @examples(SEGMENT_EXAMPLES if segment else OTHER_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode), image=uploads, refine=refines)
    def run(case: Case, image: bytes | None, refine: str | None) -> None:
        if image is not None:
            with_real_uploads(case, image, refine)
        response = case.call(base_url=url, timeout=120)
        case.validate_response(response, checks=CHECKS)

    run()


def breakable(operation: APIOperation) -> bool:
    """Whether negative cases exist: an operation without parameters or body has none."""
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_without_5xx_and_as_documented(serve, mode):
    with patient(serve) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        labels = []
        for result in schema.get_all_operations():
            operation = result.ok()
            labels.append(operation.label)
            if mode is GenerationMode.POSITIVE or breakable(operation):
                fuzz(operation, mode, server.url)
    assert "POST /v1/segment/text" in labels and "POST /v1/segment/visual" in labels
