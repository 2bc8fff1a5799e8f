"""Content negotiation: how much a request's ``Accept`` header wants a media type.

RFC 9110 §12.5.1: each media range carries a weight ``q`` (0..1, default 1); ``q=0``
means "not acceptable"; when several ranges match a type, the most specific one decides
(``image/png`` over ``image/*`` over ``*/*``), so ``image/png;q=0, */*`` refuses PNG even
though ``*/*`` alone would allow it. No header (or an empty one) accepts everything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MediaRange", "parse_accept", "quality"]


@dataclass(frozen=True)
class MediaRange:
    """One element of an ``Accept`` header: ``type/subtype`` (either may be ``*``) and q."""

    type: str
    subtype: str
    q: float

    def specificity(self, media_type: str) -> int:
        """-1 if this range does not match ``media_type`` (``type/subtype``, lower case);
        else 2 for an exact match, 1 for ``type/*``, 0 for ``*/*``."""
        kind, _, sub = media_type.partition("/")
        if self.type == "*":
            return 0 if self.subtype == "*" else -1  # "*/png" is not a valid range
        if self.type != kind:
            return -1
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == sub else -1


def _q(params: list[str]) -> float | None:
    """The q parameter among ``params`` (1.0 if absent); None if it is not a weight."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an ``Accept`` header; ``*/*`` when there is none.

    Elements that are not ``type/subtype`` or whose q is not a number in 0..1 are skipped
    (a client's typo should not make everything unacceptable). Media-type parameters
    other than q are ignored: the types this service answers with have none.
    """
    if header is None or not header.strip():
        return [MediaRange("*", "*", 1.0)]
    ranges = []
    for element in header.lower().split(","):
        media, *params = element.split(";")
        kind, slash, sub = media.strip().partition("/")
        q = _q(params)
        if slash and kind and sub and q is not None:
            ranges.append(MediaRange(kind, sub, q))
    return ranges


def quality(ranges: list[MediaRange], media_type: str) -> float:
    """The weight ``ranges`` give ``media_type`` (e.g. ``"image/png"``): that of the most
    specific matching range (the highest among equally specific ones); 0 if none matches."""
    best, weight = -1, 0.0
    for media_range in ranges:
        specificity = media_range.specificity(media_type.lower())
        if specificity > best or (specificity == best >= 0 and media_range.q > weight):
            best, weight = specificity, media_range.q
    return weight if best >= 0 else 0.0
