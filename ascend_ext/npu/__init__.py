"""Ascend NPU adapters: ascend_ext ops on top of torch_npu fused operators.

Every adapter is an implementation named "npu" in the op registry (device "npu"). They
are thin: argument mapping, layout views and output conversion only. The emulation in
:mod:`ascend_ext.npu.emulation` lets the tests run them on CPU.
"""

from __future__ import annotations

import importlib


def torch_npu():
    """The torch_npu module (or the emulation installed in its place by the tests)."""
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


def register_npu_impls() -> None:
    from ..ops._dispatch import register

    for op, target in (("flash_attn_varlen", "attention:flash_attn_varlen"),
                       ("paged_attention", "attention:paged_attention"),
                       ("mla_decode", "mla:mla_decode"),
                       ("ep_dispatch", "moe:ep_dispatch"), ("ep_combine", "moe:ep_combine"),
                       ("tiled_linear_allreduce", "comm:tiled_linear_allreduce")):
        register(op, "npu", f"ascend_ext.npu.{target}", devices=("npu",), available=npu_available)
