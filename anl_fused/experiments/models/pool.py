"""The model zoo's max pool: ``nn.MaxPool2d`` with anl-fused's C++ kernel for the 2x2, stride-2 case on CPU.

aten's CPU max pool scans every window with data-dependent branches and the general case's index math (~20 ns an
output here, 30-40% of a LeNet-5 training step); ``max_pool2x2`` in ``kernels/cpu/anl_ops.cpp`` does the same scan
with vector selects, 4-11x faster at LeNet-5's two pools (b32, b128), and gives aten's values and indices bit for
bit (the first maximum wins a tie, the last NaN wins); its backward is aten's ``max_pool2d_with_indices_backward``
on those indices. So a model computes the same bits with either (``tests/kernels/test_cpp.py`` and
``tests/experiments/test_models.py`` check it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


@functools.cache
def _kernels():
    """The C++ extension (built on first use, cached; None where it cannot be built or triton is missing)."""
    try:
        from anl_fused.kernels import cpu
    except ImportError:
        return None
    return cpu.load()


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, same result); a 2x2, stride-2 pool without padding or dilation of a
    contiguous 4-d floating-point CPU tensor runs the C++ kernel (``ceil_mode`` only where H and W are even, where
    it changes nothing). Anything else, and code under ``torch.compile``, runs ``nn.MaxPool2d``."""

    def _fast(self, x: Tensor) -> bool:
        two = (2, (2, 2))
        return (
            self.kernel_size in two
            and self.stride in two
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.return_indices
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.is_floating_point()
            and x.is_contiguous()
            and min(x.shape[-2:]) >= 2
            and not (self.ceil_mode and (x.shape[-2] % 2 or x.shape[-1] % 2))
            and not torch.compiler.is_compiling()
            and _kernels() is not None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self._fast(x):
            return _kernels().max_pool2x2_autograd(x)
        return super().forward(x)
