"""Progress on stderr: a tqdm bar (the ``train`` extra), else a log line every 10%."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("clipseg.progress")


class _LogProgress:
    """tqdm's ``update``/``close`` as log lines, for installs without tqdm."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n, self._next = total, desc, 0, 0.1

    def update(self, n: int = 1) -> None:
        self.n += n
        # Every 10% (and at the end) rather than per batch: readable in CI logs.
        if self.total and self.n / self.total >= self._next:
            log.info("%s: %d/%d", self.desc, self.n, self.total)
            while self._next <= self.n / self.total:
                self._next += 0.1

    def close(self) -> None:
        pass


def progress(total: int, desc: str) -> Any:
    """An object with ``update(n)`` and ``close()`` that reports ``desc`` progress."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _LogProgress(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
