"""Test-wide settings: one intra-op thread.

The package's tests use small tensors, for which torch's thread pool costs more than it saves on
the 2-core machines the book is built on (measured: 2-10x slower under load with two threads).
"""

import torch

torch.set_num_threads(1)
