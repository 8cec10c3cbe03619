"""Triton kernels of expert-parallel dispatch/combine (CUDA; CPU under the interpreter).

Three building blocks, each free of host synchronisation (every size the host needs
is a static function of the input shapes):

* :func:`layout` — a stable counting sort of (row, slot) routing entries into bins
  (local experts, or destination ranks with one entry per (row, rank)): the position
  of every entry, the per-bin counts and offsets, and (fixed capacity) the entries
  that did not fit, counted on the device. Four launches: per-chunk ranks and
  histograms, a per-bin scan over chunks, the bin offsets, the placement.
* :func:`scatter_rows` — copy each row to every position its entries got, optionally
  quantising to per-row INT8 on the way (the scale computed once per row) and
  writing the routing row (expert ids, weights) beside it: the dispatch pack.
* :func:`gather_reduce` — ``out[m] = sum_j w[m, j] * src[pos[m, j]]`` in float32,
  one write per output row, no atomics: the weighted un-permute of combine.

Conventions: positions are int32, -1 = no destination (masked slot, duplicate rank,
dropped by capacity); rows of an output that no entry reaches are left untouched.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK_ROWS = 16          # rows per layout chunk (the in-chunk rank is a CHUNK x CHUNK comparison)
SCAN_CHUNKS = 32         # chunk rows per scan tile
SCAN_BINS = 64           # bins per scan program


# ------------------------------------------------------------------ layout
@triton.jit
def _entry_bins(IDS, row0, num_rows, k, stride_ids, lo, width, num_bins,
                ROWS: tl.constexpr, KP: tl.constexpr):
    """Flattened (row, slot) entries of one chunk: row, slot, bin (-1 = none), in-bounds."""
    i = tl.arange(0, ROWS * KP)
    row = row0 + i // KP
    slot = i % KP
    inside = (row < num_rows) & (slot < k)
    ids = tl.load(IDS + row.to(tl.int64) * stride_ids + slot, mask=inside, other=-1).to(tl.int32)
    rel = ids - lo
    ok = inside & (ids >= 0) & (rel >= 0)
    b = tl.where(ok, rel // width, -1)
    b = tl.where(b < num_bins, b, -1)
    return row, slot, b, inside


@triton.jit
def layout_count_kernel(IDS, RANK, HIST, num_rows, k, stride_ids, lo, width, num_bins,
                        ROWS: tl.constexpr, KP: tl.constexpr, NBP: tl.constexpr, DEDUP: tl.constexpr):
    """Per chunk: each kept entry's rank among the chunk's earlier entries of its bin
    (RANK, -1 = not kept) and the chunk's histogram (HIST[chunk, :])."""
    chunk = tl.program_id(0)
    row, slot, b, inside = _entry_bins(IDS, chunk * ROWS, num_rows, k, stride_ids, lo, width, num_bins, ROWS, KP)
    i = tl.arange(0, ROWS * KP)
    valid = b >= 0
    same = (b[:, None] == b[None, :]) & valid[None, :]
    earlier = i[None, :] < i[:, None]
    if DEDUP:   # one entry per (row, bin): the row's first slot with that bin
        dup = tl.sum((same & earlier & (row[:, None] == row[None, :])).to(tl.int32), axis=1)
        valid = valid & (dup == 0)
        same = same & valid[None, :]
    rank = tl.sum((same & earlier).to(tl.int32), axis=1)
    later = tl.sum((same & (i[None, :] > i[:, None])).to(tl.int32), axis=1)
    tl.store(RANK + row.to(tl.int64) * k + slot, tl.where(valid, rank, -1), mask=inside)
    bins = tl.arange(0, NBP)
    hist = HIST + chunk.to(tl.int64) * num_bins
    tl.store(hist + bins, tl.zeros((NBP,), tl.int32), mask=bins < num_bins)
    tl.debug_barrier()
    # the last kept entry of each bin holds the bin's count: one writer per bin
    tl.store(hist + b, rank + 1, mask=valid & (later == 0))


@triton.jit
def layout_scan_kernel(HIST, TOTALS, num_chunks, num_bins, CH: tl.constexpr, BB: tl.constexpr):
    """HIST[c, b] <- sum of HIST[c' < c, b] (in place); TOTALS[b] <- sum over all chunks."""
    bins = tl.program_id(0) * BB + tl.arange(0, BB)
    in_bins = bins < num_bins
    running = tl.zeros((BB,), tl.int32)
    for c0 in range(0, num_chunks, CH):
        chunks = c0 + tl.arange(0, CH)
        ptr = HIST + chunks.to(tl.int64)[:, None] * num_bins + bins[None, :]
        mask = (chunks < num_chunks)[:, None] & in_bins[None, :]
        h = tl.load(ptr, mask=mask, other=0)
        tl.store(ptr, tl.cumsum(h, axis=0) - h + running[None, :], mask=mask)
        running += tl.sum(h, axis=0)
    tl.store(TOTALS + bins, running, mask=in_bins)


@triton.jit
def layout_offsets_kernel(TOTALS, STARTS, COUNTS, OFFSETS, DROPPED, num_bins, capacity,
                          NBP: tl.constexpr, CAPACITY: tl.constexpr):
    """Bin starts (packed, or b * capacity), kept counts, their offsets [nb + 1] and the
    number of entries over capacity."""
    bins = tl.arange(0, NBP)
    in_bins = bins < num_bins
    total = tl.load(TOTALS + bins, mask=in_bins, other=0)
    if CAPACITY:
        kept = tl.minimum(total, capacity)
        tl.store(STARTS + bins, bins * capacity, mask=in_bins)
    else:
        kept = total
        tl.store(STARTS + bins, tl.cumsum(total, axis=0) - total, mask=in_bins)
    ends = tl.cumsum(kept, axis=0)
    tl.store(COUNTS + bins, kept.to(COUNTS.dtype.element_ty), mask=in_bins)
    tl.store(OFFSETS + bins + 1, ends.to(OFFSETS.dtype.element_ty), mask=in_bins)
    tl.store(OFFSETS + bins, tl.zeros((NBP,), OFFSETS.dtype.element_ty), mask=bins == 0)
    tl.store(DROPPED, tl.sum(total - kept, axis=0).to(DROPPED.dtype.element_ty))


@triton.jit
def layout_place_kernel(IDS, RANK, BASE, STARTS, POS, num_rows, k, stride_ids, lo, width, num_bins, capacity,
                        ROWS: tl.constexpr, KP: tl.constexpr, CAPACITY: tl.constexpr):
    """POS[row, slot] = start of its bin + entries of the bin in earlier chunks + rank in chunk."""
    chunk = tl.program_id(0)
    row, slot, b, inside = _entry_bins(IDS, chunk * ROWS, num_rows, k, stride_ids, lo, width, num_bins, ROWS, KP)
    rank = tl.load(RANK + row.to(tl.int64) * k + slot, mask=inside, other=-1)
    kept = rank >= 0
    before = tl.load(BASE + chunk.to(tl.int64) * num_bins + b, mask=kept, other=0)
    place = before + rank
    if CAPACITY:
        kept = kept & (place < capacity)
    start = tl.load(STARTS + b, mask=kept, other=0)
    tl.store(POS + row.to(tl.int64) * k + slot, tl.where(kept, start + place, -1), mask=inside)


class Layout(tuple):
    """(pos [M, k] int32, counts [nb] int64, offsets [nb + 1] int64, dropped [] int64)."""

    __slots__ = ()

    pos = property(lambda self: self[0])
    counts = property(lambda self: self[1])
    offsets = property(lambda self: self[2])
    dropped = property(lambda self: self[3])


def layout(ids: torch.Tensor, num_bins: int, *, lo: int = 0, width: int = 1, dedup: bool = False,
           capacity: int | None = None) -> Layout:
    """Stable counting sort of the routing entries ``ids`` [M, k] (int32/int64, row stride
    free, unit slot stride) into ``num_bins`` bins.

    An entry with id ``i`` goes to bin ``(i - lo) // width`` when ``i >= lo`` and the bin
    is below ``num_bins``; otherwise (negative ids included) it goes nowhere. With
    ``dedup`` a row keeps only its first entry of each bin. Kept entries are ordered by
    bin, then row, then slot. Bin b starts at row ``offsets[b]`` (packed) or, with a
    ``capacity`` C, at ``b * C``, and only its first C entries are kept; the rest are
    counted in ``dropped``. ``counts`` are the kept entries per bin.
    """
    if ids.stride(1) != 1 and ids.shape[1] > 1:
        ids = ids.contiguous()
    rows, k = ids.shape
    dev = ids.device
    pos = torch.empty((rows, k), dtype=torch.int32, device=dev)
    counts = torch.empty(num_bins, dtype=torch.int64, device=dev)
    offsets = torch.empty(num_bins + 1, dtype=torch.int64, device=dev)
    dropped = torch.empty((), dtype=torch.int64, device=dev)
    kp = triton.next_power_of_2(max(k, 1))
    rows_per_chunk = max(1, CHUNK_ROWS * 8 // kp)           # ~128 entries per chunk
    chunks = max(1, triton.cdiv(rows, rows_per_chunk))
    nbp = triton.next_power_of_2(max(num_bins, 2))
    rank = torch.empty((rows, k), dtype=torch.int32, device=dev)
    hist = torch.empty((chunks, num_bins), dtype=torch.int32, device=dev)
    totals = torch.empty(num_bins, dtype=torch.int32, device=dev)
    starts = torch.empty(num_bins, dtype=torch.int32, device=dev)
    common = dict(ROWS=rows_per_chunk, KP=kp)
    if rows:
        layout_count_kernel[(chunks,)](ids, rank, hist, rows, k, ids.stride(0), lo, width, num_bins,
                                       NBP=nbp, DEDUP=dedup, num_warps=4, **common)
    else:
        hist.zero_()
    layout_scan_kernel[(triton.cdiv(num_bins, SCAN_BINS),)](hist, totals, chunks, num_bins, CH=SCAN_CHUNKS,
                                                            BB=SCAN_BINS, num_warps=4)
    layout_offsets_kernel[(1,)](totals, starts, counts, offsets, dropped, num_bins, capacity or 0, NBP=nbp,
                                CAPACITY=capacity is not None, num_warps=4)
    if rows:
        layout_place_kernel[(chunks,)](ids, rank, hist, starts, pos, rows, k, ids.stride(0), lo, width, num_bins,
                                       capacity or 0, CAPACITY=capacity is not None, num_warps=4, **common)
    return Layout((pos, counts, offsets, dropped))


# ------------------------------------------------------------------ pack / permute
@triton.jit
def _round_half_away(v):
    return tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v))


@triton.jit
def scatter_rows_kernel(SRC, SRC_SCALE, POS, DST, DST_SCALE, IDS, W, DST_IDS, DST_W, hidden,
                        stride_src, stride_sscale, stride_pos, stride_dst, stride_dscale, stride_ids, stride_w,
                        stride_dids, stride_dw,
                        K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr,
                        SRC_INT8: tl.constexpr, QUANT: tl.constexpr, META: tl.constexpr):
    """Row m (H block h) of SRC to DST[POS[m, j]] for every j with POS >= 0."""
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_h = cols < hidden
    x = tl.load(SRC + m * stride_src + cols, mask=in_h, other=0)
    if SRC_INT8:
        scale = tl.load(SRC_SCALE + m * stride_sscale)
        payload = x
    elif QUANT:
        xf = x.to(tl.float32)
        amax = tl.max(tl.abs(xf), axis=0)
        scale = tl.where(amax > 0, amax / 127.0, 1.0)
        payload = tl.minimum(tl.maximum(_round_half_away(xf / scale), -127.0), 127.0).to(tl.int8)
    else:
        payload = x.to(DST.dtype.element_ty)
    if META:
        slots = tl.arange(0, KP)
        in_k = slots < K
        ids = tl.load(IDS + m * stride_ids + slots, mask=in_k, other=-1)
        w = tl.load(W + m * stride_w + slots, mask=in_k, other=0.0)
    for j in tl.static_range(K):
        p = tl.load(POS + m * stride_pos + j).to(tl.int64)
        go = p >= 0
        tl.store(DST + p * stride_dst + cols, payload, mask=in_h & (cols * 0 + p >= 0))
        if SRC_INT8 or QUANT:
            tl.store(DST_SCALE + p * stride_dscale, scale, mask=go & (tl.program_id(1) == 0))
        if META:
            to_slot = in_k & (slots * 0 + p >= 0)
            tl.store(DST_IDS + p * stride_dids + slots, ids.to(DST_IDS.dtype.element_ty), mask=to_slot)
            tl.store(DST_W + p * stride_dw + slots, w.to(DST_W.dtype.element_ty), mask=to_slot)


def _h_block(hidden: int, whole_row: bool) -> int:
    full = triton.next_power_of_2(max(hidden, 16))
    return full if whole_row else min(full, 2048)


def _warps(block_h: int) -> int:
    return max(1, min(16, block_h // 512))


def scatter_rows(src: torch.Tensor, pos: torch.Tensor, dst: torch.Tensor, *, src_scale=None, dst_scale=None,
                 meta=None, dst_meta=None) -> None:
    """dst[pos[m, j]] = src[m] for every pos >= 0 (dst rows no entry names stay untouched).

    src [M, H] float, or int8 with ``src_scale`` [M] (copied with its scales); a float src
    into an int8 ``dst`` is quantised per row (scale = max|row| / 127, round half away
    from zero) with the scales written to ``dst_scale``. ``meta = (ids [M, k], weights
    [M, k])`` are copied beside each row into ``dst_meta = (ids, weights)`` views.
    Every 2-D tensor may be a row-strided view (unit stride along its last dim).
    """
    rows, hidden = src.shape
    k = pos.shape[1]
    if rows == 0 or k == 0:
        return
    quant = dst.dtype == torch.int8 and src.dtype != torch.int8
    src_int8 = src.dtype == torch.int8
    if (quant or src_int8) and dst_scale is None:
        raise ValueError("an int8 destination needs dst_scale")
    block_h = _h_block(hidden, whole_row=quant)
    ids, w = meta if meta is not None else (pos, pos)
    dids, dw = dst_meta if dst_meta is not None else (pos, pos)
    scale_src = src_scale if src_scale is not None else src
    scale_dst = dst_scale if dst_scale is not None else dst
    scatter_rows_kernel[(rows, triton.cdiv(hidden, block_h))](
        src, scale_src, pos, dst, scale_dst, ids, w, dids, dw, hidden,
        src.stride(0), scale_src.stride(0), pos.stride(0), dst.stride(0), scale_dst.stride(0), ids.stride(0), w.stride(0),
        dids.stride(0), dw.stride(0),
        K=k, KP=triton.next_power_of_2(k), BLOCK_H=block_h, SRC_INT8=src_int8, QUANT=quant, META=meta is not None,
        num_warps=_warps(block_h))


# ------------------------------------------------------------------ weighted un-permute
@triton.jit
def gather_reduce_kernel(SRC, POS, W, OUT, hidden, stride_src, stride_pos, stride_w, stride_out,
                         K: tl.constexpr, BLOCK_H: tl.constexpr, HAS_W: tl.constexpr):
    """OUT[m] = sum_j W[m, j] * SRC[POS[m, j]] over POS >= 0 (float32), 0 if none."""
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_h = cols < hidden
    acc = tl.zeros((BLOCK_H,), tl.float32)
    for j in tl.static_range(K):
        p = tl.load(POS + m * stride_pos + j).to(tl.int64)
        go = p >= 0
        v = tl.load(SRC + p * stride_src + cols, mask=in_h & (cols * 0 + p >= 0), other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(W + m * stride_w + j, mask=go, other=0.0).to(tl.float32)
            acc += w * v
        else:
            acc += v
    tl.store(OUT + m * stride_out + cols, acc.to(OUT.dtype.element_ty), mask=in_h)


def gather_reduce(src: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out[m] = sum_j weights[m, j] * src[pos[m, j]] over pos >= 0 (weights 1 when None),
    accumulated in float32 and written once in out's dtype; rows with no entry get 0.
    src rows no entry names are never read (they may hold anything, NaN included)."""
    rows, hidden = out.shape
    if rows == 0:
        return out
    k = pos.shape[1]
    block_h = _h_block(hidden, whole_row=False)
    w = weights if weights is not None else pos
    gather_reduce_kernel[(rows, triton.cdiv(hidden, block_h))](
        src, pos, w, out, hidden, src.stride(0), pos.stride(0), w.stride(0), out.stride(0),
        K=k, BLOCK_H=block_h, HAS_W=weights is not None, num_warps=_warps(block_h))
    return out
