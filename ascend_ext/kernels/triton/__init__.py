"""Triton kernels of ascend_ext: one source for NVIDIA GPUs (Triton), Ascend NPUs
(triton-ascend) and CPUs (the Triton interpreter, used by the tests).

Kernel wrappers take their tile sizes from a ``configs`` module that the backend binds
(``ascend_ext.backends.<device>.configs``); shared building blocks live in
:mod:`.common`. Nothing here is imported unless a backend selects a Triton kernel.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def _installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device: str) -> str | None:
    """None when Triton kernels can run on ``device``, else the reason.

    Triton compiles for CUDA and (triton-ascend) NPU; on CPU only the interpreter runs."""
    if not _installed():
        return "triton is not installed"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels run on CPU only under the interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return None
