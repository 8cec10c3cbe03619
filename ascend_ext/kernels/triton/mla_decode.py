"""MLA decode (absorbed form) in Triton: paged latent cache, split-KV, lse combine.

Each program owns ``BLOCK_M`` packed query rows (row r = query position ``r // Hq``,
head ``r % Hq``) of one sequence and streams the latent cache in ``BLOCK_N``-token
blocks. A block is loaded once as its latent part ``[BLOCK_N, kv_lora_rank]`` and
rope part ``[BLOCK_N, rope_dim]``; the latent tile serves twice, as K (scores =
q_nope·c_kvᵀ + q_pe·k_peᵀ) and as V (out += p·c_kv), so each cache byte is read
once per row tile. Row tiles of one sequence are adjacent in the grid so that
when Hq needs several tiles, the repeated latent reads hit L2.

Split-KV and its merge reuse the paged-attention machinery
(:func:`choose_splits`, :func:`combine_splits`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (LOG2E, block_segments, dot, dot_flags, load_rows, next_pow2,
                                       row_bounds, softmax_update, store_rows)
from .paged_attention import choose_splits, combine_splits


@triton.jit
def _mla_blocks(acc, m_i, l_i, q_c, q_r, n_from, n_to, k_len, CACHE, TABLE, cache_block,
                stride_b, stride_t, lo, hi, offs_n, offs_c, offs_r, rank, rope, scale_log2,
                MASKED: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr,
                IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    for n in tl.range(n_from, n_to, BLOCK_N):
        cols = n + offs_n
        if MASKED:
            blk = tl.load(TABLE + cols // cache_block, mask=cols < k_len, other=0).to(tl.int64)
        else:
            blk = tl.load(TABLE + cols // cache_block).to(tl.int64)
        row_ptr = CACHE + blk * stride_b + (cols % cache_block) * stride_t
        in_n = cols < k_len
        if EVEN:
            c_kv = tl.load(row_ptr[:, None] + offs_c[None, :], mask=in_n[:, None], other=0.0)
            k_pe = tl.load(row_ptr[:, None] + rank + offs_r[None, :], mask=in_n[:, None], other=0.0)
        else:
            c_kv = tl.load(row_ptr[:, None] + offs_c[None, :], mask=in_n[:, None] & (offs_c[None, :] < rank),
                           other=0.0)
            k_pe = tl.load(row_ptr[:, None] + rank + offs_r[None, :],
                           mask=in_n[:, None] & (offs_r[None, :] < rope), other=0.0)
        s = dot(q_c, tl.trans(c_kv), tl.zeros((q_c.shape[0], BLOCK_N), tl.float32), IEEE, DOT_F32)
        s = dot(q_r, tl.trans(k_pe), s, IEEE, DOT_F32)
        if MASKED:
            s = tl.where((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), s, float("-inf"))
        acc, m_i, l_i = softmax_update(acc, m_i, l_i, s, scale_log2, c_kv, MASKED, IEEE, DOT_F32)
    return acc, m_i, l_i


@triton.jit
def mla_decode_kernel(Q, CACHE, BLOCK_TABLE, SEQ_LENS, O, LSE,
                      stride_qt, stride_qh, stride_b, stride_t, stride_bt, stride_ot, stride_oh, stride_lse_h,
                      stride_o_split, stride_lse_split,
                      scale_log2, cache_block, keys_per_split, num_splits, s_q, rank, rope,
                      HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, CAUSAL: tl.constexpr,
                      WRITE_LSE: tl.constexpr, EVEN: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    tile = tl.program_id(0)
    seq = tl.program_id(1) // num_splits
    split = tl.program_id(1) % num_splits
    k_len = tl.load(SEQ_LENS + seq)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = rows // HEADS                       # query position within the sequence
    heads = rows % HEADS
    valid = pos < s_q
    tokens = seq * s_q + pos                  # row of the flattened [B * s_q] query axis
    offs_c = tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    q_c = load_rows(Q, tokens, heads, valid, stride_qt, stride_qh, offs_c, rank, EVEN)
    q_r = load_rows(Q + rank, tokens, heads, valid, stride_qt, stride_qh, offs_r, rope, EVEN)

    lo, hi = row_bounds(pos, s_q, k_len, 0, 0, False, CAUSAL)
    t_last = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // HEADS, s_q - 1)
    lo_f, hi_f = row_bounds((tile * BLOCK_M) // HEADS, s_q, k_len, 0, 0, False, CAUSAL)
    lo_l, hi_l = row_bounds(t_last, s_q, k_len, 0, 0, False, CAUSAL)
    n_begin = split * keys_per_split
    start, full_start, full_end, end = block_segments(lo_f, lo_l, hi_f, hi_l, n_begin,
                                                      tl.minimum(n_begin + keys_per_split, k_len), BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    table = BLOCK_TABLE + seq * stride_bt
    acc, m_i, l_i = _mla_blocks(acc, m_i, l_i, q_c, q_r, start, full_start, k_len, CACHE, table, cache_block,
                                stride_b, stride_t, lo, hi, offs_n, offs_c, offs_r, rank, rope, scale_log2,
                                True, EVEN, BLOCK_N, IEEE, DOT_F32)
    acc, m_i, l_i = _mla_blocks(acc, m_i, l_i, q_c, q_r, full_start, full_end, k_len, CACHE, table, cache_block,
                                stride_b, stride_t, lo, hi, offs_n, offs_c, offs_r, rank, rope, scale_log2,
                                False, EVEN, BLOCK_N, IEEE, DOT_F32)
    acc, m_i, l_i = _mla_blocks(acc, m_i, l_i, q_c, q_r, full_end, end, k_len, CACHE, table, cache_block,
                                stride_b, stride_t, lo, hi, offs_n, offs_c, offs_r, rank, rope, scale_log2,
                                True, EVEN, BLOCK_N, IEEE, DOT_F32)
    store_rows(O + split * stride_o_split, LSE + split * stride_lse_split, acc, m_i, l_i, tokens, heads, valid,
               stride_ot, stride_oh, stride_lse_h, offs_c, rank, WRITE_LSE, EVEN)


def mla_config(device: torch.device, heads: int, s_q: int, dtype: torch.dtype) -> dict:
    """Fastest tiles of the H100 sweep of 2026-11-23 (benchmarks/NOTES.md)."""
    if device.type == "cpu":           # interpreter: small tiles, several blocks per test
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    rows = heads * s_q
    if dtype == torch.float32:
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if rows <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
               config=None, num_splits=None):
    """Triton implementation behind :func:`ascend_ext.ops.mla_decode` (validated args)."""
    batch, s_q, hq, width = q.shape
    rank, rope = kv_lora_rank, width - kv_lora_rank
    tokens = batch * s_q
    lse = torch.empty((hq, tokens), dtype=torch.float32, device=q.device) if return_lse else None
    if batch == 0:
        return lse
    cfg = dict(config or mla_config(q.device, hq, s_q, q.dtype))
    q2 = q.reshape(tokens, hq, width)
    out2 = out.view(tokens, hq, rank)
    row_tiles = triton.cdiv(s_q * hq, cfg["BLOCK_M"])
    max_len = kv_cache.shape[1] * block_table.shape[1]
    if num_splits is None:
        num_splits = choose_splits(q.device, batch * row_tiles, max_len, cfg["BLOCK_N"])
    keys_per_split = triton.cdiv(triton.cdiv(max(max_len, 1), num_splits), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    if num_splits > 1:
        dest_o = torch.empty((num_splits, tokens, hq, rank), dtype=torch.float32, device=q.device)
        dest_lse = torch.empty((num_splits, hq, tokens), dtype=torch.float32, device=q.device)
    else:
        dest_o = out2.unsqueeze(0)
        dest_lse = (lse if lse is not None else q.new_empty((1, 1), dtype=torch.float32)).unsqueeze(0)
    even = next_pow2(rank) == rank and next_pow2(rope) == rope
    mla_decode_kernel[(row_tiles, batch * num_splits)](
        q2, kv_cache, block_table, seq_lens, dest_o, dest_lse,
        q2.stride(0), q2.stride(1), kv_cache.stride(0), kv_cache.stride(1), block_table.stride(0),
        dest_o.stride(1), dest_o.stride(2), dest_lse.stride(1), dest_o.stride(0), dest_lse.stride(0),
        softmax_scale * LOG2E, kv_cache.shape[1], keys_per_split, num_splits, s_q, rank, rope,
        HEADS=hq, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_C=next_pow2(rank),
        BLOCK_R=next_pow2(rope), CAUSAL=causal, WRITE_LSE=num_splits > 1 or lse is not None, EVEN=even,
        **dot_flags(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if num_splits > 1:
        combine_splits(dest_o, dest_lse, out2, lse)
    return lse
