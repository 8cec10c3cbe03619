"""Public tensor ops of ascend_ext (never imports vLLM).

Each op validates its inputs, then runs the implementation chosen by
:mod:`ascend_ext.ops._dispatch` for the tensors' device (override with
``ASCEND_EXT_IMPL`` or :func:`use_impl`).
"""

from ._dispatch import describe, selected_impl, use_impl
from ._validate import trusted_inputs
from .attention import (PagedKV, TileMask, cooperative_attention, flash_attn_varlen, merge_attn_states,
                        offload_prefix, paged_attention, plan_kv_placement, reshape_and_cache, split_kv_cache)
from .comm import tiled_linear_allreduce
from .mla import concat_and_cache_mla, mla_decode
from .moe import CollectiveTimeoutError, DispatchResult, ep_combine, ep_dispatch, moe_experts, moe_route

__all__ = [
    "CollectiveTimeoutError", "DispatchResult", "PagedKV", "TileMask", "concat_and_cache_mla",
    "cooperative_attention", "describe", "offload_prefix", "plan_kv_placement",
    "ep_combine", "ep_dispatch", "flash_attn_varlen", "merge_attn_states", "mla_decode", "moe_experts",
    "moe_route", "paged_attention", "selected_impl", "tiled_linear_allreduce",
    "reshape_and_cache", "split_kv_cache", "trusted_inputs", "use_impl",
]

from ..npu import register_npu_impls as _register_npu_impls  # noqa: E402

_register_npu_impls()
