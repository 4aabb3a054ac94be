"""Test setup: Triton kernels run in the interpreter on CPU tensors when no GPU is here.

``TRITON_INTERPRET`` must be set before anything imports ``triton``, hence here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's models are tiny: one intra-op thread is as fast on this 2-core machine and does not
    stall when another job loads the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
