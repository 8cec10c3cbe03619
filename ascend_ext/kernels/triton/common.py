"""Triton building blocks shared by the attention kernels (varlen prefill, paged).

Conventions inside kernels: scores are kept in log2 units (the softmax scale is
multiplied by log2(e) once), so exponentials are ``exp2``; a row that has seen no
key keeps running max ``-inf`` and sum 0, and finishes with output 0, lse -inf.
Attention sinks (HAS_SINK) join a row's state once, when it is stored (:func:`add_sink`):
a sink only adds a denominator term, so the key loops never see it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

try:   # programmatic dependent launch (Hopper+); triton-ascend has no CUDA extras
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    @triton.jit
    def gdc_launch_dependents():
        pass

    @triton.jit
    def gdc_wait():
        pass


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def interpreter_reads_descriptors() -> bool:
    """Whether this Triton's interpreter runs tensor-descriptor (TMA) loads (triton 3.9 does,
    with zero padding; triton-ascend 3.2's does not): the TMA kernels' indexing is then
    parity-tested on CPU, where the tensors fit a descriptor's rules."""
    try:
        from triton.runtime.interpreter import InterpreterBuilder
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return hasattr(InterpreterBuilder, "create_descriptor_load")


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexpr switches for tl.dot: exact fp32 products for fp32 inputs, and an fp32
    upcast of bf16 operands under the interpreter (whose bf16 dot is wrong in triton 3.9)."""
    return {"IEEE": dtype == torch.float32,
            "DOT_F32": dtype == torch.bfloat16 and interpreting()}


def sink_flag(sinks) -> dict:
    """The HAS_SINK constexpr of a launch: absent without sinks, so those kernels keep
    their existing specialisation (and cache key)."""
    return {} if sinks is None else {"HAS_SINK": True}


def head_dim_bucket(head_dim: int) -> int:
    """The head-dim class (64 / 128 / 256) that config tables are keyed by."""
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


def register_cap(cfg: dict) -> dict:
    """The ``maxnreg`` launch option of a config that sets one (registers per thread, so that
    more programs fit an SM; NVIDIA only), else nothing."""
    return {"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}


def pdl_flags(enabled: bool, *, dependent: bool) -> dict:
    """Launch options for programmatic dependent launch (PDL) between two kernels of a stream:
    the first (``dependent=False``) calls :func:`release_dependents`; the second is launched with
    ``launch_pdl``, may begin while the first finishes, and waits in :func:`await_inputs`
    before reading the first's results. Compiled CUDA only (sm90+); nothing otherwise, and
    nothing with ``ASCEND_EXT_PDL=0`` (for stacks whose CUDA graphs cannot capture PDL launches)."""
    if not enabled or interpreting() or os.environ.get("ASCEND_EXT_PDL") == "0":
        return {}
    return {"PDL": True, "launch_pdl": True} if dependent else {"PDL": True}


@triton.jit
def release_dependents(PDL: tl.constexpr):
    """Let the next kernel of the stream (launched with PDL) start its prologue now; it still
    waits for this whole kernel's completion in :func:`await_inputs`. No-op without PDL."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def await_inputs(PDL: tl.constexpr):
    """Wait until the previous kernel of the stream has completed and its writes are visible
    (griddepcontrol.wait). No-op without PDL."""
    if PDL:
        gdc_wait()


@triton.jit
def split_keys(split, num_splits, k_len, BLOCK_N: tl.constexpr):
    """Keys [begin, end) of split ``split`` of a sequence of ``k_len`` keys (split-KV): the
    sequence's own keys cut into ``num_splits`` runs of whole BLOCK_N tiles. Sized from k_len
    (not from the longest sequence or the block table's capacity, which fix the grid under
    CUDA graphs), so a short sequence still spreads over every split; a run may be empty."""
    per_split = tl.cdiv(tl.cdiv(k_len, num_splits), BLOCK_N) * BLOCK_N
    begin = split * per_split
    return begin, tl.minimum(begin + per_split, k_len)


@functools.lru_cache(maxsize=None)
def next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(n))


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def row_bounds(t, q_len, k_len, window_left, window_right,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Visible keys [lo, hi) of query row t (bottom-right aligned); works on scalars and blocks."""
    pos = t + k_len - q_len
    if HAS_LEFT:
        lo = tl.maximum(pos - window_left, 0)
    else:
        lo = pos * 0
    if HAS_RIGHT:
        hi = tl.minimum(pos + window_right + 1, k_len)
    else:
        hi = pos * 0 + k_len
    hi = tl.maximum(hi, lo)
    return lo, hi


@triton.jit
def block_segments(lo_first, lo_last, hi_first, hi_last, n_begin, n_end, BLOCK_N: tl.constexpr):
    """Split the key blocks a query tile touches into masked / mask-free / masked runs.

    Rows are ordered, so the tile's rows see keys within [lo_first, hi_last) and every
    row sees [lo_last, hi_first). Returns block-aligned (start, full_start, full_end, end)
    clipped to [n_begin, n_end): blocks in [full_start, full_end) need no mask.
    """
    start = tl.maximum((lo_first // BLOCK_N) * BLOCK_N, n_begin)
    end = tl.minimum(hi_last, n_end)
    full_start = tl.maximum(tl.cdiv(lo_last, BLOCK_N) * BLOCK_N, start)
    full_end = tl.minimum((hi_first // BLOCK_N) * BLOCK_N, (end // BLOCK_N) * BLOCK_N)
    if full_end <= full_start:
        full_start = start
        full_end = start
    return start, full_start, full_end, end


@triton.jit
def softcap_scores(s, softcap):
    """softcap * tanh(s / softcap), with tanh from exp (portable to every backend)."""
    e = tl.exp(2.0 * s / softcap)
    return softcap * (1.0 - 2.0 / (e + 1.0))


@triton.jit
def scores(q, k_t, scale_log2, softcap, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """Raw scores q @ k_t and the factor that turns them into log2 units.

    Without softcap the factor is scale*log2(e), applied later inside one FMA; with
    softcap the scores are capped here and already in log2 units (factor 1)."""
    s = dot(q, k_t, tl.zeros((q.shape[0], k_t.shape[1]), tl.float32), IEEE, DOT_F32)
    if HAS_SOFTCAP:
        return softcap_scores(s * (scale_log2 * 0.6931471805599453), softcap) * 1.4426950408889634, 1.0
    else:
        return s, scale_log2


@triton.jit
def softmax_stats(m_i, l_i, s, scale, GUARD: tl.constexpr, KEY_AXIS: tl.constexpr = 1):
    """Running-max / running-sum step of the online softmax with scores s [M, N] (-inf =
    masked; s * scale in log2 units). Returns p [M, N], the rescale factor alpha [M] of the
    accumulators, and the new max and sum. GUARD handles rows that have seen no key yet.
    KEY_AXIS 0 takes transposed scores s [N, M] (keys on axis 0) and returns p [N, M]."""
    m_new = tl.maximum(m_i, tl.max(s, KEY_AXIS) * scale)
    if GUARD:
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_safe = m_new
    p = tl.math.exp2(s * scale - tl.expand_dims(m_safe, KEY_AXIS))
    alpha = tl.math.exp2(m_i - m_safe)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, KEY_AXIS)


@triton.jit
def softmax_update(acc, m_i, l_i, s, scale, v, GUARD: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """Online-softmax update with one block of scores s [M, N] (-inf = masked) and V [N, Dv]."""
    p, alpha, m_new, l_i = softmax_stats(m_i, l_i, s, scale, GUARD)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE, DOT_F32)
    return acc, m_new, l_i


@triton.jit
def softmax_step(acc, m_i, l_i, q, k_t, v, visible, scale_log2, softcap,
                 MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """One online-softmax update of a query sub-tile with one key block.

    q [M, D], k_t [D, N], v [N, Dv], visible bool [M, N] (used when MASKED);
    acc [M, Dv] fp32, m_i / l_i [M] fp32 running max (log2 units) and sum.
    """
    s, scale = scores(q, k_t, scale_log2, softcap, HAS_SOFTCAP, IEEE, DOT_F32)
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    return softmax_update(acc, m_i, l_i, s, scale, v, MASKED, IEEE, DOT_F32)


@triton.jit
def finish_rows(acc, m_i, l_i):
    """Normalised output and natural-log lse; rows that saw no key give 0 and -inf."""
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    return out, lse


@triton.jit
def add_sink(acc, m_i, l_i, SINKS, heads, HAS_SINK: tl.constexpr):
    """Join the sink logit of each row's head (SINKS float32 [Hq], natural log; a virtual key
    of value 0) to finished softmax states: the sum gains exp(sink - max), the accumulator is
    rescaled to the new max. A row that saw no key then gives out 0 and lse = sink."""
    if HAS_SINK:
        sink = tl.load(SINKS + heads) * 1.4426950408889634
        m_new = tl.maximum(m_i, sink)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        keep = tl.math.exp2(m_i - m_safe)
        l_i = l_i * keep + tl.math.exp2(sink - m_safe)
        acc = acc * keep[:, None]
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def load_kv(K, V, n, k_len, TABLE, cache_block, stride_kb, stride_kt, stride_vb, stride_vt,
            offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V,
            PAGED: tl.constexpr, EVEN_D: tl.constexpr, BOUND_N: tl.constexpr):
    """K^T [D, N] and V [N, Dv] of keys n .. n+N-1.

    Contiguous source: key j at K + j*stride_kt. Paged source: key j lives in cache block
    TABLE[j // cache_block] at slot j % cache_block. BOUND_N masks keys >= k_len (and
    never reads the block table past the sequence).
    """
    cols = n + offs_n
    in_n = cols < k_len
    if PAGED:
        if BOUND_N:
            blk = tl.load(TABLE + cols // cache_block, mask=in_n, other=0).to(tl.int64)
        else:
            blk = tl.load(TABLE + cols // cache_block).to(tl.int64)
        slot = cols % cache_block
        k_rows = blk * stride_kb + slot * stride_kt
        v_rows = blk * stride_vb + slot * stride_vt
    else:   # 32-bit offsets within one sequence (the wrapper checks they fit)
        k_rows = cols * stride_kt
        v_rows = cols * stride_vt
    k_ptrs = K + k_rows[None, :] + offs_d[:, None]
    v_ptrs = V + v_rows[:, None] + offs_dv[None, :]
    if BOUND_N:
        if EVEN_D:
            k_t = tl.load(k_ptrs, mask=in_n[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=in_n[:, None], other=0.0)
        else:
            k_t = tl.load(k_ptrs, mask=in_n[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
            v = tl.load(v_ptrs, mask=in_n[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    else:
        if EVEN_D:
            k_t = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k_t = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0)
    return k_t, v


@triton.jit
def run_blocks(acc0, m0, l0, acc1, m1, l1, q0, q1, n_from, n_to, k_len,
               K, V, TABLE, cache_block, stride_kb, stride_kt, stride_vb, stride_vt,
               lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
               MASKED: tl.constexpr, PAGED: tl.constexpr, NUM_SUB: tl.constexpr,
               BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               IEEE: tl.constexpr, DOT_F32: tl.constexpr, WARP_SPEC: tl.constexpr = False, v_mul=1.0):
    """Stream key blocks [n_from, n_to) through one or two query sub-tiles.

    Each K/V tile is loaded once and used by every sub-tile (the two-level tiling).
    MASKED applies the row intervals [lo, hi) (which also bound keys to k_len).
    WARP_SPEC asks Triton to warp-specialise the loop (Hopper+, mask-free loops only).
    An fp8 V tile is widened and multiplied by ``v_mul`` (see :func:`fp8_value_factors`).
    """
    for n in tl.range(n_from, n_to, BLOCK_N, warp_specialize=WARP_SPEC):
        k_t, v = load_kv(K, V, n, k_len, TABLE, cache_block, stride_kb, stride_kt, stride_vb,
                         stride_vt, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, PAGED, EVEN_D, MASKED)
        if k_t.dtype != q0.dtype:   # quantised (fp8 / int8) cache: widen exactly to the MMA dtype
            if k_t.dtype.is_int8():   # through float32: triton 3.9's interpreter casts int8 -> bf16 wrongly
                k_t = k_t.to(tl.float32).to(q0.dtype)
                v = v.to(tl.float32).to(q0.dtype)
            else:
                k_t = k_t.to(q0.dtype)
                v = widen(v, q0.dtype, v_mul)
        cols = n + offs_n
        vis0 = (cols[None, :] >= lo0[:, None]) & (cols[None, :] < hi0[:, None])
        acc0, m0, l0 = softmax_step(acc0, m0, l0, q0, k_t, v, vis0, scale_log2, softcap,
                                    MASKED, HAS_SOFTCAP, IEEE, DOT_F32)
        if NUM_SUB == 2:
            vis1 = (cols[None, :] >= lo1[:, None]) & (cols[None, :] < hi1[:, None])
            acc1, m1, l1 = softmax_step(acc1, m1, l1, q1, k_t, v, vis1, scale_log2, softcap,
                                        MASKED, HAS_SOFTCAP, IEEE, DOT_F32)
    return acc0, m0, l0, acc1, m1, l1


@triton.jit
def ruled_update(acc, m_i, l_i, q, k_t, v, cols, lo, hi, need_mask, pool_ptr, has_pool, pool_rows, offs_n,
                 scale_log2, softcap, BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """Online-softmax update of one query sub-tile; when need_mask, keys outside the rows'
    [lo, hi) are masked, and with has_pool also where the pool tile (rows pool_rows) is 0."""
    s, scale = scores(q, k_t, scale_log2, softcap, HAS_SOFTCAP, IEEE, DOT_F32)
    if need_mask:
        vis = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
        if has_pool:
            vis = vis & (tl.load(pool_ptr + pool_rows[:, None] * BLOCK_N + offs_n[None, :]) != 0)
        s = tl.where(vis, s, float("-inf"))
    return softmax_update(acc, m_i, l_i, s, scale, v, True, IEEE, DOT_F32)


@triton.jit
def load_contiguous_kv(K, V, n, k_len, stride_kt, stride_vt, tma_row0, tma_k_col, tma_v_col,
                       offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, EVEN_D: tl.constexpr, TMA: tl.constexpr):
    """K^T [D, N] and V [N, Dv] of keys n .. n+N-1 of one sequence's contiguous K/V: pointers
    (keys >= k_len read as 0), or with TMA tensor descriptors over [tokens, heads * D] (key
    n at row tma_row0 + n; keys past the sequence come from the next one or as TMA's zero
    fill, so the caller's row rules must mask them)."""
    if TMA:   # descriptor coordinates are 32-bit
        row = (tma_row0 + n).to(tl.int32)
        k_t = tl.trans(K.load([row, tma_k_col]))
        v = V.load([row, tma_v_col])
    else:
        k_t, v = load_kv(K, V, n, k_len, K, 1, 0, stride_kt, 0, stride_vt, offs_n, offs_d, offs_dv,
                         HEAD_DIM, HEAD_DIM_V, False, EVEN_D, True)
    return k_t, v


@triton.jit
def tile_step(acc0, m0, l0, acc1, m1, l1, q0, q1, n, need_mask, k_len, K, V, stride_kt, stride_vt,
              lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
              pool_ptr, has_pool, pool_rows0, pool_rows1,
              NUM_SUB: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
              HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
              tma_row0=0, tma_k_col=0, tma_v_col=0, TMA: tl.constexpr = False):
    """One contiguous-K/V key block at n through one or two query sub-tiles: the row rules
    (and, with has_pool, the pool tile's element mask) apply only when need_mask
    (K/V: :func:`load_contiguous_kv`)."""
    k_t, v = load_contiguous_kv(K, V, n, k_len, stride_kt, stride_vt, tma_row0, tma_k_col, tma_v_col,
                                offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, EVEN_D, TMA)
    cols = n + offs_n
    acc0, m0, l0 = ruled_update(acc0, m0, l0, q0, k_t, v, cols, lo0, hi0, need_mask, pool_ptr, has_pool,
                                pool_rows0, offs_n, scale_log2, softcap, BLOCK_N, HAS_SOFTCAP, IEEE, DOT_F32)
    if NUM_SUB == 2:
        acc1, m1, l1 = ruled_update(acc1, m1, l1, q1, k_t, v, cols, lo1, hi1, need_mask, pool_ptr, has_pool,
                                    pool_rows1, offs_n, scale_log2, softcap, BLOCK_N, HAS_SOFTCAP, IEEE, DOT_F32)
    return acc0, m0, l0, acc1, m1, l1


@triton.jit
def run_run(acc0, m0, l0, acc1, m1, l1, q0, q1, first, last, free_from, free_to, k_len,
            K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V,
            scale_log2, softcap, pool_ptr, has_pool, pool_rows0, pool_rows1,
            NUM_SUB: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
            HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr, STAGES: tl.constexpr,
            tma_row0=0, tma_k_col=0, tma_v_col=0, TMA: tl.constexpr = False):
    """One tiling-mask run: key blocks [first, last) of one class, in a single loop.

    Blocks in [free_from, free_to) skip masking; the others apply the row rules, and a
    partial run (has_pool) also its pool tile. STAGES sets the loop's own software
    pipelining depth (partial runs are short: 1 keeps them out of shared memory).
    TMA / tma_*: :func:`load_contiguous_kv`.
    """
    for n in tl.range(first, last, BLOCK_N, num_stages=STAGES):
        acc0, m0, l0, acc1, m1, l1 = tile_step(
            acc0, m0, l0, acc1, m1, l1, q0, q1, n, (n < free_from) | (n >= free_to) | has_pool, k_len,
            K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V,
            scale_log2, softcap, pool_ptr, has_pool, pool_rows0, pool_rows1,
            NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, tma_row0, tma_k_col, tma_v_col, TMA)
    return acc0, m0, l0, acc1, m1, l1


@triton.jit
def clipped_run(RUN_START, RUN_LEN, r, in_row, start, end, BLOCK_N: tl.constexpr):
    """Keys [first, last) of run r (a scalar or a vector of runs) clipped to [start, end)
    (last <= first: nothing left); runs where ``in_row`` is false read as empty."""
    run_first = tl.load(RUN_START + r, mask=in_row, other=0)
    first = tl.maximum(run_first * BLOCK_N, start)
    return first, tl.minimum((run_first + tl.load(RUN_LEN + r, mask=in_row, other=0)) * BLOCK_N, end)


@triton.jit
def chunk_full_runs(RUN_START, RUN_LEN, RUN_POOL, chunk, r1, start, end, full_start, full_end,
                    BLOCK_N: tl.constexpr, RUNS: tl.constexpr):
    """The full runs among runs chunk .. chunk+RUNS-1 of one query-tile row (those < r1),
    clipped to [start, end), as vectors over the chunk: each run's first key, its block count
    (0 for partial runs and runs clipped away) and the blocks of the runs before it, so the
    chunk's block i lies in the run with before <= i < before + count (:func:`walk_blocks`).
    Also returns the chunk's block total and how many of its blocks come before / after the
    rules' mask-free range [full_start, full_end): blocks are walked in run order, so these are
    a prefix and a suffix when the full runs are sorted by key (the builder sorts them);
    otherwise every block counts as masked (correct, just slower)."""
    offs = tl.arange(0, RUNS)
    r = chunk + offs
    in_row = r < r1
    first, last = clipped_run(RUN_START, RUN_LEN, r, in_row, start, end, BLOCK_N)
    full = in_row & (tl.load(RUN_POOL + r, mask=in_row, other=0) < 0) & (last > first)
    count = tl.where(full, (last - first + BLOCK_N - 1) // BLOCK_N, 0)
    earlier = offs[None, :] < offs[:, None]                          # [run, earlier run]
    before = tl.sum(tl.where(earlier, count[None, :], 0), 1)
    prev_last = tl.max(tl.where(earlier & full[None, :], last[None, :], -1), 1)
    ordered = tl.sum((full & (first < prev_last)).to(tl.int32), 0) == 0
    total = tl.sum(count, 0)
    head = tl.sum(tl.minimum(tl.maximum((full_start - first) // BLOCK_N, 0), count), 0)
    inside = tl.sum(tl.minimum(tl.maximum((full_end - first) // BLOCK_N, 0), count), 0)   # n + N <= full_end
    head = tl.where(ordered, head, 0)
    tail = tl.where(ordered, total - inside, total)
    return first, count, before, total, head, tail


@triton.jit
def walk_blocks(acc0, m0, l0, acc1, m1, l1, q0, q1, first, count, before, i_from, i_to, k_len,
                K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv,
                HEAD_DIM, HEAD_DIM_V, scale_log2, softcap, MASKED: tl.constexpr,
                NUM_SUB: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
                HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                tma_row0=0, tma_k_col=0, tma_v_col=0, TMA: tl.constexpr = False):
    """Blocks i_from .. i_to-1 of a chunk of full runs (:func:`chunk_full_runs`) in ONE
    software-pipelined loop, like a block-sparse index walk: block i's key offset is a
    function of i and the chunk's vectors (a select + sum), never of the previous iteration,
    so the pipeline can issue the loads of later blocks early. MASKED applies the row rules
    (the blocks before / after their mask-free range); the mask-free segment has no branch.
    TMA / tma_*: :func:`load_contiguous_kv`."""
    for i in range(i_from, i_to):
        mine = (before <= i) & (i < before + count)
        n = tl.sum(tl.where(mine, first + (i - before) * BLOCK_N, 0), 0)
        acc0, m0, l0, acc1, m1, l1 = tile_step(
            acc0, m0, l0, acc1, m1, l1, q0, q1, n, MASKED, k_len,
            K, V, stride_kt, stride_vt, lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V,
            scale_log2, softcap, K, False, offs_n, offs_n,
            NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, tma_row0, tma_k_col, tma_v_col, TMA)
    return acc0, m0, l0, acc1, m1, l1


@triton.jit
def run_visible(acc0, m0, l0, acc1, m1, l1, q0, q1, first, last, full_start, full_end, k_len,
                K, V, TABLE, cache_block, stride_kb, stride_kt, stride_vb, stride_vt,
                lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
                PAGED: tl.constexpr, NUM_SUB: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
                HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                WARP_SPEC: tl.constexpr = False, v_mul=1.0):
    """Key blocks [first, last) under the row rules only: the blocks inside
    [full_start, full_end) take the mask-free path, the rest are masked (``v_mul``: run_blocks)."""
    free_from = tl.minimum(tl.maximum(full_start, first), last)
    free_to = tl.maximum(tl.minimum(full_end, last), free_from)
    for part in tl.static_range(3):
        if part == 0:
            n_from = first
            n_to = free_from
        elif part == 1:
            n_from = free_from
            n_to = free_to
        else:
            n_from = free_to
            n_to = last
        acc0, m0, l0, acc1, m1, l1 = run_blocks(
            acc0, m0, l0, acc1, m1, l1, q0, q1, n_from, n_to, k_len,
            K, V, TABLE, cache_block, stride_kb, stride_kt, stride_vb, stride_vt,
            lo0, hi0, lo1, hi1, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
            part != 1, PAGED, NUM_SUB, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, WARP_SPEC and part == 1, v_mul)
    return acc0, m0, l0, acc1, m1, l1


@triton.jit
def and_in_range(mask, offs, limit, EVEN: tl.constexpr):
    """``mask & (offs < limit)``, or ``mask`` alone when EVEN says every offset is in range
    (the loads then vectorise). A constexpr branch, not ``tensor | EVEN``: triton-ascend
    rejects or-ing a tensor with a constexpr bool."""
    if EVEN:
        return mask
    else:
        return mask & (offs < limit)


@triton.jit
def fp16_operand(q):
    """A bfloat16 query as the float16 MMA operand of an e4m3 cache (e4m3 widens to fp16 exactly
    in one conversion per pair; to bf16 it takes three per element): exact within fp16's range
    (clamped to +-65504) and normal range (below 6e-5 fewer bits survive). Others pass through."""
    if q.dtype == tl.bfloat16:
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)
    return q


# An fp8 V scale splits as scale = mul * rest, mul its significand cut to 7 bits (exact in float16,
# in [1, 2)). Widened e4m3 V tiles are multiplied by mul in float16 exactly (4 significand bits
# times 7 fit float16's 11, inside its normal range) and the fp32 accumulator by rest. The
# multiply is there for the compiler: Triton 3.6 (sm90, mma.sync) feeds a bare
# ``fp8.to(fp16)`` tile that is an MMA operand along its strided axis (V in p @ V) through byte
# loads of the shared tile (64 LDS.U8 per thread per 64-key paged tile), a scaled one through
# one widening and an ldmatrix transpose (benchmarks/NOTES.md, issue 18: B 32 ctx 4k fp8 decode
# 165 -> 116 us on H100). The MLA kernel does not take it: there the widened latent tile then
# sits in shared memory (92 -> 226 KiB) and the memory path lost 35% (same notes).


@triton.jit
def fp8_value_factors(v_scale):
    """(mul as float16, rest as float32) of an fp8 V scale (float32 scalar; see above)."""
    bits = v_scale.to(tl.int32, bitcast=True)
    mul = ((bits & 0x007E0000) | 0x3F800000).to(tl.float32, bitcast=True)
    return mul.to(tl.float16), v_scale / mul


@triton.jit
def widen(x, dtype, mul):
    """A quantised (fp8) tile widened to the MMA dtype and multiplied by ``mul`` (the scale's
    7-bit significand, exact: see fp8_value_factors); a tile already in ``dtype`` passes."""
    if x.dtype != dtype:
        x = x.to(dtype) * tl.cast(mul, dtype)
    return x


@triton.jit
def load_rows(Q, tokens, heads, valid, stride_qt, stride_qh, offs_d, HEAD_DIM, EVEN_D: tl.constexpr,
              VOLATILE: tl.constexpr = False):
    """Query rows: row i is Q[tokens[i], heads[i], :]; invalid rows read as 0.

    ``VOLATILE`` loads are never merged with an earlier load of the same rows (a second,
    short-lived copy instead of one kept alive across a loop)."""
    ptrs = Q + tokens.to(tl.int64)[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
    if EVEN_D:
        return tl.load(ptrs, mask=valid[:, None], other=0.0, volatile=VOLATILE)
    else:
        return tl.load(ptrs, mask=valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0, volatile=VOLATILE)


@triton.jit
def store_rows(O, LSE, acc, m_i, l_i, tokens, heads, valid, stride_ot, stride_oh, stride_lse_h,
               offs_dv, HEAD_DIM_V, WRITE_LSE: tl.constexpr, EVEN_D: tl.constexpr, SINKS,
               HAS_SINK: tl.constexpr):
    """Normalise and store rows: row i goes to O[tokens[i], heads[i]] and LSE[heads[i], tokens[i]];
    with HAS_SINK the heads' sinks join first (:func:`add_sink`)."""
    acc, m_i, l_i = add_sink(acc, m_i, l_i, SINKS, heads, HAS_SINK)
    out, lse = finish_rows(acc, m_i, l_i)
    o_ptrs = O + tokens.to(tl.int64)[:, None] * stride_ot + heads[:, None] * stride_oh + offs_dv[None, :]
    if EVEN_D:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None])
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    if WRITE_LSE:
        tl.store(LSE + heads * stride_lse_h + tokens, lse, mask=valid)


_STAGES_THAT_FIT: dict = {}


def _launch_key(value):
    """Hashable stand-in of a launch keyword: a tensor descriptor (unhashable) by its box."""
    block = getattr(value, "block_shape", None)
    return ("descriptor", tuple(block)) if block is not None else value


def launch(kernel, grid, *args, num_stages: int, **kwargs) -> None:
    """Launch; on a shared-memory overflow retry with fewer pipeline stages (down to 1).

    The stage count that fits is remembered per kernel specialisation, so the retry
    costs one failed attempt per process, not one per call."""
    from triton.runtime.errors import OutOfResources

    key = (kernel.fn.__name__, num_stages, tuple(sorted((k, _launch_key(v)) for k, v in kwargs.items())))
    stages = _STAGES_THAT_FIT.get(key, num_stages)
    while True:
        try:
            kernel[grid](*args, num_stages=stages, **kwargs)
            _STAGES_THAT_FIT[key] = stages
            return
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
