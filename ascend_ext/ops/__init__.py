"""Public tensor ops of ascend_ext (never imports vLLM).

Each op validates its inputs, then runs the implementation bound (once per device type)
by :mod:`ascend_ext.ops._dispatch` (override with ``ASCEND_EXT_IMPL`` or :func:`use_impl`);
under torch.compile it calls the matching ``torch.ops.ascend_ext`` custom op
(:mod:`ascend_ext.ops._library`). The contract of every op is in :mod:`._contract`.
"""

from . import _library  # noqa: F401 - defines torch.ops.ascend_ext.*
from ._dispatch import describe, rebind, selected_impl, use_impl
from ._validate import trusted_inputs
from .attention import (CascadePlan, PagedKV, TileMask, cascade_attention, cascade_pays, cooperative_attention,
                        flash_attn_varlen, merge_attn_states, offload_prefix, paged_attention, plan_cascade,
                        plan_kv_placement, preferred_kv_layout, reshape_and_cache, shared_prefix_blocks,
                        split_kv_cache)
from .comm import tiled_linear_allreduce
from .mla import concat_and_cache_mla, mla_decode
from .moe import CollectiveTimeoutError, DispatchResult, ep_combine, ep_dispatch, ep_moe, moe_experts, moe_route

__all__ = [
    "CascadePlan", "CollectiveTimeoutError", "DispatchResult", "PagedKV", "TileMask", "cascade_attention",
    "cascade_pays", "concat_and_cache_mla", "cooperative_attention", "plan_cascade", "shared_prefix_blocks", "describe", "offload_prefix", "plan_kv_placement",
    "ep_combine", "ep_dispatch", "ep_moe", "flash_attn_varlen", "merge_attn_states", "mla_decode", "moe_experts",
    "moe_route", "paged_attention", "preferred_kv_layout", "rebind", "selected_impl", "tiled_linear_allreduce",
    "reshape_and_cache", "split_kv_cache", "trusted_inputs", "use_impl",
]
