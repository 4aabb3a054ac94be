"""No host sync in a training step (issue #12.4): ``TwoRound.step`` runs under a dispatch mode that fails
on every aten op reading a device value on the host (``tests/_sync.py``), on both backends, for every
noise variant a single process has (``std_over="global"`` needs a process group: tests/test_distributed.py).

This is what lets a GPU capture the whole step in a CUDA graph. The GPU-marked twin is
``tests/test_engine.py::test_no_host_sync_on_cuda``."""

import pytest
import torch
import torch.nn.functional as F

import anl_fused
from anl_fused import ops

from ._nets import small_vgg
from ._sync import VARIANTS, HostSyncError, NoHostSync


def _setup(insert_kw, engine_kw, device="cpu"):
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(), eps=0.5, **insert_kw).to(device)
    x, y = torch.randn(6, 3, 8, 8, device=device), torch.randint(0, 10, (6,), device=device)
    engine = anl_fused.TwoRound(model, torch.Generator(device).manual_seed(0), **engine_kw)
    return model, engine, lambda: F.cross_entropy(model(x), y)


def step_without_host_sync(insert_kw, engine_kw, device="cpu"):
    """One warm-up step (lazy initialization may sync), then a step under :class:`NoHostSync`; returns the
    mode (its ``calls``) and the model."""
    model, engine, closure = _setup(insert_kw, engine_kw, device)
    engine.step(closure)
    model.zero_grad(set_to_none=True)
    with NoHostSync() as mode:
        engine.step(closure)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    return mode, model


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    if request.param == "triton" and not torch.cuda.is_available():
        from .kernels._helpers import interpreted

        if not interpreted():
            pytest.skip("the Triton kernels need CUDA or TRITON_INTERPRET=1")
    monkeypatch.setenv("ANL_FUSED_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_reads_no_device_value_on_the_host(backend, variant):
    mode, _ = step_without_host_sync(*VARIANTS[variant])
    assert mode.calls > 100  # the mode saw the step's ops


@pytest.mark.parametrize("sync", ["item", "bool", "equal", "nonzero", "float"])
def test_the_mode_catches_a_sync_in_the_step(backend, monkeypatch, sync):
    """A mutant of the step (a host read added to ``ops.noise_scale``, which every backend goes through)
    fails the check on both backends: the test above can fail."""
    real = ops.noise_scale
    reads = {
        "item": lambda t: t.item(),
        "bool": lambda t: bool(t.amax() > 0),
        "equal": lambda t: torch.equal(t, t),
        "nonzero": lambda t: t.nonzero(),
        "float": lambda t: float(t.amax()),
    }

    def noise_scale_with_sync(g, *args, **kwargs):
        scale, norm = real(g, *args, **kwargs)
        reads[sync](norm[:1])
        return scale, norm

    monkeypatch.setattr(ops, "noise_scale", noise_scale_with_sync)
    with pytest.raises(HostSyncError, match="host sync"):
        step_without_host_sync(*VARIANTS["adversarial"])


def test_the_mode_allows_what_a_step_does_outside_it():
    """Reading the counters after the step is fine (outside the mode) and is a host read (inside it)."""
    _, engine, closure = _setup({}, {})
    engine.step(closure)
    assert int(engine.zero_samples) == 0
    with NoHostSync(), pytest.raises(HostSyncError, match="_local_scalar_dense"):
        int(engine.zero_samples)
