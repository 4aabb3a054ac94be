"""The measured tables of README.md and docs/*.md are rendered from the committed result files and are up to
date."""

import glob
import json
import os
import pathlib
import re

from anl_fused.benchmarks import render
from anl_fused.experiments import demo


def test_readme_tables_are_up_to_date():
    """README.md and every docs/*.md page (the default files of ``render --check``)."""
    assert render.main(["--check"]) == 0, "run `python -m anl_fused.benchmarks.render` and commit README.md and docs/"


def test_every_documentation_page_is_checked():
    pages = [os.path.relpath(p, render.ROOT) for p in render.pages()]
    docs = sorted(os.path.relpath(p, render.ROOT) for p in glob.glob(os.path.join(render.ROOT, "docs", "*.md")))
    assert pages == ["README.md", *docs]
    marked = [p for p in pages if render.BLOCK.search(pathlib.Path(render.ROOT, p).read_text(encoding="utf-8"))]
    # the long measurements live in docs/; the README keeps one table per result
    assert "README.md" in marked and {"docs/speed.md", "docs/robustness.md"} <= set(marked)


def _spread(st: dict, sign: str = "", one: str = " (1 seed)") -> str:
    return f"{st['mean']:{sign}.2f}" + (f" ± {st['std']:.2f}" if st["n"] > 1 else one)


def _table1_line(row: dict, paper: dict) -> str:
    """What the retired ``anl-fused table1`` (commit 106767d) printed for one row of its JSON."""
    v, eps, norm, t = row["variant"], row["eps"], row["norm"], row["test_err"]
    label = {"plain": "baseline", "baseline-two-phase": "baseline, two phases (control)"}.get(v)
    label = label or {"gaussian": f"Gaussian, eps={eps:g}", "anl": f"+ANL eps={eps:g}, norm={norm}"}.get(v)
    label = label or f"+ANL eps=-{eps:g} (opposite), norm={norm}"
    mean = _spread(t)
    if row.get("diverged_seeds"):
        w = row.get("test_err_without_diverged")
        mean += f"; without the {len(row['diverged_seeds'])} diverged: " + (_spread(w) if w else "-")
    seeds = ", ".join(f"{x:.2f}" + (" (diverged)" if x >= 80 else "") for x in t["values"])
    vs = [row.get(k) for k in ("vs_baseline", "vs_two_phase")]
    vs = ["-" if d is None else f"{_spread(d, '+', '')} ({d['better']}/{d['worse']})" for d in vs]
    cited = paper.get(v) if eps in (0.0, 0.03) else None
    return " | ".join(["", label, "-" if cited is None else f"{cited:.2f}", mean, str(t["n"]), seeds, *vs, ""]).strip()


def test_the_retired_table1_tables_are_their_json():
    """docs/table1.md's tables are static text since ``anl-fused table1`` was retired (issue #19): every row is
    its JSON's row (the paper's number, mean ± std, per-seed errors, paired differences), none more, none less."""
    text = pathlib.Path(render.ROOT, "docs", "table1.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- table1 (\S+) -->\n(.*?)<!-- /table1 -->", text, re.S)
    assert [os.path.basename(p) for p, _ in blocks] == [
        "lenet5-fashion-mnist-e15f15-b128.json",
        "lenet5-fashion-mnist-e15f15-eps-sweep.json",
    ]
    for path, body in blocks:
        result = render.load_json(path)
        lines = body.splitlines()
        assert lines[0].startswith("| method | paper (Table 1) | ours: test error % (mean ± std) | seeds | per seed |")
        want = [_table1_line(row, result["paper"]) for row in result["rows"].values()]
        assert sorted(lines[2:]) == sorted(want) and len(want) == len(result["rows"])


def test_a_stale_table_in_a_docs_page_fails_the_default_check(tmp_path, monkeypatch, capsys):
    report = {
        "steps": [
            {
                "model": "vgg11",
                "batch": 8,
                "amp": None,
                "median_s": {"plain": 0.2, "tworound": 0.3},
                "times_s": {"plain": [0.2, 0.2], "tworound": [0.3, 0.3]},
                "ratios": {"tworound/plain": 1.5},
            }
        ]
    }
    (tmp_path / "r.json").write_text(json.dumps(report))
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    block = "<!-- render:steps r.json -->\n{}<!-- /render -->\n"
    (tmp_path / "README.md").write_text("# x\n" + block.format(render.RENDERERS["steps"](["r.json"])))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "speed.md").write_text("# speed\n" + block.format("| stale |\n"))
    assert render.main(["--check"]) == 1
    assert capsys.readouterr().out == "out of date: docs/speed.md: steps r.json\n"
    assert render.main([]) == 0
    row = "| VGG-11 | 8 | fp32 | 200 ms | - | - | 300 ms | 1.50x | - | 0% |"
    assert row in (tmp_path / "docs" / "speed.md").read_text()
    assert render.main(["--check"]) == 0


def test_a_stale_table_is_detected_and_rewritten(tmp_path, monkeypatch):
    report = {
        "steps": [
            {
                "model": "vgg11",
                "batch": 8,
                "amp": None,
                "median_s": {"plain": 0.2, "naive": 0.5, "tworound": 0.3},
                "times_s": {"plain": [0.2, 0.2], "naive": [0.5, 0.6], "tworound": [0.3, 0.3]},
                "ratios": {"tworound/plain": 1.5, "naive/tworound": 5 / 3},
            }
        ]
    }
    (tmp_path / "r.json").write_text(json.dumps(report))
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- render:steps r.json -->\n| stale |\n<!-- /render -->\nmore\n")
    assert render.main([str(doc), "--check"]) == 1
    assert render.main([str(doc)]) == 0
    text = doc.read_text()
    assert "| VGG-11 | 8 | fp32 | 200 ms | 500 ms | - | 300 ms | 1.50x | 1.67x | 18% |" in text
    assert text.startswith("text\n") and text.endswith("<!-- /render -->\nmore\n") and "stale" not in text
    assert render.main([str(doc), "--check"]) == 0


def test_probe_tables_render_their_json(tmp_path, monkeypatch):
    steps = {
        "steps": [
            {
                "model": "resnet18",
                "batch": 64,
                "median_s": {"plain": 1.0, "tworound": 1.7, "tworound-bf16probe": 1.5},
                "ratios": {
                    "tworound/plain": 1.7,
                    "tworound-bf16probe/plain": 1.5,
                    "tworound-bf16probe/tworound": 1.5 / 1.7,
                },
                "ratio_stats": {"tworound-bf16probe/plain": {"min": 1.4, "max": 1.6}},
            }
        ]
    }
    arm = lambda mean: {"test_err_pct": {"mean": mean, "std": 0.5}}
    accuracy = {
        "protocol": {"dataset": "digits", "model": "vgg_tiny"},
        "seeds": [0, 1, 2],
        "summary": {
            "arms": {"plain": arm(1.0), "anl-fp32": arm(0.7), "anl-bf16": arm(0.75)},
            "paired": {"anl-bf16 - anl-fp32": {"mean": 0.05, "se": 0.1, "better": 1, "same": 1, "worse": 1}},
        },
    }
    s = {"layers": 8, "cos_mean_median": 0.96, "cos_mean_min": 0.95, "cos_min": 0.9, "norm_err_max": 0.03}
    agreement = {
        "summary": {
            "vgg11": {
                "bf16": s,
                "fp16": {**s, "cos_mean_median": 0.995, "cos_mean_min": 0.99},
                "sgd-1e-4": {**s, "cos_mean_median": 0.91},
                "sgd-0.1": {**s, "cos_mean_median": 0.01},
            }
        }
    }
    for name, data in (("s.json", steps), ("a.json", accuracy), ("g.json", agreement)):
        (tmp_path / name).write_text(json.dumps(data))
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    assert render.RENDERERS["probe-steps"](["s.json"]).splitlines()[2] == (
        "| ResNet-18 | 64 | 1000 ms | 1700 ms | 1500 ms | 1.70x | 1.50x [1.40, 1.60] | 0.88x |"
    )
    assert render.RENDERERS["probe-accuracy"](["a.json"]).splitlines()[2] == (
        "| digits, vgg_tiny | 3 | 1.00 ± 0.50% | 0.70 ± 0.50% | 0.75 ± 0.50% | +0.05 ± 0.10 pp (1/1/1) | - |"
    )
    assert render.RENDERERS["probe-agreement"](["g.json"]).splitlines()[2] == (
        "| VGG-11 | 8 | 0.960 [0.950] | 0.900 | 3.0% | 0.995 [0.990] | 0.910 / 0.010 |"
    )


def _demo_results() -> dict:
    """A demo's results.json: three variants over five seeds."""

    def variant(label, errs, ms, ratio, train_err, paired=None):
        v = {
            "label": label,
            "test_err": dict(zip(("mean", "std", "min", "max", "n"), errs)),
            "time_per_step_ms": ms,
            "time_ratio_vs_plain": ratio,
            "final_train_err": train_err,
        }
        if paired:
            v["paired_diff_vs_plain"] = dict(zip(("mean", "se", "better", "same", "worse"), paired))
        return v

    results = {
        "summary": {
            "plain": variant("plain", (0.97, 0.32, 0.5, 1.33, 5), 7.75, 1.0, 0.0),
            "anl": variant("ANL eps=0.1", (0.70, 0.07, 0.67, 0.83, 5), 15.58, 2.01, 0.0, (-0.27, 0.15, 3, 1, 1)),
            "opposite": variant(
                "opposite eps=-0.1", (1.67, 0.31, 1.17, 2.0, 5), 15.84, 2.04, 0.04, (0.70, 0.21, 0, 0, 5)
            ),
        },
        "protocol": {
            "model": "vgg_tiny",
            "eps": [0.1],
            "train_default_eps": 0.02,
            "seeds": 5,
            "epochs": 20,
            "finetune_epochs": 10,
            "batch_size": 64,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "lr_factor": 0.5,
            "patience": 5,
            "hold_epochs": 5,
            "min_lr": 1e-3,
        },
        "machine": {
            "date": "2026-11-24 10:00 UTC",
            "device": "cpu",
            "torch": "2.14.1",
            "triton": "3.8.0",
            "threads": 1,
            "cpu_count": 2,
            "cpu": "Some CPU",
        },
        "dataset_sizes": {"train": 897, "val": 300, "test": 600},
        "wall_time_s": 91.26,
    }
    return results


def test_demo_table_renders_the_demos_printout(tmp_path, monkeypatch):
    """The ``demo`` renderer prints the demo's own table (format_table) from its results.json, as a text block;
    these rows are the ones the demo printed before its README block was rendered."""
    results = _demo_results()
    (tmp_path / "d.json").write_text(json.dumps(results))
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    text = render.RENDERERS["demo"](["d.json"])
    lines = text.splitlines()
    assert lines[0] == "```text" and lines[-1] == "```" and text.endswith("```\n")
    assert "\n".join(lines[1:-1]) == demo.format_table(results)
    assert lines.index(
        "variant                    test error %     [min, max]       vs plain, paired train err %  ms/step vs plain"
    ) + 3 == lines.index(
        "opposite eps=-0.1         1.67 ± 0.31     [1.17, 2.00]   +0.70 ± 0.21 (0/0/5)        0.04    15.84    2.04x"
    )
    for row in (
        "plain                     0.97 ± 0.32     [0.50, 1.33]                      -        0.00     7.75    1.00x",
        "ANL eps=0.1               0.70 ± 0.07     [0.67, 0.83]   -0.27 ± 0.15 (3/1/1)        0.00    15.58    2.01x",
    ):
        assert row in lines
    assert "2026-11-24 10:00 UTC, device cpu, torch 2.14.1, triton 3.8.0, 1 thread(s), 2 CPU(s), Some CPU" in lines
    assert "total wall time 91.3 s." in text


def test_the_whitebox_table_renders_its_json(tmp_path, monkeypatch):
    """``whitebox``: means over runs, the per-seed range of the difference to the two-phase control."""
    run = lambda seed, clean, fgsm, ifgsm: {"seed": seed, "clean": clean, "fgsm": fgsm, "ifgsm": ifgsm}
    whitebox = {
        "lenet5: baseline two-phase": [run(0, 90.0, 20.0, 5.0), run(1, 91.0, 24.0, 7.0)],
        "lenet5: ANL 0.03 sample": [run(0, 89.0, 30.0, 15.0), run(1, 90.0, 26.0, 8.0)],
    }
    (tmp_path / "w.json").write_text(json.dumps(whitebox))
    monkeypatch.setattr(render, "ROOT", str(tmp_path))
    assert render.RENDERERS["whitebox"](["w.json"]).splitlines()[2:] == [
        "| baseline two-phase | 2 | 90.5 | 22.0 | 6.0 | - | - |",
        "| ANL 0.03 sample | 2 | 89.5 | 28.0 | 11.5 | [+2.0, +10.0] | [+1.0, +10.0] |",
    ]
