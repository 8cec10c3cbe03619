"""Ascend NPU backend: torch_npu fused-op adapters, Triton kernels (triton-ascend) with the
910B tile candidates of ``configs.py``."""

from __future__ import annotations

from .._triton import register_triton


def register_impls() -> None:
    from ...npu import register_npu_impls

    register_npu_impls()
    register_triton("npu", "ascend_ext.backends.npu.configs")
