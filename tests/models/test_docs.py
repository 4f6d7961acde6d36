"""The documentation runs as written: every Python block of the README and of docs/*.md executes (each in
a fresh namespace), and every relative link points at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            out.append((f"{doc.relative_to(ROOT)}#{i}", m.group(1)))
    return out


def test_the_readme_has_python_blocks() -> None:
    names = [n for n, _ in python_blocks()]
    assert sum(n.startswith("README.md") for n in names) >= 3, names


@pytest.mark.parametrize("name, code", python_blocks(), ids=[n for n, _ in python_blocks()])
def test_python_block_runs(name: str, code: str, capsys) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__doc_block__"})  # noqa: S102 - our own documentation
    capsys.readouterr()


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text, f"{doc} points outside the repository"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)}: broken link {target}"
