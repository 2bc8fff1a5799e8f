"""The segmentation endpoints' paths: the versioned ones and their deprecated aliases."""

from __future__ import annotations

#: The versioned paths are the documented ones; the unversioned ones (the first release's)
#: stay as deprecated aliases served by the same functions, so they answer identically.
API_PREFIX = "/v1"

#: Every path of the segmentation endpoints (versioned and the deprecated aliases).
SEGMENT_PATHS = frozenset(
    f"{prefix}/segment/{kind}" for prefix in (API_PREFIX, "") for kind in ("text", "visual")
)


def alias_of(path: str) -> str:
    """The summary suffix of a deprecated unversioned alias."""
    return f" (deprecated alias of {path}, same answers)"
