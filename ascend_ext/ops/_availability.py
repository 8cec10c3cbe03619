"""Availability checks used when registering implementations."""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def triton_available(device: str) -> str | None:
    """Triton compiles for CUDA and (triton-ascend) NPU; on CPU only the interpreter runs."""
    if not _has_module("triton"):
        return "triton is not installed"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels run on CPU only under the interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return None
