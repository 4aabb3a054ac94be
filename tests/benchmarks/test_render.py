"""The README's measured tables are rendered from the committed result files and are up to date."""

import json

from anl_fused.benchmarks import render


def test_readme_tables_are_up_to_date():
    assert render.main(["--check"]) == 0, "run `python -m anl_fused.benchmarks.render` and commit README.md"


def test_a_stale_table_is_detected_and_rewritten(tmp_path, monkeypatch):
    report = {"steps": [{"model": "vgg11", "batch": 8, "amp": None,
                         "median_s": {"plain": 0.2, "naive": 0.5, "tworound": 0.3},
                         "times_s": {"plain": [0.2, 0.2], "naive": [0.5, 0.6], "tworound": [0.3, 0.3]},
                         "ratios": {"tworound/plain": 1.5, "naive/tworound": 5 / 3}}]}
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
