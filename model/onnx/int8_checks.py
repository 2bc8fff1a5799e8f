"""Whether an export's int8 graphs may run on this machine: verdicts per kernel class.

int8 fidelity depends on the CPU it runs on (``model.onnx.int8_kernels``), and an export checked
on one machine is often served on another (a Docker image built on one box, run on many).
So a fidelity verdict holds for one kernel class, one int8 format and one onnxruntime
version — a *record* — and the onnx backend's ``dtype=auto`` runs int8 only with a
matching record that passed the bar:

* ``clipseg-export --check`` writes the record of the machine it runs on into the
  manifest (``int8.checks``), against fp32 PyTorch, and keeps a few of the check images
  (``check/``, at most ``STORED_IMAGES``, long side at most ``STORED_SIDE``) with the
  prompts and the bar (``int8.check``);
* a machine with no matching record checks at start-up on those images — int8 against
  the export's own fp32 graphs (equal to PyTorch within the export's tolerance) — and
  caches its record beside the export (``int8-checks.json``), or in the user's cache
  folder when the export is read-only.

``decide`` returns the decision with its reason, for ``/info`` and the ready log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.onnx.fidelity import Fidelity, recommended
from clipseg_serve.model.onnx.int8_kernels import kernel_class
from clipseg_serve.model.onnx.runtime import MANIFEST, int8_format_for

log = logging.getLogger(__name__)

__all__ = [
    "CHECK_FOLDER",
    "Int8Decision",
    "decide",
    "make_record",
    "store_check_images",
]

#: Where the export keeps its check images, and how many of them at most.
CHECK_FOLDER = "check"
STORED_IMAGES = 8
#: The stored images' long side at most (pixels): masks are compared at this size.
STORED_SIDE = 512
#: The start-up checks' cache file beside the export.
CACHE_FILE = "int8-checks.json"


@dataclass(frozen=True)
class Int8Decision:
    """Whether the onnx backend runs int8 here, and why.

    ``kernel_class``: this CPU's integer kernels; ``format``: the export's int8 format
    exact on them (None: no int8 graphs, or none exact); ``use_int8``: the verdict;
    ``reason``: a sentence for people; ``record``: the fidelity record it rests on.
    """

    kernel_class: str
    format: str | None
    use_int8: bool
    reason: str
    record: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("record")
        return out


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def make_record(
    fidelity: Fidelity, fmt: str, bar: float, images: int, reference: str
) -> dict[str, Any]:
    """One verdict: the figures of ``fmt`` on this machine's kernels against
    ``reference`` ("torch float32" or "onnx float32") over ``images`` images."""
    return {
        "kernel_class": kernel_class(),
        "format": fmt,
        "onnxruntime": _ort_version(),
        "reference": reference,
        "checked_images": images,
        "bar": bar,
        "recommended": recommended(fidelity, bar),
        "fidelity": fidelity.as_dict(),
    }


def _matches(record: dict[str, Any] | None, fmt: str) -> bool:
    return (
        isinstance(record, dict)
        and record.get("format") == fmt
        and record.get("onnxruntime") == _ort_version()
        and isinstance(record.get("recommended"), bool)
    )


def store_check_images(folder: str | Path, images: Sequence[Image.Image]) -> list[str]:
    """Keep the first ``STORED_IMAGES`` of ``images`` in the export (PNG, long side at most
    ``STORED_SIDE``) for the start-up checks of other machines; their relative paths."""
    target = Path(folder) / CHECK_FOLDER
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.png"):
        stale.unlink()
    names = []
    for i, image in enumerate(images[:STORED_IMAGES]):
        small = image.convert("RGB")
        small.thumbnail((STORED_SIDE, STORED_SIDE))
        name = f"{CHECK_FOLDER}/{i:02d}.png"
        small.save(Path(folder) / name)
        names.append(name)
    return names


def _digest(folder: Path) -> str:
    """The manifest's hash: a cached record holds for the graphs, formats and check
    images that manifest names, and for no later export into the same folder."""
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:16]


def _cache_paths(folder: Path, digest: str) -> list[Path]:
    """Where start-up records are cached: beside the export, then the user's cache
    folder under the manifest's hash (a read-only export, or another user's)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [folder / CACHE_FILE, base / "clipseg-serve" / "int8-checks" / f"{digest}.json"]


def _cached(folder: Path, digest: str, cls: str, fmt: str) -> dict[str, Any] | None:
    for path in _cache_paths(folder, digest):
        try:
            record = json.loads(path.read_text()).get(cls)
        except (OSError, ValueError, AttributeError):
            continue
        if _matches(record, fmt) and record.get("manifest") == digest:
            return record
    return None


def _cache(folder: Path, digest: str, record: dict[str, Any]) -> None:
    """Add ``record`` (for the manifest ``digest``) to the first cache file that can be
    written (else keep none)."""
    for path in _cache_paths(folder, digest):
        try:
            records = json.loads(path.read_text()) if path.is_file() else {}
            records[record["kernel_class"]] = {**record, "manifest": digest}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(records, indent=2))
            tmp.replace(path)
            return
        except (OSError, ValueError):
            continue
    log.warning("int8 check: no writable cache for the verdict; it will be checked again")


def _check_now(folder: Path, spec: dict[str, Any], fmt: str, threads: int | None):
    """int8 in ``fmt`` against the export's fp32 graphs on its stored check images."""
    import torch

    from clipseg_serve.model.inference.predictor import Predictor
    from clipseg_serve.model.onnx.fidelity import compare_backends
    from clipseg_serve.model.onnx.runtime import OnnxClipSeg

    images = [folder / name for name in spec["images"]]
    reference = Predictor(OnnxClipSeg(folder, threads=threads), device="cpu")
    candidate = OnnxClipSeg(folder, precision="int8", int8_format=fmt, threads=threads)
    with torch.inference_mode():
        (figures,) = compare_backends(
            reference, {"onnx int8": Predictor(candidate, device="cpu")}, images, spec["prompts"]
        )
    return make_record(figures, fmt, float(spec["bar"]), len(images), "onnx float32")


def decide(folder: str | Path, manifest: dict[str, Any], threads: int | None = None):
    """The int8 decision for ``dtype=auto`` on this machine (see module); runs and caches
    the start-up check when no record matches and the export kept check images."""
    folder = Path(folder)
    cls = kernel_class()
    try:
        fmt = int8_format_for(manifest).name
    except WeightsError as exc:  # no int8 graphs, or none exact on this CPU
        return Int8Decision(cls, None, False, str(exc))
    int8 = manifest["int8"]
    record = (int8.get("checks") or {}).get(cls)
    where = "checked at export"
    digest = _digest(folder)
    if not _matches(record, fmt):
        record, where = _cached(folder, digest, cls, fmt), "checked at an earlier start"
    spec = int8.get("check")
    if record is None and not spec:
        why = "int8 was never checked against fp32 on this export (clipseg-export --check)"
        return Int8Decision(cls, fmt, False, why)
    if record is None:
        log.info("int8 check: %s has no verdict for %s (%s); checking now", folder, cls, fmt)
        record, where = _check_now(folder, spec, fmt, threads), "checked at start-up"
        _cache(folder, digest, record)
    figures, verb = record["fidelity"], "passed" if record["recommended"] else "failed"
    reason = (
        f"{fmt} {verb} the fidelity check on {cls} ({where}): mean mask IoU "
        f"{figures['mean_iou']:.3f} vs bar {record['bar']} over {record['checked_images']} "
        f"images"
    )
    return Int8Decision(cls, fmt, bool(record["recommended"]), reason, record)
