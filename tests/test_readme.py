"""Every ```python block of the documentation (README.md and every docs/*.md page) runs as written, each in a
fresh namespace; the pages' relative links resolve; the README starts with its two commands.

Blocks are found when the tests are collected, so a new block (or page) is tested without touching this file. A block
that cannot run here (it needs a GPU, torchrun, a dataset) is marked with an HTML comment on the line right
before its fence, ``<!-- not-run: needs torchrun -->``; it is reported as skipped with that reason
(``pytest -ra`` lists it). A block that a dedicated test already runs and checks (``_readme.run("<title>")``
somewhere under tests/, for a block whose first line is ``# <title>``, on any page) is not run twice: it is
reported as skipped, naming that test file. Bash blocks are not executed. The blocks must not trigger anl_fused's own
warnings (a step without noise, a layer outside a step, a buffer written twice).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

from . import _readme

README = _readme.README
FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(.*?)\s*-->\s*$")
PYTHON = ("python", "py", "python3")


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason of a not-run marker right before the fence


def blocks(text: str, page: str = "README.md") -> list[Block]:
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
            raise ValueError(f"{page}:{i + 1}: code fence is never closed")
        if m.group(1).lower() in PYTHON:
            marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
            found.append(Block(i + 1, "\n".join(lines[i + 1 : end]) + "\n", marker.group(1) if marker else None))
        i = end + 1
    return found


def stray_markers(text: str) -> list[int]:
    """Lines of not-run markers that are not right before a python block (they would skip nothing)."""
    starts = {b.line - 1 for b in blocks(text)}  # the line before each python fence, 1-based
    return [n for n, line in enumerate(text.splitlines(), 1) if NOT_RUN.match(line) and n not in starts]


PAGES = {_readme.name(p): p.read_text(encoding="utf-8") for p in _readme.pages()}
BLOCKS = [(page, b) for page, text in PAGES.items() for b in blocks(text, page)]
OUR_WARNINGS = ("TwoRound.step:", "ANL2d in training mode outside", "round 1 of the two-round step")


def dedicated_tests() -> dict[str, str]:
    """``{block title: test file}`` for the blocks that tests run through ``_readme.run("<title>")`` (that
    example itself is no title)."""
    tests = Path(__file__).resolve().parent
    found = {}
    for path in sorted(tests.rglob("*.py")):
        for title in re.findall(r"_readme\.run\(\s*[\"']([^\"'<][^\"']*)[\"']", path.read_text(encoding="utf-8")):
            found.setdefault(title, str(path.relative_to(tests.parent)))
    return found


def title(block: Block) -> str | None:
    first = block.code.splitlines()[0].strip() if block.code.strip() else ""
    return first[1:].strip() if first.startswith("#") else None


def test_readme_has_python_blocks_and_every_marker_is_used():
    assert [b for page, b in BLOCKS if page == "README.md"], (
        "README.md has no python block: the API example went missing"
    )
    for page, text in PAGES.items():
        found = [b for p, b in BLOCKS if p == page]
        assert len(found) == len(re.findall(r"^\s*```\s*(?:python3?|py)\s*$", text, re.M | re.I)), page
        assert stray_markers(text) == [], f"{page}: a not-run marker must be on the line right before a ```python fence"


@pytest.mark.parametrize("page_block", BLOCKS, ids=[f"{page}:{b.line}" for page, b in BLOCKS])
def test_readme_python_block_runs(page_block, tmp_path, monkeypatch):
    page, block = page_block
    if block.not_run:
        pytest.skip(f"{page}:{block.line}: not-run: {block.not_run}")
    dedicated = dedicated_tests().get(title(block))
    if dedicated:
        pytest.skip(f"{page}:{block.line} ({title(block)!r}) is run and checked by {dedicated}")
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    namespace = {"__name__": "__readme__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
    ours = [str(w.message) for w in caught if str(w.message).startswith(OUR_WARNINGS)]
    assert ours == [], f"{page}:{block.line} triggers anl_fused warnings: {ours}"


def test_the_documentation_blocks_that_tests_run_are_where_the_tests_find_them():
    """Each block a dedicated test runs (``_readme.run``/``_readme.block``) is on exactly one page, and the
    quick start stays in the README."""
    titled = {title(b): page for page, b in BLOCKS}
    for name in [*dedicated_tests(), "DDP"]:
        assert name in titled, f"no page has a python block starting with '# {name}'"
        assert _readme.find(name)[0] == titled[name]
    assert BLOCKS[0][0] == "README.md" and "anl_fused.insert_anl" in BLOCKS[0][1].code


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
        "\nwith open(f'weights-{rank}.txt', 'w') as f:\n    f.write("
        "f'weights {rank} {float(sum(p.double().abs().sum() for p in model.parameters()))} {float(loss)}')\n"
        # the exit docs/distributed.md gives for torch's gloo exit-time abort (not what this test checks)
        "os._exit(0)\n"
    )
    script.write_text(_readme.block("DDP") + check, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = sorted(f.read_text().split() for f in tmp_path.glob("weights-*.txt"))
    assert [int(w[1]) for w in lines] == [0, 1], res.stdout
    assert lines[0][2] == lines[1][2] and all(math.isfinite(float(w[3])) for w in lines), lines


CODE = re.compile(r"^\s*```.*?^\s*```[^\n]*$", re.S | re.M)  # fenced blocks: their text is not a link or heading
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", CODE.sub("", text), re.M)}


def links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", CODE.sub("", text))  # nor is a link in inline code
    return LINK.findall(prose)


@pytest.mark.parametrize("page", list(PAGES))
def test_the_relative_links_of_each_page_resolve(page):
    """Files and folders named by a relative link exist; a ``#anchor`` names a heading of its page."""
    base = (_readme.ROOT / page).parent
    for target in links(PAGES[page]):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (base / path).resolve() if path else _readme.ROOT / page
        assert dest.exists(), f"{page}: link to {target!r}: {dest} does not exist"
        assert _readme.ROOT in dest.parents or dest == _readme.ROOT, f"{page}: {target!r} leaves the repository"
        if anchor:
            assert dest.suffix == ".md" and anchor in anchors(dest.read_text(encoding="utf-8")), (
                f"{page}: link to {target!r}: no heading with that anchor"
            )


def test_slug_and_links():
    assert slug("Use with Lightning / Accelerate / AMP / timm") == "use-with-lightning--accelerate--amp--timm"
    assert (
        slug("The bf16 probe (`TwoRound(probe_dtype=torch.bfloat16)`)")
        == "the-bf16-probe-tworoundprobe_dtypetorchbfloat16"
    )
    text = "# A b\n[x](docs/a.md#c) `[y](z)` ![f](p.png)\n```bash\n# not a heading [n](m)\n```\n"
    assert anchors(text) == {"a-b"} and links(text) == ["docs/a.md#c", "p.png"]


def test_the_readme_starts_with_its_two_commands_then_says_what_anl_is():
    """The first screen: the two commands (setup + demo, setup + tests), then what the project is."""
    lines = PAGES["README.md"].splitlines()
    assert lines[:6] == [
        "# anl-fused",
        "",
        "```bash",
        "python3 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e . && "
        ".venv/bin/anl-fused demo",
        'python3 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e ".[test]" && '
        ".venv/bin/python -m pytest -q",
        "```",
    ]
    assert "Adversarial Noise Layer" in "\n".join(lines[6:12])
    assert len(lines) <= 260, "README.md is the first screen and one table per result: long sections go to docs/"


def test_the_readmes_study_state_is_the_study_pages():
    """The README's pointer to the study repeats the state line of docs/study.md; both change together."""
    (state,) = [line for line in PAGES["README.md"].splitlines() if line.startswith("State (")]
    assert state in PAGES["docs/study.md"]
