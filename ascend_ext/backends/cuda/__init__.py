"""NVIDIA GPU backend: Triton kernels with the tile configs of ``configs.py``, and the vLLM
platform (``platform.py``)."""

from __future__ import annotations

from .._triton import register_triton


def register_impls() -> None:
    register_triton("cuda", "ascend_ext.backends.cuda.configs")
