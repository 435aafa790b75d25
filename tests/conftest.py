"""Test-wide settings: one intra-op thread, and validation defaults restored after every test.

The package's tests use small tensors, for which torch's thread pool costs more than it saves on
the 2-core machines the book is built on (measured: 2-10x slower under load with two threads).
"""

import pytest
import torch
from torch.distributions import Distribution

import redge_mini

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_validation_defaults():
    """Keep each test's validation settings from leaking into the next.

    ``torch.compile`` switches ``torch.distributions``' default argument validation off for the
    whole process, and some tests switch ``redge_mini.set_validate_args`` off on purpose.
    """
    torch_default = Distribution._validate_args
    ours = redge_mini.get_validate_args()
    yield
    Distribution.set_default_validate_args(torch_default)
    redge_mini.set_validate_args(ours)
