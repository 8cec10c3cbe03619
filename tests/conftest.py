"""Shared test set-up.

* Triton kernels run under the interpreter when no GPU is present, so the same
  kernel source is exercised in CPU-only CI (must be set before triton is imported).
* Inputs are fresh random numbers every run; the seed is printed so a failure can
  be replayed with ASCEND_EXT_TEST_SEED=<seed>.
"""

import os
import random
import time
import zlib

import pytest

try:
    import torch
    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

SEED = int(os.environ.get("ASCEND_EXT_TEST_SEED", time.time_ns() % (2**31)))


def pytest_report_header(config):
    return f"ascend_ext test seed: {SEED} (replay with ASCEND_EXT_TEST_SEED={SEED})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The seed again at the end, where a CI log's tail shows it next to the failures."""
    if exitstatus != 0:
        terminalreporter.write_line(f"ascend_ext test seed: {SEED} (replay with ASCEND_EXT_TEST_SEED={SEED})")


@pytest.fixture
def rng(request):
    """A torch.Generator seeded per test from the session seed and the test id."""
    g = torch.Generator()
    g.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))
    random.seed(SEED)
    return g


def _has_npu() -> bool:
    from ascend_ext import hardware
    return hardware.npu_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    skip_npu = pytest.mark.skip(reason="needs an Ascend NPU with torch_npu (none found)")
    has_npu = None
    for item in items:
        if item.get_closest_marker("gpu") and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("npu"):
            has_npu = _has_npu() if has_npu is None else has_npu
            if not has_npu:
                item.add_marker(skip_npu)
