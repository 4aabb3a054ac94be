"""anl-fused's benchmarks (installed as ``anl_fused.benchmarks``; ``anl-fused bench`` runs ``step``).

A training step is timed with ``step.time_methods`` outside pytest (``anl-fused bench``, ``run.py``)
and with pytest-benchmark in ``test_bench_step.py``; a kernel with ``triton.testing.do_bench`` (``kernels.py``).
``run.py`` is the GPU campaign; ``render.py`` renders the documentation's tables from ``results/``. Benchmarks are
not tests: nothing here asserts on time.
"""
