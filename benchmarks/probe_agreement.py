"""The noise recorder of the bf16 probe's agreement measurement: what each ``ops.add_noise`` call adds.

The measurement itself (``benchmarks/probe_agreement.py`` at commit 9dd2e11, removed since; its command is in the
JSON) wrote ``results/probe-agreement.json`` and ``.md``; the tests of the probe use this recorder.
"""

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def recorded_noise() -> Iterator[list]:
    """Records the noise of every ``ops.add_noise`` call while the block runs: yields a list that gets, per call,
    ``alpha * scale[b] * g_b`` flattened per sample in float64 (``g``'s non-finite entries count as 0, as in
    ``add_noise``). The original ``ops.add_noise`` still does the work and is put back on exit."""
    from anl_fused import ops

    seen = []
    add_noise = ops.add_noise

    def spy(h, g, scale, alpha=1.0):
        seen.append(
            alpha * scale.double()[:, None] * torch.nan_to_num(g.double(), nan=0, posinf=0, neginf=0).flatten(1)
        )
        return add_noise(h, g, scale, alpha=alpha)

    ops.add_noise = spy
    try:
        yield seen
    finally:
        ops.add_noise = add_noise
