"""The README's code blocks, so that the tests run exactly what the README shows."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    """Every ```python block of README.md, in order."""
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def block(title: str) -> str:
    """The ```python block whose first line is ``# {title}``."""
    found = [b for b in python_blocks() if b.splitlines()[0].strip() == f"# {title}"]
    if len(found) != 1:
        raise LookupError(f"README.md has {len(found)} python blocks starting with '# {title}', expected 1")
    return found[0]


def run(title: str) -> dict:
    """Execute the block in a fresh namespace (as a script would) and return that namespace."""
    namespace = {"__name__": f"readme_{re.sub(r'[^a-z0-9]+', '_', title.lower()).strip('_')}"}
    exec(compile(block(title), f"README.md: {title}", "exec"), namespace)
    return namespace
