"""MLA decode (absorbed form) in Triton: paged latent cache, split-KV, lse combine.

Each program owns ``BLOCK_M`` packed query rows (row r = query position ``r // Hq``,
head ``r % Hq``, so s_q x Hq rows fill one MMA tile: 64 rows reach Hopper's
warpgroup MMA) of one sequence and one KV split, and streams the latent cache in
``BLOCK_N``-token tiles. A tile is loaded once, as two latent halves
``[BLOCK_N, C/2]`` and the rope part ``[BLOCK_N, R]``; the halves serve twice, as K
(scores = q_c0·c0ᵀ + q_c1·c1ᵀ + q_r·k_peᵀ) and as V (out_0 += p·c0, out_1 += p·c1),
so each cache byte is read once per row tile and the 512-wide output is held as two
256-wide accumulators (each spread over the program's warps).

Two load paths of the same source, chosen by constexpr:
* ``TMA``: tensor descriptors (Hopper's bulk tensor copy) over the cache viewed as
  ``[num_blocks * block_size, C + R]``; a tile never crosses a cache block
  (``block_size % BLOCK_N == 0``), so it is one rectangular box. Keys past the
  sequence are zeroed in the (masked) boundary tile only.
* pointer loads (any block size, the interpreter, non-Hopper GPUs, Ascend).

The key range of a program is a mask-free body and a masked tail (:func:`block_segments`;
its masked head is always empty here: every row starts at key 0 and splits start on tile
boundaries). The tail steps by ``MASK_N`` (16) keys with pointer loads, so its tiles stay
small: with the body's 64-key tiles it pushed the compute path over 255 registers (spills),
the body alone fits in 231.

FP8 (e4m3) caches carry one per-tensor scale: it is folded into the softmax scale and
into the final output; 16-bit queries become float16 (:func:`fp16_operand`) and the tiles
are widened to float16 before the MMAs (exact, one conversion per pair).

Split-KV count and tiles come from the backend's ``configs.mla_plan`` (per-device
tables, with the paths and the split cost model of :mod:`.mla_plan`); the merge
reuses the paged-attention combine (:func:`combine_splits`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (LOG2E, block_segments, dot, dot_flags, fp16_operand, interpreting, launch, load_rows,
                     pdl_flags, release_dependents, row_bounds, softmax_stats, split_keys, store_rows)
from .paged_attention import combine_splits, split_destinations


# the interpreter runs no inline assembly: there the TMA path reads the table with a plain load
_OPAQUE_TABLE_LOAD = tl.constexpr(not interpreting())


@triton.jit
def _table_entry(ptr):
    """One block-table entry through an opaque non-coherent load: the software pipeliner
    sees no load feeding the TMA coordinates and keeps ``num_stages`` boxes in flight
    (a visible ``tl.load`` there cut it to one buffer). The TMA path only (CUDA, or the
    interpreter where it runs descriptor loads: a plain load there)."""
    if _OPAQUE_TABLE_LOAD:
        entry = tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                          is_pure=True, pack=1)
    else:
        entry = tl.load(ptr)
    return entry


@triton.jit
def _latent_tile(CACHE, C_DESC, R_DESC, TABLE, n, k_len, cache_block, stride_b, stride_t, offs_n,
                 offs_c0, offs_c1, offs_r, rank, rope,
                 MASKED: tl.constexpr, EVEN: tl.constexpr, TMA: tl.constexpr, HALF_C: tl.constexpr):
    """Keys n .. n+BLOCK_N-1 of one sequence: latent halves c0, c1 [N, HALF_C] and rope [N, R].

    Pointer loads read keys >= k_len as 0 where MASKED; TMA boxes read them as they are
    (possibly NaN-poisoned slots) and the caller zeroes them."""
    cols = n + offs_n
    in_n = cols < k_len
    if TMA:
        blk = _table_entry(TABLE + n // cache_block)
        row = blk * cache_block + n % cache_block
        c0 = C_DESC.load([row, 0])
        c1 = C_DESC.load([row, HALF_C])
        k_pe = R_DESC.load([row, rank])
    else:
        if MASKED:
            blk = tl.load(TABLE + cols // cache_block, mask=in_n, other=0).to(tl.int64)
        else:
            blk = tl.load(TABLE + cols // cache_block).to(tl.int64)
        row_ptr = CACHE + blk * stride_b + (cols % cache_block) * stride_t
        if EVEN:
            c0 = tl.load(row_ptr[:, None] + offs_c0[None, :], mask=in_n[:, None], other=0.0)
            c1 = tl.load(row_ptr[:, None] + offs_c1[None, :], mask=in_n[:, None], other=0.0)
            k_pe = tl.load(row_ptr[:, None] + rank + offs_r[None, :], mask=in_n[:, None], other=0.0)
        else:
            c0 = tl.load(row_ptr[:, None] + offs_c0[None, :], mask=in_n[:, None] & (offs_c0[None, :] < rank),
                         other=0.0)
            c1 = tl.load(row_ptr[:, None] + offs_c1[None, :], mask=in_n[:, None] & (offs_c1[None, :] < rank),
                         other=0.0)
            k_pe = tl.load(row_ptr[:, None] + rank + offs_r[None, :],
                           mask=in_n[:, None] & (offs_r[None, :] < rope), other=0.0)
    return c0, c1, k_pe


@triton.jit
def _mla_blocks(acc0, acc1, m_i, l_i, q_c0, q_c1, q_r, n_from, n_to, k_len, CACHE, C_DESC, R_DESC, TABLE,
                cache_block, stride_b, stride_t, lo, hi, offs_c0, offs_c1, offs_r, rank, rope, scale_log2,
                MASKED: tl.constexpr, EVEN: tl.constexpr, TMA: tl.constexpr, HALF_C: tl.constexpr,
                WARP_SPEC: tl.constexpr, BLOCK_N: tl.constexpr, TRANS: tl.constexpr, IEEE: tl.constexpr,
                DOT_F32: tl.constexpr):
    """Online softmax over key tiles [n_from, n_to).

    Row-major (TRANS False): q_* [M, *], acc0/acc1 [M, HALF_C] fp32, scores [M, N].
    Transposed (TRANS True): q_* are the transposed queries [*, M], acc0/acc1 [HALF_C, M],
    scores [N, M]: keys and output channels fill the MMA's M side (64 per warpgroup), the
    few query rows its N side, so small row counts waste no MMA work and the QK^T of a
    64-row tile is split across warpgroups instead of computed once per warpgroup."""
    offs_n = tl.arange(0, BLOCK_N)
    for n in tl.range(n_from, n_to, BLOCK_N, warp_specialize=WARP_SPEC):
        c0, c1, k_pe = _latent_tile(CACHE, C_DESC, R_DESC, TABLE, n, k_len, cache_block, stride_b, stride_t,
                                    offs_n, offs_c0, offs_c1, offs_r, rank, rope, MASKED, EVEN, TMA, HALF_C)
        cols = n + offs_n
        dt = q_c0.dtype
        if TRANS:
            # FP8 caches: widened to the MMA dtype per use (no-op otherwise)
            s = dot(c0.to(dt), q_c0, tl.zeros((BLOCK_N, q_c0.shape[1]), tl.float32), IEEE, DOT_F32)
            s = dot(c1.to(dt), q_c1, s, IEEE, DOT_F32)
            s = dot(k_pe.to(dt), q_r, s, IEEE, DOT_F32)
            if MASKED:
                s = tl.where((cols[:, None] >= lo[None, :]) & (cols[:, None] < hi[None, :]), s, float("-inf"))
            p, alpha, m_i, l_i = softmax_stats(m_i, l_i, s, scale_log2, MASKED, 0)
            p = p.to(dt)
            acc0 = dot(tl.trans(c0).to(dt), p, acc0 * alpha[None, :], IEEE, DOT_F32)
            acc1 = dot(tl.trans(c1).to(dt), p, acc1 * alpha[None, :], IEEE, DOT_F32)
        else:
            # FP8 caches: widened once (per use was 10-20% slower for 64-row tiles on H100)
            c0 = c0.to(dt)
            c1 = c1.to(dt)
            k_pe = k_pe.to(dt)
            s = dot(q_c0, tl.trans(c0), tl.zeros((q_c0.shape[0], BLOCK_N), tl.float32), IEEE, DOT_F32)
            s = dot(q_c1, tl.trans(c1), s, IEEE, DOT_F32)
            s = dot(q_r, tl.trans(k_pe), s, IEEE, DOT_F32)
            if MASKED:
                s = tl.where((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), s, float("-inf"))
            p, alpha, m_i, l_i = softmax_stats(m_i, l_i, s, scale_log2, MASKED)
            p = p.to(dt)
            acc0 = dot(p, c0, acc0 * alpha[:, None], IEEE, DOT_F32)
            acc1 = dot(p, c1, acc1 * alpha[:, None], IEEE, DOT_F32)
    return acc0, acc1, m_i, l_i


@triton.jit
def mla_decode_kernel(Q, CACHE, C_DESC, R_DESC, BLOCK_TABLE, SEQ_LENS, O, LSE,
                      stride_qt, stride_qh, stride_b, stride_t, stride_bt, stride_ot, stride_oh, stride_lse_h,
                      stride_o_split, stride_lse_split,
                      scale_log2, kv_scale, cache_block, num_splits, s_q, rank, rope,
                      HEADS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, CAUSAL: tl.constexpr,
                      WRITE_LSE: tl.constexpr, EVEN: tl.constexpr, TMA: tl.constexpr, MASK_N: tl.constexpr,
                      WARP_SPEC: tl.constexpr, TRANS: tl.constexpr, IEEE: tl.constexpr,
                      DOT_F32: tl.constexpr, FP8: tl.constexpr = False, PDL: tl.constexpr = False):
    """Grid (row tiles, batch x splits). O/LSE are the final output (one split) or the
    fp32 per-split partials [S, T, H, C] / [S, H, T] that :func:`combine_splits` merges
    (with PDL it may launch as soon as every program here has started)."""
    release_dependents(PDL)
    HALF_C: tl.constexpr = BLOCK_C // 2
    tile = tl.program_id(0)
    seq = tl.program_id(1) // num_splits
    split = tl.program_id(1) % num_splits
    k_len = tl.load(SEQ_LENS + seq)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = rows // HEADS                       # query position within the sequence
    heads = rows % HEADS
    valid = pos < s_q
    tokens = seq * s_q + pos                  # row of the flattened [B * s_q] query axis
    offs_c0 = tl.arange(0, HALF_C)
    offs_c1 = HALF_C + tl.arange(0, HALF_C)
    offs_r = tl.arange(0, BLOCK_R)
    if TRANS:
        acc0 = tl.zeros((HALF_C, BLOCK_M), tl.float32)
        acc1 = tl.zeros((HALF_C, BLOCK_M), tl.float32)
    else:
        acc0 = tl.zeros((BLOCK_M, HALF_C), tl.float32)
        acc1 = tl.zeros((BLOCK_M, HALF_C), tl.float32)

    lo, hi = row_bounds(pos, s_q, k_len, 0, 0, False, CAUSAL)
    t_last = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // HEADS, s_q - 1)
    lo_f, hi_f = row_bounds((tile * BLOCK_M) // HEADS, s_q, k_len, 0, 0, False, CAUSAL)
    lo_l, hi_l = row_bounds(t_last, s_q, k_len, 0, 0, False, CAUSAL)
    n_begin, n_end = split_keys(split, num_splits, k_len, BLOCK_N)
    # every row starts at key 0 (no window) and splits start on tile boundaries, so the masked
    # head of block_segments is always empty here: a mask-free body, then a masked tail
    _, body_start, body_end, end = block_segments(lo_f, lo_l, hi_f, hi_l, n_begin, n_end, BLOCK_N)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    table = BLOCK_TABLE + seq * stride_bt
    # The tail (< 1 body tile) steps by MASK_N keys with pointer loads (keys past the sequence read
    # as 0, never a NaN-poisoned slot), so its small tiles add no register pressure to the body's big
    # ones. Each part loads its own queries: the transposed form keeps them in shared memory in each
    # loop's MMA layout, and two copies alive at once left no room for a second pipeline stage at 64
    # rows; the tail's volatile reload starts its copy after the body's has died.
    for part in tl.static_range(2):
        if part == 0 or TRANS:
            q_c0 = load_rows(Q, tokens, heads, valid, stride_qt, stride_qh, offs_c0, rank, EVEN, part == 1)
            q_c1 = load_rows(Q, tokens, heads, valid, stride_qt, stride_qh, offs_c1, rank, EVEN, part == 1)
            q_r = load_rows(Q + rank, tokens, heads, valid, stride_qt, stride_qh, offs_r, rope, EVEN, part == 1)
            if FP8:   # e4m3 tiles widen to fp16 in one conversion per pair (to bf16: three per element)
                q_c0 = fp16_operand(q_c0)
                q_c1 = fp16_operand(q_c1)
                q_r = fp16_operand(q_r)
            if TRANS:
                q_c0 = tl.trans(q_c0)
                q_c1 = tl.trans(q_c1)
                q_r = tl.trans(q_r)
        acc0, acc1, m_i, l_i = _mla_blocks(
            acc0, acc1, m_i, l_i, q_c0, q_c1, q_r, body_start if part == 0 else body_end,
            body_end if part == 0 else end, k_len, CACHE, C_DESC, R_DESC, table, cache_block,
            stride_b, stride_t, lo, hi, offs_c0, offs_c1, offs_r, rank, rope, scale_log2,
            part == 1, EVEN, TMA and part == 0, HALF_C, WARP_SPEC and part == 0,
            BLOCK_N if part == 0 else MASK_N, TRANS, IEEE, DOT_F32)
    if TRANS:
        acc0 = tl.trans(acc0)
        acc1 = tl.trans(acc1)
    o_split = O + split * stride_o_split
    lse_split = LSE + split * stride_lse_split
    store_rows(o_split, lse_split, acc0 * kv_scale, m_i, l_i, tokens, heads, valid,
               stride_ot, stride_oh, stride_lse_h, offs_c0, rank, WRITE_LSE, EVEN, LSE, False)
    store_rows(o_split, lse_split, acc1 * kv_scale, m_i, l_i, tokens, heads, valid,
               stride_ot, stride_oh, stride_lse_h, offs_c1, rank, False, EVEN, LSE, False)


def _descriptors(kv_cache, plan):
    """Tensor descriptors over the cache as [rows, C + R] for the TMA path (else the cache twice)."""
    if not plan["TMA"]:
        return kv_cache, kv_cache
    from triton.tools.tensor_descriptor import TensorDescriptor

    flat = kv_cache.view(-1, kv_cache.shape[2])
    half = plan["BLOCK_C"] // 2
    return (TensorDescriptor.from_tensor(flat, [plan["BLOCK_N"], half]),
            TensorDescriptor.from_tensor(flat, [plan["BLOCK_N"], plan["BLOCK_R"]]))


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
               kv_scale=None, configs=None, config=None, num_splits=None):
    """Triton implementation behind :func:`ascend_ext.ops.mla_decode` (validated args).

    ``configs``: the backend's tile-config module (``mla_plan``); ``config`` overrides the
    planned tiles (keys BLOCK_M, BLOCK_N, num_warps, num_stages, TMA, MASK_N, WARP_SPEC, TRANS);
    ``num_splits`` overrides the split-KV count. Returns lse [Hq, B * s_q] or None."""
    batch, s_q, hq, width = q.shape
    rank, rope = kv_lora_rank, width - kv_lora_rank
    tokens = batch * s_q
    lse = torch.empty((hq, tokens), dtype=torch.float32, device=q.device) if return_lse else None
    if batch == 0:
        return lse
    max_len = kv_cache.shape[1] * block_table.shape[1]
    plan = configs.mla_plan(q.device, batch=batch, heads=hq, s_q=s_q, max_len=max_len, rank=rank, rope=rope,
                    cache_block=kv_cache.shape[1], q_dtype=q.dtype, kv_dtype=kv_cache.dtype,
                    config=config, num_splits=num_splits)
    q2 = q.reshape(tokens, hq, width)
    out2 = out.view(tokens, hq, rank)
    splits = plan["num_splits"]
    dest_o, dest_lse = split_destinations(splits, out2, lse)
    c_desc, r_desc = _descriptors(kv_cache, plan)
    pdl = bool(plan.get("PDL")) and splits > 1
    scale = 1.0 if kv_scale is None else float(kv_scale)
    launch(mla_decode_kernel, (plan["row_tiles"], batch * splits),   # retries fewer stages if smem overflows
        q2, kv_cache, c_desc, r_desc, block_table, seq_lens, dest_o, dest_lse,
        q2.stride(0), q2.stride(1), kv_cache.stride(0), kv_cache.stride(1), block_table.stride(0),
        dest_o.stride(1), dest_o.stride(2), dest_lse.stride(1), dest_o.stride(0), dest_lse.stride(0),
        softmax_scale * scale * LOG2E, scale, kv_cache.shape[1], splits, s_q, rank, rope,
        HEADS=hq, BLOCK_M=plan["BLOCK_M"], BLOCK_N=plan["BLOCK_N"], BLOCK_C=plan["BLOCK_C"],
        BLOCK_R=plan["BLOCK_R"], CAUSAL=causal, WRITE_LSE=splits > 1 or lse is not None, EVEN=plan["EVEN"],
        TMA=plan["TMA"], MASK_N=plan["MASK_N"], WARP_SPEC=plan["WARP_SPEC"], TRANS=plan["TRANS"],
        **dot_flags(q.dtype), FP8=kv_cache.dtype == torch.float8_e4m3fn, num_warps=plan["num_warps"],
        num_stages=plan["num_stages"], **pdl_flags(pdl, dependent=False))
    if splits > 1:
        combine_splits(dest_o, dest_lse, out2, lse, pdl=pdl)
    return lse


__all__ = ["mla_decode", "mla_decode_kernel"]
