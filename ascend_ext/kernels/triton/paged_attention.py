"""Paged attention (decode and chunked prefill) in Triton, with split-KV.

Each program owns ``BLOCK_M`` packed query rows of one KV head: row r is query token
``r // G`` of head ``kv_head * G + r % G`` (G = GQA group size), so every K/V tile
read from the paged cache serves the whole group at once, and a decode step with
one query token still fills the matrix unit with G rows.

Split-KV (flash-decoding): when batch × KV heads × row tiles cannot fill the
device, each sequence's keys are cut into ``num_splits`` ranges processed by
separate programs (:func:`choose_splits` picks the count from the device's SM count and
the longest context; each program cuts its sequence's own keys, :func:`split_keys`, so a
count fixed at CUDA-graph capture for the block table's capacity still spreads a short
sequence over all splits);
each writes a normalised partial output and its lse, and
:func:`combine_splits_kernel` merges them exactly (the N-way form of
``merge_attn_states``, which reuses the same kernel).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .common import (LOG2E, await_inputs, block_segments, dot_flags, fp8_value_factors, fp16_operand, load_rows,
                     next_pow2, pdl_flags, register_cap, release_dependents, row_bounds, run_visible, sink_flag,
                     split_keys, store_rows)


@triton.jit
def paged_attn_kernel(
        Q, K_CACHE, V_CACHE, BLOCK_TABLE, SEQ_LENS, CU_Q, O, LSE, SINKS,
        stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        stride_bt, stride_ot, stride_oh, stride_lse_h, stride_o_split, stride_lse_split,
        scale_log2, softcap, window_left, window_right, num_splits,
        HEAD_DIM, HEAD_DIM_V,
        K_SCALE, V_SCALE, K_OFF, V_OFF, stride_ksh, stride_ksd, stride_vsh, stride_vsd,
        stride_koh, stride_kod, stride_voh, stride_vod,
        GROUP: tl.constexpr, CACHE_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        WRITE_LSE: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
        KV_QUANT: tl.constexpr = 0, HAS_OFFSET: tl.constexpr = False, HAS_SINK: tl.constexpr = False,
        PDL: tl.constexpr = False):
    release_dependents(PDL)   # the split-KV combine may launch now; it waits for our partials
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.program_id(2) // num_splits
    split = tl.program_id(2) % num_splits
    q_start = tl.load(CU_Q + seq)
    q_len = tl.load(CU_Q + seq + 1) - q_start
    k_len = tl.load(SEQ_LENS + seq)   # issued with the query bounds: one round trip, not two, before the table
    if tile * BLOCK_M >= q_len * GROUP:
        return

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    tokens = rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    valid = tokens < q_len
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = load_rows(Q, q_start + tokens, heads, valid, stride_qt, stride_qh, offs_d, HEAD_DIM, EVEN_D)
    q, scale_log2, shift = dequant_keys(q, scale_log2, K_SCALE, K_OFF, kv_head, stride_ksh, stride_ksd,
                                        stride_koh, stride_kod, offs_d, HEAD_DIM, KV_QUANT, HAS_OFFSET)
    v_mul, v_rest = 1.0, 1.0
    if KV_QUANT == 1:
        v_mul, v_rest = fp8_value_factors(tl.load(V_SCALE + kv_head * stride_vsh))

    lo, hi = row_bounds(tokens, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    t_first = (tile * BLOCK_M) // GROUP
    t_last = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    lo_f, hi_f = row_bounds(t_first, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    lo_l, hi_l = row_bounds(t_last, q_len, k_len, window_left, window_right, HAS_LEFT, HAS_RIGHT)
    n_begin, n_end = split_keys(split, num_splits, k_len, BLOCK_N)
    start, full_start, full_end, end = block_segments(lo_f, lo_l, hi_f, hi_l, n_begin, n_end, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc, m_i, l_i, _, _, _ = run_visible(
        acc, m_i, l_i, acc, m_i, l_i, q, q, start, end, full_start, full_end, k_len,
        K_CACHE + kv_head * stride_kh, V_CACHE + kv_head * stride_vh, BLOCK_TABLE + seq * stride_bt,
        CACHE_BLOCK, stride_kb, stride_kt, stride_vb, stride_vt,
        lo, hi, lo, hi, offs_n, offs_d, offs_dv, HEAD_DIM, HEAD_DIM_V, scale_log2, softcap,
        True, 1, BLOCK_N, EVEN_D, HAS_SOFTCAP, IEEE, DOT_F32, False, v_mul)
    acc, m_i = dequant_values(acc, m_i, l_i, shift * scale_log2, v_rest, V_SCALE, V_OFF, kv_head, stride_vsh,
                              stride_vsd, stride_voh, stride_vod, offs_dv, HEAD_DIM_V, KV_QUANT, HAS_OFFSET)
    store_rows(O + split * stride_o_split, LSE + split * stride_lse_split, acc, m_i, l_i,
               q_start + tokens, heads, valid, stride_ot, stride_oh, stride_lse_h, offs_dv,
               HEAD_DIM_V, WRITE_LSE, EVEN_D, SINKS, HAS_SINK)


@triton.jit
def dequant_keys(q, scale_log2, K_SCALE, K_OFF, kv_head, stride_ksh, stride_ksd, stride_koh, stride_kod,
                 offs_d, HEAD_DIM, KV_QUANT: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """Fold the K dequantisation of a quantised cache into the query side (kernels/../kv_quant.py).

    KV_QUANT 1 (fp8, one scale per KV head): the scale joins the softmax scale (exact), and
    16-bit queries become float16 so both dots run in fp16: e4m3 widens to fp16 exactly in one
    conversion per pair (to bf16 it takes three per element, and the conversions, not the
    bytes, bounded fp8 decode on an H100: BENCHMARKS.md); see :func:`fp16_operand`.
    KV_QUANT 2 (int8, per-channel scale and offset): q becomes q * scale per channel, so raw
    scores are q_s . stored; the offset makes every score of a row larger by
    shift = q_s . offset, which the softmax ignores and the lse removes (dequant_values).
    Returns (q, scale_log2, shift [M])."""
    shift = tl.zeros((q.shape[0],), tl.float32)
    if KV_QUANT == 1:
        scale_log2 = scale_log2 * tl.load(K_SCALE + kv_head * stride_ksh)
        q = fp16_operand(q)
    elif KV_QUANT == 2:
        in_d = offs_d < HEAD_DIM
        ks = tl.load(K_SCALE + kv_head * stride_ksh + offs_d * stride_ksd, mask=in_d, other=0.0)
        q = (q.to(tl.float32) * ks[None, :]).to(q.dtype)
        if HAS_OFFSET:
            ko = tl.load(K_OFF + kv_head * stride_koh + offs_d * stride_kod, mask=in_d, other=0.0)
            shift = tl.sum(q.to(tl.float32) * ko[None, :], 1)
    return q, scale_log2, shift


@triton.jit
def dequant_values(acc, m_i, l_i, shift_log2, v_rest, V_SCALE, V_OFF, kv_head, stride_vsh, stride_vsd, stride_voh,
                   stride_vod, offs_dv, HEAD_DIM_V, KV_QUANT: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """Apply the V dequantisation to the unnormalised accumulator (sum_j p_j stored_j, l = sum_j p_j):
    acc -> (acc - offset * l) * scale, and remove the key shift from the running max. For fp8 the
    tiles were already multiplied by v_mul (:func:`fp8_value_factors`): acc -> acc * v_rest."""
    if KV_QUANT == 1:
        acc = acc * v_rest
    elif KV_QUANT == 2:
        in_dv = offs_dv < HEAD_DIM_V
        if HAS_OFFSET:
            vo = tl.load(V_OFF + kv_head * stride_voh + offs_dv * stride_vod, mask=in_dv, other=0.0)
            acc = acc - vo[None, :] * l_i[:, None]
            m_i = m_i - shift_log2
        acc = acc * tl.load(V_SCALE + kv_head * stride_vsh + offs_dv * stride_vsd, mask=in_dv, other=0.0)[None, :]
    return acc, m_i


@triton.jit
def combine_splits_kernel(PART_O, PART_LSE, O, LSE, SINKS, num_splits,
                          stride_ps, stride_pt, stride_ph, stride_pls, stride_plh,
                          stride_ot, stride_oh, stride_lse_h, HEAD_DIM_V,
                          BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr, WRITE_LSE: tl.constexpr,
                          HAS_SINK: tl.constexpr = False, PDL: tl.constexpr = False):
    """out[t, h] = sum_s w_s * part[s, t, h] / (sum_s w_s [+ w_sink]) with w_s = exp(lse_s - m),
    m the largest lse (and sink); with HAS_SINK head h's sink joins the denominator once.

    Splits whose lse is -inf or +inf (vLLM's mark of an empty split) are skipped by selection,
    so their outputs may hold anything. With PDL the program starts while the split kernel
    finishes and waits for it before the first load."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_s = offs_s < num_splits
    await_inputs(PDL)
    lse = tl.load(PART_LSE + offs_s * stride_pls + h * stride_plh + t, mask=in_s, other=float("-inf"))
    lse = tl.where(lse == float("inf"), float("-inf"), lse)
    m = tl.max(lse, 0)
    sink = m
    if HAS_SINK:
        sink = tl.load(SINKS + h)
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp(lse - m_safe))
    total = tl.sum(w, 0)
    if HAS_SINK:
        total += tl.exp(sink - m_safe)
    # the partials load does not wait for the lse (both in one round trip); empty splits are
    # dropped by selection afterwards, so whatever they hold (NaN included) never reaches out
    parts = tl.load(PART_O + offs_s[:, None] * stride_ps + t * stride_pt + h * stride_ph + offs_dv[None, :],
                    mask=in_s[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0).to(tl.float32)
    parts = tl.where((w > 0)[:, None], parts, 0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(O + t * stride_ot + h * stride_oh + offs_dv, out.to(O.dtype.element_ty), mask=offs_dv < HEAD_DIM_V)
    if WRITE_LSE:
        tl.store(LSE + h * stride_lse_h + t,
                 tl.where(total > 0, m_safe + tl.log(tl.where(total > 0, total, 1.0)), float("-inf")))


def combine_splits(part_o, part_lse, out, lse, sinks=None, pdl: bool = False) -> None:
    """part_o [S, T, H, Dv] (any float dtype), part_lse fp32 [S, H, T] -> out [T, H, Dv], lse [H, T] or None;
    sinks float32 [H] or None join the denominators here (the splits carry none). ``pdl``: launch
    with programmatic dependent launch (the kernel before it, which wrote the partials, calls
    :func:`release_dependents`; CUDA sm90+ only)."""
    splits, tokens, heads, dv = part_o.shape
    if tokens == 0:
        return
    lse_arg = lse if lse is not None else part_lse
    combine_splits_kernel[(tokens, heads)](
        part_o, part_lse, out, lse_arg, part_lse if sinks is None else sinks, splits,
        part_o.stride(0), part_o.stride(1), part_o.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1), lse_arg.stride(0), dv,
        BLOCK_S=next_pow2(splits, 2), BLOCK_DV=next_pow2(dv), WRITE_LSE=lse is not None, **sink_flag(sinks),
        **pdl_flags(pdl, dependent=True))


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Split-KV sizing on CUDA: about SPLIT_PER_SM split programs per SM, all resident at once
# (~3 programs of the decode tile fit an H100 SM; more splits spill into a second, partial
# wave: B=8 ctx 16k ran at 82% of copy bandwidth with 9 splits vs 94% with 5). A split never
# holds fewer than SPLIT_MIN_TILES key blocks (B=1 ctx 1k: 8 splits of 128 keys, 8.7 us, vs
# 4 of 256, 11.8 us); more splits than that gained nothing at B=1 (H100, 2026-11-25 sweep).
# A config may set SPLIT_WAVES instead: as many splits as fill at most that many waves of
# RESIDENT_PER_SM programs per SM, at most WAVE_MAX_SPLITS (at B=1 the rule would ask for ~130,
# and 64-128 splits were slower than 16-32 for bf16, 2026-11-25). 8-bit caches, H100 2026-12-06:
# B 8 ctx 16k 120 us with 16 splits vs 148 with the rule above; B 128 ctx 4k 425 us with 1 vs
# 440 with 2. FILL_SMS (with either rule): when the splits of >= 2 tiles leave SMs idle (one
# short sequence), splits of one tile each, up to one program per SM.
SPLIT_PER_SM, SPLIT_MIN_TILES, MAX_SPLITS, RESIDENT_PER_SM, WAVE_MAX_SPLITS = 2, 2, 128, 4, 32


def choose_splits(device: torch.device, programs: int, max_seqlen_k: int, block_n: int, waves: int = 0,
                  fill_sms: bool = False) -> int:
    """KV splits per sequence so that ``programs`` (batch × KV heads × row tiles) × splits
    fills the device once (SM count read from the device properties, cached), or with
    ``waves`` > 0 fills at most that many waves of resident programs; ``fill_sms``: then at
    least one program per SM where one-tile splits allow it."""
    if device.type == "cuda":
        sms, min_keys = _sm_count(device.index or 0), SPLIT_MIN_TILES * block_n
        target = waves * RESIDENT_PER_SM * sms if waves else SPLIT_PER_SM * sms
    else:   # interpreter / NPU: small numbers that still exercise the split path
        sms, target, min_keys = 0, 16, 2 * block_n
    if programs >= target or max_seqlen_k < 2 * min_keys:
        return 1
    splits = min(target // programs, WAVE_MAX_SPLITS) if waves else triton.cdiv(target, programs)
    splits = max(1, min(splits, max_seqlen_k // min_keys, MAX_SPLITS))
    if fill_sms and programs * splits < sms:
        splits = max(splits, min(triton.cdiv(sms, programs), max_seqlen_k // block_n, MAX_SPLITS))
    return splits


def config_splits(device: torch.device, cfg: dict, programs: int, max_seqlen_k: int) -> int:
    """:func:`choose_splits` with a tile config's rule (BLOCK_N, SPLIT_WAVES, FILL_SMS)."""
    return choose_splits(device, programs, max_seqlen_k, cfg["BLOCK_N"], cfg.get("SPLIT_WAVES", 0),
                         bool(cfg.get("FILL_SMS")))


def chunk_config(cfg: dict, max_seqlen_q: int, group: int) -> dict:
    """A table's paged tile config for query chunks of ``max_seqlen_q`` tokens x ``group`` heads:
    the row tile grows to the chunk's rows (chunked prefill, up to 64), and a grown tile takes
    the config's PREFILL_SPLITS split rule (the table's rule was measured for its own tile)."""
    rows = next_pow2(max_seqlen_q * group)
    if rows <= cfg["BLOCK_M"]:
        return cfg
    return dict(cfg, BLOCK_M=min(rows, 64), **cfg.get("PREFILL_SPLITS", {}))


def split_destinations(splits: int, out: torch.Tensor, lse):
    """Where a split-KV kernel writes: float32 partials [S, T, H, Dv] and lse [S, H, T] for
    :func:`combine_splits` when ``splits`` > 1, else views of ``out`` [T, H, Dv] and ``lse``
    [H, T] (without lse, ``out`` stands in for the never-used pointer). Each program takes its
    keys with :func:`split_keys`."""
    if splits > 1:
        tokens, heads, dv = out.shape
        dest_o = torch.empty((splits, tokens, heads, dv), dtype=torch.float32, device=out.device)
        dest_lse = torch.empty((splits, heads, tokens), dtype=torch.float32, device=out.device)
    else:
        dest_o = out.unsqueeze(0)
        dest_lse = (lse if lse is not None else out[0]).unsqueeze(0)
    return dest_o, dest_lse


def _quant_args(kv_scales, softcap, dummy) -> tuple[list, dict]:
    """Kernel arguments of a quantised cache's scales (see dequant_keys / dequant_values)."""
    if kv_scales is None:
        return [dummy] * 4 + [0] * 8, {}
    if kv_scales.k_offset is not None and softcap > 0:
        raise NotImplementedError("the 'triton' paged_attention folds int8 key offsets out of the scores, which "
                                  "softcap forbids; use symmetric int8 scales (no offsets) or the reference")
    tensors = [kv_scales.k_scale, kv_scales.v_scale,
               kv_scales.k_offset if kv_scales.k_offset is not None else kv_scales.k_scale,
               kv_scales.v_offset if kv_scales.v_offset is not None else kv_scales.v_scale]
    strides = [s for t in tensors for s in t.stride()]
    return tensors + strides, {"KV_QUANT": 1 if kv_scales.kind == "fp8" else 2,
                               "HAS_OFFSET": kv_scales.k_offset is not None}


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                    softmax_scale, window, softcap, out, return_lse, max_seqlen_k=None, kv_scales=None,
                    sinks=None, kv_layout="rows", configs=None, config=None, num_splits=None):
    """Triton implementation behind :func:`ascend_ext.ops.paged_attention` (validated args).

    ``configs``: the backend's tile-config module (``paged_config``); ``config`` / ``num_splits``
    override it (tests, benchmarks)."""
    if kv_layout != "rows":
        raise NotImplementedError(f"the Triton paged_attention reads kv_layout 'rows' only, got {kv_layout!r}")
    tq, hq, d = q.shape
    hkv, dv = k_cache.shape[2], v_cache.shape[3]
    group = hq // hkv
    batch = seq_lens.shape[0]
    lse = torch.empty((hq, tq), dtype=torch.float32, device=q.device) if return_lse else None
    if tq == 0 or batch == 0:
        return lse
    if max_seqlen_k is None:
        max_seqlen_k = int(seq_lens.max())
    cfg = dict(config or configs.paged_config(q.device, d, q.dtype, k_cache.dtype, batch_kv_heads=batch * hkv,
                                              max_keys=max_seqlen_k))
    if config is None:
        cfg = chunk_config(cfg, max_seqlen_q, group)
    row_tiles = triton.cdiv(max(max_seqlen_q, 1) * group, cfg["BLOCK_M"])
    if num_splits is None:
        num_splits = config_splits(q.device, cfg, batch * hkv * row_tiles, max_seqlen_k)
    dest_o, dest_lse = split_destinations(num_splits, out, lse)
    quant_args, quant_flags = _quant_args(kv_scales, softcap, dest_lse)
    pdl = bool(cfg.get("PDL")) and num_splits > 1   # the combine starts while the splits finish
    left, right = window
    paged_attn_kernel[(row_tiles, hkv, batch * num_splits)](
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, dest_o, dest_lse,
        dest_lse if sinks is None else sinks,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        dest_o.stride(1), dest_o.stride(2), dest_lse.stride(1), dest_o.stride(0), dest_lse.stride(0),
        softmax_scale * LOG2E, softcap, left, right, num_splits, d, dv,
        *quant_args, GROUP=group, CACHE_BLOCK=k_cache.shape[1], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D=next_pow2(d), BLOCK_DV=next_pow2(dv),
        HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, HAS_SOFTCAP=softcap > 0,
        WRITE_LSE=num_splits > 1 or lse is not None,
        EVEN_D=(next_pow2(d) == d and next_pow2(dv) == dv), **dot_flags(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **quant_flags, **register_cap(cfg),
        **sink_flag(sinks if num_splits == 1 else None),   # split-KV: the sink joins in the combine
        **pdl_flags(pdl, dependent=False))
    if num_splits > 1:
        combine_splits(dest_o, dest_lse, out, lse, sinks, pdl=pdl)
    return lse


def merge_attn_states(out_a, lse_a, out_b, lse_b):
    """Triton implementation behind :func:`ascend_ext.ops.merge_attn_states`: the 2-way combine."""
    out = torch.empty_like(out_a)
    lse = torch.empty_like(lse_a)
    combine_splits(torch.stack([out_a, out_b]), torch.stack([lse_a, lse_b]), out, lse)
    return out, lse
