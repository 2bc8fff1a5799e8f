"""Refinement and post-processing over HTTP: every new field, its validation (422 naming
it), its OpenAPI entry, and answers equal to the library's (tiny random model, CPU)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from clipseg_serve.model.masks.postprocess import PostProcess
from tests.conftest import encode, random_image
from tests.service.conftest import BACKENDS
from tests.service.test_api import direct, post_text, visual_files

IMAGE = encode(random_image(96, 64, seed=3))
JSON = {"Accept": "application/json"}
NEW_FIELDS = (
    "refine", "refine_radius", "refine_eps", "pamr_iterations", "min_area", "fill_holes",
    "erode", "dilate", "feather", "instances", "polygon_tolerance",
)  # fmt: skip
TEXT_ONLY = ("background", "background_factor")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every test here runs on the torch and on the onnx backend."""
    return request.param


def median_threshold(factory) -> float:
    """A threshold that gives the random model's mask edges on IMAGE."""
    soft = direct(factory, IMAGE, ["a cat"], soft=True).soft[0]
    return round(float(np.median(soft)) / 255, 4)


def decode_png(entry_or_body) -> np.ndarray:
    data = entry_or_body if isinstance(entry_or_body, bytes) else base64.b64decode(entry_or_body)
    return np.asarray(Image.open(io.BytesIO(data)))


def test_openapi_documents_every_new_field(serve):
    with serve() as server:
        spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, fields in (
        ("/v1/segment/text", NEW_FIELDS + TEXT_ONLY),
        ("/v1/segment/visual", NEW_FIELDS),
    ):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        properties = schemas[body["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"]
        for field in fields:
            assert field in properties, (path, field)
            assert properties[field].get("description"), (path, field)
        assert "polygon" in str(properties["format"])
    text = schemas[
        spec["paths"]["/v1/segment/text"]["post"]["requestBody"]["content"]["multipart/form-data"][
            "schema"
        ]["$ref"].rsplit("/", 1)[-1]
    ]["properties"]
    assert text["threshold"]["anyOf"][0]["type"] == "array"  # one per prompt


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"refine": "crf"}, "refine"),
        ({"refine_radius": "0"}, "refine_radius"),
        ({"refine_eps": "0"}, "refine_eps"),
        ({"pamr_iterations": "0"}, "pamr_iterations"),
        ({"min_area": "-1"}, "min_area"),
        ({"fill_holes": "maybe"}, "fill_holes"),
        ({"erode": "-2"}, "erode"),
        ({"dilate": "513"}, "dilate"),
        ({"feather": "x"}, "feather"),
        ({"instances": "2"}, "instances"),
        ({"polygon_tolerance": "-1"}, "polygon_tolerance"),
        ({"background": "black"}, "background"),
        ({"background_factor": "0"}, "background_factor"),
        ({"format": "svg"}, "format"),
        ({"threshold": ["0.3", "0.4", "0.5"]}, "3 thresholds for 2 prompts"),
        ({"threshold": ["0.3", "1.5"]}, "threshold"),
        ({"background": "prompt"}, "argmax"),
        ({"background": "prompt", "combine": "argmax", "threshold": "0.3"}, "threshold"),
        ({"feather": "4", "format": "rle"}, "feather"),
        ({"feather": "4", "format": "polygon"}, "feather"),
        ({"feather": "4", "png_bits": "1"}, "png_bits=8"),
        ({"instances": "true", "soft": "true"}, "instances"),
    ],
)
def test_bad_post_processing_fields_are_422_naming_the_problem(serve, fields, named):
    with serve() as server:
        response = post_text(server.url, IMAGE, ["a cat", "a dog"], **fields)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "invalid_field"
    assert named in body["error"]["message"]


def test_bad_fields_on_the_visual_endpoint_are_422(serve):
    _, _, _, files = visual_files()
    with serve() as server:
        for fields, named in (({"refine": "x"}, "refine"), ({"erode": "-1"}, "erode")):
            response = httpx.post(
                server.url + "/v1/segment/visual", data=fields, files=files, timeout=60
            )
            assert response.status_code == 422 and named in response.text


def test_refined_masks_equal_the_librarys(serve, factory):
    t = median_threshold(factory)
    with serve() as server:
        for refine in ("guided", "pamr"):
            response = post_text(server.url, IMAGE, ["a cat"], threshold=str(t), refine=refine)
            assert response.status_code == 200, response.text
            expected = direct(
                factory, IMAGE, ["a cat"], threshold=t, post=PostProcess(refine=refine)
            )
            got = decode_png(response.content) > 0
            assert np.array_equal(got, expected.mask(0))
            assert 0 < got.sum() < got.size


def test_per_prompt_thresholds_come_back_per_mask(serve, factory):
    with serve() as server:
        response = post_text(
            server.url, IMAGE, ["a cat", "a cat"], threshold=["0.2", "0.8"], headers=JSON
        )
    masks = response.json()["masks"]
    assert [m["threshold"] for m in masks] == [0.2, 0.8]
    assert masks[0]["area"] >= masks[1]["area"]
    expected = direct(factory, IMAGE, ["a cat", "a cat"], threshold=(0.2, 0.8))
    assert [m["area"] for m in masks] == [int(a) for a in expected.areas]


def test_shape_steps_and_background_prompt_equal_the_librarys(serve, factory):
    t = median_threshold(factory)
    fields = {"min_area": "20", "fill_holes": "true", "erode": "1", "dilate": "3"}
    with serve() as server:
        shaped = post_text(server.url, IMAGE, ["a cat"], threshold=str(t), **fields)
        argmax = post_text(
            server.url, IMAGE, ["a cat", "a dog"], combine="argmax", background="prompt",
            background_factor="1.5", headers=JSON,
        )  # fmt: skip
    post = PostProcess(min_area=20, fill_holes=True, erode=1, dilate=3)
    expected = direct(factory, IMAGE, ["a cat"], threshold=t, post=post)
    assert np.array_equal(decode_png(shaped.content) > 0, expected.mask(0))
    masks = argmax.json()["masks"]
    library = direct(
        factory, IMAGE, ["a cat", "a dog"], combine="argmax",
        post=PostProcess(background="prompt", background_factor=1.5),
    )  # fmt: skip
    for i, entry in enumerate(masks):
        assert entry["threshold"] is None
        assert np.array_equal(decode_png(entry["png"]) > 0, library.mask(i))


def test_polygons_decode_to_the_rle_mask(serve, factory):
    t = str(median_threshold(factory))
    with serve() as server:
        rle = post_text(server.url, IMAGE, ["a cat"], threshold=t, format="rle")
        poly = post_text(
            server.url, IMAGE, ["a cat"], threshold=t, format="polygon", polygon_tolerance="0"
        )
    assert poly.headers["content-type"].startswith("application/json")
    entry = poly.json()["masks"][0]
    mask = coco.decode(rle.json()["masks"][0]["rle"]).astype(bool)
    back = coco.decode(coco.merge(coco.frPyObjects(entry["segmentation"], 64, 96))).astype(bool)
    assert entry["segmentation"] and all(len(p) >= 6 for p in entry["segmentation"])
    assert np.array_equal(back, mask)  # tolerance 0: the outline is the mask's own


def test_instances_are_entries_with_boxes_and_a_drop_count(serve, factory):
    t = median_threshold(factory)
    with serve(max_instances=2) as server:
        response = post_text(
            server.url, IMAGE, ["a cat"], threshold=str(t), instances="true", format="rle"
        )
    body = response.json()
    library = direct(
        factory, IMAGE, ["a cat"], threshold=t, post=PostProcess(instances=True, max_instances=2)
    )
    found = library.instances[0]
    assert len(body["masks"]) == len(found) >= 1
    for k, entry in enumerate(body["masks"]):
        assert entry["instance"] == k and entry["prompt"] == "a cat"
        assert entry["bbox"] == found.boxes[k].tolist()
        mask = coco.decode(entry["rle"]).astype(bool)
        assert np.array_equal(mask, found.mask(k)) and entry["area"] == mask.sum()
        assert 0 <= entry["score"] <= entry["max_score"] <= 1
    assert body["instances_dropped"] == [{"prompt": "a cat", "dropped": found.dropped}]


def test_instance_pngs_have_the_answers_png_bits(serve, factory):
    t = median_threshold(factory)
    post = PostProcess(instances=True, max_instances=3)
    found = direct(factory, IMAGE, ["a cat"], threshold=t, post=post).instances[0]
    with serve(max_instances=3) as server:
        for bits, mode in (("8", "L"), ("1", "1")):
            response = post_text(
                server.url, IMAGE, ["a cat"], threshold=str(t), instances="true",
                png_bits=bits,
            )  # fmt: skip
            entries = response.json()["masks"]
            assert len(entries) == len(found) >= 1
            for k, entry in enumerate(entries):
                png = Image.open(io.BytesIO(base64.b64decode(entry["png"])))
                assert png.mode == mode
                assert np.array_equal(np.asarray(png) > 0, found.mask(k))


def test_feathered_pngs_are_alpha_mattes(serve, factory):
    t = median_threshold(factory)
    with serve() as server:
        hard = post_text(server.url, IMAGE, ["a cat"], threshold=str(t))
        soft = post_text(server.url, IMAGE, ["a cat"], threshold=str(t), feather="6")
    mask = decode_png(hard.content) > 0
    alpha = decode_png(soft.content)
    assert alpha.dtype == np.uint8 and len(np.unique(alpha)) > 3
    assert np.array_equal(alpha >= 128, mask)  # the edge stays where the mask's is


def test_refine_beyond_its_pixel_limit_is_413(serve):
    with serve(max_refine_pixels=1000) as server:
        response = post_text(server.url, IMAGE, ["a cat"], refine="guided")
        plain = post_text(server.url, IMAGE, ["a cat"])
    assert response.status_code == 413 and "CLIPSEG_MAX_REFINE_PIXELS" in response.text
    assert plain.status_code == 200


def test_visual_endpoint_refines_and_splits_instances(serve):
    _, _, _, files = visual_files()
    with serve() as server:
        response = httpx.post(
            server.url + "/v1/segment/visual",
            data={"refine": "guided", "instances": "true", "threshold": "0.0"},
            files=files,
            headers=JSON,
            timeout=60,
        )
    assert response.status_code == 200, response.text
    masks = response.json()["masks"]
    assert len(masks) == 1 and masks[0]["bbox"] == [0, 0, 50, 30]  # threshold 0: all on
