"""Attention ops: varlen flash attention, paged attention, cache writes, lse merge."""

from .._availability import triton_available
from .native import native_available
from .._dispatch import register
from ..._devices import ANY_DEVICE
from .api import flash_attn_varlen, merge_attn_states, paged_attention, reshape_and_cache, split_kv_cache
from .cooperative import PagedKV, cooperative_attention, offload_prefix, plan_kv_placement
from .tile_mask import TileMask

for _op in ("flash_attn_varlen", "paged_attention", "reshape_and_cache", "merge_attn_states"):
    register(_op, "reference", f"ascend_ext.ops.attention.reference:{_op}", devices=ANY_DEVICE)
register("flash_attn_varlen", "triton", "ascend_ext.ops.attention.triton_flash:flash_attn_varlen",
         devices=("cuda", "npu", "cpu"), available=triton_available)
for _op in ("paged_attention", "merge_attn_states"):
    register(_op, "triton", f"ascend_ext.ops.attention.triton_paged:{_op}",
             devices=("cuda", "npu", "cpu"), available=triton_available)
for _op in ("flash_attn_varlen", "paged_attention", "reshape_and_cache"):
    register(_op, "native", f"ascend_ext.ops.attention.native:{_op}", devices=("cpu",),
             available=native_available)

__all__ = ["PagedKV", "TileMask", "cooperative_attention", "flash_attn_varlen", "merge_attn_states",
           "offload_prefix", "paged_attention", "plan_kv_placement", "reshape_and_cache", "split_kv_cache"]
