"""``anl-fused figures``: the paper's figures as PNG, from ``anl-fused train`` run directories.

- ``eps-sweep`` (Fig. 4): final test error against eps, one panel per model; runs with the same
  model and eps (several seeds) are averaged (mean ± std, seeds as dots); plain runs sit at eps = 0.
- ``layer-std`` (Fig. 2): the standard deviation of every ANL layer's input over the epochs
  (``anl_std`` in ``metrics.jsonl``, the per-epoch mean of ``TwoRound.last_stds``).
- ``feature-maps`` (Fig. 3): the first conv layer's output (through a sigmoid, noise layers off) for
  one test image, one row per run (e.g. plain / Gaussian / ANL / opposite-ANL checkpoints).

``--runs`` takes run directories (holding ``metrics.jsonl``) or directories of run directories.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", nargs="+", required=True, help="run directories (or directories of runs)")
    common.add_argument("--out", required=True, help="output PNG file")
    common.add_argument("--title", default=None, help="figure title")
    sub.add_parser("eps-sweep", parents=[common], help="Fig. 4: test error vs eps")
    p = sub.add_parser("layer-std", parents=[common], help="Fig. 2: per-layer std of ANL inputs over epochs")
    p.add_argument("--max-legend", type=int, default=12, help="name layers in a legend up to this many (else colorbar)")
    p = sub.add_parser("feature-maps", parents=[common], help="Fig. 3: first-conv feature maps per run")
    p.add_argument("--image-index", type=int, default=0, help="which test image (default 0)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: the run's)")
    p.add_argument("--max-channels", type=int, default=8, help="show at most this many channels")


# ----------------------------------------------------------------------------------------------


class FigureError(RuntimeError):
    pass


def find_runs(paths: list[str]) -> list[str]:
    """Run directories among ``paths``: those holding metrics.jsonl, or their subdirectories that do."""
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "metrics.jsonl")):
            out.append(p)
        elif os.path.isdir(p):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p)
                          if os.path.isfile(os.path.join(p, d, "metrics.jsonl")))
            if not subs:
                raise FigureError(f"{p!r} holds no metrics.jsonl (not a run directory, nor a directory of runs)")
            out += subs
        else:
            raise FigureError(f"run directory {p!r} does not exist")
    return out


def read_run(path: str) -> tuple[dict, list[dict]]:
    cfg_path = os.path.join(path, "config.json")
    cfg = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    with open(os.path.join(path, "metrics.jsonl")) as f:
        hist = [json.loads(line) for line in f if line.strip()]
    if not hist:
        raise FigureError(f"{os.path.join(path, 'metrics.jsonl')!r} is empty (the run finished no epoch)")
    return cfg, hist


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str) -> None:
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    fig.savefig(out, dpi=110)
    _plt().close(fig)


# ----------------------------------------------------------------------------------------------


def eps_sweep(runs: list[str], out: str, title: str | None = None) -> dict:
    """Fig. 4. Returns ``{model: {eps: [test errors %]}}``."""
    table: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        cfg, hist = read_run(r)
        variant = cfg.get("variant", "anl")
        if variant not in ("plain", "anl", "opposite"):
            continue  # gaussian / dropout / input are not points of the eps axis
        eps = 0.0 if variant == "plain" else float(cfg.get("eps", 0.0))
        table[cfg.get("model", "?")][eps].append(hist[-1]["test_err"] * 100)
    if not table:
        raise FigureError("no plain / anl / opposite runs among --runs")
    plt = _plt()
    models = sorted(table)
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False)
    for ax, model, letter in zip(axes[0], models, "abcdefghij"):
        pts = sorted(table[model].items())
        xs = [e for e, _ in pts]
        means = [statistics.fmean(v) for _, v in pts]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
        for e, v in pts:
            ax.scatter([e] * len(v), v, color="tab:blue", alpha=0.35, s=14, zorder=3)
        ax.errorbar(xs, means, yerr=stds, fmt="-o", color="tab:blue", capsize=4, zorder=4, label="mean ± std")
        if 0.0 in table[model]:
            ax.axhline(statistics.fmean(table[model][0.0]), color="tab:gray", ls="--", lw=1, label="plain (eps=0)")
        best = min(range(len(xs)), key=lambda i: means[i])
        ax.scatter([xs[best]], [means[best]], marker="*", s=160, color="tab:orange", zorder=5,
                   label=f"best eps={xs[best]:g}")
        n = max(len(v) for _, v in pts)
        ax.set_title(f"({letter}) {model}  (up to {n} seed{'s' if n > 1 else ''} per eps)", fontsize=10)
        ax.set_xlabel("eps")
        ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=5))
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    return {m: dict(v) for m, v in table.items()}


def layer_std(runs: list[str], out: str, title: str | None = None, max_legend: int = 12) -> None:
    """Fig. 2: std of each ANL layer's input per epoch; one panel per run."""
    plt = _plt()
    data = []
    for r in runs:
        cfg, hist = read_run(r)
        rows = [(h["epoch"], h["anl_std"]) for h in hist if h.get("anl_std")]
        if not rows:
            raise FigureError(f"{os.path.join(r, 'metrics.jsonl')!r} has no anl_std entries (a run without ANL, "
                              "or only its fine-tuning phase)")
        data.append((r, cfg, rows))
    fig, axes = plt.subplots(1, len(data), figsize=(5.2 * len(data), 3.9), squeeze=False)
    for ax, (r, cfg, rows) in zip(axes[0], data):
        names = list(rows[0][1])
        epochs = [e for e, _ in rows]
        cmap = plt.get_cmap("viridis")
        for i, name in enumerate(names):
            ys = [s.get(name, math.nan) for _, s in rows]
            ax.plot(epochs, ys, color=cmap(i / max(len(names) - 1, 1)), lw=1.2,
                    label=name if len(names) <= max_legend else None, marker="." if len(epochs) < 30 else None)
        if len(names) > max_legend:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, len(names)))
            fig.colorbar(sm, ax=ax, label="ANL layer (input first, then depth order)")
        else:
            ax.legend(fontsize=7)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel("std of ANL input h")
        label = f"{cfg.get('model', '?')} {cfg.get('variant', '')} eps={cfg.get('eps', '?')}"
        ax.set_title(f"{label}\n{os.path.basename(os.path.normpath(r))}", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)


def _run_label(cfg: dict) -> str:
    v = cfg.get("variant", "?")
    eps = cfg.get("eps", 0)
    return {"plain": "(a) baseline", "gaussian": f"(b) Gaussian eps={eps:g}", "anl": f"(c) ANL eps={eps:g}",
            "opposite": f"(d) opposite eps={eps:g}"}.get(v, f"{v} eps={eps:g}")


def feature_maps(runs: list[str], out: str, title: str | None = None, image_index: int = 0,
                 data_dir: str | None = None, max_channels: int = 8) -> None:
    """Fig. 3: sigmoid of the first conv's output for one test image, one row per run's checkpoint."""
    import torch

    from . import checkpoint as ckpt
    from . import data as data_mod
    from .train import TrainConfig, make_model

    rows = []
    for r in runs:
        path = os.path.join(r, "checkpoint.pt")
        state = ckpt.load(path, map_location="cpu", required=("config", "model"))
        cfg = state["config"]
        names = {f for f in TrainConfig.__dataclass_fields__}
        tc = TrainConfig(**{k: v for k, v in cfg.items() if k in names})
        bundle = data_mod.load(tc.dataset, data_dir or tc.data_dir, val_size=tc.val_size)
        model = make_model(tc.resolved(), bundle.in_channels, bundle.num_classes)
        model.load_state_dict(state["model"])
        model.eval()  # ANL layers are the identity in eval mode: the noise layers are wiped out
        if not 0 <= image_index < len(bundle.test):
            raise FigureError(f"--image-index must be in [0, {len(bundle.test)}), got {image_index}")
        batches = data_mod.Batches(data_mod.Split(bundle.test.x[image_index:image_index + 1],
                                                  bundle.test.y[image_index:image_index + 1]),
                                   1, mean=bundle.info.mean, std=bundle.info.std, shuffle=False)
        (x, _), = list(batches.epoch(0))
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        got = {}
        handle = conv.register_forward_hook(lambda m, a, o: got.setdefault("fm", o.detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        raw = bundle.test.x[image_index].float()
        raw = raw / 255.0 if bundle.test.x.dtype == torch.uint8 else raw
        rows.append((cfg, raw, torch.sigmoid(got["fm"][0])[:max_channels]))

    plt = _plt()
    ncol = 1 + max(fm.shape[0] for _, _, fm in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.25 * ncol + 1.2, 1.35 * len(rows) + 0.6), squeeze=False)
    for ax_row, (cfg, raw, fm) in zip(axes, rows):
        img = raw.permute(1, 2, 0).numpy()
        ax_row[0].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", interpolation="nearest")
        ax_row[0].set_ylabel(_run_label(cfg), rotation=0, ha="right", va="center", fontsize=9)
        for j, ax in enumerate(ax_row[1:]):
            if j < fm.shape[0]:
                ax.imshow(fm[j].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
    axes[0][0].set_title("input", fontsize=9)
    for j in range(1, ncol):
        axes[0][j].set_title(f"ch {j}", fontsize=9)
    cfg0 = rows[0][0]
    fig.suptitle(title or f"first-conv feature maps (sigmoid), {cfg0.get('model')} on {cfg0.get('dataset')}, "
                 f"test image {image_index}", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def run(args: argparse.Namespace) -> int:
    try:
        runs = find_runs(args.runs)
        if args.figure == "eps-sweep":
            table = eps_sweep(runs, args.out, args.title)
            for model, pts in sorted(table.items()):
                for eps, errs in sorted(pts.items()):
                    print(f"{model} eps={eps:g}: test error {statistics.fmean(errs):.2f}% over {len(errs)} run(s)")
        elif args.figure == "layer-std":
            layer_std(runs, args.out, args.title, args.max_legend)
        else:
            feature_maps(runs, args.out, args.title, args.image_index, args.data_dir, args.max_channels)
    except Exception as e:  # noqa: BLE001 - report any failure as a one-line CLI error
        from .checkpoint import CheckpointError
        from .data import DatasetNotFoundError

        if not isinstance(e, (FigureError, CheckpointError, DatasetNotFoundError, OSError, json.JSONDecodeError)):
            raise
        print(f"anl-fused figures: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0
