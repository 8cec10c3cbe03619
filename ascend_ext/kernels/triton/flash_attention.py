"""FastAttention forward for packed variable-length batches, in Triton.

Two-level tiling: each program owns a first-level tile of ``BLOCK_M = SUB_M *
NUM_SUB`` query rows of one head and streams ``BLOCK_N``-key tiles of K/V through
it. Each K/V tile is loaded once and consumed by ``NUM_SUB`` second-level query
sub-tiles, each with its own online-softmax state, so the vector work (softmax,
rescale) runs on ``SUB_M × BLOCK_N`` pieces while the matrix work of one sub-tile can
overlap the vector work of the other. ``NUM_SUB = 1`` is the classic one-level
FlashAttention-2 loop (the ablation baseline).

Tile classification: for causal / sliding-window rules the key blocks of a query
tile split into a masked head, a mask-free body and a masked tail
(:func:`block_segments`); fully masked blocks are never visited. A :class:`TileMask`
of a known kind takes its native form (window masks: the window rule; document masks:
the varlen batch of the documents). Any other mask: the program walks its query-tile
row's runs: empty tiles are absent, all full tiles go through one pipelined index walk
(:func:`walk_blocks`), partial runs load one pool tile.

Hopper path (:func:`flash_varlen_fwd_tma_kernel`, chosen by the CUDA config's ``TMA``):
K/V tiles by tensor descriptor (bulk tensor copies) and a warp-specialised mask-free
loop; the portable kernel stays for other GPUs, the interpreter and Ascend.

Grid: (query tile × GQA-group head, KV head, sequence). The heads of a GQA group are
fastest, so they run side by side and their shared K/V tiles come from HBM once
(L2 hits for the rest of the group); next come the query tiles of the same KV
head (for MHA: consecutive programs share K/V), issued last-first because causal
rows at the bottom of a sequence carry the most work.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .common import (LOG2E, block_segments, clipped_run, dot_flags, interpreter_reads_descriptors, interpreting,
                     launch, load_rows, next_pow2, row_bounds, run_run, run_visible, chunk_full_runs, sink_flag,
                     softmax_step, store_rows, walk_blocks)


@triton.jit
def program_tile(CU_Q, CU_K, GROUP: tl.constexpr):
    """This program's query tile, query head and sequence extents. Grid axis 0 = (query
    tile, head within the GQA group), group heads fastest, tiles last-first; axis 1 = KV
    head; axis 2 = sequence."""
    tile = tl.num_programs(0) // GROUP - 1 - tl.program_id(0) // GROUP
    head = tl.program_id(1) * GROUP + tl.program_id(0) % GROUP
    seq = tl.program_id(2)
    q_start = tl.load(CU_Q + seq)
    k_start = tl.load(CU_K + seq)
    return tile, head, q_start, tl.load(CU_Q + seq + 1) - q_start, k_start, tl.load(CU_K + seq + 1) - k_start


@triton.jit
def tile_segments(tile, q_len, k_len, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """:func:`block_segments` of query tile ``tile`` (rows are ordered: its first and last
    row bound the keys it sees)."""
    t_last = tl.minimum(tile * BLOCK_M + BLOCK_M, q_len) - 1
    lo_f, hi_f = row_bounds(tile * BLOCK_M, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    lo_l, hi_l = row_bounds(t_last, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    return block_segments(lo_f, lo_l, hi_f, hi_l, 0, k_len, BLOCK_N)


@triton.jit
def flash_varlen_fwd_kernel(
        Q, K, V, O, LSE, CU_Q, CU_K, SINKS,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_ot, stride_oh, stride_lse_h,
        scale_log2, softcap, window_left, window_right,
        ROW_PTR, RUN_START, RUN_LEN, RUN_POOL, POOL_TILES,
        HEAD_DIM, HEAD_DIM_V,
        GROUP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        SUB_M: tl.constexpr, NUM_SUB: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_MASK: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr, WRITE_LSE: tl.constexpr, EVEN_D: tl.constexpr,
        IEEE: tl.constexpr, DOT_F32: tl.constexpr, WARP_SPEC: tl.constexpr, WALK: tl.constexpr = True,
        HAS_SINK: tl.constexpr = False, WALK_RUNS: tl.constexpr = 32,
        K_DESC=None, V_DESC=None, TMA: tl.constexpr = False):
    BLOCK_M: tl.constexpr = SUB_M * NUM_SUB
    tile, head, q_start, q_len, k_start, k_len = program_tile(CU_Q, CU_K, GROUP)
    if tile * BLOCK_M >= q_len:
        return
    k_start = k_start.to(tl.int64)
    kv_head = head // GROUP

    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    rows0 = tile * BLOCK_M + tl.arange(0, SUB_M)
    rows1 = rows0 + SUB_M
    heads = rows0 * 0 + head
    q0 = load_rows(Q, q_start + rows0, heads, rows0 < q_len, stride_qt, stride_qh, offs_d, HEAD_DIM, EVEN_D)
    q1 = q0
    if NUM_SUB == 2:
        q1 = load_rows(Q, q_start + rows1, heads, rows1 < q_len, stride_qt, stride_qh, offs_d, HEAD_DIM, EVEN_D)
    K = K + k_start * stride_kt + kv_head * stride_kh
    V = V + k_start * stride_vt + kv_head * stride_vh
    k_col = kv_head * BLOCK_D    # this head's columns in the descriptors' [tokens, heads * D] view
    v_col = kv_head * BLOCK_DV
    if TMA:   # tiling-mask tiles by tensor descriptor (Hopper): see load_contiguous_kv
        tl.static_assert(HAS_MASK and WALK, "TMA tiles serve the tiling-mask walk only")
        K = K_DESC
        V = V_DESC

    acc0 = tl.zeros((SUB_M, BLOCK_DV), tl.float32)
    m0 = tl.full((SUB_M,), float("-inf"), tl.float32)
    l0 = tl.zeros((SUB_M,), tl.float32)
    acc1 = acc0
    m1 = m0
    l1 = l0
    lo0, hi0 = row_bounds(rows0, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    lo1, hi1 = row_bounds(rows1, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    start, full_start, full_end, end = tile_segments(tile, q_len, k_len, window_left, window_right,
                                                     BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)

    if HAS_MASK:
        # tiling-mask: this query tile's runs (empty tiles are absent), each clipped to the
        # causal/window range. Full runs: with WALK, 32 runs at a time, all their tiles in one
        # pipelined index walk per segment (before / inside / after the rules' mask-free range);
        # else one pipelined loop per run. Partial runs: element mask from the pool (few;
        # unpipelined loop).
        r0 = tl.load(ROW_PTR + tile)
        r1 = tl.load(ROW_PTR + tile + 1)
        if WALK:
            for chunk in range(r0, r1, WALK_RUNS):
                first, count, before, total, head, tail = chunk_full_runs(
                    RUN_START, RUN_LEN, RUN_POOL, chunk, r1, start, end, full_start, full_end, BLOCK_N, WALK_RUNS)
                for seg in tl.static_range(3):
                    if seg == 0:
                        i_from = head * 0
                        i_to = head
                    elif seg == 1:
                        i_from = head
                        i_to = total - tail
                    else:
                        i_from = total - tail
                        i_to = total
                    acc0, m0, l0, acc1, m1, l1 = walk_blocks(
                        acc0, m0, l0, acc1, m1, l1, q0, q1, first, count, before, i_from, i_to, k_len,
                        K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv,
                        HEAD_DIM, HEAD_DIM_V, scale_log2, softcap, seg != 1, NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP,
                        IEEE, DOT_F32, k_start, k_col, v_col, TMA)
        for r in range(r0, r1):
            first_key, last_key = clipped_run(RUN_START, RUN_LEN, r, r < r1, start, end, BLOCK_N)
            last_key = tl.maximum(last_key, first_key)
            pool_id = tl.load(RUN_POOL + r)
            partial = pool_id >= 0
            if partial:   # unpipelined: the pool tile's element mask and the row rules
                acc0, m0, l0, acc1, m1, l1 = run_run(
                    acc0, m0, l0, acc1, m1, l1, q0, q1, first_key, last_key, last_key, last_key, k_len,
                    K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V,
                    scale_log2, softcap, POOL_TILES + pool_id * (BLOCK_M * BLOCK_N), partial,
                    rows0 - tile * BLOCK_M, rows1 - tile * BLOCK_M,
                    NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, 1, k_start, k_col, v_col, TMA)
            elif not WALK:   # one pipelined loop per full run
                acc0, m0, l0, acc1, m1, l1 = run_visible(
                    acc0, m0, l0, acc1, m1, l1, q0, q1, first_key, last_key, full_start, full_end, k_len,
                    K, V, K, 1, 0, stride_kt, 0, stride_vt,
                    lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
                    False, NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, WARP_SPEC)
    else:
        acc0, m0, l0, acc1, m1, l1 = run_visible(
            acc0, m0, l0, acc1, m1, l1, q0, q1, start, end, full_start, full_end, k_len,
            K, V, K, 1, 0, stride_kt, 0, stride_vt,
            lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
            False, NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, WARP_SPEC)

    store_rows(O, LSE, acc0, m0, l0, q_start + rows0, heads, rows0 < q_len,
               stride_ot, stride_oh, stride_lse_h, offs_dv, HEAD_DIM_V, WRITE_LSE, EVEN_D, SINKS, HAS_SINK)
    if NUM_SUB == 2:
        store_rows(O, LSE, acc1, m1, l1, q_start + rows1, heads, rows1 < q_len,
                   stride_ot, stride_oh, stride_lse_h, offs_dv, HEAD_DIM_V, WRITE_LSE, EVEN_D, SINKS, HAS_SINK)


@triton.jit
def tma_blocks(acc, m_i, l_i, q, n_from, n_to, k_row0, K_DESC, V_DESC, k_col, v_col, lo, hi, offs_n,
               scale_log2, softcap, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               IEEE: tl.constexpr, DOT_F32: tl.constexpr, WARP_SPEC: tl.constexpr):
    """Key blocks [n_from, n_to) of one sequence, K/V tiles by tensor descriptor (TMA)."""
    for n in tl.range(n_from, n_to, BLOCK_N, warp_specialize=WARP_SPEC):
        k = K_DESC.load([k_row0 + n, k_col])
        v = V_DESC.load([k_row0 + n, v_col])
        cols = n + offs_n
        vis = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
        acc, m_i, l_i = softmax_step(acc, m_i, l_i, q, tl.trans(k), v, vis, scale_log2, softcap,
                                     MASKED, HAS_SOFTCAP, IEEE, DOT_F32)
    return acc, m_i, l_i


@triton.jit
def flash_varlen_fwd_tma_kernel(
        Q, K_DESC, V_DESC, O, LSE, CU_Q, CU_K, SINKS,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_lse_h,
        scale_log2, softcap, window_left, window_right, HEAD_DIM, HEAD_DIM_V,
        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, WRITE_LSE: tl.constexpr,
        IEEE: tl.constexpr, DOT_F32: tl.constexpr, WARP_SPEC: tl.constexpr, HAS_SINK: tl.constexpr = False):
    """Hopper path of :func:`flash_varlen_fwd_kernel` (no tiling-mask, head dims a power of
    two): K/V tiles come through tensor descriptors over [tokens, heads * D] (the bulk tensor
    copy engine, no address arithmetic per element), and the mask-free body may be
    warp-specialised. Key rows past a sequence's end belong to the next sequence or are
    zero-filled past the tensor; the row rules mask them out."""
    tile, head, q_start, q_len, k_start, k_len = program_tile(CU_Q, CU_K, GROUP)
    if tile * BLOCK_M >= q_len:
        return
    kv_head = head // GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    heads = rows * 0 + head
    q = load_rows(Q, q_start + rows, heads, rows < q_len, stride_qt, stride_qh, offs_d, HEAD_DIM, True)
    lo, hi = row_bounds(rows, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    start, full_start, full_end, end = tile_segments(tile, q_len, k_len, window_left, window_right,
                                                     BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    free_from = tl.minimum(tl.maximum(full_start, start), end)
    free_to = tl.maximum(tl.minimum(full_end, end), free_from)

    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    k_col = kv_head * BLOCK_D
    v_col = kv_head * BLOCK_DV
    acc, m_i, l_i = tma_blocks(acc, m_i, l_i, q, start, free_from, k_start, K_DESC, V_DESC, k_col, v_col, lo, hi,
                               offs_n, scale_log2, softcap, True, BLOCK_N, HAS_SOFTCAP, IEEE, DOT_F32, False)
    acc, m_i, l_i = tma_blocks(acc, m_i, l_i, q, free_from, free_to, k_start, K_DESC, V_DESC, k_col, v_col, lo, hi,
                               offs_n, scale_log2, softcap, False, BLOCK_N, HAS_SOFTCAP, IEEE, DOT_F32, WARP_SPEC)
    acc, m_i, l_i = tma_blocks(acc, m_i, l_i, q, free_to, end, k_start, K_DESC, V_DESC, k_col, v_col, lo, hi,
                               offs_n, scale_log2, softcap, True, BLOCK_N, HAS_SOFTCAP, IEEE, DOT_F32, False)
    store_rows(O, LSE, acc, m_i, l_i, q_start + rows, heads, rows < q_len,
               stride_ot, stride_oh, stride_lse_h, offs_dv, HEAD_DIM_V, WRITE_LSE, True, SINKS, HAS_SINK)


def _rows_descriptor(x: torch.Tensor, block_rows: int):
    """Tensor descriptor over x [tokens, heads, D] seen as [tokens, heads * D] (rows may be
    strided, e.g. views into a fused qkv tensor), boxes of [block_rows, D]."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    t, h, d = x.shape
    return TensorDescriptor(x, [t, h * d], [x.stride(0), 1], [block_rows, d])


def _flash_tma(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, grid, cfg, softmax_scale, softcap, window,
               return_lse, sinks=None) -> None:
    d, dv = q.shape[2], v.shape[2]
    k_desc = _rows_descriptor(k, cfg["BLOCK_N"])
    v_desc = _rows_descriptor(v, cfg["BLOCK_N"])
    left, right = window
    ws = cfg.get("WS", False)
    if ws and (d, dv, cfg["BLOCK_N"], cfg["num_warps"]) in _WS_FAILED:
        ws = False
    args = (q, k_desc, v_desc, out, lse, cu_seqlens_q, cu_seqlens_k, cu_seqlens_q if sinks is None else sinks,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), lse.stride(0) if return_lse else 0,
            softmax_scale * LOG2E, softcap, left, right, d, dv)
    kwargs = dict(GROUP=q.shape[1] // k.shape[1], BLOCK_M=cfg["SUB_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=d,
                  BLOCK_DV=dv, HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_SOFTCAP=softcap > 0,
                  WRITE_LSE=return_lse, **dot_flags(q.dtype), num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"], **sink_flag(sinks))
    if ws:
        try:
            launch(flash_varlen_fwd_tma_kernel, grid, *args, WARP_SPEC=True, **kwargs)
            return
        except RuntimeError as exc:   # Triton's warp-specialisation pass rejects some shapes
            if "PassManager" not in str(exc):
                raise
            _WS_FAILED.add((d, dv, cfg["BLOCK_N"], cfg["num_warps"]))
    launch(flash_varlen_fwd_tma_kernel, grid, *args, WARP_SPEC=False, **kwargs)


_WS_FAILED: set = set()


def tma_eligible(q, k, v) -> bool:
    """TMA loads take 16-bit q/k/v with power-of-two head dims, each K/V token's heads
    contiguous and 16-byte aligned rows (a tensor descriptor's rules); compiled CUDA, or the
    interpreter where it runs descriptor loads (tests: a config that asks for TMA)."""
    d, dv = q.shape[2], v.shape[2]
    rows_ok = all(x.stride(2) == 1 and x.stride(1) == x.shape[2] and (x.stride(0) * x.element_size()) % 16 == 0
                  and x.data_ptr() % 16 == 0 for x in (k, v))
    device_ok = q.device.type == "cuda" or (interpreting() and interpreter_reads_descriptors())
    return (device_ok and q.dtype in (torch.bfloat16, torch.float16)
            and d == next_pow2(d) and dv == next_pow2(dv) and rows_ok)


@functools.lru_cache(maxsize=32)
def _document_seqlens(offsets: tuple, batch: int, device: torch.device):
    """cu_seqlens int32 [batch * docs + 1] of every document of every sequence, and the
    longest document (sequences are ``offsets[-1]`` tokens long, all with these documents)."""
    total = offsets[-1]
    starts = [b * total + o for b in range(batch) for o in offsets[:-1]] + [batch * total]
    longest = max([e - s for s, e in zip(offsets, offsets[1:])] + [0])
    return torch.tensor(starts, dtype=torch.int32, device=device), longest


def _meet(a: int, b: int) -> int:
    """Intersection of two window sides (-1 = unbounded)."""
    return b if a < 0 else a if b < 0 else min(a, b)


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      softmax_scale, window, mask, softcap, out, return_lse, sinks=None, configs=None, config=None):
    """Triton implementation behind :func:`ascend_ext.ops.flash_attn_varlen` (validated args).

    ``configs``: the backend's tile-config module (``flash_config``); ``config`` (dict with
    SUB_M, NUM_SUB, BLOCK_N, num_warps, num_stages) overrides it (benchmarks: tiling ablation).
    """
    tq, hq, d = q.shape
    dv = v.shape[2]
    batch = cu_seqlens_q.shape[0] - 1
    lse = torch.empty((hq, tq), dtype=torch.float32, device=q.device) if return_lse else out.new_empty(1, dtype=torch.float32)
    if tq == 0 or batch == 0:
        return lse if return_lse else None
    if mask is not None and not (config or {}).get("TILE_RUNS", False):
        # masks of a known kind take their native form (what TileMask.kind is for): a
        # window mask is the window rule; a document mask on equal-length sequences is the
        # varlen batch of its documents (square documents: the rules act per document
        # exactly as on the whole sequence). Tiles then align to document starts.
        if mask.kind[0] == "window":
            window = (_meet(window[0], mask.kind[1]), _meet(window[1], mask.kind[2]))
            mask = None
        elif mask.kind[0] == "document" and mask.seqlen_q == mask.seqlen_k:
            cu_docs, longest = _document_seqlens(tuple(mask.kind[1]), batch, q.device)
            return flash_attn_varlen(q, k, v, cu_docs, cu_docs, longest, longest, softmax_scale=softmax_scale,
                                     window=window, mask=None, softcap=softcap, out=out, return_lse=return_lse,
                                     sinks=sinks, configs=configs, config=config)
    cfg = dict(config or configs.flash_config(q.device, d, q.dtype, window_left=window[0],
                                              causal_keys=max_seqlen_k if window[1] == 0 else -1))
    if mask is not None:   # the tiling-mask fixes the first-level tile shape
        if mask.tile_q < 32:           # tl.dot needs >= 16 rows per sub-tile
            cfg["NUM_SUB"] = 1
        cfg["SUB_M"] = mask.tile_q // cfg["NUM_SUB"]
        cfg["BLOCK_N"] = mask.tile_k
        mask_args = (mask.row_ptr, mask.run_start, mask.run_len, mask.run_pool,
                     mask.pool.to(torch.int8) if mask.pool.numel() else mask.row_ptr)
    else:
        mask_args = (cu_seqlens_q,) * 5   # unused pointers
    block_m = cfg["SUB_M"] * cfg["NUM_SUB"]
    if max(max_seqlen_k * k.stride(0), max_seqlen_k * v.stride(0), max_seqlen_q * q.stride(0)) >= 2 ** 31:
        raise ValueError("flash_attn_varlen (triton): a sequence spans more than 2**31 elements of q/k/v; "
                         "split it or use ASCEND_EXT_IMPL=attention=reference")
    group = hq // k.shape[1]
    grid = (triton.cdiv(max(max_seqlen_q, 1), block_m) * group, k.shape[1], batch)
    tma = cfg.get("TMA", False) and tma_eligible(q, k, v)
    if tma and mask is None and cfg["NUM_SUB"] == 1:
        _flash_tma(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, grid, cfg, softmax_scale, softcap, window,
                   return_lse, sinks)
        return lse if return_lse else None
    walk = cfg.get("WALK", True)
    descriptors = {}
    # the tiling-mask walk through TMA where a config asks for it (MASK_TMA: sm90 d128, measured)
    if tma and mask is not None and walk and cfg.get("MASK_TMA", False):
        descriptors = dict(K_DESC=_rows_descriptor(k, cfg["BLOCK_N"]), V_DESC=_rows_descriptor(v, cfg["BLOCK_N"]),
                           TMA=True)
    left, right = window
    launch(flash_varlen_fwd_kernel, grid,
           q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, cu_seqlens_q if sinks is None else sinks,
           q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
           out.stride(0), out.stride(1), lse.stride(0) if return_lse else 0,
           softmax_scale * LOG2E, softcap, left, right, *mask_args, d, dv,
           GROUP=group, BLOCK_D=next_pow2(d), BLOCK_DV=next_pow2(dv),
           SUB_M=cfg["SUB_M"], NUM_SUB=cfg["NUM_SUB"], BLOCK_N=cfg["BLOCK_N"],
           HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_MASK=mask is not None,
           HAS_SOFTCAP=softcap > 0, WRITE_LSE=return_lse,
           EVEN_D=(next_pow2(d) == d and next_pow2(dv) == dv), WARP_SPEC=cfg.get("WS", False), WALK=walk,
           **dot_flags(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **sink_flag(sinks),
           **descriptors)
    return lse if return_lse else None
