"""anl-fused train under torchrun: the data sharding of experiments.launch, and runs with two processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from anl_fused.experiments import launch

WORLD = 2


@pytest.mark.parametrize("n,batch,world", [(11, 4, 2), (11, 4, 4), (12, 4, 2), (3, 4, 4), (1, 2, 2), (0, 4, 2)])
def test_shard_batches_splits_each_global_batch(n, batch, world):
    order = torch.randperm(n)
    shards = [launch.shard_batches(order, batch, r, world) for r in range(world)]
    per_step = batch // world
    steps = -(-n // batch)
    for s in range(steps):
        chunk = order[s * batch : (s + 1) * batch]
        size = -(-len(chunk) // world)
        got = torch.cat([sh[s * per_step : s * per_step + size] for sh in shards])
        assert torch.equal(got[: len(chunk)], chunk)  # the ranks' parts put together: the global batch
        assert set(got[len(chunk) :].tolist()) <= set(chunk.tolist())  # padding repeats the batch's samples
    assert len({len(sh) for sh in shards}) == 1


def test_shard_batches_needs_a_multiple_and_shard_block_partitions():
    with pytest.raises(ValueError, match="multiple of the number of processes 4"):
        launch.shard_batches(torch.arange(10), 6, 0, 4)
    order = torch.randperm(10)
    blocks = [launch.shard_block(order, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(blocks), order) and sorted(len(b) for b in blocks) == [3, 3, 4]


TRAIN = [
    "train",
    "--model",
    "lenet5",
    "--dataset",
    "digits",
    "--batch-size",
    "128",
    "--variant",
    "anl",
    "--eps",
    "0.05",
    "--no-progress",
]


def torchrun(args, nproc=WORLD, ok=True):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "anl_fused.cli",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode == 0) == ok, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_under_torchrun_one_epoch(tmp_path):
    """``torchrun --nproc_per_node 2 -m anl_fused.cli train ... --epochs 1`` end to end: rank 0 alone
    writes config, metrics, checkpoint (with both ranks' noise streams) and the summary line; the
    run takes the single-process number of steps and lands where one process lands."""
    from anl_fused.cli import main

    out, single = tmp_path / "ddp", tmp_path / "single"
    done = torchrun(TRAIN + ["--epochs", "1", "--std-over", "global", "--out", str(out)])
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0's summary
    assert done.stderr.count("epoch 1/1 [anl]") == 1  # rank 0's log
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == WORLD and config["std_over"] == "global"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(state["ranks"]) == WORLD and state["global_step"] == 7
    assert not torch.equal(state["ranks"][0]["generator"], state["ranks"][1]["generator"])

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(TRAIN + ["--epochs", "1", "--out", str(single)]) == 0
    finally:
        torch.set_num_threads(n)
    (m,), (s,) = metrics(out), metrics(single)
    assert m["steps"] == s["steps"] == 7 and m["global_step"] == 7
    for k in ("train_loss", "val_loss"):  # other noise draws, same data and schedule: nearly the same run
        assert abs(m[k] - s[k]) < 1e-2, (k, m[k], s[k])
    assert set(m["anl_std"]) == set(s["anl_std"])


@pytest.mark.slow
def test_train_under_torchrun_resumes_exactly(tmp_path):
    """Stopped mid-epoch and resumed with the same number of processes: the same weights, noise
    generators and metrics as an uninterrupted run. Resumed with another number of processes (2 -> 1
    and 1 -> 2): it runs on to the same number of steps."""
    from anl_fused.cli import main

    args = TRAIN + ["--epochs", "1", "--finetune-epochs", "1", "--checkpoint-every", "3"]
    ref, cut, down, up = (tmp_path / k for k in ("ref", "cut", "down", "up"))
    torchrun(args + ["--out", str(ref)])
    torchrun(args + ["--out", str(cut), "--resume", "--stop-after-steps", "5"])
    torchrun(args + ["--out", str(cut), "--resume"])
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (ref, cut))
    assert a["global_step"] == b["global_step"] == 14
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for ra, rb in zip(a["ranks"], b["ranks"]):
        assert torch.equal(ra["generator"], rb["generator"])
    strip = lambda r: {k: v for k, v in r.items() if "time" not in k}
    assert [strip(r) for r in metrics(ref)] == [strip(r) for r in metrics(cut)]

    torchrun(args + ["--out", str(down), "--resume", "--stop-after-steps", "5"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args + ["--out", str(down), "--resume"]) == 0
        assert main(args + ["--out", str(up), "--resume", "--stop-after-steps", "4"]) == 0
    finally:
        torch.set_num_threads(n)
    torchrun(args + ["--out", str(up), "--resume"])
    for p in (down, up):
        assert torch.load(p / "checkpoint.pt", weights_only=True)["global_step"] == 14
        assert [r["steps"] for r in metrics(p)] == [7, 7]


@pytest.mark.slow
def test_torchrun_refuses_a_run_directory_on_every_rank(tmp_path):
    """Rank 0 holds the run directory and decides; the other ranks learn its answer and exit too (no
    hang): an existing run without --resume, and a refused change on --resume."""
    out = tmp_path / "run"
    torchrun(TRAIN + ["--epochs", "1", "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = torchrun(TRAIN + ["--epochs", "1", "--out", str(out)], ok=False)
    assert done.stderr.count("already holds a run (finished: 1 of 1 epochs)") == WORLD
    done = torchrun(["train", "--no-progress", "--out", str(out), "--resume", "--lr", "0.05"], ok=False)
    assert done.stderr.count("belongs to a different run") == WORLD
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
