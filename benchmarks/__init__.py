"""anl-fused's benchmarks (installed as ``anl_fused.benchmarks``; ``anl-fused bench`` runs them).

- ``step``: one training step, plain vs the authors'-style naive double pass (``naive``) vs the
  reference vs ``TwoRound``, timed side by side, ratios and machine details as JSON.
- ``kernels``: GB/s of the three Triton kernels against the unfused torch ops and a device copy (CUDA).
- ``run.py``: the one-command campaign (tests, steps, kernels) for a machine, results under ``results/``.
- ``test_bench_*.py``: the same comparisons as pytest-benchmark suites (``pytest --benchmark``).

Benchmarks are not tests: nothing here asserts on time.
"""
