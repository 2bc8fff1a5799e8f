"""The documentation the tests keep true: README.md, the site's pages (docs/*.md) and the
client's README (the site includes it)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pages() -> list[Path]:
    """README.md, docs/*.md and client/README.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "client/README.md"]


def documentation() -> str:
    """Every page's text, joined."""
    return "\n".join(page.read_text() for page in pages())
