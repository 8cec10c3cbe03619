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
    """Register the torch_npu adapters (implementation "npu") and the Triton kernels, with
    what each supports (the fused ops' documented limits; ``constraints`` checks the rest)."""
    import torch

    from ...ops._contract import Supports
    from ...ops._dispatch import register

    half = (torch.float16, torch.bfloat16)
    supports = {
        "flash_attn_varlen": Supports(softcap=False, note="npu_fusion_attention has no logit softcap"),
        "paged_attention": Supports(dtypes=half, softcap=False, kv_quant=("int8",),
                                    note="npu_fused_infer_attention_score: fp16/bf16, no logit softcap, "
                                         "int8 (not fp8) KV caches"),
        "mla_decode": Supports(dtypes=half, fp8_cache=False,
                               note="npu_fused_infer_attention_score_v2 takes the cache in the query dtype"),
    }
    for op, target in (("flash_attn_varlen", "attention:flash_attn_varlen"),
                       ("paged_attention", "attention:paged_attention"),
                       ("mla_decode", "mla:mla_decode"),
                       ("ep_dispatch", "moe:ep_dispatch"), ("ep_combine", "moe:ep_combine"),
                       ("tiled_linear_allreduce", "comm:tiled_linear_allreduce")):
        register(op, "npu", f"ascend_ext.backends.npu.{target}", devices=("npu",), available=npu_available,
                 supports=supports.get(op))
    register_triton("npu", "ascend_ext.backends.npu.configs",
                    supports={"mla_decode": Supports(fp8_cache=False, note="triton-ascend 3.2 has no fp8 type"),
                              "paged_attention": Supports(kv_quant=("int8",),
                                                          note="triton-ascend 3.2 has no fp8 type")})
