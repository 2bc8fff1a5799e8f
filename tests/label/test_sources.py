"""What clipseg-label reads: folders, globs, manifests (txt, jsonl with prompts), file://
URIs; a fixed order, each image once; clear errors for what names nothing."""

from __future__ import annotations

import json

import pytest

from clipseg_serve.label.sources import Item, SourceError, expand, read_bytes


@pytest.fixture
def tree(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "a/deep/3.webp", "a/notes.txt", "c.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    return tmp_path


def test_a_folder_is_every_image_under_it_sorted(tree):
    uris = [item.uri for item in expand([str(tree)])]
    assert uris == [str(tree / p) for p in ("a/1.JPG", "a/deep/3.webp", "b/2.png", "c.png")]


def test_globs_file_uris_and_duplicates(tree):
    items = expand([str(tree / "a" / "**" / "*"), f"file://{tree}/c.png", str(tree / "c.png")])
    assert [i.uri for i in items] == [
        str(tree / "a/1.JPG"), str(tree / "a/deep/3.webp"), str(tree / "c.png")
    ]  # fmt: skip
    assert read_bytes(items[-1].uri) == b"c.png"


def test_manifests_resolve_relative_paths_and_carry_prompts(tree):
    (tree / "list.txt").write_text("# images\n\nb/2.png\n" + f"file://{tree}/c.png\n")
    lines = [{"path": "a/1.JPG", "prompts": ["a cat", "a dog"]}, {"uri": "c.png"}]
    (tree / "list.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert expand([str(tree / "list.txt")]) == [
        Item(str(tree / "b/2.png")),
        Item(str(tree / "c.png")),
    ]
    assert expand([str(tree / "list.jsonl")]) == [
        Item(str(tree / "a/1.JPG"), ("a cat", "a dog")), Item(str(tree / "c.png"))
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"prompts": ["x"]}', '"path"'),
        ('{"path": "c.png", "prompts": []}', "empty"),
        ('{"path": "c.png", "prompts": ["", "x"]}', "non-empty strings"),
        ('{"path": "c.png", "prompts": "x"}', "non-empty strings"),
    ],
)
def test_a_bad_manifest_line_names_itself(tree, line, message):
    (tree / "bad.jsonl").write_text(line + "\n")
    with pytest.raises(SourceError, match=message) as error:
        expand([str(tree / "bad.jsonl")])
    assert "bad.jsonl:1" in str(error.value)


def test_a_source_that_names_nothing_is_an_error(tree):
    with pytest.raises(SourceError, match="no such file"):
        expand([str(tree / "missing")])
    (tree / "empty").mkdir()
    with pytest.raises(SourceError, match="names no image"):
        expand([str(tree / "empty")])
