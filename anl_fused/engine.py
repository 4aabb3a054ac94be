"""``TwoRound``: the paper's two-round training step (Algorithm 1) at about 5F instead of 6F.

Round 1 runs the closure with every active ANL layer measuring ``s = std(h)`` (``ops.std``) and
passing ``h`` on untouched, then asks autograd for ``dJ/dh`` only, through the gradient edge ``h`` had
when the layer produced it (``torch.autograd.grad(loss, [edge, ...])``, which later in-place ops
cannot corrupt): the backward stops at the first ANL layer and computes no weight gradient, so
parameter ``.grad`` is never touched. BatchNorm layers do not update their
running statistics in round 1, spectral norm's vectors are put back after it, and any other buffer it
writes is reported (:mod:`anl_fused.state`). The per-sample scale ``r_b s / ||g_b||_inf`` is computed once from
``g`` (``ops.noise_scale``) and kept with ``g``; round 2 replays round 1's global RNG state (same
dropout masks), adds ``scale[b] * g`` (``ops.add_noise``) and its loss is what gets backpropagated.

Nothing here reads a device value on the host: no ``.item()``, no branching on tensor contents.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from . import distributed, ops, rng
from .functional import NoiseTerms, draw_step, noise_terms, z_spec
from .insert import anl_layers
from .layer import ANL2d, attached, step_scope
from .state import BufferWarnings, Round1State, frozen_batchnorm_stats

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


def eager():
    """Round 1 runs eagerly even when the closure calls a ``torch.compile``-d model: autograd cannot
    return the gradient of an activation that lives inside a compiled graph (it would silently be
    zero). Round 2 and inference run compiled."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


#: round 1's loss scale when an ANL layer's input is float16 and ``probe_loss_scale`` is ``None``
AUTO_PROBE_LOSS_SCALE = 2.0**15

#: the dtypes round 1 may run in under autocast (``TwoRound(probe_dtype=...)``)
PROBE_DTYPES = (torch.bfloat16, torch.float16)


def _default_generator(model: nn.Module) -> torch.Generator:
    """A generator on the device of the model's first parameter, seeded from ``torch.initial_seed()`` plus
    the global rank under ``torch.distributed`` (:func:`anl_fused.distributed.default_seed_offset`)."""
    param = next(model.parameters(), None)
    generator = torch.Generator(device=param.device if param is not None else "cpu")
    seed = torch.initial_seed() + 0x9E3779B97F4A7C15 + distributed.default_seed_offset()
    return generator.manual_seed(seed % 2**63)


def _check_noise_dtype(dtype):
    """``None`` or a floating dtype with at least float32's range."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"noise_dtype must be a floating torch.dtype or None, got {dtype!r}")
    if dtype is not None and torch.finfo(dtype).tiny > torch.finfo(torch.float32).tiny:
        raise ValueError(
            f"noise_dtype={dtype} has less range than float32: the stored gradient scales with the "
            "loss and small gradients would underflow to zero noise; use torch.bfloat16 (float32's range, "
            "same memory) or None"
        )
    return dtype


def _check_probe_dtype(dtype):
    """``None`` or one of :data:`PROBE_DTYPES`."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"probe_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r} ({type(dtype).__name__})"
        )
    if dtype not in PROBE_DTYPES:
        raise ValueError(f"probe_dtype must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def _check_probe_loss_scale(scale):
    """``None``, a positive finite float, or an object with a ``scale(tensor)`` method (a GradScaler)."""
    if scale is None or callable(getattr(scale, "scale", None)):
        return scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"probe_loss_scale must be None, a number or a GradScaler, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"probe_loss_scale must be a positive finite number, got {scale!r}")
    return float(scale)


class _Probe:
    """Round 1: each layer records ``(h, std(h))`` and where autograd delivers ``dJ/dh``.

    The layer returns ``h`` itself and keeps ``h``'s gradient edge as it was when the layer produced
    it: later in-place ops (``ReLU(inplace=True)``, ``out += identity``) give ``h`` a new autograd
    history, but the edge still names the gradient of the layer's output as produced. Where ``h`` has
    no autograd history (the model input), a leaf is made and a copy goes on, so that an in-place
    op cannot touch the leaf.

    Once the closure has returned (``in_backward``), a layer that runs again is being recomputed by
    non-reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=False)``) during
    round 1's backward: it passes ``h`` on as in the forward and is remembered in ``recomputed``.
    """

    def __init__(self, means: bool = False):
        self.records: dict[ANL2d, tuple[Tensor, Tensor]] = {}
        self.edges: dict[ANL2d, object] = {}
        self.means: dict[ANL2d, Tensor] | None = {} if means else None  # for std_over="global"
        self.in_backward = False
        self.recomputed: set[ANL2d] = set()

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        if self.in_backward:
            self.recomputed.add(layer)
            return h
        if layer in self.records:
            raise RuntimeError(f"{layer!r} ran twice in one forward; use one ANL layer per place in the model")
        if layer.needs_grad and not torch.is_grad_enabled():  # the step turned autograd on: the closure turned it off
            raise RuntimeError(_no_grad_message(layer, 1))
        distributed.check_not_syncing()
        self.records[layer] = (h, ops.std(h))
        if self.means is not None:  # here, before a later in-place op can rewrite h
            self.means[layer] = distributed.local_mean(h)
        if not layer.needs_grad:
            return h
        if h.grad_fn is not None:
            self.edges[layer] = get_gradient_edge(h)
            return h
        leaf = h.detach().requires_grad_()
        self.edges[layer] = leaf
        return leaf.clone()


_NONE_RAN = (
    "none of the {n} active ANL layer(s) of the engine's model ({model}) ran in round 1: the closure must run "
    "that model on each call (e.g. lambda: F.cross_entropy(model(x), y)), not return a loss computed before "
    "the step or by another model; and the layers must be called (a converter such as torch's "
    "SyncBatchNorm.convert_sync_batchnorm drops insert_anl's hooks; use anl_fused.distributed's); otherwise "
    "the step would train without noise"
)


def _check_no_dropout(modules: list[nn.Module]) -> None:
    """``replay_rng=False`` is only exact without stochastic layers: refuse training-mode dropout."""
    for m in modules:
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise RuntimeError(
                f"TwoRound(replay_rng=False) with {m!r} in training mode: round 2 would draw other dropout "
                "masks than round 1; use replay_rng=True (the default), or put the dropout in eval mode"
            )


def _no_grad_message(layer: ANL2d, round_: int) -> str:
    return (
        f"{layer!r} ran with autograd disabled in round {round_} of a two-round step: the closure runs it under "
        "torch.no_grad() (or inside a custom autograd.Function), or it is inside a reentrant activation "
        "checkpoint, torch.utils.checkpoint.checkpoint(..., use_reentrant=True), which TwoRound does not "
        "support (its backward would write parameter gradients in round 1); use use_reentrant=False"
    )


class _Perturb:
    """Round 2: each layer returns ``h + alpha * scale[b] * direction`` (no terms: ``h``, the layer's output
    did not reach round 1's loss).

    The noise of a layer is dropped once applied (its memory is freed as the forward goes on), except for
    the layers in ``keep``: those activation checkpointing recomputed in round 1, which it will recompute
    again during round 2's backward (``in_backward``); they get the same noise again.
    """

    def __init__(self, noise: dict[ANL2d, NoiseTerms | None], keep: set[ANL2d], grad_enabled: bool):
        self.noise = noise
        self.keep = {layer: noise[layer] for layer in keep if layer in noise}
        self.grad_enabled = grad_enabled
        self.in_backward = False

    def forward(self, layer: ANL2d, h: Tensor) -> Tensor:
        if self.in_backward:
            if layer not in self.keep:
                raise RuntimeError(
                    f"{layer!r} was recomputed by activation checkpointing in round 2's backward but "
                    "not in round 1's; TwoRound supports torch.utils.checkpoint(use_reentrant=False) "
                    "with the default early stop (torch.utils.checkpoint.set_checkpoint_early_stop)"
                )
            terms = self.keep[layer]
        else:
            if self.grad_enabled and not torch.is_grad_enabled():
                raise RuntimeError(_no_grad_message(layer, 2))
            try:
                terms = self.noise.pop(layer)
            except KeyError:
                raise RuntimeError(
                    f"{layer!r} ran in round 2 without a round-1 measurement (twice in one forward, "
                    "or the closure takes a different path in each round)"
                ) from None
        if terms is None:
            return h
        direction, scale, alpha = terms
        if direction.shape != h.shape:
            raise RuntimeError(
                f"{layer!r} saw shape {tuple(direction.shape)} in round 1 and {tuple(h.shape)} in "
                "round 2: the closure must compute the same batch in both rounds"
            )
        return ops.add_noise(h, direction, scale, alpha=alpha)


class TwoRound:
    """Runs the paper's two-round ANL training step on ``model``; ``docs/semantics.md`` says what a step
    computes and why the options are what they are.

    Example::

        engine = anl_fused.TwoRound(model)
        for x, y in loader:
            optimizer.zero_grad()
            loss = engine.step(lambda: F.cross_entropy(model(x), y))
            optimizer.step()

    Args:
        model: a model with ANL layers (``insert_anl`` or ``ANL2d`` modules); under
            ``DistributedDataParallel`` the DDP model, called in the closure (:mod:`anl_fused.distributed`).
        generator: the ``torch.Generator`` of the noise draws ``z``. Default: a new one on the device of the
            model's first parameter (it follows the model to another device before the first step), seeded
            from ``torch.initial_seed()`` (plus the global rank under ``torch.distributed``).
        noise_dtype: the dtype round 1's gradient is kept in between the rounds (``torch.bfloat16`` halves
            the extra memory); ``None``: the activations'. A dtype with less range than float32 is refused.
        std_over: ``"local"``: ``s = std(h)`` of this process's batch; ``"global"``: of the global batch of
            ``process_group`` (one all-reduce a step).
        process_group: the group of ``std_over="global"``; default: the DDP model's, or the default group.
        probe_loss_scale: what round 1 multiplies its loss by so that float16 activation gradients do not
            underflow (the noise does not depend on it): ``None`` (``2**15`` where round 1 sees float16,
            else 1), a positive number, or a ``torch.amp.GradScaler`` (anything with a ``scale(tensor)``
            method: ``scaler.scale(loss)``).
        probe_dtype: ``None`` (exact), or ``torch.bfloat16`` / ``torch.float16``: round 1 runs under
            ``torch.autocast`` in that dtype on the model's device; cheaper, and the noise approximate.
        replay_rng: ``True``: round 2 replays round 1's global RNG state (the same dropout masks); ``False``
            where that state may not be read (a CUDA graph capture), and a training-mode dropout is refused.

    Raises:
        TypeError, ValueError: an argument of the wrong type or value.

    Attributes:
        nonfinite_samples, zero_samples: 0-d int64 tensors on the activations' device: how many
            (layer, sample) pairs got zero noise because their round-1 gradient was not finite, or was
            exactly zero (cumulative; read them when you log, they are not synchronized).
        last_stds: ``{module name: std(h)}`` of every ANL layer that ran in round 1 of the last step.
    """

    def __init__(
        self,
        model: nn.Module,
        generator: torch.Generator | None = None,
        *,
        noise_dtype: torch.dtype | None = None,
        std_over: str = "local",
        process_group=None,
        probe_loss_scale=None,
        probe_dtype: torch.dtype | None = None,
        replay_rng: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.noise_dtype = _check_noise_dtype(noise_dtype)
        self.probe_loss_scale = _check_probe_loss_scale(probe_loss_scale)
        self.probe_dtype = _check_probe_dtype(probe_dtype)
        self.process_group = distributed.check_std_over(std_over, process_group, model)
        self.std_over = std_over
        self.model = model
        self._root = distributed.unwrap(model)  # the module that holds the ANL layers, as in one process
        self.generator = _default_generator(model) if generator is None else generator
        self._generator_movable = generator is None  # the default generator may follow the model before its first draw
        if not isinstance(replay_rng, bool):
            raise TypeError(f"replay_rng must be True or False, got {replay_rng!r}")
        self.replay_rng = replay_rng
        self._stats: Tensor | None = None
        self._last_stds: list[tuple[ANL2d, Tensor]] = []
        self._warned_inactive = False
        self._buffer_warnings = BufferWarnings()

    @property
    def last_stds(self) -> dict[str, Tensor]:
        names = {m: n for n, m in self._root.named_modules()}
        return {names.get(layer, "?"): s for layer, s in self._last_stds}

    def __call__(self, *args, **kwargs):
        raise TypeError(
            "a TwoRound engine is not called: run a training step with engine.step(closure), "
            "e.g. engine.step(lambda: F.cross_entropy(model(x), y))"
        )

    def step(self, closure: Callable[[], Tensor], backward: bool = True) -> Tensor:
        """Run both rounds; returns round 2's loss, on which ``backward()`` was called unless
        ``backward=False`` (then call it yourself, e.g. ``scaler.scale(loss).backward()``).

        Raises ``RuntimeError`` inside another step (a second engine's ``step()`` in the closure) and under
        ``torch.no_grad()`` / ``torch.inference_mode()``. A layer whose output does not reach the loss gets
        zero noise. Activation checkpointing works with ``use_reentrant=False`` (and ``backward=True``)."""
        if not callable(closure):
            raise TypeError(
                f"TwoRound.step takes a closure that runs the model and returns the loss, got "
                f"{type(closure).__name__}; pass e.g. lambda: F.cross_entropy(model(x), y), not a computed loss"
            )
        with step_scope("TwoRound.step"):
            modules = list(self._root.modules())  # the one walk over the model this step makes
            layers = [layer for layer in anl_layers(self._root, modules) if layer.active]
            need_grad = any(layer.needs_grad for layer in layers)
            if (backward or need_grad) and not torch.is_grad_enabled():
                where = "torch.inference_mode()" if torch.is_inference_mode_enabled() else "torch.no_grad()"
                raise RuntimeError(
                    f"TwoRound.step() called with autograd disabled ({where}): round 1 needs the "
                    "gradient dJ/dh and round 2's loss is backpropagated; call step() outside it"
                )
            if not layers:
                self._warn_inactive()
                return training_round(closure, backward)

            noise, recomputed = self._round1(closure, modules, layers, need_grad)
            if recomputed and not backward:
                raise RuntimeError(
                    "activation checkpointing needs TwoRound.step(closure, backward=True): round 2's "
                    "backward recomputes checkpointed layers, which must get the same noise again"
                )

            perturb = _Perturb(noise, recomputed, torch.is_grad_enabled())
            del noise
            with attached(layers, perturb):
                loss = checked_loss(closure())
                perturb.in_backward = True
                if backward:
                    loss.backward()
                return loss

    def _round1(
        self, closure: Callable[[], Tensor], modules: list[nn.Module], layers: list[ANL2d], need_grad: bool
    ) -> tuple[dict[ANL2d, NoiseTerms | None], set[ANL2d]]:
        """Round 1 (the closure with the layers probed, ``dJ/dh``) and the noise, with the model's state and
        the global RNG state put back; returns the noise per layer and the layers that activation
        checkpointing recomputed."""
        if not self.replay_rng:
            _check_no_dropout(modules)
        rng_state = rng.capture() if self.replay_rng else None
        state = Round1State(self._root, modules)
        probe = _Probe(means=self.std_over == "global")
        with (
            frozen_batchnorm_stats(self.model, modules),
            distributed.probe_context(self.model),
            attached(layers, probe),
            eager(),
            torch.set_grad_enabled(need_grad),
        ):
            with self._probe_autocast():
                loss = checked_loss(closure())
            state.check_params()
            probe.in_backward = True  # from here on, a layer that runs is recomputed by checkpointing
            if not probe.records:
                raise RuntimeError(_NONE_RAN.format(n=len(layers), model=type(self._root).__name__))
            noise = self._noise(layers, probe, loss)
        del loss
        self._buffer_warnings(state.restore(), stacklevel=4)  # the warning names the caller of step()
        if rng_state is not None:
            rng.restore(rng_state)
        return noise, probe.recomputed

    def _probe_autocast(self):
        """Round 1's forward: under ``torch.autocast(device_type, probe_dtype)``, or as written (``None``).

        Without autocast's weight cache: round 1 casts each weight once anyway, and a cache that lives
        for the length of a region is what PyTorch says not to use inside a CUDA graph capture
        (``cache_enabled=False``, "CUDA Graphs" notes on autocast)."""
        if self.probe_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_type(), dtype=self.probe_dtype, cache_enabled=False)

    def _device_type(self) -> str:
        """The device type of the model's first parameter (or buffer), else of the noise generator."""
        for t in itertools.chain(self._root.parameters(), self._root.buffers()):
            return t.device.type
        return self.generator.device.type

    def _warn_inactive(self) -> None:
        """Once per engine: a step with no active ANL layer is ordinary training, usually a mistake (model left
        in eval mode, ANL never inserted, eps 0). Not when the layers were disabled on purpose
        (``set_anl_enabled(model, False)``: the paper's fine-tuning phase keeps calling ``step``)."""
        if self._warned_inactive:
            return
        layers = anl_layers(self._root)
        if not layers:
            why = "the model has no ANL layer (anl_fused.insert_anl adds them)"
        elif not any(layer.training for layer in layers):
            why = "the model is in eval mode (call model.train())"
        elif any(layer.enabled and layer.training for layer in layers):
            why = "every enabled ANL layer has eps == 0"
        else:
            return  # disabled with set_anl_enabled: fine-tuning without ANL, as intended
        self._warned_inactive = True
        warnings.warn(
            f"TwoRound.step: {why}, so this step and the next are ordinary training without noise "
            "(warned once per engine)",
            UserWarning,
            stacklevel=3,
        )

    def _noise(self, layers: list[ANL2d], probe: _Probe, loss: Tensor) -> dict[ANL2d, NoiseTerms | None]:
        """Per reached layer, in ``anl_layers`` order (the RNG contract): ``(direction, scale, alpha)``, or ``None`` for
        a layer whose output does not reach the loss (zero noise; it still takes its draws)."""
        records = probe.records
        reached = [layer for layer in layers if layer in records]
        wanted = [probe.edges[layer] for layer in reached if layer.needs_grad]
        if wanted and not loss.requires_grad:
            raise RuntimeError(
                "the closure's loss does not depend on the ANL layers' outputs with autograd on; "
                "do not compute it under torch.no_grad() or detach it"
            )
        pending = None
        if self.std_over == "global":  # every rank, even one that reached no layer, takes part
            device = records[reached[0]][0].device if reached else self.generator.device
            pending = distributed.GlobalStd(layers, records, probe.means, self.process_group, device)
        if wanted:
            loss = self._probe_loss(loss, [records[layer][0].dtype for layer in reached])
        grads = iter(torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ())
        stds = pending.wait() if pending is not None else {}
        if reached:
            self._check_generator(records[reached[0]][0])
        zs = draw_step(
            [z_spec(layer.noise, layer.sign, records[layer][0]) for layer in reached],
            self.generator,
            self.generator.device,
        )
        self._last_stds = []
        noise = {}
        for layer, z in zip(reached, zs):
            h, s = records[layer]
            s = stds.get(layer, s)
            g = next(grads) if layer.needs_grad else None
            self._last_stds.append((layer, s))
            if layer.needs_grad and g is None:  # output unused by the loss: g = 0, zero noise (as the oracle)
                noise[layer] = None
                self._stats_on(h.device)[1] += h.shape[0]  # counted as zero-gradient samples
                continue
            direction, scale, alpha = noise_terms(
                layer.noise,
                layer.sign,
                layer.eps,
                g,
                None if z is None else z.to(h.device),
                s if layer.scale_by_std else None,
                layer_norm=layer.norm == "layer",
                stats=self._stats_on(h.device),
            )
            if self.noise_dtype is not None:
                direction = direction.to(self.noise_dtype)
            noise[layer] = (direction, scale, alpha)
        return noise

    def _check_generator(self, h: Tensor) -> None:
        if self.generator.device.type != h.device.type and self._generator_movable:
            self.generator = torch.Generator(device=h.device).manual_seed(self.generator.initial_seed())
        self._generator_movable = False
        if self.generator.device.type != h.device.type:
            raise ValueError(
                f"TwoRound's generator is on {self.generator.device} but the activations are on "
                f"{h.device}: pass generator=torch.Generator(device={str(h.device)!r}) or create "
                "TwoRound after moving the model"
            )

    def _probe_loss(self, loss: Tensor, dtypes: list[torch.dtype]) -> Tensor:
        """Round 1's loss times ``probe_loss_scale`` (``docs/semantics.md``: why ``2**15``; a GradScaler's)."""
        scale = self.probe_loss_scale
        if scale is None:
            half = torch.float16 in dtypes or self.probe_dtype == torch.float16
            return loss * AUTO_PROBE_LOSS_SCALE if half else loss
        if isinstance(scale, float):
            return loss if scale == 1.0 else loss * scale
        return scale.scale(loss)

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
        probe = "" if self.probe_dtype is None else f", probe_dtype={self.probe_dtype}"
        return f"{type(self).__name__}({type(self.model).__name__}, {len(anl_layers(self._root))} ANL layers{probe})"
