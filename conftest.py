"""Repository-wide pytest options.

``pytest --benchmark`` runs the throughput comparisons of ``benchmarks/`` (plain training vs the naive
double pass vs ``TwoRound``, per model, with their ratios) with pytest-benchmark enabled; without the
flag those files are not collected and the default suite does no timing at all.
"""

import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks")


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suites under benchmarks/ with pytest-benchmark enabled",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("--benchmark"):
        config.option.benchmark_enable = True  # overrides addopts' --benchmark-disable


def pytest_ignore_collect(collection_path, config):
    inside = os.path.commonpath([str(collection_path), BENCHMARKS]) == BENCHMARKS
    if inside and not config.getoption("--benchmark"):
        return True
    return None
