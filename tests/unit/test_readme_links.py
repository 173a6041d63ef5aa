"""The README's links into docs/ name pages that exist, and headings that exist on them (the docs build checks
the links between the pages themselves, strictly: `make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\((?!https?://)([^)#\s]+)(?:#([^)\s]+))?\)")


def _anchors(page: Path) -> set[str]:
    """The ids MkDocs gives the page's headings (Python-Markdown's toc slugify, code spans as their text)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", page.read_text(), flags=re.MULTILINE)
    slugs = (re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower() for heading in headings)
    return {re.sub(r"[-\s]+", "-", slug) for slug in slugs}


def test_every_link_in_the_readme_names_a_file_and_a_heading_that_exist():
    links = LINK.findall((REPO / "README.md").read_text())
    assert any(target.startswith("docs/") for target, _ in links)
    for target, anchor in links:
        path = REPO / target
        assert path.is_file(), f"README links {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README links {target}#{anchor}: no such heading there"
