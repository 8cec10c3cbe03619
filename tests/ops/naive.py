"""Independent float64 attention reference and test-input builders (tests only).

Written without any code from ascend_ext: the visibility rule is spelled out
element by element from the documented convention.
"""

from __future__ import annotations

import math

import torch

TOL = {  # (atol, rtol) for outputs of each input dtype vs the float64 reference
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
LSE_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def allowed(lq: int, lk: int, causal: bool, window, dense=None, device="cpu") -> torch.Tensor:
    """bool [lq, lk]: may query row i attend key j? Row i sits at key position
    i + lk - lq (bottom-right); window (left, right) bounds j to [pos-left, pos+right]."""
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    i = torch.arange(lq, device=device).view(-1, 1)
    j = torch.arange(lk, device=device).view(1, -1)
    pos = i + (lk - lq)
    ok = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if left >= 0:
        ok = ok & (j >= pos - left)
    if right >= 0:
        ok = ok & (j <= pos + right)
    if dense is not None:
        ok = ok & dense.to(device)
    return ok


def attention_f64(q, k, v, scale, ok, softcap=0.0, sinks=None):
    """q [Lq,Hq,D], k [Lk,Hkv,D], v [Lk,Hkv,Dv], ok bool [Lq,Lk] -> out f64 [Lq,Hq,Dv], lse f64 [Hq,Lq].

    Computed on q's device in float64: scores for all heads (K/V heads repeated per
    group), -inf where not allowed, softmax over rows that see any key. With sinks [Hq],
    a zero-valued key with logit sinks[h] is appended to every row of head h (visible
    always), so out = sum p_j v_j / (sum p_j + e^sink) and lse includes the sink."""
    if sinks is not None:   # append the sink as one more key: logit fixed, value 0
        return _with_sink_key(q, k, v, scale, ok, softcap, sinks)
    lq, hq, _ = q.shape
    lk, hkv, dv = v.shape
    group = hq // hkv if hkv else 1
    if lk == 0 or lq == 0:
        return (torch.zeros(lq, hq, dv, dtype=torch.float64, device=q.device),
                torch.full((hq, lq), -math.inf, dtype=torch.float64, device=q.device))
    qd = q.double().transpose(0, 1)                                   # [Hq, Lq, D]
    kd = k.double().repeat_interleave(group, dim=1).transpose(0, 1)   # [Hq, Lk, D]
    vd = v.double().repeat_interleave(group, dim=1).transpose(0, 1)   # [Hq, Lk, Dv]
    s = qd @ kd.transpose(1, 2) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~ok.to(s.device), -math.inf)
    seen = ok.to(s.device).any(dim=1)                                 # [Lq]
    m = torch.where(seen, s.amax(dim=-1), torch.zeros((), dtype=s.dtype, device=s.device))
    p = torch.exp(s - m[..., None])
    denom = p.sum(-1)
    out = (p @ vd) / torch.where(seen, denom, torch.ones_like(denom))[..., None]
    lse = torch.where(seen, m + torch.log(denom), torch.full_like(denom, -math.inf))
    return out.transpose(0, 1).contiguous(), lse


def _with_sink_key(q, k, v, scale, ok, softcap, sinks):
    """Sinks spelled out as data: per query head h, K/V get one extra key whose score is
    forced to sinks[h] (a huge-magnitude trick would lose precision, so the score matrix is
    built here directly) and whose value is 0."""
    lq, hq, _ = q.shape
    lk, hkv, dv = v.shape
    group = hq // hkv
    qd = q.double().transpose(0, 1)
    kd = k.double().repeat_interleave(group, dim=1).transpose(0, 1)
    vd = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
    s = qd @ kd.transpose(1, 2) * scale                                   # [Hq, Lq, Lk]
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~ok.to(s.device), -math.inf)
    sink_col = sinks.double().to(s.device).view(hq, 1, 1).expand(hq, lq, 1)
    s = torch.cat([s, sink_col], dim=2)
    vd = torch.cat([vd, vd.new_zeros(hq, 1, dv)], dim=1)
    lse = torch.logsumexp(s, dim=-1)                                      # [Hq, Lq]
    p = torch.where(torch.isfinite(lse)[..., None], torch.exp(s - lse[..., None]), torch.zeros_like(s))
    return (p @ vd).transpose(0, 1).contiguous(), lse


def varlen_f64(q, k, v, seqlens, scale, causal, window, dense=None, softcap=0.0, sinks=None):
    """Packed batch reference: seqlens list of (Lq, Lk)."""
    outs, lses = [], []
    q0 = k0 = 0
    for lq, lk in seqlens:
        ok = allowed(lq, lk, causal, window, dense, device=q.device)
        o, l = attention_f64(q[q0:q0 + lq], k[k0:k0 + lk], v[k0:k0 + lk], scale, ok, softcap, sinks)
        outs.append(o)
        lses.append(l)
        q0 += lq
        k0 += lk
    return torch.cat(outs), torch.cat(lses, dim=1)


def paged_f64(q, keys, values, seqs, scale, causal=True, window=(-1, -1), softcap=0.0, sinks=None, device=None):
    """Reference of a paged batch: seqs list of (keys, new queries) per sequence, keys/values
    the per-sequence [Lk, Hkv, D] tensors; the queries are the last Lq positions. Computed on
    ``device`` (default: the keys'); returns out [Tq, Hq, Dv] and lse [Hq, Tq] in float64."""
    outs, lses, q0 = [], [], 0
    for (lk, lq), kk, vv in zip(seqs, keys, values):
        dev = device or kk.device
        ok = allowed(lq, lk, causal, window, device=dev)
        o, l = attention_f64(q[q0:q0 + lq].to(dev), kk.to(dev), vv.to(dev), scale, ok, softcap,
                             None if sinks is None else sinks.to(dev))
        outs.append(o)
        lses.append(l)
        q0 += lq
    return torch.cat(outs), torch.cat(lses, dim=1)


def cu(lengths, device="cpu") -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def randn(shape, dtype, rng, device="cpu", scale=1.0):
    return (torch.randn(shape, generator=rng) * scale).to(dtype).to(device)


def paged_cache(keys, values, block_size, rng, extra_blocks=3, device="cpu"):
    """Scatter per-sequence K/V ([L, Hkv, D] each) into NaN-poisoned paged caches.

    Blocks are assigned in a random permutation (with spare blocks never used);
    block table columns past a sequence's last block hold -1, out of range on purpose.
    Returns k_cache, v_cache, block_table int32, seq_lens int32.
    """
    hkv, d = keys[0].shape[1], keys[0].shape[2]
    dv = values[0].shape[2]
    dtype = keys[0].dtype
    needed = [-(-k.shape[0] // block_size) for k in keys]
    total = sum(needed) + extra_blocks
    perm = torch.randperm(total, generator=rng).tolist()
    k_cache = torch.full((total, block_size, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full((total, block_size, hkv, dv), float("nan"), dtype=dtype)
    width = max(needed + [1]) + 1
    table = torch.full((len(keys), width), -1, dtype=torch.int32)
    cursor = 0
    for b, (k, v) in enumerate(zip(keys, values)):
        for j in range(needed[b]):
            blk = perm[cursor]
            cursor += 1
            table[b, j] = blk
            part_k = k[j * block_size:(j + 1) * block_size]
            k_cache[blk, :part_k.shape[0]] = part_k
            v_cache[blk, :part_k.shape[0]] = v[j * block_size:(j + 1) * block_size]
    lens = torch.tensor([k.shape[0] for k in keys], dtype=torch.int32)
    return k_cache.to(device), v_cache.to(device), table.to(device), lens.to(device)


def assert_close(actual, expected, dtype, what="out", atol_factor=1.0):
    """Within TOL[dtype] of the float64 result (``atol_factor`` widens atol where the scores'
    own magnitude scales the float rounding, e.g. inputs drawn with a large scale)."""
    atol, rtol = TOL[dtype]
    atol *= atol_factor
    actual = actual.double().cpu()
    expected = expected.double().cpu()
    assert not torch.isnan(actual).any(), f"{what} holds NaN"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    worst = (err - bound).max() if err.numel() else torch.tensor(-1.0)
    assert worst <= 0, f"{what}: max error {err.max():.3g} exceeds atol={atol} rtol={rtol}"


def assert_lse_close(actual, expected, dtype):
    actual = actual.double().cpu()
    expected = expected.double().cpu()
    inf_a, inf_e = torch.isinf(actual), torch.isinf(expected)
    assert torch.equal(inf_a, inf_e), "lse -inf pattern differs"
    assert (actual[inf_a] < 0).all(), "lse +inf"
    fin = ~inf_e
    if fin.any():
        err = (actual[fin] - expected[fin]).abs().max()
        assert err <= LSE_TOL[dtype], f"lse max error {err:.3g} > {LSE_TOL[dtype]}"
