"""clipseg-label end to end on the tiny model (CPU): COCO that pycocotools loads, masks
equal to the service's, YOLO files, broken files reported and not fatal, resume after a
kill with the same output, and a different job refused in the same folder."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from clipseg_serve.label.export import yolo_lines
from clipseg_serve.label.job import export
from clipseg_serve.label.local import label_items
from clipseg_serve.label.options import LabelOptions
from clipseg_serve.label.shards import JobMismatchError, ShardStore
from clipseg_serve.label.sources import expand
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.masks.postprocess import PostProcess
from clipseg_serve.service.app import create_app
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("a red circle", "a blue square", "a green triangle")
#: The random tiny model's probabilities lie around 0.42-0.47: this cuts masks with edges.
THRESHOLD = 0.446


def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    """A synthetic scene: a red disc, a blue square and a green triangle on grey noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    noise = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(5, width // 3)), int(rng.integers(5, height // 3))
    draw.ellipse([x, y, x + width // 4, y + height // 4], fill=(220, 30, 30))
    draw.rectangle([width // 2, height // 2, width // 2 + width // 5, height // 2 + height // 5],
                   fill=(30, 40, 220))  # fmt: skip
    draw.polygon([(width // 8, height - 5), (width // 3, height - 5), (width // 5, height // 2)],
                 fill=(30, 200, 40))  # fmt: skip
    return image


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(96, 64), (80, 80), (120, 72), (64, 96), (100, 60)]
    for i, size in enumerate(sizes):
        scene(i, size).save(folder / f"scene{i}.png" if i % 2 else folder / f"scene{i}.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture
def predictor(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(tiny_model, device="cpu", dtype="float32")


def run(predictor, dataset, out, options, batch_images=2, png_masks=False):
    items = expand([str(dataset)])
    store = ShardStore(out, {"items": [i.uri for i in items], "options": options.fingerprint()})
    stats = label_items(predictor, items, options, store, batch_images=batch_images)
    return stats, export(out, list(store.records()), options, yolo=True, png_masks=png_masks)


def test_coco_loads_and_its_masks_are_the_services(predictor, dataset, tmp_path, tiny_model):
    options = LabelOptions(prompts=PROMPTS, threshold=THRESHOLD)
    stats, summary = run(predictor, dataset, tmp_path / "out", options)
    assert stats.labelled == 5 and stats.failed == 1
    assert [f["uri"] for f in summary["failed"]] == [str(dataset / "broken.png")]
    assert summary["categories"] == list(PROMPTS)
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert len(coco.getImgIds()) == 5 and summary["annotations"] == len(coco.getAnnIds())
    assert summary["annotations"] > 0
    app = create_app(make_settings(), lambda settings: predictor)
    with LiveServer(app) as server:
        for image in coco.loadImgs(coco.getImgIds()):
            path = Path(image["file_name"])
            answer = httpx.post(
                server.url + "/v1/segment/text",
                files={"image": (path.name, path.read_bytes())},
                data={"prompt": list(PROMPTS), "threshold": str(THRESHOLD), "format": "rle"},
                timeout=60,
            ).json()
            served = {m["prompt"]: m for m in answer["masks"] if m["area"] > 0}
            ours = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert {coco.cats[a["category_id"]]["name"] for a in ours} == set(served)
            for annotation in ours:
                want = served[coco.cats[annotation["category_id"]]["name"]]
                assert annotation["segmentation"] == want["rle"]  # the same bytes
                assert annotation["bbox"] == want["bbox"] and annotation["area"] == want["area"]
                decoded = coco.annToMask(annotation)
                assert int(decoded.sum()) == annotation["area"]
                assert mask_utils.area(annotation["segmentation"]) == annotation["area"]


def test_png_masks_are_the_services_mask_pngs(predictor, dataset, tmp_path):
    options = LabelOptions(prompts=PROMPTS, threshold=THRESHOLD, segmentation="polygon")
    out = tmp_path / "out"
    _, summary = run(predictor, dataset, out, options, png_masks=True)
    items = expand([str(dataset)])
    assert json.loads((out / "masks" / "categories.json").read_text()) == {
        str(i + 1): p for i, p in enumerate(PROMPTS)
    }
    images = (out / "masks" / "images.txt").read_text().splitlines()
    assert images == [i.uri for i in items if not i.uri.endswith("broken.png")]
    pngs = sorted((out / "masks").glob("*/*.png"))
    assert summary["png_masks"] == len(pngs) == summary["annotations"] > 0
    app = create_app(make_settings(), lambda settings: predictor)
    with LiveServer(app) as server:
        for index, uri in enumerate(i.uri for i in items):
            if uri.endswith("broken.png"):
                assert not (out / "masks" / f"{index:06d}").exists()
                continue
            answer = httpx.post(
                server.url + "/v1/segment/text",
                files={"image": (Path(uri).name, Path(uri).read_bytes())},
                data={"prompt": list(PROMPTS), "threshold": str(THRESHOLD), "format": "png"},
                timeout=60,
            ).json()
            for category, mask in enumerate(answer["masks"], start=1):
                path = out / "masks" / f"{index:06d}" / f"{category}.png"
                if mask["area"] == 0:
                    assert not path.exists()
                else:  # the same bytes as the service's PNG
                    assert path.read_bytes() == base64.b64decode(mask["png"])


def test_png_masks_with_instances_are_the_union_of_the_pieces(predictor, dataset, tmp_path):
    options = LabelOptions(
        prompts=PROMPTS, threshold=THRESHOLD, post=PostProcess(instances=True, min_area=1)
    )
    out = tmp_path / "out"
    run(predictor, dataset, out, options, png_masks=True)
    coco = COCO(str(out / "annotations.json"))
    for image in coco.loadImgs(coco.getImgIds()):
        for category in coco.getCatIds():
            pieces = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=category))
            path = out / "masks" / f"{image['id'] - 1:06d}" / f"{category}.png"
            if not pieces:
                assert not path.exists()
                continue
            union = np.any([coco.annToMask(a) for a in pieces], axis=0)
            assert np.array_equal(np.array(Image.open(path)) == 255, union)


def test_instances_polygons_and_yolo(predictor, dataset, tmp_path):
    options = LabelOptions(
        prompts=PROMPTS, threshold=THRESHOLD, post=PostProcess(instances=True, min_area=4),
        segmentation="polygon",
    )  # fmt: skip
    _, summary = run(predictor, dataset, tmp_path / "out", options)
    document = json.loads((tmp_path / "out" / "annotations.json").read_text())
    for annotation in document["annotations"]:
        assert annotation["segmentation"] and all(
            len(r) % 2 == 0 for r in annotation["segmentation"]
        )
        assert annotation["area"] >= 4
    labels = sorted((tmp_path / "out" / "yolo" / "labels").glob("*.txt"))
    assert len(labels) == 5
    images = (tmp_path / "out" / "yolo" / "images.txt").read_text().splitlines()
    assert len(images) == 5 and all(Path(p).is_file() for p in images)
    lines = [line for path in labels for line in path.read_text().splitlines()]
    assert len(lines) >= summary["annotations"]
    for line in lines:
        cls, *coords = line.split()
        assert 0 <= int(cls) < len(PROMPTS) and len(coords) >= 6 and len(coords) % 2 == 0
        assert all(0.0 <= float(v) <= 1.0 for v in coords)
    assert "names:" in (tmp_path / "out" / "yolo" / "data.yaml").read_text()


def test_yolo_lines_normalise_polygons():
    record = {"width": 10, "height": 20, "annotations": [
        {"label": "b", "polygons": [[0, 0, 10, 0, 10, 20]]}]}  # fmt: skip
    assert yolo_lines(record, ["a", "b"], 1.0) == [
        "1 0.000000 0.000000 1.000000 0.000000 1.000000 1.000000"
    ]


def test_another_job_in_the_same_folder_is_refused(predictor, dataset, tmp_path):
    run(predictor, dataset, tmp_path / "out", LabelOptions(prompts=PROMPTS))
    with pytest.raises(JobMismatchError, match="another job"):
        run(predictor, dataset, tmp_path / "out", LabelOptions(prompts=PROMPTS[:1]))


def label_command(dataset: Path, out: Path, batch_images: int = 1) -> list[str]:
    return [sys.executable, "-m", "clipseg_serve.label.cli", str(dataset), "-o", str(out),
            *[arg for p in PROMPTS for arg in ("--prompt", p)], "--weights", "random:tiny",
            "--device", "cpu", "--dtype", "float32", "--batch-images", str(batch_images), "--yolo",
            "--threshold", str(THRESHOLD)]  # fmt: skip


def test_a_killed_run_resumes_to_the_same_output(dataset, tmp_path):
    for i in range(5, 14):  # more images, so the kill lands mid-way
        scene(i, (72, 56)).save(dataset / f"more{i}.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = subprocess.run(label_command(dataset, tmp_path / "whole"), capture_output=True,
                           text=True, env=env, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    summary = json.loads(whole.stdout.splitlines()[-1])
    assert summary["images"] == 14 and len(summary["failed"]) == 1

    out = tmp_path / "killed"
    process = subprocess.Popen(label_command(dataset, out), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list((out / "shards").glob("shard-*.jsonl"))) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    shards = len(list((out / "shards").glob("shard-*.jsonl")))
    assert 3 <= shards < 15 and not (out / "annotations.json").exists()
    again = subprocess.run(label_command(dataset, out), capture_output=True, text=True,
                           env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["labelled_this_run"] < 14
    for name in ("annotations.json", "yolo/images.txt", "yolo/data.yaml"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    indexes = [json.loads(line)["index"] for p in sorted((out / "shards").glob("*.jsonl"))
               for line in p.read_text().splitlines()]  # fmt: skip
    assert sorted(indexes) == list(range(15))  # none missing, none twice


def test_the_ray_engine_gives_the_local_engines_output(dataset, tmp_path):
    """A local Ray instance, two model workers of one CPU each: the same files."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for engine in ("local", "ray"):
        command = label_command(dataset, tmp_path / engine, batch_images=2)
        command += ["--engine", engine]
        if engine == "ray":
            command += ["--workers", "2", "--cpus-per-worker", "1"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[engine] = json.loads(done.stdout.splitlines()[-1])
    assert runs["ray"]["images"] == runs["local"]["images"] == 5
    assert runs["ray"]["failed"] == runs["local"]["failed"]  # the broken file, both times
    for name in ("yolo/images.txt", "yolo/data.yaml"):
        ours = (tmp_path / "ray" / name).read_bytes()
        assert ours == (tmp_path / "local" / name).read_bytes(), name
    # The masks are the same bits; a score may differ in its 6th decimal, as the workers
    # sum in another order on another thread count (1 torch thread each, here 2).
    ray, local = (json.loads((tmp_path / e / "annotations.json").read_text()) for e in runs)
    assert ray["images"] == local["images"] and ray["categories"] == local["categories"]
    assert len(ray["annotations"]) == len(local["annotations"]) > 0
    for theirs, ours in zip(ray["annotations"], local["annotations"], strict=True):
        assert abs(theirs.pop("score") - ours.pop("score")) <= 1e-5
        assert theirs == ours


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ([], 2, "at least one --prompt"),
        (["--prompt", "a", "--batch-images", "0"], 2, "--batch-images must be at least 1"),
        (["--prompt", "a", "--workers", "0"], 2, "--workers must be at least 1"),
        (["--prompt", "a", "--prompt", "b", *["--threshold", "0.4"] * 3], 1, "3 thresholds"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(dataset, tmp_path, capsys, extra, status, message):
    from clipseg_serve.label.cli import main

    code = [str(dataset), "-o", str(tmp_path / "out"), "--weights", "random:tiny", *extra]
    assert main(code) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "annotations.json").exists()


def test_per_prompt_thresholds_are_refused_for_images_with_their_own_prompts(
    dataset, tmp_path, capsys
):
    from clipseg_serve.label.cli import main

    manifest = tmp_path / "list.jsonl"
    lines = [{"path": str(dataset / "scene0.jpg")},
             {"path": str(dataset / "scene1.png"), "prompts": ["x", "y"]}]  # fmt: skip
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    thresholds = ["--threshold", "0.4", "--threshold", "0.5"]
    out = tmp_path / "o"
    assert main([str(manifest), "--prompt", "a", "--prompt", "b", *thresholds, "-o", str(out)]) == 1
    assert "give a single --threshold" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written or loaded
    with pytest.raises(ValueError, match="own prompts"):
        LabelOptions(prompts=("a", "b"), threshold=(0.4, 0.5)).request(None, "k", ("x", "y"))


def test_a_source_that_names_nothing_fails_before_the_model_loads(tmp_path, capsys):
    from clipseg_serve.label.cli import main

    assert main([str(tmp_path / "missing"), "--prompt", "a", "-o", str(tmp_path / "o")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded
