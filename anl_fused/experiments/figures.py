"""``anl-fused figures``: the paper's figures as PNG, from ``anl-fused train`` run directories.

``eps-sweep`` (Fig. 4: final test error against eps, like runs averaged), ``layer-std`` (Fig. 2: the std of every
ANL layer's input over the epochs) and ``feature-maps`` (Fig. 3: the first conv's output per run). Runs that finished
no epoch are skipped with a warning; ``eps-sweep`` also skips unfinished runs. Fig. 5 (white-box robustness) is the
study's ``anl-fused study robustness`` (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
from collections import defaultdict

from .stats import DIVERGED, diverged, summary
from .train.metrics import METRICS_NAME, read_metrics
from .train.rundir import CONFIG_NAME, local_config


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", nargs="+", required=True, help="run directories (or directories of runs)")
    common.add_argument("--out", required=True, help="output PNG file")
    common.add_argument("--title", default=None, help="figure title")

    def add(name, help_text):  # the help line is also the subcommand's --help description
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    add("eps-sweep", "Fig. 4: test error vs eps")
    p = add("layer-std", "Fig. 2: per-layer std of ANL inputs over epochs")
    p.add_argument("--max-legend", type=int, default=12, help="name layers in a legend up to this many (else colorbar)")
    p = add("feature-maps", "Fig. 3: first-conv feature maps per run")
    p.add_argument("--image-index", type=int, default=0, help="which test image (default 0)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: the run's)")
    p.add_argument("--max-channels", type=int, default=8, help="show at most this many channels")


class FigureError(RuntimeError):
    pass


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def find_runs(paths: list[str]) -> list[str]:
    """Run directories among ``paths``: those holding metrics.jsonl, or their subdirectories that do."""
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, METRICS_NAME)):
            out.append(p)
        elif os.path.isdir(p):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, METRICS_NAME)))
            if not subs:
                raise FigureError(f"{p!r} holds no metrics.jsonl (not a run directory, nor a directory of runs)")
            out += subs
        else:
            raise FigureError(f"run directory {p!r} does not exist")
    return out


def read_run(path: str) -> tuple[dict, list[dict]]:
    """``(config.json or {}, the lines of metrics.jsonl)``; no lines for a run that finished no epoch yet."""
    cfg = local_config(path)
    if cfg is None and os.path.exists(os.path.join(path, CONFIG_NAME)):
        raise FigureError(f"{os.path.join(path, CONFIG_NAME)!r} is not a JSON object (a run's config.json)")
    try:
        return cfg or {}, read_metrics(path)
    except ValueError as e:
        raise FigureError(str(e)) from None


def started_runs(runs: list[str]) -> list[str]:
    """The runs that finished at least one epoch; the others are skipped with a warning."""
    out = [r for r in runs if read_run(r)[1] or warn(f"skipping unfinished run {r} (no finished epoch yet)")]
    if not out:
        raise FigureError("no run among --runs has finished an epoch")
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, out: str, title: str | None = None, **title_style) -> None:
    """``fig`` with its ``title``, laid out, written to ``out`` and closed (:func:`_save`)."""
    if title:
        fig.suptitle(title, **title_style)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out: str) -> None:
    from .files import save_figure

    save_figure(fig, out, dpi=110)  # creates the directory; never a half-written PNG
    _plt().close(fig)


#: settings that must agree for runs to share a panel of the eps sweep (besides the total epoch count)
_SWEEP_SETTINGS = ("model", "dataset", "batch_size", "lr", "momentum", "weight_decay", "lr_factor", "patience")
_SWEEP_SETTINGS += ("hold_epochs", "min_lr", "val_size", "drop_last", "scale_by_std")


def _seeds_label(seeds: list[int]) -> str:
    """``3 seeds (0, 1, 2)``, or ``3 runs, 1 seed (0, 0, 0)`` when seeds repeat: never more seeds than there are."""
    distinct = sorted(set(seeds))
    listed = ", ".join(str(s) for s in sorted(seeds))
    if len(distinct) == len(seeds):
        return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({listed})"
    return f"{len(seeds)} runs, {len(distinct)} seed{'s' if len(distinct) != 1 else ''} ({listed})"


def sweep_table(runs: list[str]) -> dict:
    """Final test errors of plain / anl / opposite runs grouped by settings:
    ``{panel: {series: {eps: [(seed, test error %)]}}}``. A panel holds runs of one model, dataset,
    total epoch count and optimizer / schedule settings; a series, the ANL runs of one norm and one
    ANL-phase length. Its eps = 0 point is the plain runs trained in the same two phases (``--finetune-lr
    floor``), or, where there are none, the plain runs of one continuous schedule; those also form the
    series ``"baseline, one schedule"`` (drawn as a line). Unfinished runs are skipped with a warning."""
    panels: dict[tuple, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    plain: dict[tuple, list] = defaultdict(list)
    two_phase: dict[tuple, list] = defaultdict(list)
    for r in runs:
        cfg, hist = read_run(r)
        variant = cfg.get("variant", "anl")
        if variant not in ("plain", "anl", "opposite") or cfg.get("input_eps", 0.0):
            continue  # gaussian / dropout / input are not points of the eps axis
        e, f = int(cfg.get("epochs", 0)), int(cfg.get("finetune_epochs", 0))
        if not (hist and hist[-1].get("epoch", len(hist)) >= e + f):  # an interrupted run
            warn(f"skipping unfinished run {r} ({len(hist)} of {e + f} epochs)")
            continue
        panel = (*(cfg.get(k) for k in _SWEEP_SETTINGS), e + f)
        point = (int(cfg.get("seed", 0)), hist[-1]["test_err"] * 100)
        if variant == "plain" and f and cfg.get("finetune_lr") == "floor":
            two_phase[(panel, e, f)].append(point)
        elif variant == "plain":
            plain[panel].append(point)
        else:
            panels[panel][(e, f, cfg.get("norm", "sample"))][float(cfg.get("eps", 0.0))].append(point)
    out = {}
    for panel in sorted(set(panels) | set(plain), key=str):
        model, dataset, batch = panel[0], panel[1], panel[2]
        label = f"{model} on {dataset}, {panel[-1]} epochs, batch {batch}"
        out[label] = {}
        for (e, f, norm), pts in sorted(panels.get(panel, {}).items(), key=str):
            zero = two_phase.get((panel, e, f)) or plain.get(panel)
            out[label][f"norm={norm}, {e} + {f} epochs"] = {**({0.0: zero} if zero else {}), **pts}
        if plain.get(panel):
            out[label]["baseline, one schedule"] = {0.0: plain[panel]}
    return out


def _kept(points: list[tuple[int, float]]) -> dict:
    """:func:`~.stats.summary` of the errors of ``(seed, error)`` runs that did not diverge (diverged: not averaged)."""
    return summary([e for _, e in points if not diverged(e)])


def _draw_series(ax, name: str, pts: dict, c) -> list[int]:
    """One series of the eps sweep: each run a dot, mean ± std per eps (diverged runs left out: an x at their own
    error, far above the others), the best eps a star; returns the seeds of its ANL runs."""
    eps = [x for x in sorted(pts) if _kept(pts[x])["n"]]
    if not eps:
        return []
    kept = [_kept(pts[x]) for x in eps]
    means = [k["mean"] for k in kept]
    for x, k in zip(eps, kept):
        ax.scatter([x] * k["n"], k["values"], color=c, alpha=0.35, s=14, zorder=3)
    ax.errorbar(
        eps,
        means,
        yerr=[k["std"] or 0.0 for k in kept],
        fmt="-o",
        color=c,
        capsize=4,
        zorder=4,
        label=f"{name}, mean ± std",
    )
    best = min(range(len(eps)), key=lambda j: means[j])
    ax.scatter([eps[best]], [means[best]], marker="*", s=160, color=c, edgecolor="k", zorder=5)
    return [s for x in eps if x != 0.0 for s, _ in pts[x]]


def eps_sweep(runs: list[str], out: str, title: str | None = None) -> dict:
    """Fig. 4: final test error against eps, one panel per group of like runs (see :func:`sweep_table`),
    one line per series, mean ± std over seeds with each run as a dot. Returns :func:`sweep_table`."""
    table = sweep_table(runs)
    if not table:
        raise FigureError("no finished plain / anl / opposite runs among --runs")
    plt = _plt()
    fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table), 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, series), letter in zip(axes[0], table.items(), "abcdefghij"):
        curves = {k: v for k, v in series.items() if not k.startswith("baseline")}
        color = {name: colors[i % len(colors)] for i, name in enumerate(curves)}
        seeds = [s for name, pts in curves.items() for s in _draw_series(ax, name, pts, color[name])]
        base = series.get("baseline, one schedule", {}).get(0.0)
        if base:
            label = f"baseline, one schedule of {panel.split(', ')[1]}, {_seeds_label([s for s, _ in base])}"
            ax.axhline(statistics.fmean(e for _, e in base), color="tab:gray", ls="--", lw=1, label=label)
        stuck = [(x, e, color[n]) for n, pts in curves.items() for x in pts for _, e in pts[x] if diverged(e)]
        for x, e, c in stuck:
            ax.scatter([x], [e], marker="x", s=40, color=c, zorder=6)
        if stuck:
            note = f"x: {len(stuck)} diverged run(s) (test error >= {DIVERGED:g}%), not averaged"
            ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top")
        per_eps = max((len(p) for pts in series.values() for x, p in pts.items() if x != 0.0), default=0)
        ax.set_title(
            f"({letter}) {panel}\nup to {per_eps} run(s) per eps; ANL runs: "
            f"seeds {', '.join(map(str, sorted(set(seeds)))) or '-'}",
            fontsize=9,
        )
        ax.set(xlabel="eps (negative: opposite noise)", ylabel="test error (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _finish(fig, out, title)
    return table


def layer_std(runs: list[str], out: str, title: str | None = None, max_legend: int = 12) -> None:
    """Fig. 2: std of each ANL layer's input per epoch; one panel per run (runs without a finished epoch
    are skipped with a warning)."""
    plt = _plt()
    data = []
    for r in started_runs(runs):
        cfg, hist = read_run(r)
        rows = [(h["epoch"], h["anl_std"]) for h in hist if h.get("anl_std")]
        if not rows:
            why = "a run without ANL, or only its fine-tuning phase"
            raise FigureError(f"{os.path.join(r, METRICS_NAME)!r} has no anl_std entries ({why})")
        data.append((r, cfg, rows))
    fig, axes = plt.subplots(1, len(data), figsize=(5.2 * len(data), 3.9), squeeze=False)
    for ax, (r, cfg, rows) in zip(axes[0], data):
        names = list(rows[0][1])
        epochs = [e for e, _ in rows]
        cmap = plt.get_cmap("viridis")
        for i, name in enumerate(names):
            style = dict(lw=1.2, label=name if len(names) <= max_legend else None, marker="." * (len(epochs) < 30))
            ax.plot(epochs, [s.get(name, math.nan) for _, s in rows], color=cmap(i / max(len(names) - 1, 1)), **style)
        if len(names) > max_legend:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, len(names)))
            fig.colorbar(sm, ax=ax, label="ANL layer (input first, then depth order)")
        else:
            ax.legend(fontsize=7)
        ax.set(xlabel="epoch", ylabel="std of ANL input h")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        label = f"{cfg.get('model', '?')} {cfg.get('variant', '')} eps={cfg.get('eps', '?')}"
        ax.set_title(f"{label}\n{os.path.basename(os.path.normpath(r))}", fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, out, title)


def _run_label(cfg: dict) -> str:
    v, eps, norm = cfg.get("variant", "?"), cfg.get("eps", 0), f"\nnorm={cfg.get('norm', 'sample')}"
    labels = {"plain": "(a) baseline", "gaussian": f"(b) Gaussian eps={eps:g}", "anl": f"(c) ANL eps={eps:g}{norm}"}
    return labels.get(v) or (f"(d) opposite eps={eps:g}{norm}" if v == "opposite" else f"{v} eps={eps:g}")


def first_conv_output(model, x):
    """The first ``Conv2d``'s output for ``x`` (eval mode: noise layers off), copied inside the forward hook: a later
    in-place op (LeNet's ``ReLU(inplace=True)``) rewrites the conv's output tensor, and the hook returns None (a
    returned tensor would become the module's output, which that op then rewrites too)."""
    import torch

    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise FigureError(f"{type(model).__name__} has no Conv2d layer")
    got = {}

    def keep(module, args, output) -> None:  # returns None: a hook's return value would replace the output
        got.setdefault("fm", output.detach().clone())

    handle = conv.register_forward_hook(keep)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return got["fm"]


def feature_maps(
    runs: list[str],
    out: str,
    title: str | None = None,
    image_index: int = 0,
    data_dir: str | None = None,
    max_channels: int = 8,
) -> list:
    """Fig. 3: sigmoid of the first conv's output for one test image, one row per run's checkpoint
    (runs without a finished epoch are skipped with a warning). Returns the rows ``(config, image, sigmoid maps)``."""
    import torch

    from . import data as data_mod
    from .train import CHECKPOINT_NAME, load_trained

    rows = []
    for r in started_runs(runs):
        model, cfg = load_trained(os.path.join(r, CHECKPOINT_NAME))
        bundle = data_mod.load(cfg.dataset, data_dir or cfg.data_dir, val_size=cfg.val_size)
        if not 0 <= image_index < len(bundle.test):
            raise FigureError(f"--image-index must be in [0, {len(bundle.test)}), got {image_index}")
        raw = bundle.test.x[image_index].float()
        raw = raw / 255.0 if bundle.test.x.dtype == torch.uint8 else raw
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (bundle.info.mean, bundle.info.std))
        fm = first_conv_output(model, ((raw - mean) / std)[None])  # normalized as training's batches are
        rows.append((dataclasses.asdict(cfg), raw, torch.sigmoid(fm[0])[:max_channels]))
    cfg0 = rows[0][0]
    default = f"first-conv feature maps (sigmoid), {cfg0.get('model')} on {cfg0.get('dataset')}, "
    _draw_feature_maps(rows, out, title or f"{default}test image {image_index}")
    return rows


def _draw_feature_maps(rows: list, out: str, title: str) -> None:
    """One row per run: the input image, then the sigmoid of each of the first conv's channels."""
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
            ax.set(xticks=[], yticks=[])
            for s in ax.spines.values():
                s.set_visible(False)
    axes[0][0].set_title("input", fontsize=9)
    for j in range(1, ncol):
        axes[0][j].set_title(f"ch {j}", fontsize=9)
    _finish(fig, out, title, fontsize=10)


def _check_format(out: str) -> None:
    """``--out``'s extension is an image format matplotlib writes (none: PNG)."""
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(out)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise FigureError(f"--out {out!r}: {ext!r} is not an image format matplotlib writes ({', '.join(formats)})")


def _print_sweep(table: dict) -> None:
    for panel, series in table.items():
        for name, pts in series.items():
            for eps, points in sorted(pts.items()):
                k = _kept(points)
                mean = f"{k['mean']:.2f}%" if k["n"] else "-"
                bad = f", {len(points) - k['n']} diverged (not averaged)" if len(points) > k["n"] else ""
                seeds = _seeds_label([s for s, _ in points])
                print(f"{panel} | {name} | eps={eps:g}: test error {mean} over {seeds}{bad}")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError
    from .train.config import StoredConfigError

    try:
        _check_format(args.out)
        runs = find_runs(args.runs)
        if args.figure == "eps-sweep":
            _print_sweep(eps_sweep(runs, args.out, args.title))
        elif args.figure == "layer-std":
            layer_std(runs, args.out, args.title, args.max_legend)
        else:
            feature_maps(runs, args.out, args.title, args.image_index, args.data_dir, args.max_channels)
    except (FigureError, CheckpointError, DatasetNotFoundError, OSError, StoredConfigError) as e:
        print(f"anl-fused figures: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0
