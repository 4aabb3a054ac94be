"""Round 1 leaves the model's state as it found it (the state changes once per step, in round 2).

What a training-mode forward writes, and what this module does with it in round 1:

- BatchNorm running statistics and ``num_batches_tracked``: frozen for the length of round 1
  (:func:`frozen_batchnorm_stats`);
- spectral norm's power-iteration vectors (``torch.nn.utils.spectral_norm``: buffers ``<name>_u`` and
  ``<name>_v``; ``torch.nn.utils.parametrizations.spectral_norm``: ``_u`` and ``_v``): saved before round 1
  and written back after it, so round 1 computes the same weight as round 2 (one power iteration from the
  same vectors) and the vectors move once per step, as the oracle (``anl_fused.reference``) does it;
- parameters and their ``.grad``: round 1 must write neither (a closure that calls ``backward()``,
  ``zero_grad()`` or ``optimizer.step()`` itself breaks the step's contract); their ``_version`` counters
  (and ``.grad``'s identity) are compared, which costs nothing on the device, and a change is an error;
- any other buffer written during round 1 (a custom running average, a quantization observer): detected
  by its ``_version`` counter (or a reassigned attribute), which costs nothing, and reported with a warning
  once per engine, since its update then happens twice per step.

Nothing here reads a device value on the host.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm

__all__ = ["BufferWarnings", "Round1State", "frozen_batchnorm_stats", "power_iteration_buffers"]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module, modules: list[nn.Module] | None = None):
    """BatchNorm in training mode normalizes by batch statistics but leaves running statistics and
    ``num_batches_tracked`` as they are (``track_running_stats=False`` for the duration). ``modules``:
    ``list(model.modules())`` when the caller has it already."""
    modules = model.modules() if modules is None else modules
    frozen = [m for m in modules if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


def _power_iteration_keys(module: nn.Module) -> list[str]:
    """The keys of ``module``'s own buffers that spectral norm (either implementation) updates in a forward."""
    keys = ["_u", "_v"] if isinstance(module, _SpectralNorm) else []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm):
            keys += [hook.name + "_u", hook.name + "_v"]
    return keys


def power_iteration_buffers(model: nn.Module) -> list[Tensor]:
    """The buffers spectral norm (both implementations) updates in a training-mode forward."""
    return [module._buffers[key] for module in model.modules() for key in _power_iteration_keys(module)]


class Round1State:
    """Taken before round 1; :meth:`restore` after round 1 (and its backward) puts the known state back
    and returns the names of the other buffers that round 1 wrote; :meth:`check_params` raises if the
    closure wrote a parameter or its ``.grad``. One walk over the modules each way."""

    def __init__(self, model: nn.Module, modules: list[nn.Module] | None = None):
        self.model = model
        self.saved: list[tuple[Tensor, Tensor]] = []
        self.versions: list[tuple[nn.Module, str, Tensor, int]] = []
        self.params: list[tuple[Tensor, int, Tensor | None, int]] = []
        for module in model.modules() if modules is None else modules:
            for p in module._parameters.values():
                if p is not None:
                    g = p.grad
                    self.params.append((p, p._version, g, -1 if g is None else g._version))
            if not module._buffers:
                continue
            known = _power_iteration_keys(module)
            for key, b in module._buffers.items():
                if b is None:
                    continue
                if key in known:
                    self.saved.append((b, b.detach().clone()))
                else:
                    self.versions.append((module, key, b, b._version))

    def restore(self) -> list[str]:
        """Write the saved vectors back; the names of the other buffers round 1 changed (usually none)."""
        changed = [
            (module, key)
            for module, key, b, version in self.versions
            if module._buffers.get(key) is not b or b._version != version
        ]
        with torch.no_grad():
            for b, value in self.saved:
                b.copy_(value)
        if not changed:
            return []
        names = {id(m): n for n, m in self.model.named_modules()}
        return [f"{names.get(id(module), '?')}.{key}".lstrip(".") for module, key in changed]

    def check_params(self) -> None:
        """Raises ``RuntimeError`` if a parameter or a parameter's ``.grad`` was written since ``__init__``."""
        for p, version, grad, grad_version in self.params:
            now = p.grad
            if p._version != version or now is not grad or (now is not None and now._version != grad_version):
                what = "the parameter" if p._version != version else "the .grad of"
                name = next((n for n, q in self.model.named_parameters() if q is p), "?")
                raise RuntimeError(
                    f"round 1 of the two-round step wrote {what} {name}: the closure must only compute and "
                    "return the loss; it must not call backward(), zero_grad() or optimizer.step() (the step "
                    "backpropagates round 2's loss itself; call optimizer.step() after engine.step())"
                )


class BufferWarnings:
    """Warns once per buffer name (per engine) that round 1 wrote a buffer it cannot put back."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, names: list[str], stacklevel: int = 3) -> None:
        new = [n for n in names if n not in self.seen]
        if not new:
            return
        self.seen.update(new)
        warnings.warn(
            f"round 1 of the two-round step changed the buffer(s) {', '.join(new)}: TwoRound freezes "
            "BatchNorm statistics and restores spectral norm's vectors, but not this state, so it is "
            "updated in both rounds, twice per step instead of once as in ordinary training",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
