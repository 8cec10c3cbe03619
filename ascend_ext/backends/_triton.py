"""Registration of the Triton kernels for one device type, bound to that backend's tile
configs (the same kernel source serves CUDA, Ascend via triton-ascend, and the CPU
interpreter in tests)."""

from __future__ import annotations

import functools
import importlib

from ..kernels import triton as triton_kernels
from ..ops._contract import FLOAT_DTYPES, Supports
from ..ops._dispatch import register

KERNELS = {   # op -> (kernel module, function, takes a configs module)
    "flash_attn_varlen": ("flash_attention", "flash_attn_varlen", True),
    "paged_attention": ("paged_attention", "paged_attention", True),
    "merge_attn_states": ("paged_attention", "merge_attn_states", False),
    "mla_decode": ("mla_decode", "mla_decode", True),
    "moe_experts": ("moe_experts", "moe_experts", False),
    "ep_dispatch": ("expert_parallel", "ep_dispatch", False),
    "ep_combine": ("expert_parallel", "ep_combine", False),
}
SUPPORTS = {
    "flash_attn_varlen": Supports(note="head dims up to 256"),
    "mla_decode": Supports(dtypes=FLOAT_DTYPES),
}


def _loader(module: str, function: str, configs: str | None):
    def load():
        fn = getattr(importlib.import_module(f"{triton_kernels.__name__}.{module}"), function)
        return functools.partial(fn, configs=importlib.import_module(configs)) if configs else fn
    return load


def register_triton(device: str, configs: str, supports: dict | None = None) -> None:
    """Register every Triton kernel as implementation "triton" on ``device`` (``supports``:
    per-op restrictions of this device's Triton, over the defaults)."""
    table = dict(SUPPORTS, **(supports or {}))
    for op, (module, function, takes_configs) in KERNELS.items():
        register(op, "triton", _loader(module, function, configs if takes_configs else None), devices=(device,),
                 available=triton_kernels.available, supports=table.get(op))
