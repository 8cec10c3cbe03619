"""Plain-torch reference implementations of the attention ops (any device).

Arithmetic is float32 whatever the input dtype; results are cast back to the
output dtype. These functions receive already-validated, normalised arguments
from :mod:`ascend_ext.ops.attention.api` (the causal flag is folded into the
window: causal == right edge 0).
"""

from __future__ import annotations

import torch

from .kv_quant import dequantize, quantize
from .mask_rules import visible_mask
from .kv_layout import combined, from_pairs, from_tiles, to_pairs, to_tiles

# bound on the float32 score block materialised at once (elements)
_SCORE_BUDGET = 1 << 24


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           visible: torch.Tensor | None, softcap: float = 0.0,
           sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one sequence.

    q [Lq, Hq, D], k [Lk, Hkv, D], v [Lk, Hkv, Dv] (any float dtype), visible bool
    [Lq, Lk] or None (all visible), sinks float32 [Hq] or None (one extra logit per head in
    every row's denominator, value 0). Returns out float32 [Lq, Hq, Dv] and lse float32
    [Hq, Lq]; rows that see no key get out 0 and lse -inf (the sink with sinks).
    """
    lq, hq, _ = q.shape
    lk, hkv, dv = v.shape
    group = hq // hkv
    out = q.new_zeros((lq, hq, dv), dtype=torch.float32)
    lse = q.new_full((hq, lq), float("-inf"), dtype=torch.float32)
    if sinks is not None:
        lse[:] = sinks.float()[:, None]
    if lq == 0 or lk == 0:
        return out, lse
    sink = None if sinks is None else sinks.float().reshape(hkv, group, 1, 1)
    kf = k.float().permute(1, 2, 0)            # [Hkv, D, Lk]
    vf = v.float().permute(1, 0, 2)            # [Hkv, Lk, Dv]
    rows = max(1, _SCORE_BUDGET // max(1, lk * hq))
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        qf = q[start:stop].float().reshape(stop - start, hkv, group, -1).permute(1, 2, 0, 3)
        scores = torch.matmul(qf, kf.unsqueeze(1)) * scale          # [Hkv, G, r, Lk]
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        if visible is not None:
            scores = scores.masked_fill(~visible[start:stop], float("-inf"))
        row_max = scores.amax(dim=-1, keepdim=True)
        if sink is not None:
            row_max = torch.maximum(row_max, sink)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        p = torch.exp(scores - row_max)
        denom = p.sum(dim=-1, keepdim=True)
        if sink is not None:   # the sink's term: denominator only
            denom = denom + torch.exp(sink - row_max)
        o = torch.matmul(p, vf.unsqueeze(1))                         # [Hkv, G, r, Dv]
        o = torch.where(denom > 0, o / denom.clamp_min(1e-30), torch.zeros_like(o))
        out[start:stop] = o.permute(2, 0, 1, 3).reshape(stop - start, hq, dv)
        lse[:, start:stop] = (torch.log(denom) + row_max).squeeze(-1).reshape(hq, stop - start)
    return out, lse


def _lse_buffer(q, return_lse: bool, sinks) -> torch.Tensor | None:
    """lse [Hq, Tq] preset to what rows of empty sequences get: -inf, or the sink."""
    if not return_lse:
        return None
    lse = q.new_full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32)
    if sinks is not None:
        lse[:] = sinks.float()[:, None]
    return lse


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      softmax_scale, window, mask, softcap, out, return_lse, sinks=None):
    lse = _lse_buffer(q, return_lse, sinks)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    dense = mask.dense().to(q.device) if mask is not None else None
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        visible = visible_mask(q1 - q0, k1 - k0, window, q.device)
        if dense is not None:
            visible = dense if visible is None else visible & dense
        o, l = attend(q[q0:q1], k[k0:k1], v[k0:k1], softmax_scale, visible, softcap, sinks)
        out[q0:q1] = o.to(out.dtype)
        if lse is not None:
            lse[:, q0:q1] = l
    return lse


def gather_paged(cache: torch.Tensor, blocks: torch.Tensor, length: int, as_rows=None) -> torch.Tensor:
    """The first ``length`` tokens of a sequence whose blocks are ``blocks`` -> [length, H, D]
    (``as_rows``: the blocks' conversion to the "rows" layout, e.g. ``from_pairs``)."""
    block_size = cache.shape[1]
    n = -(-length // block_size)
    gathered = cache[blocks[:n].long()]
    return (gathered if as_rows is None else as_rows(gathered)).flatten(0, 1)[:length]


def gather_tiles(k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor,
                 length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``length`` keys and values of a sequence in a "tiles" cache -> [length, H, D / Dv]."""
    n = -(-length // k_cache.shape[1])
    k, v = from_tiles(combined(k_cache, v_cache)[blocks[:n].long()], k_cache.shape[3])
    return k.flatten(0, 1)[:length], v.flatten(0, 1)[:length]


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                    softmax_scale, window, softcap, out, return_lse, max_seqlen_k=None, kv_scales=None, sinks=None,
                    kv_layout="rows"):
    lse = _lse_buffer(q, return_lse, sinks)
    cq = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for b, length in enumerate(lens):
        q0, q1 = cq[b], cq[b + 1]
        if q1 == q0:
            continue
        if kv_layout == "tiles":
            k, v = gather_tiles(k_cache, v_cache, block_table[b], length)
        else:
            k = gather_paged(k_cache, block_table[b], length)
            v = gather_paged(v_cache, block_table[b], length, from_pairs if kv_layout == "pairs" else None)
        if kv_scales is not None:
            k = dequantize(k, kv_scales.k_scale, kv_scales.k_offset)
            v = dequantize(v, kv_scales.v_scale, kv_scales.v_offset)
        visible = visible_mask(q1 - q0, length, window, q.device)
        o, l = attend(q[q0:q1], k, v, softmax_scale, visible, softcap, sinks)
        out[q0:q1] = o.to(out.dtype)
        if lse is not None:
            lse[:, q0:q1] = l
    return lse


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, *, kv_scales=None, kv_layout="rows"):
    n = slot_mapping.shape[0]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    key, value = key[:n][keep], value[:n][keep]
    if kv_scales is None and kv_layout == "tiles":   # the touched blocks as rows, written, tiled again
        both = combined(k_cache, v_cache)
        touched, local = torch.unique(blocks, return_inverse=True)
        k_rows, v_rows = from_tiles(both[touched], k_cache.shape[3])
        k_rows[local, offsets] = key.to(k_cache.dtype)
        v_rows[local, offsets] = value.to(v_cache.dtype)
        both[touched] = to_tiles(k_rows, v_rows)
    elif kv_scales is None and kv_layout == "pairs":   # the touched value blocks as rows, written, re-paired
        k_cache[blocks, offsets] = key.to(k_cache.dtype)
        touched, local = torch.unique(blocks, return_inverse=True)
        rows = from_pairs(v_cache[touched])
        rows[local, offsets] = value.to(v_cache.dtype)
        v_cache[touched] = to_pairs(rows)
    elif kv_scales is None:
        k_cache[blocks, offsets] = key.to(k_cache.dtype)
        v_cache[blocks, offsets] = value.to(v_cache.dtype)
    else:
        k_cache[blocks, offsets] = quantize(key, kv_scales.k_scale, kv_scales.k_offset, k_cache.dtype)
        v_cache[blocks, offsets] = quantize(value, kv_scales.v_scale, kv_scales.v_offset, v_cache.dtype)


def merge_attn_states(out_a, lse_a, out_b, lse_b):
    """Exact merge of two partial softmax results over disjoint key sets (lse +inf or -inf: empty side)."""
    la, lb = (torch.where(x == float("inf"), float("-inf"), x.float()) for x in (lse_a, lse_b))
    lse = torch.logaddexp(la, lb)
    finite = torch.isfinite(lse)
    safe = torch.where(finite, lse, torch.zeros_like(lse))
    wa = torch.where(torch.isfinite(la), torch.exp(la - safe), torch.zeros_like(la))
    wb = torch.where(torch.isfinite(lb), torch.exp(lb - safe), torch.zeros_like(lb))
    wa = wa.transpose(0, 1).unsqueeze(-1)   # [T, H, 1]
    wb = wb.transpose(0, 1).unsqueeze(-1)
    # a side with weight 0 may hold garbage (even NaN): select, do not multiply
    oa = torch.where(wa > 0, out_a.float() * wa, torch.zeros_like(out_a, dtype=torch.float32))
    ob = torch.where(wb > 0, out_b.float() * wb, torch.zeros_like(out_b, dtype=torch.float32))
    out = (oa + ob).to(out_a.dtype)
    return out, torch.where(finite, lse, torch.full_like(lse, float("-inf")))
