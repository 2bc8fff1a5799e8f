"""What to label: folders (recursive), globs, single images and manifests, expanded into
one ordered list of items.

A manifest is a ``.txt`` file (one path or URI per line; blank lines and ``#`` comments
skipped) or a ``.jsonl`` file (one object per line: ``{"path": ..., "prompts": [...]}``,
``prompts`` optional — that image's own prompts). Relative paths in a manifest are relative
to the manifest's folder. ``file://`` URIs are local paths; other URIs (``s3://``,
``gs://``, ...) are read through fsspec, which must then be installed with the matching
filesystem package (``s3fs``, ``gcsfs``, ...).

The order is fixed — sources in the order given, each folder or glob sorted — and an image
named twice is labelled once (the first time), so a restarted run sees the same list.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

#: Extensions a folder or a glob contributes (case-insensitive); the decoder itself
#: decides what an image is, so a manifest may name any file.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MANIFEST_SUFFIXES = frozenset({".txt", ".jsonl"})


class SourceError(ValueError):
    """A source that names nothing, or a manifest line that cannot be read."""


@dataclass(frozen=True)
class Item:
    """One image to label: its ``uri`` (a local path or a URI) and, from a manifest, its
    own ``prompts`` (None: the run's prompts)."""

    uri: str
    prompts: tuple[str, ...] | None = None


def expand(sources: Sequence[str]) -> list[Item]:
    """Every image ``sources`` name, in order, each once (see the module docstring)."""
    seen: set[str] = set()
    items: list[Item] = []
    for source in sources:
        found = list(_expand_one(source))
        if not found:
            raise SourceError(f"{source!r} names no image")
        for item in found:
            if item.uri not in seen:
                seen.add(item.uri)
                items.append(item)
    return items


def _expand_one(source: str) -> Iterator[Item]:
    scheme = urlparse(source).scheme
    if scheme == "file":
        source = urlparse(source).path
    elif len(scheme) > 1:  # a drive letter is not a scheme
        yield from _expand_remote(source)
        return
    path = Path(source)
    if path.is_dir():
        yield from (Item(str(p)) for p in _images_under(path))
    elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        yield from _manifest(path)
    elif path.is_file():
        yield Item(str(path))
    elif glob.has_magic(source):
        matches = sorted(glob.glob(source, recursive=True))
        yield from (Item(p) for p in matches if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise SourceError(f"{source!r}: no such file, folder or manifest")


def _images_under(folder: Path) -> list[Path]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)


def _manifest(path: Path) -> Iterator[Item]:
    base = path.parent
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix.lower() == ".jsonl":
            yield _jsonl_item(line, base, f"{path}:{number}")
        else:
            yield Item(_resolve(line, base))


def _jsonl_item(line: str, base: Path, where: str) -> Item:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where}: not JSON ({exc.msg})") from None
    uri = entry.get("path") or entry.get("uri") if isinstance(entry, dict) else None
    if not isinstance(uri, str):
        raise SourceError(f'{where}: needs a "path" (or "uri") string')
    prompts = entry.get("prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or not all(
            isinstance(p, str) and p.strip() for p in prompts
        ):
            raise SourceError(f'{where}: "prompts" must be a list of non-empty strings')
        if not prompts:
            raise SourceError(f'{where}: "prompts" is empty')
        prompts = tuple(prompts)
    return Item(_resolve(uri, base), prompts)


def _resolve(uri: str, base: Path) -> str:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return urlparse(uri).path
    if len(scheme) > 1:
        return uri
    path = Path(uri)
    return str(path if path.is_absolute() else base / path)


def _filesystem(uri: str):
    try:
        import fsspec
    except ImportError:
        raise SourceError(
            f"{uri!r}: reading URIs needs fsspec and the filesystem's package "
            "(pip install fsspec s3fs, or gcsfs, ...)"
        ) from None
    return fsspec.core.url_to_fs(uri)


def _expand_remote(uri: str) -> Iterator[Item]:
    fs, path = _filesystem(uri)
    protocol = urlparse(uri).scheme
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        yield from (Item(f"{protocol}://{p}") for p in found)
    elif glob.has_magic(path):
        found = sorted(p for p in fs.glob(path) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        yield from (Item(f"{protocol}://{p}") for p in found)
    else:
        yield Item(uri)


def read_bytes(uri: str) -> bytes:
    """The file's bytes: a local path, or a URI through fsspec. OSError when unreadable."""
    if len(urlparse(uri).scheme) > 1:
        fs, path = _filesystem(uri)
        with fs.open(path, "rb") as handle:
            return handle.read()
    return Path(uri).read_bytes()
