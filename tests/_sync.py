"""``NoHostSync``: a dispatch mode that fails on every aten op that reads a device value on the host.

``.item()``, ``float(t)`` and ``int(t)`` dispatch to ``aten._local_scalar_dense``; ``bool(t)`` (an ``if`` on a
tensor) to ``aten.is_nonzero``; ``torch.equal`` to ``aten.equal``; ``t.nonzero()``, boolean indexing
(``masked_select``) and ``unique`` produce data-dependent shapes, which the host must read first. On CUDA,
a copy of a CUDA tensor to the CPU (``.cpu()``, ``.tolist()``, ``.numpy()``) is a host sync too: ``_to_copy`` /
``copy_`` from a CUDA tensor into a CPU one are refused. A step that passes under this mode can be captured
whole in a CUDA graph (nothing waits for the device).

Unlike monkeypatching ``Tensor.item`` and friends, the mode sees the aten calls themselves, wherever they
come from (library code, ``torch.nn.functional``, the Triton wrappers), including ``bool(t)`` reached through
an ``if`` or ``and``.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: overload packets whose every call reads device values on the host
FORBIDDEN = {
    aten._local_scalar_dense: ".item() / float(t) / int(t)",
    aten.is_nonzero: "bool(t) (an `if` on a tensor)",
    aten.equal: "torch.equal",
    aten.nonzero: "t.nonzero() (a data-dependent shape)",
    aten.masked_select: "boolean-mask indexing (a data-dependent shape)",
    aten._unique2: "torch.unique (a data-dependent shape)",
    aten.unique_dim: "torch.unique (a data-dependent shape)",
    aten.unique_consecutive: "torch.unique_consecutive (a data-dependent shape)",
}


class HostSyncError(AssertionError):
    """An aten op that reads a device value on the host ran under :class:`NoHostSync`."""


def _is_device_to_host(func, args, kwargs) -> bool:
    """A copy from a CUDA tensor into host memory (``.cpu()``, ``.to("cpu")``, ``cpu_tensor.copy_(cuda)``)."""
    if func.overloadpacket is aten._to_copy:
        src, device = args[0], kwargs.get("device")
        return src.is_cuda and device is not None and torch.device(device).type == "cpu"
    if func.overloadpacket is aten.copy_:
        dst, src = args[0], args[1]
        return isinstance(src, torch.Tensor) and src.is_cuda and not dst.is_cuda
    return False


class NoHostSync(TorchDispatchMode):
    """Inside ``with NoHostSync():`` any host read of a device value raises :class:`HostSyncError`
    naming the op; ``calls`` counts the aten ops seen (a test can check the mode saw the step)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        what = FORBIDDEN.get(func.overloadpacket)
        if what is None and _is_device_to_host(func, args, kwargs):
            what = "a device-to-host copy"
        if what is not None:
            raise HostSyncError(f"host sync: {func} ({what})")
        return func(*args, **kwargs)


#: the step variants every no-sync test runs: (insert_anl keywords, TwoRound keywords)
VARIANTS = {
    "adversarial": ({}, {}),
    "layer-norm": ({"norm": "layer"}, {}),
    "input-sign": ({"input_eps": 0.1, "input_sign": True}, {}),
    "input": ({"input_eps": 0.1}, {}),
    "gaussian": ({"noise": "gaussian"}, {}),
    "noise-dtype-bf16": ({}, {"noise_dtype": torch.bfloat16}),
    "probe-bf16": ({}, {"probe_dtype": torch.bfloat16}),
    "probe-fp16": ({}, {"probe_dtype": torch.float16}),
}
