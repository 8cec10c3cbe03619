"""Edges of the attention contract: paged attention with more queries than keys, the lse
conventions merge_attn_states accepts (+inf / -inf empty sides, NaN refused), and cascade
attention (shared-prefix pass + suffix pass merged) against the plain paged result.

Cases follow the peers: flash-attn's seqlen_q > seqlen_k (bottom-right causal: leading rows
see nothing), vLLM's merge test (~10% of lse +inf on either side, never both; head sizes
that are not powers of two), vLLM's cascade cases (a general mixed batch and a
flash-decoding batch of many one-token queries; MHA and GQA; softcap on and off; block 16),
scaled down for CPU and the Triton interpreter.
"""

import itertools

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE, interpreter, runnable
from .naive import assert_close, assert_lse_close, cu, paged_cache, paged_f64, randn

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ------------------------------------------------------------------ more queries than keys
Q_GT_K = {
    "decode_empty": [(0, 1), (0, 3)],            # no key at all
    "short": [(4, 10), (1, 6), (7, 7)],
    "block_edge": [(16, 17), (17, 40), (3, 1)],   # around the block size
}


def _q_gt_k_cases():
    cases = []
    for n, (dtype, (name, seqs), (causal, window)) in enumerate(itertools.product(
            DTYPES, Q_GT_K.items(), [(False, (-1, -1)), (True, (-1, -1)), (True, (3, 0)), (False, (2, 2))])):
        hq, hkv = [(4, 4), (8, 2), (8, 1)][n % 3]
        cases.append(pytest.param(seqs, hq, hkv, causal, window, dtype,
                                  id=f"{str(dtype)[6:]}-{name}-c{int(causal)}-w{window[0]}_{window[1]}-h{hq}x{hkv}"))
    return cases


@pytest.mark.parametrize("impl", runnable("paged_attention"))
@pytest.mark.parametrize("seqs,hq,hkv,causal,window,dtype", _q_gt_k_cases())
def test_paged_more_queries_than_keys(impl, seqs, hq, hkv, causal, window, dtype, rng):
    """(seq_len, Lq) with Lq > seq_len: flash-attn's semantics (non-causal rows see every key;
    bottom-right causal rows before the first key see none: out 0, lse -inf)."""
    d = 64
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 16, rng, device=DEVICE)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    out = torch.full_like(q, float("nan"))
    with ops.use_impl(attention=impl):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), max(q_lens),
                                       causal=causal, window_size=window, return_lse=True, out=out)
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5, causal, window)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("impl", runnable("paged_attention"))
def test_paged_matches_flash_when_queries_outnumber_keys(impl, rng):
    """The paged op and flash_attn_varlen agree on Lq > Lk (the same convention)."""
    seqs, hq, hkv, d, dtype = [(5, 12), (9, 9), (2, 30)], 4, 2, 64, torch.float32
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 16, rng, device=DEVICE)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    k, v = torch.cat(keys).to(DEVICE), torch.cat(values).to(DEVICE)
    for causal in (False, True):
        with ops.use_impl(attention=impl):
            paged, paged_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 30,
                                                   causal=causal, return_lse=True)
            flash, flash_lse = ops.flash_attn_varlen(q, k, v, cu(q_lens, DEVICE), cu([n for n, _ in seqs], DEVICE),
                                                     30, 9, causal=causal, return_lse=True)
        torch.testing.assert_close(paged, flash, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(paged_lse, flash_lse, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ merge_attn_states conventions
def _states(tokens, heads, d, dtype, rng):
    oa, ob = randn((tokens, heads, d), dtype, rng, DEVICE), randn((tokens, heads, d), dtype, rng, DEVICE)
    la, lb = (torch.randn(heads, tokens, generator=rng) * 3).to(DEVICE), (torch.randn(heads, tokens, generator=rng) * 3).to(DEVICE)
    return oa, la, ob, lb


def _merge_f64(oa, la, ob, lb):
    """Independent merge: an empty side (-inf) has weight 0; both empty -> 0 and -inf."""
    la, lb = la.double().cpu(), lb.double().cpu()
    m = torch.maximum(la, lb)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa = torch.where(torch.isinf(la), torch.zeros_like(la), torch.exp(la - m))
    wb = torch.where(torch.isinf(lb), torch.zeros_like(lb), torch.exp(lb - m))
    total = wa + wb
    safe = torch.where(total > 0, total, torch.ones_like(total))
    oa, ob = oa.double().cpu().nan_to_num(), ob.double().cpu().nan_to_num()
    out = (oa * (wa / safe).T[..., None] + ob * (wb / safe).T[..., None])
    lse = torch.where(total > 0, m + torch.log(safe), torch.full_like(m, float("-inf")))
    return out, lse


@pytest.mark.parametrize("impl", runnable("merge_attn_states"))
@pytest.mark.parametrize("dtype,heads,d", [(torch.float32, 4, 48), (torch.float16, 8, 96), (torch.bfloat16, 16, 64)])
@pytest.mark.parametrize("empty", ["+inf", "-inf", "both"])
def test_merge_empty_sides(impl, dtype, heads, d, empty, rng):
    """~10% of rows empty on side a, ~10% on side b (never both, as vLLM's test), marked +inf
    (vLLM / FlashMLA) or -inf (ours); "both": +inf on a, -inf on b, and rows empty on both
    sides. Empty rows' outputs hold NaN: they must be ignored, not multiplied by 0."""
    tokens = 37
    oa, la, ob, lb = _states(tokens, heads, d, dtype, rng)
    mask_a = torch.rand(heads, tokens, generator=rng) < 0.1
    mask_b = (torch.rand(heads, tokens, generator=rng) < 0.1) & ~mask_a
    if empty == "both":
        mask_b[:, :3] = mask_a[:, :3] = True       # some rows empty on both sides
    mark_a = float("-inf") if empty == "-inf" else float("inf")
    mark_b = float("inf") if empty == "+inf" else float("-inf")
    la[mask_a.to(DEVICE)] = mark_a
    lb[mask_b.to(DEVICE)] = mark_b
    oa[mask_a.T.to(DEVICE)] = float("nan")
    ob[mask_b.T.to(DEVICE)] = float("nan")
    with ops.use_impl(attention=impl):
        out, lse = ops.merge_attn_states(oa, la, ob, lb)
    ref, ref_lse = _merge_f64(oa, la.masked_fill(torch.isinf(la), float("-inf")),
                              ob, lb.masked_fill(torch.isinf(lb), float("-inf")))
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, torch.float32)
    assert not (lse == float("inf")).any(), "an lse of +inf comes back as -inf"
    if empty == "both":
        assert (out[:3].float() == 0).all() and (lse[:, :3] == float("-inf")).all()


@pytest.mark.parametrize("impl", runnable("merge_attn_states"))
def test_merge_rejects_nan_lse(impl, rng):
    oa, la, ob, lb = _states(5, 2, 16, torch.float32, rng)
    lb[1, 3] = float("nan")
    with ops.use_impl(attention=impl), pytest.raises(ValueError, match=r"lse_b\[1, 3\] is NaN"):
        ops.merge_attn_states(oa, la, ob, lb)
    with ops.use_impl(attention=impl), ops.trusted_inputs():   # value checks off: no host sync, no check
        out, _ = ops.merge_attn_states(oa, la, ob, lb)
    assert torch.isfinite(out[:3]).all() and torch.isfinite(out[4:]).all()   # other rows unaffected


# ------------------------------------------------------------------ cascade attention
CASCADE_CASES = {
    # (query_len, kv_len) per sequence, shared prefix in blocks of 16
    "general": ([(13, 87), (2, 28), (4, 99), (30, 120), (1, 26)], 1),
    "decoding": ([(1, 63), (1, 55), (1, 48), (1, 90)] * 3, 2),
}


@pytest.mark.parametrize("impl", runnable("paged_attention"))
@pytest.mark.parametrize("case", sorted(CASCADE_CASES))
@pytest.mark.parametrize("hq,hkv,d,dtype,softcap", [(4, 4, 64, torch.float16, 0.0), (8, 2, 128, torch.bfloat16, 50.0),
                                                    (16, 2, 80, torch.float32, 0.0)])
def test_cascade_matches_paged(impl, case, hq, hkv, d, dtype, softcap, rng):
    """Prefix pass (all queries, non-causal, Lq > Lk) + suffix pass merged == plain paged."""
    if impl == "triton" and interpreter() and (d == 128 or case == "general"):
        pytest.skip("interpreter: one small cascade shape per dtype is enough")
    seqs, prefix_blocks = CASCADE_CASES[case]
    bs = 16
    prefix = prefix_blocks * bs
    shared_k, shared_v = randn((prefix, hkv, d), dtype, rng), randn((prefix, hkv, d), dtype, rng)
    keys = [torch.cat([shared_k, randn((n - prefix, hkv, d), dtype, rng)]) for _, n in seqs]
    values = [torch.cat([shared_v, randn((n - prefix, hkv, d), dtype, rng)]) for _, n in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, bs, rng, device=DEVICE)
    table[1:, :prefix_blocks] = table[0, :prefix_blocks]   # prefix caching: the same physical blocks
    q_lens = [lq for lq, _ in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    cuq = cu(q_lens, DEVICE)
    sinks = torch.randn(hq, generator=rng).to(DEVICE)
    assert ops.shared_prefix_blocks(table, lens, cuq, bs) == prefix_blocks
    plan = ops.plan_cascade(table, lens, cuq, q.shape[0], bs, prefix_blocks)
    with ops.use_impl(paged_attention=impl):
        plain = ops.paged_attention(q, k_cache, v_cache, table, lens, cuq, max(q_lens), softcap=softcap,
                                    sinks=sinks)
        out = torch.full_like(q, float("nan"))
        got = ops.cascade_attention(q, k_cache, v_cache, plan, cuq, max(q_lens), softcap=softcap, out=out,
                                    max_seqlen_k=int(lens.max()), sinks=sinks)
    assert got.data_ptr() == out.data_ptr()
    ref, _ = paged_f64(q, keys, values, [(n, lq) for lq, n in seqs], d ** -0.5, softcap=softcap, sinks=sinks)
    assert_close(got, ref, dtype)
    assert_close(plain, ref, dtype)


def test_shared_prefix_blocks_rules():
    """Equal leading entries, capped by the shortest context before a sequence's queries."""
    table = torch.tensor([[3, 4, 5, 9], [3, 4, 5, 1], [3, 4, 7, 2]], dtype=torch.int32)
    lens = torch.tensor([64, 64, 64], dtype=torch.int32)
    assert ops.shared_prefix_blocks(table, lens, cu([1, 1, 1]), 16) == 2
    assert ops.shared_prefix_blocks(table[:2], lens[:2], cu([1, 1]), 16) == 3
    assert ops.shared_prefix_blocks(table[:2], lens[:2], cu([1, 40]), 16) == 1   # queries start at key 24
    assert ops.shared_prefix_blocks(table[:1], lens[:1], cu([64]), 16) == 0
    assert not ops.cascade_pays(4, 4096) and not ops.cascade_pays(64, 128) and ops.cascade_pays(64, 4096)
