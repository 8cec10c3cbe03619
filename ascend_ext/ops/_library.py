"""``torch.ops.ascend_ext.*``: every public op as a torch.library custom op.

The schemas come from :data:`._contract.SCHEMAS`. Each op has one real kernel
(registered for ``CompositeExplicitAutograd``, so it serves CPU, CUDA and NPU tensors)
that maps the tensor-only schema arguments onto the implementation bound for the
tensors' device type, and a fake (meta) kernel so torch.compile traces the op as one
opaque node with its mutations (caches, ``out``) annotated.

The public functions in :mod:`ascend_ext.ops` validate their arguments and then, in
eager mode, call the bound implementation directly (no dispatcher round trip); under
torch.compile they call these ops (:func:`compiling`).
"""

from __future__ import annotations

import torch

from ._contract import SCHEMAS
from ._dispatch import bound

NAMESPACE = "ascend_ext"
_lib = torch.library.Library(NAMESPACE, "FRAGMENT")


def compiling() -> bool:
    """True while torch.compile / torch.export traces (the public ops then call torch.ops)."""
    return torch.compiler.is_compiling()


def _define(op: str, kernel, fake) -> None:
    _lib.define(SCHEMAS[op])
    _lib.impl(op, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{op}", fake, lib=_lib)


def _none(*args, **kwargs) -> None:
    return None


def _opt(value: int) -> int | None:
    return None if value < 0 else value


def _copy_lse(dest, lse) -> None:
    if dest is not None:
        dest.copy_(lse)


# ------------------------------------------------------------------------ TileMask
def mask_to_args(mask) -> dict:
    """The schema's mask_* arguments of a TileMask (or none)."""
    if mask is None:
        return {}
    kind = mask.kind
    code = [] if kind[0] == "dense" else [0, kind[1], kind[2]] if kind[0] == "window" else [1, *kind[1]]
    return dict(mask_row_ptr=mask.row_ptr, mask_run_start=mask.run_start, mask_run_len=mask.run_len,
                mask_run_pool=mask.run_pool, mask_pool=mask.pool,
                mask_meta=[mask.seqlen_q, mask.seqlen_k, mask.tile_q, mask.tile_k], mask_kind=code)


def mask_from_args(row_ptr, run_start, run_len, run_pool, pool, meta, kind):
    if row_ptr is None:
        return None
    from .attention.tile_mask import TileMask

    kind = list(kind)
    if not kind:
        kind_t = ("dense",)
    elif kind[0] == 0:
        kind_t = ("window", kind[1], kind[2])
    else:
        kind_t = ("document", tuple(kind[1:]))
    return TileMask(*meta, row_ptr, run_start, run_len, run_pool, pool, kind=kind_t)


# ------------------------------------------------------------------------ attention
def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                       window_left, window_right, softcap, out, lse, mask_row_ptr=None, mask_run_start=None,
                       mask_run_len=None, mask_run_pool=None, mask_pool=None, mask_meta=(), mask_kind=(), sinks=None):
    mask = mask_from_args(mask_row_ptr, mask_run_start, mask_run_len, mask_run_pool, mask_pool, mask_meta,
                          mask_kind)
    result = bound("flash_attn_varlen", q.device.type).fn(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=softmax_scale,
        window=(window_left, window_right), mask=mask, softcap=softcap, out=out, return_lse=lse is not None,
        sinks=sinks)
    _copy_lse(lse, result)


def _kv_scales(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset):
    from .attention.kv_quant import normalize

    return normalize(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset)


def _paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
                     softmax_scale, window_left, window_right, softcap, out, lse, k_scale=None, v_scale=None,
                     k_offset=None, v_offset=None, sinks=None, kv_layout="rows"):
    result = bound("paged_attention", q.device.type).fn(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, softmax_scale=softmax_scale,
        window=(window_left, window_right), softcap=softcap, out=out, return_lse=lse is not None,
        max_seqlen_k=_opt(max_seqlen_k), kv_scales=_kv_scales(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset),
        sinks=sinks, kv_layout=kv_layout)
    _copy_lse(lse, result)


def _reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None, k_offset=None,
                       v_offset=None, kv_layout="rows"):
    bound("reshape_and_cache", key.device.type).fn(
        key, value, k_cache, v_cache, slot_mapping,
        kv_scales=_kv_scales(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset), kv_layout=kv_layout)


def _merge_attn_states(out_a, lse_a, out_b, lse_b):
    out, lse = bound("merge_attn_states", out_a.device.type).fn(out_a, lse_a, out_b, lse_b)
    return out.contiguous(), lse.contiguous()   # the layout the fake kernel promises


def _merge_attn_states_fake(out_a, lse_a, out_b, lse_b):
    return torch.empty_like(out_a), torch.empty_like(lse_a)


# ------------------------------------------------------------------------ MLA
def _mla_decode(q, kv_cache, block_table, seq_lens, kv_lora_rank, softmax_scale, causal, out, lse, kv_scale=None):
    result = bound("mla_decode", q.device.type).fn(
        q, kv_cache, block_table, seq_lens, kv_lora_rank=kv_lora_rank, softmax_scale=softmax_scale,
        causal=causal, out=out, return_lse=lse is not None, kv_scale=kv_scale)
    _copy_lse(lse, result)


def _concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping):
    bound("concat_and_cache_mla", kv_cache.device.type).fn(kv_c, k_pe, kv_cache, slot_mapping)


# ------------------------------------------------------------------------ MoE
def _moe_route(router_logits, top_k, scoring, renormalize, num_expert_group, topk_group, correction_bias,
               routed_scaling_factor, score_dtype=None):
    return bound("moe_route", router_logits.device.type).fn(
        router_logits, top_k, scoring=scoring, renormalize=renormalize, num_expert_group=_opt(num_expert_group),
        topk_group=_opt(topk_group), correction_bias=correction_bias, routed_scaling_factor=routed_scaling_factor,
        score_dtype=score_dtype)


def _moe_route_fake(router_logits, top_k, scoring, renormalize, num_expert_group, topk_group, correction_bias,
                    routed_scaling_factor, score_dtype=None):
    tokens = router_logits.shape[0]
    return (router_logits.new_empty((tokens, top_k), dtype=torch.float32),
            router_logits.new_empty((tokens, top_k), dtype=torch.int32))


def _moe_experts(x, w13, w2, expert_offsets, tokens_per_expert, scales, out_dtype):
    return bound("moe_experts", x.device.type).fn(x, w13, w2, expert_offsets, tokens_per_expert, scales=scales,
                                                  out_dtype=out_dtype)


def _moe_experts_fake(x, w13, w2, expert_offsets, tokens_per_expert, scales, out_dtype):
    return x.new_empty((x.shape[0], w2.shape[1]), dtype=out_dtype)


# ------------------------------------------------------------------------ comm
def _tiled_linear_allreduce(x, weight, bias, group_name, tile_tokens, min_tokens, timeout_s):
    from .comm.tiled_allreduce import run_tiled

    return run_tiled(x, weight, bias, group_name, tile_tokens, min_tokens, timeout_s)


def _tiled_linear_allreduce_fake(x, weight, bias, group_name, tile_tokens, min_tokens, timeout_s):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _ep_moe(*args):
    from .moe.layer import run_ep_moe

    return run_ep_moe(*args)


def _ep_moe_fake(x, *args):
    return torch.empty_like(x)


_define("flash_attn_varlen", _flash_attn_varlen, _none)
_define("paged_attention", _paged_attention, _none)
_define("reshape_and_cache", _reshape_and_cache, _none)
_define("merge_attn_states", _merge_attn_states, _merge_attn_states_fake)
_define("mla_decode", _mla_decode, _none)
_define("concat_and_cache_mla", _concat_and_cache_mla, _none)
_define("moe_route", _moe_route, _moe_route_fake)
_define("moe_experts", _moe_experts, _moe_experts_fake)
_define("tiled_linear_allreduce", _tiled_linear_allreduce, _tiled_linear_allreduce_fake)
_define("ep_moe", _ep_moe, _ep_moe_fake)
