"""Public MLA ops (absorbed form, one latent KV head): validate, then call the bound
implementation (eager) or the ``torch.ops.ascend_ext`` custom op (torch.compile)."""

from __future__ import annotations

import torch

from .. import _validate as check
from .._contract import require
from .._dispatch import bound
from .._library import compiling


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal=True,
               return_lse=False, out=None, kv_scale=None):
    """Multi-head latent attention decode over a paged latent cache (absorbed form).

    Args:
        q: [B, s_q, Hq, kv_lora_rank + rope_dim] float16/bfloat16/float32: the s_q newest
            positions of each sequence (s_q > 1: multi-token / speculative decode), with
            W_UK already absorbed into the no-rope part.
        kv_cache: [num_blocks, block_size, kv_lora_rank + rope_dim], dtype of q: per token
            the compressed latent c_kv followed by the rope key k_pe. Or float8_e4m3fn
            (q float16/bfloat16) with ``kv_scale``: the stored value times kv_scale is the latent.
        block_table: int32 [B, max_blocks]; seq_lens: int32 [B], keys per sequence
            including the s_q new ones (0 = empty sequence: output 0, lse -inf).
        kv_lora_rank: width of the latent part; V is cache[..., :kv_lora_rank].
        softmax_scale: > 0, usually 1/sqrt(qk_nope_head_dim + qk_rope_head_dim).
        causal: query i of a sequence with L keys sees keys j <= i + L - s_q.
        out: optional preallocated [B, s_q, Hq, kv_lora_rank] output.
        kv_scale: per-tensor dequantisation scale (float > 0) of an FP8 cache; None otherwise.

    Returns:
        out [B, s_q, Hq, kv_lora_rank] (dtype of q), plus lse float32 [Hq, B * s_q] (the
        [heads, tokens] layout of every op; token b * s_q + i is query i of sequence b).
    """
    check.tensor("q", q, ndim=4, dtypes=check.FLOAT_DTYPES)
    check.tensor("kv_cache", kv_cache, ndim=3)
    if kv_cache.dtype == torch.float8_e4m3fn:
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"an FP8 kv_cache needs q in float16/bfloat16, got {q.dtype}")
        if isinstance(kv_scale, bool) or not isinstance(kv_scale, (int, float)) or not kv_scale > 0:
            raise ValueError(f"an FP8 kv_cache needs kv_scale, a float > 0 (per-tensor scale), got {kv_scale!r}")
        kv_scale = float(kv_scale)
    else:
        check.same_dtype("q", q, kv_cache=kv_cache)
        if kv_scale is not None:
            raise ValueError("kv_scale applies to float8_e4m3fn caches only; got a "
                             f"{kv_cache.dtype} cache with kv_scale={kv_scale!r}")
    check.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,))
    check.tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32,))
    check.same_device("q", q, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens)
    width = kv_cache.shape[2]
    check.dim_equals("q", q, 3, width, "the latent cache width kv_lora_rank + rope_dim")
    check.positive_int("kv_lora_rank", kv_lora_rank)
    if kv_lora_rank > width:
        raise ValueError(f"kv_lora_rank ({kv_lora_rank}) is larger than the cache width ({width})")
    if kv_cache.stride(2) != 1:
        raise ValueError(f"kv_cache must be contiguous in its last dim, got strides {kv_cache.stride()}")
    batch, s_q = q.shape[0], q.shape[1]
    if s_q < 1:
        raise ValueError(f"q must hold at least one query per sequence (s_q = q.shape[1] >= 1), got {s_q}")
    check.dim_equals("seq_lens", seq_lens, 0, batch, "the batch size q.shape[0]")
    check.dim_equals("block_table", block_table, 0, batch, "the batch size q.shape[0]")
    if softmax_scale is None:
        raise TypeError("softmax_scale is required for mla_decode (1/sqrt(qk_nope_head_dim + qk_rope_head_dim))")
    scale = check.softmax_scale(softmax_scale, width)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if check.value_checks_enabled():
        check.paged_values(block_table, seq_lens, kv_cache.shape[0], kv_cache.shape[1])
    out = check.output("out", out, (batch, s_q, q.shape[2], kv_lora_rank), q)
    if compiling():
        lse = (torch.empty((q.shape[2], batch * s_q), dtype=torch.float32, device=q.device)
               if return_lse else None)
        torch.ops.ascend_ext.mla_decode(q, kv_cache, block_table, seq_lens, kv_lora_rank, scale, causal, out, lse,
                                        kv_scale)
    else:
        impl = bound("mla_decode", q.device.type)
        require(impl, q.device.type, dtype=q.dtype, head_dim=width, s_q=s_q, fp8_cache=kv_scale is not None)
        lse = impl.fn(q, kv_cache, block_table, seq_lens, kv_lora_rank=kv_lora_rank, softmax_scale=scale,
                      causal=causal, out=out, return_lse=return_lse, kv_scale=kv_scale)
    return (out, lse) if return_lse else out


def concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping) -> None:
    """Write latent rows in place: kv_cache[slot] = concat(kv_c[t], k_pe[t]).

    kv_c [T, kv_lora_rank], k_pe [T, rope_dim] (float; cast to the cache dtype),
    kv_cache [num_blocks, block_size, kv_lora_rank + rope_dim], slot_mapping int32/int64
    [N <= T]; slot < 0 is skipped, tokens past N are ignored.
    """
    check.tensor("kv_c", kv_c, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_pe", k_pe, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("kv_cache", kv_cache, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.same_device("kv_cache", kv_cache, kv_c=kv_c, k_pe=k_pe, slot_mapping=slot_mapping)
    check.dim_equals("k_pe", k_pe, 0, kv_c.shape[0], "the token count of kv_c")
    if kv_c.shape[1] + k_pe.shape[1] != kv_cache.shape[2]:
        raise ValueError(f"kv_c width ({kv_c.shape[1]}) + k_pe width ({k_pe.shape[1]}) must equal the cache "
                         f"width ({kv_cache.shape[2]})")
    check.slots(slot_mapping, kv_c.shape[0], kv_cache.shape[0] * kv_cache.shape[1])
    if compiling():
        torch.ops.ascend_ext.concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping)
    else:
        bound("concat_and_cache_mla", kv_cache.device.type).fn(kv_c, k_pe, kv_cache, slot_mapping)
