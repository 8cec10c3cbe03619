"""Which implementations of an op family the parity tests run here."""

import os

import torch

from ascend_ext.ops import _dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def runnable(op: str, **needs: bool) -> list[str]:
    """Implementations of ``op`` that run on DEVICE (and support each feature in ``needs``,
    e.g. ``mask=True``)."""
    names = []
    for name, impl in sorted(_dispatch.implementations(op, DEVICE).items()):
        if impl.unavailable_reason(DEVICE) is None and all(getattr(impl.supports, k) for k in needs):
            names.append(name)
    return names


def interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def require_tensor_descriptors() -> None:
    """Skip unless the Triton kernels' tensor-descriptor (TMA) paths run on DEVICE: Hopper or
    newer when compiled, an interpreter that executes descriptor loads on CPU."""
    import pytest

    from ascend_ext.kernels.triton.common import interpreter_reads_descriptors

    if DEVICE == "cpu" and not interpreter_reads_descriptors():
        pytest.skip("this Triton's interpreter has no tensor-descriptor loads")
    if DEVICE == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need Hopper or newer")
