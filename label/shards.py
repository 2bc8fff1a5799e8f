"""Results on disk as they finish, so a killed run loses at most one shard's work.

``OUT/shards/shard-NNNNNN.jsonl`` holds one record per line (``label.records``); each shard
is written to a temporary file and renamed into place, so a shard either exists whole or
not at all. ``OUT/job.json`` fingerprints the job (sources, prompts, options): a restart
with the same command skips the images already in a shard; a different job in the same
folder is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class JobMismatchError(ValueError):
    """The output folder holds another job's shards."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardStore:
    """The shards of one job in ``folder``."""

    def __init__(self, folder: Path, job: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.shards = self.folder / "shards"
        self._check_job(job)
        self._next = len(self._paths())

    def _check_job(self, job: dict[str, Any]) -> None:
        path = self.folder / "job.json"
        text = json.dumps(job, sort_keys=True, indent=1)
        if path.is_file():
            if json.loads(path.read_text()) != json.loads(text):
                raise JobMismatchError(
                    f"{self.folder} holds the shards of another job (other sources, prompts "
                    "or options); write to a new folder, or delete this one to start over"
                )
            return
        write_atomically(path, text.encode())

    def _paths(self) -> list[Path]:
        return sorted(self.shards.glob("shard-*.jsonl"))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record written so far, shard by shard."""
        for path in self._paths():
            for line in path.read_text(encoding="utf-8").splitlines():
                yield json.loads(line)

    def remaining(self, count: int) -> list[int]:
        """The indexes below ``count`` of the images not yet in a shard, in order."""
        done = {record["index"] for record in self.records()}
        return [i for i in range(count) if i not in done]

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """One new shard with ``records`` (nothing when there are none)."""
        lines = [json.dumps(r, separators=(",", ":")) for r in records]
        if not lines:
            return
        path = self.shards / f"shard-{self._next:06d}.jsonl"
        write_atomically(path, ("\n".join(lines) + "\n").encode())
        self._next += 1
