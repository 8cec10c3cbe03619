"""Attention adapters: npu_fusion_attention (prefill) and npu_fused_infer_attention_score
(paged decode / chunked prefill), both in the TND varlen layout.

Mask mapping: causal -> sparse_mode 3 (rightDownCausal, our bottom-right convention);
any other window (left, right) -> sparse_mode 4 (band, pre_tokens = left, next_tokens =
right, bottom-right aligned); both take the compressed 2048x2048 mask. No mask -> sparse_mode 0. TileMask: causal and
window masks map to the same modes; document masks become a varlen split (each
document its own sequence, exact and cheaper than a mask); any other TileMask falls
back to sparse_mode 1 with a dense [S, S] mask - O(S^2) memory, the only form the op
accepts for arbitrary patterns. Rows a varlen dense mask hides completely (the op forbids
them) attend to key 0 inside the op and are then written as 0 with lse -inf, the op-layer
convention. Documented limits are checked first (:mod:`.constraints`).

Attention sinks: npu_fusion_attention takes them as ``sink`` (float32 [N]); the paged path
switches to npu_fused_infer_attention_score_v2, whose ``learnable_sink`` is bfloat16 [Q_N]
(lossless for gpt-oss, whose sinks are bfloat16 parameters) in the TND layout with value
head dims up to 128. Whether either op's lse includes the sink term (ours does) cannot be
checked without an NPU (docs/ascend.md).
"""

from __future__ import annotations

import functools
import itertools

import torch

from . import constraints, torch_npu

INT_MAX = 2147483647


@functools.lru_cache(maxsize=8)
def compressed_causal_mask(device: str) -> torch.Tensor:
    """The 2048x2048 upper-triangular mask (True = masked) sparse modes 2-4 expect."""
    return torch.ones(2048, 2048, dtype=torch.bool).triu(1).to(device)


@functools.lru_cache(maxsize=1)
def _warn_copy() -> None:
    import logging
    logging.getLogger("ascend_ext").warning(
        "ascend_ext NPU paged attention: strided K/V cache views are copied per call; allocate separate "
        "contiguous K and V caches on NPU")


def _mask_args(window: tuple[int, int], device) -> dict:
    left, right = window
    if (left, right) == (-1, -1):
        return dict(sparse_mode=0, atten_mask=None)
    if (left, right) == (-1, 0):
        return dict(sparse_mode=3, atten_mask=compressed_causal_mask(str(device)))
    return dict(sparse_mode=4, atten_mask=compressed_causal_mask(str(device)),
                pre_tokens=left if left >= 0 else INT_MAX, next_tokens=right if right >= 0 else INT_MAX)


def _tighter(a: int, b: int) -> int:
    """The smaller of two window bounds, -1 meaning unbounded."""
    return b if a < 0 else a if b < 0 else min(a, b)


def _lse_from_max_sum(softmax_max, softmax_sum) -> torch.Tensor:
    """npu_fusion_attention's (max, sum) [T, N, 8] -> natural-log lse [N, T]."""
    lse = softmax_max[..., 0].float() + torch.log(softmax_sum[..., 0].float())
    return lse.transpose(0, 1).contiguous()


def _check_no_empty_rows(cu_q: list[int], cu_k: list[int], right: int, op: str = "npu_fusion_attention") -> None:
    """npu_fusion_attention forbids rows with no visible key in varlen (TND) calls (and
    npu_fused_infer_attention_score does not document them): with the bottom-right aligned
    causal/band modes these are the first Sq - Skv - right queries."""
    for b in range(len(cu_q) - 1):
        sq, sk = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        if sq > 0 and (sk == 0 or sq > sk + right):
            raise ValueError(f"{op} forbids fully masked query rows in varlen calls: sequence {b} "
                             f"has {sq} queries over {sk} keys (window right edge {right}); more queries "
                             "than keys need causal=False here, or another implementation")


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      softmax_scale, window, mask, softcap, out, return_lse, sinks=None):
    if softcap:
        raise NotImplementedError("npu_fusion_attention has no logit softcap; use another implementation")
    for name, t in (("q", q), ("k", k), ("v", v)):
        constraints.check_dtype(name, t, constraints.FUSION_DTYPES, "npu_fusion_attention")
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    empty_rows = None
    if mask is not None:
        kind = mask.kind
        if kind[0] == "window":                        # AND of two window rules
            window = (_tighter(window[0], kind[1]), _tighter(window[1], kind[2]))
            mask = None
        elif kind[0] == "document":                    # each document becomes its own sequence
            offsets = list(kind[1])
            cu_q = [b * mask.seqlen_q + o for b in range(len(cu_q) - 1) for o in offsets[:-1]] + [cu_q[-1]]
            cu_k = [b * mask.seqlen_k + o for b in range(len(cu_k) - 1) for o in offsets[:-1]] + [cu_k[-1]]
            mask = None
    if mask is None:
        args = _mask_args(window, q.device)
        _check_no_empty_rows(cu_q, cu_k, INT_MAX if window[1] < 0 else window[1])
    else:
        allowed = mask.dense().to(q.device)
        empty_rows = ~allowed.any(dim=1)
        if bool(empty_rows.any()):
            allowed = allowed.clone()
            allowed[empty_rows, 0] = True
        args = dict(sparse_mode=1, atten_mask=~allowed)
    pre, nxt = args.pop("pre_tokens", INT_MAX), args.pop("next_tokens", INT_MAX)
    if sinks is not None:
        args["sink"] = sinks
    result = torch_npu().npu_fusion_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), q.shape[1], "TND", scale=softmax_scale, pre_tockens=pre,
        next_tockens=nxt, actual_seq_qlen=cu_q[1:], actual_seq_kvlen=cu_k[1:], softmax_layout="TND", **args)
    out.copy_(result[0])
    lse = _lse_from_max_sum(result[1], result[2]) if return_lse else None
    if empty_rows is not None and bool(empty_rows.any()):
        rows = torch.cat([start + empty_rows.nonzero().flatten() for start in cu_q[:-1]])
        rows = rows[rows < q.shape[0]]
        out[rows] = 0
        if lse is not None:
            lse[:, rows] = float("-inf") if sinks is None else sinks[:, None].expand(-1, rows.numel())
    return lse


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                    softmax_scale, window, softcap, out, return_lse, max_seqlen_k=None, kv_scales=None, sinks=None,
                    kv_layout="rows"):
    if kv_layout != "rows":
        raise NotImplementedError(f"the 'npu' paged_attention reads kv_layout 'rows' only, got {kv_layout!r}")
    if softcap:
        raise NotImplementedError("npu_fused_infer_attention_score has no logit softcap")
    if sinks is not None and kv_scales is not None:
        raise NotImplementedError("the 'npu' paged_attention does not combine attention sinks with an int8 KV cache "
                                  "(npu_fused_infer_attention_score_v2's learnable_sink path takes float caches); "
                                  "use ASCEND_EXT_IMPL=paged_attention=triton or reference")
    host_q, host_k = cu_seqlens_q.tolist(), seq_lens.tolist()   # the op takes host lists
    if window != (-1, -1):   # rows before a sequence's first key: the op's result is not documented
        _check_no_empty_rows(host_q, [0, *itertools.accumulate(host_k)], INT_MAX if window[1] < 0 else window[1],
                             "npu_fused_infer_attention_score")
    if kv_scales is not None:
        if max_seqlen_q == 1 and q.shape[0] == block_table.shape[0] and window == (-1, 0):
            return _int8_decode(q, k_cache, v_cache, block_table, host_k, kv_scales, softmax_scale, out,
                                return_lse)
        # the op dequantises per channel only for one query per sequence: dequantise the blocks
        # this batch reads (as vllm-ascend does for chunked prefill) and attend over them
        k_cache, v_cache, block_table = _dequantized_blocks(k_cache, v_cache, block_table, seq_lens, kv_scales,
                                                            q.dtype)
    num_blocks, block_size, hkv, d = k_cache.shape
    constraints.check_paged_attention(q, k_cache, block_size, q.shape[1], hkv, d)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        # the op reads contiguous [num_blocks, block_size, Hkv*D] caches (vllm-ascend keeps K and V
        # apart); views of a combined K|V cache cost a copy of the whole cache per call
        _warn_copy()
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    args = _mask_args(window, q.device)
    args.update(pre_tokens=args.pop("pre_tokens", INT_MAX), next_tokens=args.pop("next_tokens", INT_MAX),
                block_table=block_table, block_size=block_size, input_layout="TND", num_key_value_heads=hkv)
    caches = (k_cache.view(num_blocks, block_size, hkv * d), v_cache.view(num_blocks, block_size, -1))
    if sinks is None:
        result, lse = torch_npu().npu_fused_infer_attention_score(
            q.contiguous(), *caches, actual_seq_lengths=host_q[1:], actual_seq_lengths_kv=host_k,
            num_heads=q.shape[1], scale=softmax_scale, softmax_lse_flag=return_lse, **args)
    else:   # learnable_sink is an argument of the _v2 op only (bfloat16 [Q_N], TND, value D <= 128)
        constraints.check_learnable_sink(v_cache.shape[3])
        result, lse = torch_npu().npu_fused_infer_attention_score_v2(
            q.contiguous(), *caches, actual_seq_qlen=host_q[1:], actual_seq_kvlen=host_k,
            num_query_heads=q.shape[1], softmax_scale=softmax_scale, return_softmax_lse=return_lse,
            learnable_sink=sinks.to(torch.bfloat16), **args)
    out.copy_(result)
    return lse[..., 0].float().transpose(0, 1).contiguous() if return_lse else None


def _antiquant(t: torch.Tensor, dtype) -> torch.Tensor:
    """A [Hkv, D] scale/offset as the op's per-channel (1, KV_N, 1, D) tensor in the query dtype."""
    return t.to(dtype).reshape(1, t.shape[0], 1, t.shape[1]).contiguous()


def _int8_decode(q, k_cache, v_cache, block_table, host_k, kv_scales, softmax_scale, out, return_lse):
    """One query per sequence over an int8 cache: BNSD with per-channel key/value antiquant
    parameters (antiquant mode 0), the call vllm-ascend's C8 decode makes."""
    num_blocks, block_size, hkv, d = k_cache.shape
    constraints.check_int8_paged_attention(q, k_cache, block_size, q.shape[1], hkv, d)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        _warn_copy()
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    offsets = {} if kv_scales.k_offset is None else dict(
        key_antiquant_offset=_antiquant(kv_scales.k_offset, q.dtype),
        value_antiquant_offset=_antiquant(kv_scales.v_offset, q.dtype))
    result, lse = torch_npu().npu_fused_infer_attention_score(
        q.unsqueeze(2).contiguous(), k_cache.view(num_blocks, block_size, hkv * d),
        v_cache.view(num_blocks, block_size, -1), block_table=block_table, block_size=block_size,
        input_layout="BNSD", actual_seq_lengths_kv=host_k, num_heads=q.shape[1],
        num_key_value_heads=hkv, scale=softmax_scale, key_antiquant_scale=_antiquant(kv_scales.k_scale, q.dtype),
        value_antiquant_scale=_antiquant(kv_scales.v_scale, q.dtype), key_antiquant_mode=0,
        value_antiquant_mode=0, sparse_mode=0, softmax_lse_flag=return_lse, **offsets)
    out.copy_(result.squeeze(2))
    return lse[:, :, 0, 0].float().transpose(0, 1).contiguous() if return_lse else None


def _dequantized_blocks(k_cache, v_cache, block_table, seq_lens, kv_scales, dtype):
    """The blocks the batch reads, dequantised into compact caches in ``dtype``, and the
    block table renumbered for them."""
    from ...ops.attention.kv_quant import dequantize

    block_size = k_cache.shape[1]
    needed = (seq_lens.long() + block_size - 1) // block_size
    used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] < needed[:, None]
    blocks = torch.unique(block_table[used].long())
    remap = torch.zeros(k_cache.shape[0], dtype=torch.int32, device=block_table.device)
    remap[blocks] = torch.arange(blocks.numel(), dtype=torch.int32, device=block_table.device)
    table = torch.where(used, remap[block_table.clamp(0, k_cache.shape[0] - 1).long()], 0).to(torch.int32)
    k = dequantize(k_cache[blocks], kv_scales.k_scale, kv_scales.k_offset).to(dtype)
    v = dequantize(v_cache[blocks], kv_scales.v_scale, kv_scales.v_offset).to(dtype)
    return k, v, table
