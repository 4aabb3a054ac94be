"""anl-fused's benchmarks (installed as ``anl_fused.benchmarks``; ``anl-fused bench`` runs them).

- ``step``: one training step, plain vs the authors'-style naive double pass (``naive``) vs the
  reference vs ``TwoRound``, timed side by side, ratios and machine details as JSON.
- ``kernels``: GB/s of the three Triton kernels against the unfused torch ops and a device copy (CUDA).
- ``aot_report``: the kernels as an A100 / H100 / H200 would run them, made without a GPU: launches per
  ANL layer of a model's step, registers, spills, vector widths, bytes moved vs the minimum (issue #12).
- ``host_overhead``: host cost of one op call, the launch excluded, against a plain torch op (issue #12).
- ``run.py``: the one-command campaign (tests, steps, kernels) for a machine, results under ``results/``.
- ``test_bench_*.py``: the same comparisons as pytest suites (``pytest --benchmark``).

One way to time each thing: a training step with ``step.time_methods`` in the runner, the campaign and
``profile_step`` (interleaved rounds, medians and paired ratios) and with pytest-benchmark in
``test_bench_step.py``; a kernel with ``triton.testing.do_bench`` (``kernels.py``, CUDA).

Benchmarks are not tests: nothing here asserts on time.
"""
