"""Issue #18, the experiments side: no file that is not the run's is touched, no silent wrong run, every
bad input one clear line naming the file or value (no traceback), numbers that say what they mean."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from anl_fused.cli import main
from anl_fused.experiments import checkpoint, data, figures, files, stats, sweep
from anl_fused.experiments.train import TrainConfig, fit
from tests.experiments.test_data import _fake_fashion, write_idx

# lenet5 on digits, 2 steps per epoch (897 training images, batches of 448)
RUN = ["train", "--model", "lenet5", "--batch-size", "448", "--eps", "0.05", "--no-progress"]
# what train and attack write in --out (the files a test takes back where a broken check let them be written)
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoint.pt", "train.lock", "attack.lock", "transfer.md"}
RUN_FILES |= {"transfer.json", "transfer.png"}


def _error(capsys, cmd: str = "train", logged: bool = False) -> str:
    """The one error line (``logged``: after the run's own log lines), no traceback."""
    err = capsys.readouterr().err
    lines = [s for s in err.strip().splitlines() if s.startswith("anl-fused")] if logged else err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"anl-fused {cmd}: error: ") and "Traceback" not in err, lines
    return lines[0]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run (copied by the tests that spoil it)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(RUN + ["--epochs", "1", "--out", str(out)]) == 0
    return out


# ---- 1. never touch a file that is not the run's


def test_a_symlinked_train_lock_is_refused_and_its_target_untouched(tmp_path, capsys):
    (tmp_path / "lk").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("important\n")
    os.symlink("../victim.txt", tmp_path / "lk" / "train.lock")
    assert main(RUN + ["--epochs", "1", "--out", str(tmp_path / "lk")]) == 2
    assert "not a regular file" in _error(capsys)
    assert victim.read_text() == "important\n" and os.path.islink(tmp_path / "lk" / "train.lock")
    assert os.listdir(tmp_path / "lk") == ["train.lock"]


def test_train_removes_only_its_own_temp_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "other_app.q1w2e3r4.tmp").write_text("data\n")
    (out / "checkpoint.pt.abcd1234.tmp").write_text("a killed writer's")
    assert main(RUN + ["--epochs", "1", "--out", str(out)]) == 0
    assert (out / "other_app.q1w2e3r4.tmp").read_text() == "data\n"
    assert not (out / "checkpoint.pt.abcd1234.tmp").exists()


@pytest.mark.parametrize("cmd", ["train", "attack"])
def test_out_at_the_file_system_root_is_refused(cmd, capsys, monkeypatch):
    before = set(os.listdir("/"))
    if cmd == "train":
        argv = RUN + ["--epochs", "1", "--out", "/"]
    else:
        argv = ["attack", "--models", "a=/nonexistent.pt", "--out", "/"]
    try:
        assert main(argv) == 2
        assert "root of the file system" in _error(capsys, cmd)
        assert set(os.listdir("/")) == before
    finally:  # without the check (run as root) the run's files would stay in /: take back those alone
        for name in set(os.listdir("/")) - before:
            if name in RUN_FILES:
                os.unlink(os.path.join("/", name))


# ---- 2. no silent wrong run


@pytest.mark.parametrize("made", [False, True])
def test_resume_of_a_directory_without_a_run_is_refused(tmp_path, capsys, made):
    out = tmp_path / "typo"
    if made:
        out.mkdir()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    assert "holds no run to resume" in _error(capsys)
    assert os.listdir(out) == [] if made else not out.exists()


@pytest.mark.parametrize("content", ["missing", "empty", "three"])
def test_an_explicit_data_dir_is_used_or_refused(tmp_path, capsys, monkeypatch, content):
    system = tmp_path / "system"
    _fake_fashion(system, gz=True, n_train=60, n_test=10)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    mine = tmp_path / "mine"
    if content != "missing":
        mine.mkdir()
    if content == "three":
        _fake_fashion(mine, gz=True)
        (mine / "t10k-labels-idx1-ubyte.gz").unlink()
    argv = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--val-size",
        "10",
        "--eps",
        "0.03",
    ]
    out = tmp_path / "run"
    assert main(argv + ["--data-dir", str(mine), "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"--data-dir {str(mine)!r}" in err and not out.exists()
    says = {"missing": "does not exist", "empty": "lacks train-images", "three": "lacks t10k-labels-idx1-ubyte ("}
    assert says[content] in err


def test_the_data_source_is_said_and_recorded(tmp_path, capsys):
    mine = tmp_path / "mine"
    _fake_fashion(mine, gz=True, n_train=40, n_test=10)
    argv = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--val-size",
        "10",
        "--eps",
        "0.03",
    ]
    assert main(argv + ["--batch-size", "15", "--data-dir", str(mine), "--out", str(tmp_path / "r")]) == 0
    assert f"read from {mine}" in capsys.readouterr().err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data_source"] == str(mine) and config["dataset_sizes"] == {"train": 30, "val": 10, "test": 10}


@pytest.mark.parametrize(
    "field, value",
    [
        ("compile", "no"),
        ("drop_last", "false"),
        ("model", 5),
        ("model", ["lenet5"]),
        ("dataset", None),
        ("epochs", "2"),
        ("variant", "sgd"),
        ("device", "tpu"),
        ("schedule", "linear"),
        ("lr", -1),
    ],
)
def test_a_hand_edited_config_is_refused_naming_file_field_and_value(one_epoch, tmp_path, capsys, field, value):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    config = json.loads((out / "config.json").read_text())
    config[field] = value
    (out / "config.json").write_text(json.dumps(config))
    for name in ("checkpoint.pt", "metrics.jsonl"):  # as Ctrl-C in the first seconds leaves it: config.json alone
        (out / name).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys)
    assert field in err and (json.dumps(value) in err or repr(value) in err or f"got {value}" in err)
    assert str(out / "config.json") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_checkpoint_with_a_mistyped_epoch_is_refused(one_epoch, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["epoch"] = "2"
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys)
    assert str(path) in err and "epoch '2'" in err


def test_eps_beyond_float32_is_a_usage_error_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(RUN[:-3] + ["--eps", "1e39", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and "--eps" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match=r"eps 1e\+39 is not allowed"):
        fit(TrainConfig(model="lenet5", eps=1e39, epochs=1), progress=False, log=lambda s: None)


def test_a_large_eps_warns_and_an_ignored_eps_is_said(tmp_path):
    said = []
    fit(TrainConfig(model="lenet5", eps=5.0, epochs=0), progress=False, log=said.append)
    assert any("warning: |eps| 5 > 1" in s for s in said)
    for variant in ("plain", "dropout", "sam"):  # the variants without noise
        said.clear()
        res = fit(TrainConfig(model="lenet5", variant=variant, eps=0.1, epochs=0), progress=False, log=said.append)
        assert res["config"]["eps"] == 0.0
        assert any(f"variant {variant} " in s and "eps 0.1 is not used" in s for s in said), said


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line_and_no_directory(tmp_path, capsys):
    assert main(RUN + ["--epochs", "1", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in _error(capsys) and not (tmp_path / "r").exists()


# ---- 3. every bad input: one clear line naming the file or value


def _metrics_run(root, errs, half=None):
    """A run directory ``root/run`` whose metrics.jsonl holds one epoch per test error (%), then ``half``."""
    (root / "run").mkdir(parents=True)
    path = root / "run" / "metrics.jsonl"
    lines = [{"epoch": i + 1, "test_err": e / 100, "train_acc": 0.99, "lr": 0.1} for i, e in enumerate(errs)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + (half or ""))
    return path


def test_a_half_written_last_metrics_line_is_left_out_by_the_sweep_and_figures(tmp_path, capsys):
    path = _metrics_run(tmp_path / "runs", [50.0], half='{"epoch": 2, "test_err": 0.')
    job = sweep.Job("plain", str(path.parent), ("train",), 2)
    assert not sweep.finished(job.run_dir, 2) and sweep.state(job) == "partial"  # resumed, not skipped
    assert [r["epoch"] for r in figures.read_run(str(path.parent))[1]] == [1]
    main(["figures", "layer-std", "--runs", str(path.parent), "--out", str(tmp_path / "f.png")])
    assert "Expecting" not in capsys.readouterr().err


def test_a_corrupted_metrics_line_is_one_line_naming_the_file(tmp_path, capsys):
    path = _metrics_run(tmp_path / "runs", [50.0, 40.0])
    path.write_text("{broken\n" + path.read_text())
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(path)))} line 1 is not JSON"):
        sweep.finished(str(path.parent), 2)
    assert main(["figures", "eps-sweep", "--runs", str(path.parent), "--out", str(tmp_path / "f.png")]) == 2
    assert str(path) in _error(capsys, "figures")


def _fashion_with(folder, name, array=None, raw=None):
    _fake_fashion(folder, gz=True)
    target = folder / f"{name}.gz"
    if array is not None:
        (folder / name).unlink(missing_ok=True)
        write_idx(str(target), array)
    if raw is not None:
        target.write_bytes(raw(target.read_bytes()))
    return str(target)


def _crc_error(blob: bytes) -> bytes:
    return blob[:-8] + bytes([blob[-8] ^ 0xFF]) + blob[-7:]  # the gzip trailer's CRC32 spoiled


@pytest.mark.parametrize(
    "name, array, raw, says",
    [
        ("train-labels-idx1-ubyte", np.full(30, 12, np.uint8), None, "labels must be 0..9"),
        ("t10k-images-idx3-ubyte", None, lambda b: b[: len(b) // 2], "truncated or not a gzip file"),
        ("t10k-images-idx3-ubyte", None, lambda b: b"not gzip at all", "truncated or not a gzip file"),
        ("t10k-images-idx3-ubyte", None, _crc_error, "truncated or not a gzip file"),
        ("train-images-idx3-ubyte", np.zeros((30, 32, 32), np.uint8), None, "expected 28x28"),
        ("t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), None, "truncated or empty"),
    ],
)
def test_bad_dataset_files_are_named(tmp_path, name, array, raw, says):
    path = _fashion_with(tmp_path, name, array, raw)
    if name.startswith("t10k-images") and array is not None:  # an empty test set: no images, no labels
        write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(0, np.uint8))
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("fashion-mnist", str(tmp_path), val_size=5)
    assert says in str(e.value) and (path in str(e.value) or name in str(e.value)), str(e.value)


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_the_old_one_stays(
    one_epoch, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    old = (out / "checkpoint.pt").read_bytes()

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(28, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real = checkpoint.atomic_write
    monkeypatch.setattr(checkpoint, "atomic_write", lambda path, data: real(path, lambda f: data(Full(f))))
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out), "--no-progress"]) == 1
    assert "writing checkpoint file" in _error(capsys, logged=True)
    assert (out / "checkpoint.pt").read_bytes() == old


def test_unwritable_outputs_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    argv = ["demo", "--quick", "--variants", "plain", "--out", str(blocker / "d")]
    assert main(argv) == 2
    assert str(blocker) in _error(capsys, "demo")


def test_figures_refuses_an_unknown_format_and_a_foreign_config(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_err": 0.5}) + "\n")
    for text in ("not json at all", json.dumps([1, 2]), "\x00\xff"):
        (run / "config.json").write_text(text, errors="surrogateescape")
        assert main(["figures", "eps-sweep", "--runs", str(run), "--out", str(tmp_path / "w.png")]) == 2
        assert str(run / "config.json") in _error(capsys, "figures")
    assert main(["figures", "eps-sweep", "--runs", str(run), "--out", str(tmp_path / "f.xyz")]) == 2
    assert "'xyz' is not an image format" in _error(capsys, "figures")
    assert not (tmp_path / "f.xyz").exists() and not (tmp_path / "w.png").exists()


def test_a_refused_pickle_global_is_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": os.system}, path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert f"({os.system.__module__}.system)" in str(e.value) and "corrupted" not in str(e.value)


# ---- 4. numbers that say what they mean


def test_one_seed_has_no_standard_deviation():
    one = stats.summary([14.29])
    assert one["std"] is None
    assert stats.spread(one) == "14.29 (1 seed)" and "± 0.00" not in stats.spread(one)


def test_a_diverged_runs_marker_is_at_its_error(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for eps, seed, err in ((0.03, 0, 20.0), (0.03, 1, 90.0)):
        d = root / f"anl-{seed}"
        d.mkdir(parents=True)
        cfg = {"model": "lenet5", "dataset": "digits", "variant": "anl", "eps": eps, "seed": seed}
        cfg.update(epochs=1, finetune_epochs=0, batch_size=64, norm="sample")
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_err": err / 100}) + "\n")
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.append(fig))
    figures.eps_sweep(figures.find_runs([str(root)]), str(tmp_path / "s.png"))
    (ax,) = drawn[0].axes
    points = [tuple(p) for c in ax.collections for p in c.get_offsets()]
    assert (0.03, 90.0) in points


def test_stop_after_steps_before_an_epoch_ends_still_prints_the_summary(tmp_path, capsys):
    assert main(RUN + ["--epochs", "1", "--stop-after-steps", "1", "--out", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 0 and summary["global_step"] == 1 and summary["stopped"] == "stop_after_steps"
    assert summary["test_err"] is None


def test_files_check_out_dir_only_refuses_a_root(tmp_path):
    files.check_out_dir(tmp_path)
    with pytest.raises(ValueError):
        files.check_out_dir("/tmp/..")


def test_an_explicit_relative_data_dir_stays_explicit_on_resume(tmp_path, monkeypatch, capsys):
    """``--data-dir ./data`` given: the resume reads that directory or is refused, never the system's copy."""
    system = tmp_path / "system"
    _fake_fashion(system, gz=True, n_train=60, n_test=10)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    monkeypatch.chdir(tmp_path)
    _fake_fashion(tmp_path / "data", gz=True, n_train=40, n_test=10)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fashion-mnist", "--model", "lenet5", "--val-size", "10", "--eps", "0.03"]
    argv += ["--batch-size", "15", "--no-progress", "--out", str(out)]
    assert main(argv + ["--epochs", "1", "--data-dir", "./data"]) == 0
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(tmp_path / "data")
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").unlink()
    capsys.readouterr()
    assert main(argv + ["--epochs", "2", "--resume"]) == 2
    assert f"--data-dir {str(tmp_path / 'data')!r} lacks t10k-labels-idx1-ubyte" in _error(capsys)


@pytest.mark.parametrize("command", ["demo"])
def test_an_unwritable_out_is_refused_before_any_training(tmp_path, capsys, command):
    """--out under a regular file cannot be created (even by root): refused in one line before anything trains."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"
    argv = [command, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not writable" in err and str(out) in err
    assert not (tmp_path / "runs").exists()
