"""Ascend NPU backend: torch_npu fused-op adapters (``attention``, ``mla``, ``moe``,
``comm``; documented op limits in ``constraints``), Triton kernels (triton-ascend) with the
910B tile candidates of ``configs.py``, and the vLLM platform (``platform``, on vllm-ascend).

Every adapter is an implementation named "npu" in the op registry (device "npu"). They
are thin: argument mapping, layout views and output conversion only. The tests run them
on CPU through torch_npu's real op schemas with an emulation of its documented semantics
(tests/npu/, never imported here).
"""

from __future__ import annotations

import importlib

from .._triton import register_triton


def torch_npu():
    """The torch_npu module (or a stand-in the tests install in sys.modules)."""
    return importlib.import_module("torch_npu")


def npu_available(device: str) -> str | None:
    if device != "npu":
        return "torch_npu ops run on NPU tensors only"
    try:
        torch_npu()
    except ImportError:
        return "torch_npu is not installed"
    return None


def hccl_group_name(group) -> str:
    """The HCCL communicator name of a torch.distributed group, as the fused comm ops take it."""
    import torch
    import torch.distributed as dist

    module = torch_npu()
    if getattr(module, "__ascend_ext_emulation__", False):
        return module.emulation_group_name(group)
    group = group or dist.group.WORLD
    backend = group._get_backend(torch.device("npu"))
    return backend.get_hccl_comm_name(dist.get_rank(group))


def register_impls() -> None:
    """Register the torch_npu adapters (implementation "npu") and the Triton kernels."""
    from ...ops._dispatch import register

    for op, target in (("flash_attn_varlen", "attention:flash_attn_varlen"),
                       ("paged_attention", "attention:paged_attention"),
                       ("mla_decode", "mla:mla_decode"),
                       ("ep_dispatch", "moe:ep_dispatch"), ("ep_combine", "moe:ep_combine"),
                       ("tiled_linear_allreduce", "comm:tiled_linear_allreduce")):
        register(op, "npu", f"ascend_ext.backends.npu.{target}", devices=("npu",), available=npu_available)
    register_triton("npu", "ascend_ext.backends.npu.configs")
