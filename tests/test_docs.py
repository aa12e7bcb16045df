"""Every ```python block of every page in docs/ runs, in order, from the repository root."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (REPO / "docs").glob("*.md") if "```python" in p.read_text())


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_doc_examples_run(page, monkeypatch):
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for block in python_blocks(page):
        exec(compile(block, str(page.relative_to(REPO)), "exec"), namespace)  # blocks carry their own asserts


def test_the_pages_that_promise_examples_have_them():
    names = {p.name for p in PAGES}
    assert {"text-to-image.md", "vq.md", "image-tokens.md"} <= names
