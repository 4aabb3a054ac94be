"""The documentation's code blocks (README.md and docs/*.md), so that the tests run exactly what the pages show."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def pages() -> list[pathlib.Path]:
    """The documentation pages: README.md, then every docs/*.md (the pages ``benchmarks/render.py`` checks)."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def name(page: pathlib.Path) -> str:
    """A page's path relative to the repository root (``README.md``, ``docs/usage.md``)."""
    return page.relative_to(ROOT).as_posix()


def python_blocks() -> list[tuple[str, str]]:
    """``(page, code)`` of every ```python block of the pages, in order."""
    return [(name(p), b) for p in pages() for b in _BLOCK.findall(p.read_text(encoding="utf-8"))]


def find(title: str) -> tuple[str, str]:
    """``(page, code)`` of the one ```python block, on any page, whose first line is ``# {title}``."""
    found = [(page, b) for page, b in python_blocks() if b.splitlines()[0].strip() == f"# {title}"]
    if len(found) != 1:
        raise LookupError(f"the pages have {len(found)} python blocks starting with '# {title}', expected 1")
    return found[0]


def block(title: str) -> str:
    """The ```python block whose first line is ``# {title}``."""
    return find(title)[1]


def run(title: str) -> dict:
    """Execute the block in a fresh namespace (as a script would) and return that namespace."""
    page, code = find(title)
    namespace = {"__name__": f"readme_{re.sub(r'[^a-z0-9]+', '_', title.lower()).strip('_')}"}
    exec(compile(code, f"{page}: {title}", "exec"), namespace)
    return namespace
