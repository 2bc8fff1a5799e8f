"""Fetching from the HuggingFace hub, with one clear error when the files cannot be had.

huggingface_hub reports "not reachable and not cached" as ``LocalEntryNotFoundError``
whose ``__cause__`` says why the hub was not asked (``OfflineModeIsEnabled``), could not
be reached (a connection error), or had no such repository (``RepositoryNotFoundError``,
also what a private or gated one looks like). open_clip wraps the same errors in a
``RuntimeError``, so the whole cause/context chain is searched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from clipseg_serve.model.errors import WeightsError, WeightsUnavailableError

#: Errors of the network layer below huggingface_hub (httpx or requests, by version).
_NETWORK_ERROR_NAMES = ("ConnectError", "ConnectTimeout", "TimeoutException", "ConnectionError")


def download(repo_id: str, patterns: Sequence[str]) -> Path:
    """The local snapshot of ``repo_id`` (downloaded or from the HF cache).

    Raises ``WeightsUnavailableError`` when the hub cannot serve it and the cache does not
    hold it, ``WeightsError`` for anything else that goes wrong.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as exc:
        cause = unavailable_cause(exc, repo_id)
        if cause is not None:
            raise WeightsUnavailableError(repo_id, cause) from exc
        raise WeightsError(f"cannot fetch {repo_id!r} from the HuggingFace hub: {exc}") from exc


def unavailable_cause(exc: BaseException, what: str) -> str | None:
    """Why ``what`` is not available, if ``exc`` means "not here and not fetchable"; else
    None (a real failure: corrupt files, a full disk, a bug)."""
    from huggingface_hub.utils import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain = list(_chain(exc))
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return f"HF_HUB_OFFLINE is set and the HF cache ({cache_dir()}) does not hold it"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return f"the HuggingFace hub has no repository {what!r} (or it is private or gated)"
    network = next((e for e in chain if type(e).__name__ in _NETWORK_ERROR_NAMES), None)
    if network is not None or any(isinstance(e, LocalEntryNotFoundError) for e in chain):
        why = _first_line(network) if network is not None else "no connection"
        return (
            f"the HuggingFace hub cannot be reached ({why}) and the HF cache "
            f"({cache_dir()}) does not hold it"
        )
    return None


def cache_dir() -> str:
    """Where huggingface_hub looks for cached snapshots (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from or during, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
