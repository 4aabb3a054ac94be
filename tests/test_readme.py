"""Every ```python block of README.md runs as written, each in a fresh namespace.

Blocks are found when the tests are collected, so a new block is tested without touching this file. A block
that cannot run here (it needs a GPU, torchrun, a dataset) is marked with an HTML comment on the line right
before its fence, ``<!-- not-run: needs torchrun -->``; it is reported as skipped with that reason
(``pytest -ra`` lists it). A block that a dedicated test already runs and checks (``_readme.run("<title>")``
somewhere under tests/, for a block whose first line is ``# <title>``) is not run twice: it is reported as
skipped, naming that test file. Bash blocks are not executed. The blocks must not trigger anl_fused's own
warnings (a step without noise, a layer outside a step, a buffer written twice).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(.*?)\s*-->\s*$")
PYTHON = ("python", "py", "python3")


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason of a not-run marker right before the fence


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` in Python (a ``python``, ``py`` or ``python3`` info string)."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: code fence is never closed")
        if m.group(1).lower() in PYTHON:
            marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
            found.append(Block(i + 1, "\n".join(lines[i + 1 : end]) + "\n", marker.group(1) if marker else None))
        i = end + 1
    return found


def stray_markers(text: str) -> list[int]:
    """Lines of not-run markers that are not right before a python block (they would skip nothing)."""
    starts = {b.line - 1 for b in blocks(text)}  # the line before each python fence, 1-based
    return [n for n, line in enumerate(text.splitlines(), 1) if NOT_RUN.match(line) and n not in starts]


BLOCKS = blocks(README.read_text(encoding="utf-8"))
OUR_WARNINGS = ("TwoRound.step:", "ANL2d in training mode outside", "round 1 of the two-round step")


def dedicated_tests() -> dict[str, str]:
    """``{block title: test file}`` for the blocks that tests run through ``_readme.run("<title>")``."""
    tests = Path(__file__).resolve().parent
    found = {}
    for path in sorted(tests.rglob("*.py")):
        for title in re.findall(r"_readme\.run\(\s*[\"']([^\"']+)[\"']", path.read_text(encoding="utf-8")):
            found.setdefault(title, str(path.relative_to(tests.parent)))
    return found


def title(block: Block) -> str | None:
    first = block.code.splitlines()[0].strip() if block.code.strip() else ""
    return first[1:].strip() if first.startswith("#") else None


def test_readme_has_python_blocks_and_every_marker_is_used():
    text = README.read_text(encoding="utf-8")
    assert BLOCKS, "README.md has no python block: the API example went missing"
    assert len(BLOCKS) == len(re.findall(r"^\s*```\s*(?:python3?|py)\s*$", text, re.M | re.I))
    assert stray_markers(text) == [], "a not-run marker must be on the line right before a ```python fence"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_python_block_runs(block, tmp_path, monkeypatch):
    if block.not_run:
        pytest.skip(f"README.md:{block.line}: not-run: {block.not_run}")
    dedicated = dedicated_tests().get(title(block))
    if dedicated:
        pytest.skip(f"README.md:{block.line} ({title(block)!r}) is run and checked by {dedicated}")
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    namespace = {"__name__": "__readme__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
    ours = [str(w.message) for w in caught if str(w.message).startswith(OUR_WARNINGS)]
    assert ours == [], f"README.md:{block.line} triggers anl_fused warnings: {ours}"


def test_block_parser():
    text = "\n".join(
        [
            "```bash",
            "echo no",
            "```",
            "```python",
            "a = 1",
            "```",
            "<!-- not-run: needs torchrun -->",
            "```python",
            "b = 2",
            "```",
            "<!-- not-run: stray -->",
            "text",
            "```py",
            "c = 3",
            "```",
        ]
    )
    assert blocks(text) == [
        Block(4, "a = 1\n", None),
        Block(8, "b = 2\n", "needs torchrun"),
        Block(13, "c = 3\n", None),
    ]
    assert stray_markers(text) == [11]
    assert title(Block(1, "# Lightning: automatic\nimport x\n", None)) == "Lightning: automatic"
    assert "Lightning: automatic and manual optimization" in dedicated_tests()
    with pytest.raises(ValueError, match="never closed"):
        blocks("```python\nx = 1\n")


def test_readme_ddp_block_trains_under_torchrun_on_two_processes(tmp_path):
    """The "Several GPUs and nodes" block as a script under ``torchrun --nproc_per_node 2`` (gloo on CPU): it
    runs on both ranks, and DDP keeps their weights equal although each rank draws its own data and noise."""
    import subprocess
    import sys

    import torch

    from . import _readme

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("the block puts each rank on its own GPU: needs 2 GPUs, or none (gloo on CPU)")

    script = tmp_path / "ddp.py"
    check = (  # one file per rank: two ranks printing at once can interleave their lines
        "\nopen(f'weights-{rank}.txt', 'w').write("
        "f'weights {rank} {float(sum(p.double().abs().sum() for p in model.parameters()))} {float(loss)}')\n"
    )
    script.write_text(_readme.block("DDP") + check, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = sorted(f.read_text().split() for f in tmp_path.glob("weights-*.txt"))
    assert [int(w[1]) for w in lines] == [0, 1], res.stdout
    assert lines[0][2] == lines[1][2] and all(math.isfinite(float(w[3])) for w in lines), lines
