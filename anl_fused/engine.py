"""``TwoRound``: the paper's two-round training step (Algorithm 1) at about 5F instead of 6F.

Round 1 runs the closure with every active ANL layer measuring ``s = std(h)`` (``ops.std``) and
passing ``h`` on untouched, then asks autograd for ``dJ/dh`` only, through the gradient edge ``h`` had
when the layer produced it (``torch.autograd.grad(loss, [edge, ...])``, which later in-place ops
cannot corrupt): the backward stops at the first ANL layer and computes no weight gradient, so
parameter ``.grad`` is never touched. BatchNorm layers do not update their
running statistics in round 1. The per-sample scale ``r_b s / ||g_b||_inf`` is computed once from
``g`` (``ops.noise_scale``) and kept with ``g``; round 2 replays round 1's global RNG state (same
dropout masks), adds ``scale[b] * g`` (``ops.add_noise``) and its loss is what gets backpropagated.

Nothing here reads a device value on the host: no ``.item()``, no branching on tensor contents.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm

from . import distributed, ops, rng
from .functional import draw_step, noise_terms, z_spec
from .insert import anl_layers
from .layer import ANL2d, attached

__all__ = ["TwoRound"]


def checked_loss(loss) -> Tensor:
    """The closure's result, which must be a 0-d tensor."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"closure must return a scalar loss tensor, got {type(loss).__name__}: {loss!r}")
    if loss.dim() != 0:
        raise ValueError(f"closure must return a scalar (0-d) loss tensor, got shape {tuple(loss.shape)}")
    return loss


def training_round(closure: Callable[[], Tensor], backward: bool) -> Tensor:
    """The round whose loss trains the model: the closure's loss, backpropagated unless told not to."""
    loss = checked_loss(closure())
    if backward:
        loss.backward()
    return loss


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """BatchNorm in training mode normalizes by batch statistics but leaves running statistics and
    ``num_batches_tracked`` as they are (``track_running_stats=False`` for the duration)."""
    frozen = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


def eager():
    """Round 1 runs eagerly even when the closure calls a ``torch.compile``-d model: autograd cannot
    return the gradient of an activation that lives inside a compiled graph (it would silently be
    zero). Round 2 and inference run compiled."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


class _Probe:
    """Round 1: each layer records ``(h, std(h))`` and where autograd delivers ``dJ/dh``.

    The layer returns ``h`` itself and keeps ``h``'s gradient edge as it was when the layer produced
    it: later in-place ops (``ReLU(inplace=True)``, ``out += identity``) give ``h`` a new autograd
    history, but the edge still names the gradient of the layer's output as produced. Where ``h`` has
    no autograd history (the model input), a leaf is made and a copy goes on, so that an in-place
    op cannot touch the leaf.
    """

    def __init__(self, means: bool = False):
        self.records: dict[ANL2d, tuple[Tensor, Tensor]] = {}
        self.edges: dict[ANL2d, object] = {}
        self.means: dict[ANL2d, Tensor] | None = {} if means else None  # for std_over="global"

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        if layer in self.records:
            raise RuntimeError(f"{layer!r} ran twice in one forward; use one ANL layer per place in the model")
        distributed.check_not_syncing()
        self.records[layer] = (h, ops.std(h))
        if self.means is not None:  # here, before a later in-place op can rewrite h
            self.means[layer] = distributed.local_mean(h)
        if not (layer.needs_grad and torch.is_grad_enabled()):
            return h
        if h.grad_fn is not None:
            self.edges[layer] = get_gradient_edge(h)
            return h
        leaf = h.detach().requires_grad_()
        self.edges[layer] = leaf
        return leaf.clone()


class _Perturb:
    """Round 2: each layer returns ``h + scale[b] * direction``."""

    def __init__(self, noise: dict[ANL2d, tuple[Tensor, Tensor]]):
        self.noise = noise

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        try:
            direction, scale = self.noise.pop(layer)
        except KeyError:
            raise RuntimeError(f"{layer!r} ran in round 2 without a round-1 measurement (twice in one forward, "
                               "or the closure takes a different path in each round)") from None
        if direction.shape != h.shape:
            raise RuntimeError(f"{layer!r} saw shape {tuple(direction.shape)} in round 1 and {tuple(h.shape)} in "
                               "round 2: the closure must compute the same batch in both rounds")
        return ops.add_noise(h, direction, scale)


class TwoRound:
    """Runs the paper's two-round ANL training step on ``model``.

    Example::

        engine = anl_fused.TwoRound(model)
        for x, y in loader:
            optimizer.zero_grad()
            loss = engine.step(lambda: F.cross_entropy(model(x), y))
            optimizer.step()

    Args:
        model: a model with ANL layers (``insert_anl`` or ``ANL2d`` modules).
        generator: the ``torch.Generator`` of the noise draws ``z`` (on the activations' device).
            Default: a new one on the device of the model's first parameter, seeded from
            ``torch.initial_seed()``. The same seed gives the same noise on every backend.
        noise_dtype: keep round 1's gradient in this dtype between the rounds (``torch.bfloat16``
            halves the extra memory); ``None`` keeps the activations' dtype.
        std_over: ``"local"``: ``s = std(h)`` of this process's batch; ``"global"``: of the global
            batch of all processes of ``process_group`` (one all-reduce a step for all layers).
        process_group: the group of ``std_over="global"``; default: the DDP model's group, or the
            default group.

    Under ``DistributedDataParallel`` pass the DDP model (``TwoRound(ddp_model)``) and call it in the
    closure: round 1 then runs under ``ddp_model.no_sync()`` and round 2 is an ordinary DDP
    iteration. With ``torch.distributed`` initialized, the default generator's seed also adds the
    global rank (each rank draws its own ``z``). See :mod:`anl_fused.distributed`.

    Attributes:
        nonfinite_samples, zero_samples: 0-d int64 tensors on the activations' device: how many
            (layer, sample) pairs got zero noise because their round-1 gradient was not finite, or was
            exactly zero (cumulative; read them when you log, they are not synchronized).
        last_stds: ``{module name: std(h)}`` of every ANL layer that ran in round 1 of the last step.
    """

    def __init__(self, model: nn.Module, generator: torch.Generator | None = None, *,
                 noise_dtype: torch.dtype | None = None, std_over: str = "local", process_group=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if noise_dtype is not None and not (isinstance(noise_dtype, torch.dtype) and noise_dtype.is_floating_point):
            raise TypeError(f"noise_dtype must be a floating torch.dtype or None, got {noise_dtype!r}")
        self.process_group = distributed.check_std_over(std_over, process_group, model)
        self.std_over = std_over
        self.model = model
        self._root = distributed.unwrap(model)  # the module that holds the ANL layers, as in one process
        if generator is None:
            param = next(model.parameters(), None)
            generator = torch.Generator(device=param.device if param is not None else "cpu")
            seed = torch.initial_seed() + 0x9E3779B97F4A7C15 + distributed.default_seed_offset()
            generator.manual_seed(seed % 2**63)
        self.generator = generator
        self.noise_dtype = noise_dtype
        self._stats: Tensor | None = None
        self._last_stds: list[tuple[ANL2d, Tensor]] = []

    @property
    def last_stds(self) -> dict[str, Tensor]:
        names = {m: n for n, m in self._root.named_modules()}
        return {names.get(layer, "?"): s for layer, s in self._last_stds}

    def step(self, closure: Callable[[], Tensor], backward: bool = True) -> Tensor:
        """Run both rounds; returns round 2's loss, on which ``backward()`` was called unless
        ``backward=False`` (then call it yourself, e.g. ``scaler.scale(loss).backward()``)."""
        layers = [layer for layer in anl_layers(self._root) if layer.active]
        if not layers:
            return training_round(closure, backward)

        rng_state = rng.capture()
        need_grad = any(layer.needs_grad for layer in layers)
        with frozen_batchnorm_stats(self.model), distributed.probe_context(self.model), \
                attached(layers, _Probe(means=self.std_over == "global")) as probe, eager(), \
                torch.set_grad_enabled(need_grad and torch.is_grad_enabled()):
            loss = checked_loss(closure())
        noise = self._noise(layers, probe, loss)
        del loss, probe
        rng.restore(rng_state)

        with attached(layers, _Perturb(noise)):
            return training_round(closure, backward)

    def _noise(self, layers: list[ANL2d], probe: _Probe, loss: Tensor) -> dict[ANL2d, tuple[Tensor, Tensor]]:
        """Per reached layer, in ``anl_layers`` order (the RNG contract): ``(direction, scale)``."""
        records = probe.records
        reached = [layer for layer in layers if layer in records]
        wanted = [probe.edges[layer] for layer in reached if layer.needs_grad]
        if wanted and not loss.requires_grad:
            raise RuntimeError("the closure's loss does not depend on the ANL layers' outputs with autograd on; "
                               "do not compute it under torch.no_grad() or detach it")
        pending = None
        if self.std_over == "global":  # every rank, even one that reached no layer, takes part
            device = records[reached[0]][0].device if reached else self.generator.device
            pending = distributed.GlobalStd(layers, records, probe.means, self.process_group, device)
        grads = iter(torch.autograd.grad(loss, wanted, materialize_grads=True) if wanted else ())
        stds = pending.wait() if pending is not None else {}
        if reached:
            self._check_generator(records[reached[0]][0])
        zs = draw_step([z_spec(layer.noise, layer.sign, records[layer][0]) for layer in reached], self.generator,
                       self.generator.device)
        self._last_stds = []
        noise = {}
        for layer, z in zip(reached, zs):
            h, s = records[layer]
            s = stds.get(layer, s)
            g = next(grads) if layer.needs_grad else None
            direction, scale = noise_terms(layer.noise, layer.sign, layer.eps, g, None if z is None else z.to(h.device),
                                           s if layer.scale_by_std else None, h.shape[0],
                                           layer_norm=layer.norm == "layer", stats=self._stats_on(h.device))
            if self.noise_dtype is not None:
                direction = direction.to(self.noise_dtype)
            noise[layer] = (direction, scale)
            self._last_stds.append((layer, s))
        return noise

    def _check_generator(self, h: Tensor) -> None:
        if self.generator.device.type != h.device.type:
            raise ValueError(f"TwoRound's generator is on {self.generator.device} but the activations are on "
                             f"{h.device}: pass generator=torch.Generator(device={str(h.device)!r}) or create "
                             "TwoRound after moving the model")

    def _stats_on(self, device: torch.device) -> Tensor:
        """The step counters ``[non-finite samples, zero-gradient samples]`` (int64, cumulative)."""
        if self._stats is None or self._stats.device != device:
            self._stats = torch.zeros(2, dtype=torch.int64, device=device)
        return self._stats

    @property
    def nonfinite_samples(self) -> Tensor | None:
        """0-d int64 tensor: (layer, sample) pairs that got zero noise because their round-1 gradient was
        not finite, over all steps so far (``None`` before the first adversarial layer ran)."""
        return None if self._stats is None else self._stats[0]

    @property
    def zero_samples(self) -> Tensor | None:
        """0-d int64 tensor: (layer, sample) pairs whose round-1 gradient was exactly zero (no noise; e.g. an
        underflowed float16 gradient), over all steps so far."""
        return None if self._stats is None else self._stats[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, {len(anl_layers(self._root))} ANL layers)"
