"""Shared pytest setup: the repository root on sys.path (for the `autograder` tools) and one torch thread
per test process (the suite runs on 2 cores, often with pytest-xdist)."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global RNG state, so a test that draws unseeded inputs draws the same
    ones on every run and in any order (pytest-xdist reorders tests): a tolerance either holds or it does not."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(request, monkeypatch):
    """In the kernel tests, every output buffer the kernels write (out, lse, dq, dk, dv) starts as NaN, on the
    CPU and the GPU alike. ``torch.empty`` hands back recycled memory (PyTorch's CUDA caching allocator
    returns the block the last call of the same shape freed), which may already hold the right answer: an
    element the kernel forgets to write would then pass unseen. NaN fails every comparison instead."""
    if not request.module.__name__.startswith("test_kernels"):
        return
    from test_kernels_common import poison_kernel_outputs

    poison_kernel_outputs(monkeypatch)
