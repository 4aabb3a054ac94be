"""TwoRound under DistributedDataParallel (issue #6), on 2 CPU processes with gloo.

The two processes are started once for the module (starting them costs most of the time): every
scenario runs on both ranks in turn and each rank writes ``ok`` or the traceback per scenario to a
JSON file, which the tests below read. Single-process checks (option validation, SyncBatchNorm)
need no processes.
"""

import copy
import datetime
import json
import os
import socket
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import anl_fused
from anl_fused import distributed as anl_dist
from anl_fused import engine as anl_engine
from anl_fused import reference
from anl_fused.state import frozen_batchnorm_stats

from ._nets import small_vgg

WORLD = 2


# ---------------------------------------------------------------------------------------------
# Worker side: scenarios, run on every rank in this order.


class WithUnused(nn.Module):
    """A BN network with a parameter that the forward never uses (needs find_unused_parameters)."""

    def __init__(self):
        super().__init__()
        self.body = small_vgg()
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.body(x)


class ConvNet(nn.Module):
    """No BatchNorm: each sample's gradient depends on that sample only. Not a Sequential, so input
    ANL is its last child: the draw order is right only if the engine looks inside DDP."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(24, 5),
        )

    def forward(self, x):
        return self.features(x)


def batch(seed, b=4, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, classes, (b,), generator=g)


def flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors])


def grads_of(module):
    return flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters())


def same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(gathered[0], x) for x in gathered[1:])


def close(a, b, rtol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


def scenario_ddp_matches_local(rank, *, find_unused, micro, bucket_view=False, static_graph=False):
    """Optimizer steps of TwoRound(ddp) (``micro[step]`` micro-batches: under no_sync, then a synced one)
    against a local TwoRound twin on the same rank's data: DDP's gradients are the average of the
    twins' gradients, one all-reduce per step (each bucket reduced once), none under no_sync;
    parameters stay identical on the ranks; BatchNorm statistics move once per micro-step."""
    torch.manual_seed(0)
    model = WithUnused() if find_unused else small_vgg()
    model = anl_fused.insert_anl(model.double(), eps=0.5)
    twin = copy.deepcopy(model)
    ddp = DDP(
        model,
        find_unused_parameters=find_unused,
        bucket_cap_mb=0.002,
        gradient_as_bucket_view=bucket_view,
        static_graph=static_graph,
    )
    seen = []

    def counting_hook(state, bucket):
        seen.append((bucket.index(), bucket.is_last()))
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    engine = anl_fused.TwoRound(ddp, torch.Generator().manual_seed(100 + rank))
    local = anl_fused.TwoRound(twin, torch.Generator().manual_seed(100 + rank))
    assert engine.generator.initial_seed() == 100 + rank
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step, micros in enumerate(micro):
        opt.zero_grad()
        twin.zero_grad()
        for i in range(micros):
            x, y = batch(1000 * step + 10 * i + rank)
            seen.clear()
            torch.manual_seed(step * 7 + i)  # same dropout masks in both
            if i < micros - 1:
                with ddp.no_sync():
                    engine.step(lambda: F.cross_entropy(ddp(x), y))
                assert seen == [], f"an all-reduce under no_sync: {seen}"
            else:
                engine.step(lambda: F.cross_entropy(ddp(x), y))
                indices = sorted(i for i, _ in seen)
                assert indices == list(range(len(seen))) and sum(last for _, last in seen) == 1, (
                    f"expected each bucket reduced once in the step, got {seen}"
                )
            torch.manual_seed(step * 7 + i)
            local.step(lambda: F.cross_entropy(twin(x), y))
        expected = grads_of(twin)
        dist.all_reduce(expected)
        close(grads_of(model), expected / WORLD)
        if find_unused:
            assert model.unused.weight.grad is None
        if rank == 0:  # rank 0's buffers are the ones DDP broadcasts, so its twin saw the same ones
            for a, b in zip(model.buffers(), twin.buffers()):
                close(a.double(), b.double())
        opt.step()
        assert same_on_all_ranks(flat(model.parameters())), "parameters differ between ranks"
        with torch.no_grad():  # the twin continues from DDP's state
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)
            for p, q in zip(model.buffers(), twin.buffers()):
                q.copy_(p)


def scenario_global_std_equals_one_process(rank):
    """ANL after every conv (no BatchNorm) plus input ANL, float64, std_over="global", each rank
    drawing its slice of the draws of the concatenated batch: DDP's averaged gradients equal one
    process running TwoRound (and the reference) on the concatenated batch, over two SGD steps.
    With std_over="local" they do not (the test can tell)."""
    b = 4
    results = {}
    for std_over in ("global", "local"):
        torch.manual_seed(0)
        model = anl_fused.insert_anl(ConvNet().double(), eps=0.5, input_eps=0.3, after="conv")
        single, oracle = copy.deepcopy(model), copy.deepcopy(model)
        ddp = DDP(model)
        engine = anl_fused.TwoRound(ddp, torch.Generator().manual_seed(5), std_over=std_over)
        single_engine = anl_fused.TwoRound(single, torch.Generator().manual_seed(5))
        oracle_gen = torch.Generator().manual_seed(5)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ddp, single, oracle)]
        original = anl_engine.draw_step

        def draw_slice(specs, generator, device):  # the draws of the concatenated batch, this rank's rows
            whole = [
                s if s.shape is None else s._replace(shape=torch.Size((s.shape[0] * WORLD, *s.shape[1:])))
                for s in specs
            ]
            zs = original(whole, generator, device)
            return [None if z is None else z[rank * s.shape[0] : (rank + 1) * s.shape[0]] for z, s in zip(zs, specs)]

        matched = True
        for step in range(2):
            x, y = batch(50 + step, b=WORLD * b, classes=5)
            mine = slice(rank * b, (rank + 1) * b)
            for opt in opts:
                opt.zero_grad()
            anl_engine.draw_step = draw_slice
            try:
                engine.step(lambda: F.cross_entropy(ddp(x[mine]), y[mine]))
            finally:
                anl_engine.draw_step = original
            single_engine.step(lambda: F.cross_entropy(single(x), y))
            reference.two_round_step(oracle, lambda: F.cross_entropy(oracle(x), y), oracle_gen)
            if std_over == "global":
                close(grads_of(single), grads_of(oracle))
                close(grads_of(model), grads_of(single))
                for (name, s), (name1, s1) in zip(engine.last_stds.items(), single_engine.last_stds.items()):
                    assert name == name1
                    close(s, s1)
                assert "anl_input" in engine.last_stds
            else:
                matched &= torch.allclose(grads_of(model), grads_of(single), rtol=1e-6)
            for opt in opts:
                opt.step()
        results[std_over] = matched
    assert not results["local"], "std_over='local' gave the global-batch gradients: the test cannot tell"


def scenario_join_uneven_inputs(rank):
    """Uneven numbers of steps under DDP's Join: round 1 tells the joined rank there is no backward
    to shadow, so nothing hangs and the final parameters agree."""
    from torch.distributed.algorithms.join import Join

    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False).double(), eps=0.5)
    ddp = DDP(model)
    engine = anl_fused.TwoRound(ddp, torch.Generator().manual_seed(rank))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    with Join([ddp]):
        for step in range(3 if rank == 0 else 1):
            x, y = batch(step + 10 * rank)
            opt.zero_grad()
            engine.step(lambda: F.cross_entropy(ddp(x), y))
            opt.step()
    assert same_on_all_ranks(flat(model.parameters()))


def scenario_errors_and_defaults(rank):
    """The module inside DDP given to TwoRound, the rank-offset default generator,
    and std_over="global" with an explicit group."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg().double(), eps=0.5)
    ddp = DDP(model)
    x, y = batch(rank)
    inner = anl_fused.TwoRound(model)
    try:
        inner.step(lambda: F.cross_entropy(ddp(x), y))
    except RuntimeError as e:
        assert "TwoRound(ddp_model)" in str(e), e
    else:
        raise AssertionError("TwoRound(inner module) with a DDP closure did not raise")

    torch.manual_seed(1234)  # the same on every rank, as scripts usually do
    seeds = torch.tensor([anl_fused.TwoRound(ddp).generator.initial_seed()])
    assert not same_on_all_ranks(seeds), "the default generators of the ranks have the same seed"
    if rank == 0:
        assert seeds.item() == (1234 + 0x9E3779B97F4A7C15) % 2**63  # what one process would draw

    group = dist.new_group([0, 1])
    engine = anl_fused.TwoRound(ddp, std_over="global", process_group=group)
    assert engine.process_group is group
    assert anl_fused.TwoRound(ddp, std_over="global").process_group is ddp.process_group
    engine.step(lambda: F.cross_entropy(ddp(x), y))
    stds = torch.stack(list(engine.last_stds.values()))
    assert same_on_all_ranks(stds), "global stds differ between ranks"


def scenario_compiled_ddp(rank):
    """torch.compile(ddp) in the closure (round 1 runs eagerly, round 2 compiled with DDP's graph
    splitting): the gradients are still the average of local eager twins'."""
    torch.manual_seed(0)
    model = anl_fused.insert_anl(small_vgg(dropout=False), eps=0.5)
    twin = copy.deepcopy(model)
    ddp = DDP(model)
    compiled = torch.compile(ddp)
    engine = anl_fused.TwoRound(ddp, torch.Generator().manual_seed(rank))
    local = anl_fused.TwoRound(twin, torch.Generator().manual_seed(rank))
    for step in range(2):
        x, y = batch(step * 10 + rank)
        x = x.float()
        ddp.zero_grad()
        twin.zero_grad()
        engine.step(lambda: F.cross_entropy(compiled(x), y))
        local.step(lambda: F.cross_entropy(twin(x), y))
        expected = grads_of(twin)
        dist.all_reduce(expected)
        close(grads_of(model), expected / WORLD, rtol=1e-5)
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)


SCENARIOS = {
    "sync": lambda r: scenario_ddp_matches_local(r, find_unused=False, micro=(1, 1, 1)),
    "sync_find_unused": lambda r: scenario_ddp_matches_local(r, find_unused=True, micro=(1, 1, 1)),
    "no_sync_accumulation": lambda r: scenario_ddp_matches_local(
        r, find_unused=False, micro=(2, 2, 3), bucket_view=True
    ),
    "no_sync_accumulation_find_unused": lambda r: scenario_ddp_matches_local(r, find_unused=True, micro=(2, 2)),
    # static_graph: DDP itself cannot take a no_sync micro-batch in the first iteration
    "static_graph_no_sync_accumulation": lambda r: scenario_ddp_matches_local(
        r, find_unused=True, micro=(1, 2, 2), static_graph=True
    ),
    "global_std_equals_one_process": scenario_global_std_equals_one_process,
    "join_uneven_inputs": scenario_join_uneven_inputs,
    "errors_and_defaults": scenario_errors_and_defaults,
}


SLOW_SCENARIOS = {"compiled_ddp": scenario_compiled_ddp}


def _worker(rank, port, out_dir, names):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    results = {}
    path = os.path.join(out_dir, f"rank{rank}.json")
    try:
        for name in names:
            fn = {**SCENARIOS, **SLOW_SCENARIOS}[name]
            results[name] = "started, and the process died in it"
            with open(path, "w") as f:  # written before and after each scenario: a crash names it
                json.dump(results, f)
            try:
                fn(rank)
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc()
            with open(path, "w") as f:
                json.dump(results, f)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(names):
    with tempfile.TemporaryDirectory() as out:
        try:
            mp.spawn(_worker, args=(_free_port(), out, list(names)), nprocs=WORLD, join=True)
            crash = ""
        except Exception as e:  # a process died (gloo aborts on mismatched collectives): report per scenario
            crash = f"\n{type(e).__name__}: {e}"
        got = []
        for r in range(WORLD):
            path = os.path.join(out, f"rank{r}.json")
            if os.path.exists(path):
                with open(path) as f:
                    got.append(json.load(f))
            else:
                got.append({})
        return got, crash


def _check(results, name):
    got, crash = results
    for rank, res in enumerate(got):
        assert res.get(name) == "ok", f"rank {rank}, scenario {name}:\n{res.get(name, 'did not run')}{crash}"


@pytest.fixture(scope="module")
def results():
    return _run(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_under_ddp(results, name):
    _check(results, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_SCENARIOS))
def test_under_ddp_slow(name):
    _check(_run([name]), name)


# ---------------------------------------------------------------------------------------------
# Single process.


def test_std_over_validation():
    model = anl_fused.insert_anl(small_vgg(), eps=0.1)
    with pytest.raises(ValueError, match=r"std_over must be one of .*'globl'"):
        anl_fused.TwoRound(model, std_over="globl")
    with pytest.raises(ValueError, match="only used with std_over='global'"):
        anl_fused.TwoRound(model, process_group=object())
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"needs torch\.distributed initialized"):
        anl_fused.TwoRound(model, std_over="global")
    assert anl_fused.TwoRound(model).std_over == "local"


def test_global_std_combination_is_exact():
    """Chan's combination of the table GlobalStd.wait reads equals torch.std of the concatenation,
    with a rank that saw nothing and a rank that saw one element."""
    parts = [
        torch.randn(3, 2, 4, 4, dtype=torch.float64) * 3 + 5,
        torch.randn(1, 1, 1, 1, dtype=torch.float64),
        torch.empty(0, 2, 4, 4, dtype=torch.float64),
        torch.randn(2, 2, 4, 4, dtype=torch.float64) - 7,
    ]
    layer = anl_fused.ANL2d(0.1)
    pending = anl_dist.GlobalStd.__new__(anl_dist.GlobalStd)
    pending.layers, pending.records = [layer], {layer: (parts[0], torch.zeros((), dtype=torch.float64))}
    rows = []
    for h in parts:
        n = h.numel()
        s = h.std() if n > 1 else torch.tensor(0.0, dtype=torch.float64)
        rows.append([n, h.sum().item() / max(n, 1), s.item() ** 2 * max(n - 1, 0)])
    pending.table = torch.tensor(rows, dtype=torch.float64).view(len(parts), 1, 3)
    pending.work = type("Done", (), {"wait": lambda self: None})()
    got = pending.wait()[layer]
    want = torch.cat([p.flatten() for p in parts]).std()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_frozen_batchnorm_stats_covers_syncbatchnorm():
    sync = nn.SyncBatchNorm(4)
    sync.train()
    with frozen_batchnorm_stats(nn.Sequential(sync)):
        assert not sync.track_running_stats
    assert sync.track_running_stats


def test_syncbatchnorm_model_trains_like_batchnorm_in_one_process():
    """convert_sync_batchnorm keeps insert_anl's layers working (torch's converter drops their
    hooks); without a process group SyncBatchNorm runs BatchNorm's code, so a TwoRound step gives
    the BatchNorm model's gradients and statistics: the running statistics move once."""
    torch.manual_seed(0)
    plain = anl_fused.insert_anl(small_vgg(dropout=False).double(), eps=0.5)
    dropped = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    synced = anl_dist.convert_sync_batchnorm(copy.deepcopy(plain))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert len(anl_fused.anl_layers(synced)) == len(anl_fused.anl_layers(plain)) == 3
    x, y = batch(3)
    engines = [anl_fused.TwoRound(m, torch.Generator().manual_seed(1)) for m in (plain, synced)]
    for engine, m in zip(engines, (plain, synced)):
        engine.step(lambda: F.cross_entropy(m(x), y))
    assert len(engines[1].last_stds) == 3
    with pytest.raises(RuntimeError, match="none of the 3 active ANL layer"):  # torch's converter: no ANL runs
        anl_fused.TwoRound(dropped).step(lambda: F.cross_entropy(dropped(x), y))
    for p, q in zip(plain.parameters(), synced.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-14)
    for (name, a), b in zip(plain.named_buffers(), synced.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0, msg=name)
    assert all(m.num_batches_tracked.item() == 1 for m in synced.modules() if isinstance(m, nn.SyncBatchNorm))


# ---------------------------------------------------------------------------------------------
# anl-fused train under torchrun (2 CPU processes, gloo)
