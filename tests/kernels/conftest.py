"""Fixtures shared by the kernel tests (test_add_noise.py, test_noise_scale.py, test_std.py).

Here rather than in ``_helpers.py``: pytest finds a conftest's fixtures by name, where a fixture imported
into a test module reads to the linter as an unused import redefined by each test's argument.
"""

import pytest
import torch

from ._helpers import kernel_device


@pytest.fixture
def dev():
    """Where the kernels run here (``_helpers.kernel_device``): CPU under the interpreter, else CUDA."""
    return kernel_device()


@pytest.fixture
def seeded():
    """Every test draws the same random data whatever ran before it (failures reproduce). Not autouse: a
    module opts in with ``pytest.mark.usefixtures("seeded")``."""
    torch.manual_seed(0)
