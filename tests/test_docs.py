"""The README and the guides in docs/: every relative link and image points at a file that exists,
and every `#anchor` at a heading of its target (the guides moved out of the README; a later move
must not leave dead links)."""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: pathlib.Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#+\s+(.*)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_guides_exist():
    names = {p.name for p in PAGES}
    for guide in ("start-from-a-model", "train-on-your-data", "video", "evals", "reliability"):
        assert f"{guide}.md" in names
        assert f"(docs/{guide}.md)" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://"))]
    for target in links:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in heading_anchors(resolved), f"{page.name}: no heading for {target}"
