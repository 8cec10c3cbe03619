"""The contract of every op, in one place: its implementation signature, its
torch.library schema, and how an implementation declares what it supports.

* ``IMPL_SIGNATURES``: the Python signature every implementation of an op must have
  (``tests/ops/test_contract.py`` checks each registered one against it). Public ops
  validate and normalise their arguments, then call the bound implementation with
  exactly these parameters.
* ``SCHEMAS``: the ``torch.ops.ascend_ext.<op>`` schema (see :mod:`._library`), with
  mutation annotations for the caches and outputs an op writes.
* :class:`Supports`: what an implementation accepts; a request beyond it raises the
  same ``NotImplementedError`` from every backend (:func:`require`) instead of a
  silent fallback.

Conventions shared by all ops: lse is float32 natural log laid out ``[heads, tokens]``
(tokens in the query's token order: ``T`` for packed ops, ``B * s_q`` for MLA); a row
that sees no key has output 0 and lse ``-inf``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# op name -> family name used by ASCEND_EXT_IMPL
OP_FAMILIES: dict[str, str] = {
    "flash_attn_varlen": "attention",
    "paged_attention": "attention",
    "reshape_and_cache": "attention",
    "merge_attn_states": "attention",
    "mla_decode": "mla",
    "concat_and_cache_mla": "mla",
    "moe_route": "moe",
    "moe_experts": "moe",
    "ep_dispatch": "moe",
    "ep_combine": "moe",
    "tiled_linear_allreduce": "comm",
}

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------
# Implementation signatures (positional-or-keyword, then keyword-only parameters).
# An implementation may add trailing keyword-only parameters with defaults (tuning knobs).
def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                       softmax_scale, window, mask, softcap, out, return_lse, sinks):
    """-> lse [Hq, Tq] or None; writes out [Tq, Hq, Dv].

    sinks: None or float32 [Hq] sink logits (one extra denominator term per row, lse included)."""


def _paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                     softmax_scale, window, softcap, out, return_lse, max_seqlen_k, kv_scales, sinks, kv_layout):
    """-> lse [Hq, Tq] or None; writes out [Tq, Hq, Dv].

    kv_scales: None (caches in the dtype of q), or the :class:`~.attention.kv_quant.KVScales`
    of float8_e4m3fn / int8 caches (dequantise on load). sinks: as for flash_attn_varlen (a
    split-KV implementation joins it once, when it combines the splits). kv_layout: "rows",
    "pairs" or "tiles" (:mod:`.attention.kv_layout`)."""


def _reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, *, kv_scales, kv_layout):
    """Writes the caches in place (kv_scales: None, or how to quantise into fp8 / int8 caches;
    kv_layout: "rows", "pairs" or "tiles")."""


def _merge_attn_states(out_a, lse_a, out_b, lse_b):
    """-> (out [T, H, D], lse [H, T])."""


def _mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
                kv_scale):
    """-> lse [Hq, B * s_q] or None; writes out [B, s_q, Hq, kv_lora_rank].

    kv_scale: None, or the per-tensor dequantisation scale (float > 0) of a float8_e4m3fn
    cache (q float16/bfloat16); an implementation without FP8 caches raises
    NotImplementedError when it is not None."""


def _concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping):
    """Writes the latent cache in place."""


def _moe_route(router_logits, top_k, *, scoring, renormalize, num_expert_group, topk_group,
               correction_bias, routed_scaling_factor, score_dtype):
    """-> (topk_weights float32 [T, k], topk_ids int32 [T, k]); score_dtype None = float32 scores."""


def _moe_experts(x, w13, w2, expert_offsets, tokens_per_expert, *, scales, out_dtype):
    """-> [N, H] in out_dtype."""


def _ep_dispatch(x, topk_ids, topk_weights, num_experts, group, *, quant, max_tokens_per_rank, timeout_s,
                 check_values):
    """-> DispatchResult."""


def _ep_combine(expert_out, handle):
    """-> [T, H]."""


def _tiled_linear_allreduce(x, weight, bias, group, *, tile_tokens, timeout_s):
    """-> [T, N]."""


IMPL_SIGNATURES: dict[str, inspect.Signature] = {
    op: inspect.signature(fn) for op, fn in {
        "flash_attn_varlen": _flash_attn_varlen, "paged_attention": _paged_attention,
        "reshape_and_cache": _reshape_and_cache, "merge_attn_states": _merge_attn_states,
        "mla_decode": _mla_decode, "concat_and_cache_mla": _concat_and_cache_mla,
        "moe_route": _moe_route, "moe_experts": _moe_experts, "ep_dispatch": _ep_dispatch,
        "ep_combine": _ep_combine, "tiled_linear_allreduce": _tiled_linear_allreduce,
    }.items()
}


def signature_mismatch(op: str, fn) -> str | None:
    """None when ``fn`` has the implementation signature of ``op``, else what differs."""
    want = list(IMPL_SIGNATURES[op].parameters.values())
    have = list(inspect.signature(fn).parameters.values())
    for i, expected in enumerate(want):
        if i >= len(have):
            return f"missing parameter {expected.name!r}"
        got = have[i]
        if got.name != expected.name or got.kind != expected.kind:
            return f"parameter {i} is {got.name!r} ({got.kind.description}), expected {expected.name!r} " \
                   f"({expected.kind.description})"
    for extra in have[len(want):]:
        if extra.kind is not inspect.Parameter.KEYWORD_ONLY or extra.default is inspect.Parameter.empty:
            return f"extra parameter {extra.name!r} must be keyword-only with a default"
    return None


# --------------------------------------------------------------------------------------
# torch.library schemas of torch.ops.ascend_ext.* (tensor-only forms; see _library.py).
# Optional ints use -1 for "none"; windows are (left, right) with -1 unbounded.
# A TileMask travels as its tensors plus int[] mask_meta = [seqlen_q, seqlen_k, tile_q,
# tile_k] + kind code ([] dense; [0, left, right] window; [1, *offsets] documents).
SCHEMAS: dict[str, str] = {
    "flash_attn_varlen":
        "flash_attn_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
        "SymInt max_seqlen_q, SymInt max_seqlen_k, float softmax_scale, int window_left, int window_right, "
        "float softcap, Tensor(a!) out, Tensor(b!)? lse, Tensor? mask_row_ptr=None, "
        "Tensor? mask_run_start=None, Tensor? mask_run_len=None, Tensor? mask_run_pool=None, "
        "Tensor? mask_pool=None, int[] mask_meta=[], int[] mask_kind=[], Tensor? sinks=None) -> ()",
    "paged_attention":
        "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, "
        "Tensor cu_seqlens_q, SymInt max_seqlen_q, SymInt max_seqlen_k, float softmax_scale, int window_left, "
        "int window_right, float softcap, Tensor(a!) out, Tensor(b!)? lse, Tensor? k_scale=None, "
        "Tensor? v_scale=None, Tensor? k_offset=None, Tensor? v_offset=None, Tensor? sinks=None, "
        "str kv_layout=\"rows\") -> ()",
    "reshape_and_cache":
        "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping, Tensor? k_scale=None, Tensor? v_scale=None, Tensor? k_offset=None, "
        "Tensor? v_offset=None, str kv_layout=\"rows\") -> ()",
    "merge_attn_states":
        "merge_attn_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)",
    "mla_decode":
        "mla_decode(Tensor q, Tensor kv_cache, Tensor block_table, Tensor seq_lens, int kv_lora_rank, "
        "float softmax_scale, bool causal, Tensor(a!) out, Tensor(b!)? lse, float? kv_scale=None) -> ()",
    "concat_and_cache_mla":
        "concat_and_cache_mla(Tensor kv_c, Tensor k_pe, Tensor(a!) kv_cache, Tensor slot_mapping) -> ()",
    "moe_route":
        "moe_route(Tensor router_logits, int top_k, str scoring, bool renormalize, int num_expert_group, "
        "int topk_group, Tensor? correction_bias, float routed_scaling_factor, ScalarType? score_dtype=None) "
        "-> (Tensor, Tensor)",
    "moe_experts":
        "moe_experts(Tensor x, Tensor w13, Tensor w2, Tensor expert_offsets, Tensor tokens_per_expert, "
        "Tensor? scales, ScalarType out_dtype) -> Tensor",
    "tiled_linear_allreduce":
        "tiled_linear_allreduce(Tensor x, Tensor weight, Tensor? bias, str group_name, int tile_tokens, "
        "int min_tokens, float timeout_s) -> Tensor",
    "ep_moe":
        "ep_moe(Tensor x, Tensor router_logits, Tensor w13, Tensor w2, Tensor? correction_bias, int top_k, "
        "str scoring, bool renormalize, int num_expert_group, int topk_group, float routed_scaling_factor, "
        "str group_name, SymInt capacity, int max_graph_capacity, float timeout_s, ScalarType? score_dtype=None) "
        "-> Tensor",
}
"""ep_moe is the composite route -> dispatch -> experts -> combine step (no implementation
table of its own: it calls the bound implementations of its parts).
ep_dispatch / ep_combine have no tensor-only form in the dynamic mode (data-dependent
output sizes and a routing handle), so they stay Python ops."""


# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Supports:
    """What an implementation accepts (declared where the backend registers it)."""

    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    head_dims: tuple[int, ...] | None = None   # None: any
    softcap: bool = True
    mask: bool = True                          # TileMask
    window: bool = True                        # sliding window (causal is always supported)
    max_s_q: int | None = None                 # MLA queries per sequence
    fp8_cache: bool = True                     # an FP8 (e4m3) latent cache with kv_scale
    kv_quant: tuple[str, ...] = ("fp8", "int8")  # quantised paged KV caches (attention/kv_quant.py)
    sinks: bool = True                         # attention-sink logits (gpt-oss)
    kv_layouts: tuple[str, ...] = ("rows",)  # paged-cache layouts read / written (attention/kv_layout.py)
    layout_pays: Callable[[str, int, int], bool] | None = None
    """Whether a layout other than "rows" is faster here for head dims (D, Dv) (None: never):
    what ``ops.preferred_kv_layout`` asks of the implementations bound for a cache."""
    note: str = ""
    everything: bool = field(init=False, default=False)
    """True when nothing above is restricted (then :func:`require` returns at once; cache
    layouts other than "rows" are checked before that shortcut)."""

    def __post_init__(self):
        object.__setattr__(self, "everything", self.dtypes == FLOAT_DTYPES and self.head_dims is None
                           and self.softcap and self.mask and self.window and self.max_s_q is None
                           and self.fp8_cache and set(self.kv_quant) == {"fp8", "int8"} and self.sinks)


def require(impl, device_type: str, *, dtype=None, head_dim=None, softcap=0.0, mask=False, window=(-1, 0),
            s_q=None, fp8_cache=False, kv_quant=None, sinks=False, kv_layout="rows") -> None:
    """Raise NotImplementedError when ``impl`` (a bound Impl) cannot serve the request."""
    sup = impl.supports
    if sup.everything and kv_layout == "rows":
        return
    missing = None
    if kv_layout not in sup.kv_layouts:
        missing = f"kv_layout {kv_layout!r} (supported: {list(sup.kv_layouts)})"
    elif dtype is not None and dtype not in sup.dtypes:
        missing = f"dtype {str(dtype).replace('torch.', '')}"
    elif head_dim is not None and sup.head_dims is not None and head_dim not in sup.head_dims:
        missing = f"head dim {head_dim} (supported: {list(sup.head_dims)})"
    elif softcap > 0 and not sup.softcap:
        missing = "softcap"
    elif mask and not sup.mask:
        missing = "TileMask masks"
    elif window[0] >= 0 and not sup.window or window[1] > 0 and not sup.window:
        missing = "sliding windows"
    elif s_q is not None and sup.max_s_q is not None and s_q > sup.max_s_q:
        missing = f"s_q = {s_q} (at most {sup.max_s_q})"
    elif fp8_cache and not sup.fp8_cache:
        missing = "an FP8 cache"
    elif kv_quant and kv_quant not in sup.kv_quant:
        missing = f"a quantised KV cache ({kv_quant}; supported: {list(sup.kv_quant) or 'none'})"
    elif sinks and not sup.sinks:
        missing = "attention sinks"
    if missing is None:
        return
    from ._dispatch import implementations

    others = [name for name, other in sorted(implementations(impl.op, device_type).items())
              if name != impl.name and other.unavailable_reason(device_type) is None]
    note = f" ({sup.note})" if sup.note else ""
    raise NotImplementedError(
        f"the {impl.name!r} implementation of {impl.op} on {device_type} does not support {missing}{note}; "
        f"available implementations here: {others or 'none'} (select one with "
        f"ASCEND_EXT_IMPL={impl.op}=<name> or ascend_ext.ops.use_impl({impl.op}='<name>'))")
