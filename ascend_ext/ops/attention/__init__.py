"""Attention ops: varlen flash attention, paged attention, cache writes, lse merge.

The plain-torch reference implementations register here (they serve every device);
device backends register theirs in ``ascend_ext/backends/``."""

from ..._devices import ANY_DEVICE
from .._contract import Supports
from .._dispatch import register
from .api import flash_attn_varlen, merge_attn_states, paged_attention, reshape_and_cache, split_kv_cache
from .cascade import CascadePlan, cascade_attention, cascade_pays, plan_cascade, shared_prefix_blocks
from .cooperative import PagedKV, cooperative_attention, offload_prefix, plan_kv_placement
from .tile_mask import TileMask
from .kv_layout import KV_LAYOUTS
from .kv_layout import preferred as preferred_kv_layout

for _op in ("flash_attn_varlen", "paged_attention", "reshape_and_cache", "merge_attn_states"):
    register(_op, "reference", f"ascend_ext.ops.attention.reference:{_op}", devices=ANY_DEVICE,
             supports=Supports(kv_layouts=KV_LAYOUTS))

__all__ = ["CascadePlan", "PagedKV", "TileMask", "cascade_attention", "cascade_pays", "cooperative_attention",
           "flash_attn_varlen", "merge_attn_states", "offload_prefix", "paged_attention", "plan_cascade", "plan_kv_placement", "reshape_and_cache",
           "preferred_kv_layout", "shared_prefix_blocks", "split_kv_cache"]
