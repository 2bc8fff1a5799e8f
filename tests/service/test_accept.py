"""Accept header weights (service/accept.py), RFC 9110 §12.5.1."""

from __future__ import annotations

import pytest

from clipseg_serve.service.accept import parse_accept, quality


@pytest.mark.parametrize(
    ("header", "png", "json"),
    [
        (None, 1.0, 1.0),
        ("", 1.0, 1.0),
        ("*/*", 1.0, 1.0),
        ("image/png;q=0, application/json", 0.0, 1.0),
        ("image/png;q=0, */*", 0.0, 1.0),  # the most specific range decides
        ("image/*;q=0.3, */*;q=0.1", 0.3, 0.1),
        ("IMAGE/PNG; Q=0.5", 0.5, 0.0),  # case-insensitive
        ("image/png;q=0.2, image/png;q=0.7", 0.7, 0.0),  # equally specific: the higher
        ("text/html", 0.0, 0.0),
        ("image/png;q=2, application/json;q=x, */*;q=0.4", 0.4, 0.4),  # bad weights skipped
        ("garbage, image/png", 1.0, 0.0),
        ("application/json;charset=utf-8;q=0.8", 0.0, 0.8),
    ],
)
def test_quality(header, png, json):
    ranges = parse_accept(header)
    assert quality(ranges, "image/png") == png
    assert quality(ranges, "application/json") == json
