"""Attention ops vs the independent float64 reference, for every runnable implementation.

On a CPU-only machine this covers the reference and (under TRITON_INTERPRET=1) the
Triton kernels; with a GPU, the Triton kernels compiled for CUDA.
"""

import importlib
import itertools

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE, require_tensor_descriptors, runnable
from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, paged_cache, paged_f64, randn, varlen_f64

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEQLEN_SETS = {
    "single": [(1, 1)],
    "mixed": [(5, 5), (17, 17), (1, 1), (40, 40)],
    "q_lt_k": [(3, 20), (1, 9), (7, 33)],
    "q_gt_k": [(10, 4), (6, 1)],          # causal leaves early rows with no key
    "empty": [(0, 0), (4, 4), (0, 5), (3, 0)],
}
HEADS = [(4, 4), (4, 2), (8, 2), (8, 1)]             # GQA ratios 1, 2, 4, 8
HEAD_DIMS = [(64, 64), (128, 128), (80, 80), (64, 32)]  # incl. non-power-of-two, Dv != D
MASKING = [(False, (-1, -1)), (True, (-1, -1)), (True, (5, 0)), (False, (4, 2)), (False, (0, 3))]


def _varlen_cases():
    cases = []
    for n, (dtype, (causal, window), (set_name, seqlens)) in enumerate(
            itertools.product(DTYPES, MASKING, SEQLEN_SETS.items())):
        hq, hkv = HEADS[n % len(HEADS)]
        d, dv = HEAD_DIMS[(n // 2) % len(HEAD_DIMS)]
        cases.append(pytest.param(seqlens, hq, hkv, d, dv, causal, window, dtype,
                                  id=f"{str(dtype)[6:]}-c{int(causal)}-w{window[0]}_{window[1]}-"
                                     f"{set_name}-h{hq}x{hkv}-d{d}x{dv}"))
    return cases


@pytest.mark.parametrize("impl", runnable("flash_attn_varlen"))
@pytest.mark.parametrize("seqlens,hq,hkv,d,dv,causal,window,dtype", _varlen_cases())
def test_flash_attn_varlen(impl, seqlens, hq, hkv, d, dv, causal, window, dtype, rng):
    tq = sum(s[0] for s in seqlens)
    tk = sum(s[1] for s in seqlens)
    q = randn((tq, hq, d), dtype, rng, DEVICE)
    k = randn((tk, hkv, d), dtype, rng, DEVICE)
    v = randn((tk, hkv, dv), dtype, rng, DEVICE)
    scale = d ** -0.5
    out = torch.full((tq, hq, dv), float("nan"), dtype=dtype, device=DEVICE)  # poisoned
    with ops.use_impl(attention=impl):
        got, lse = ops.flash_attn_varlen(
            q, k, v, cu([s[0] for s in seqlens], DEVICE), cu([s[1] for s in seqlens], DEVICE),
            max(s[0] for s in seqlens), max(s[1] for s in seqlens), softmax_scale=scale,
            causal=causal, window_size=window, return_lse=True, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref, ref_lse = varlen_f64(q, k, v, seqlens, scale, causal, window)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.skipif("triton" not in runnable("flash_attn_varlen"), reason="Triton cannot run here")
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (9, 0)), (False, (6, 3))])
@pytest.mark.parametrize("seqlens", [[(40, 40), (1, 1), (67, 67), (5, 30), (20, 9)], [(0, 0), (33, 33), (0, 4)]],
                         ids=["ragged", "empty"])
@pytest.mark.parametrize("tile", [16, 64])
def test_triton_tma_kernel(seqlens, causal, window, tile, rng, monkeypatch):
    """The Hopper tensor-descriptor prefill kernel (forced by config; compiled on sm90, and under
    an interpreter that runs descriptor loads) against float64: ragged sequences whose last key
    tiles reach into the next sequence or past the tensor, empty sequences, GQA 4; 16 x 16 tiles
    and the short-span 64 x 64 tiles (Hopper's d64 / d128 entry for short causal batches)."""
    from ascend_ext.kernels.triton import flash_attention as triton_flash

    require_tensor_descriptors()
    configs = importlib.import_module(f"ascend_ext.backends.{DEVICE}.configs")
    hq, hkv, d, dtype = 8, 2, 64, torch.bfloat16
    tq, tk = sum(s[0] for s in seqlens), sum(s[1] for s in seqlens)
    q, k, v = (randn((t, h, d), dtype, rng, DEVICE) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))
    out = torch.full((tq, hq, d), float("nan"), dtype=dtype, device=DEVICE)
    cfg = dict(SUB_M=tile, NUM_SUB=1, BLOCK_N=tile, num_warps=4, num_stages=2, TMA=True, WS=False)
    win = (window[0], 0 if causal else window[1])
    launched = []
    tma = triton_flash._flash_tma
    monkeypatch.setattr(triton_flash, "_flash_tma", lambda *a, **kw: launched.append(True) or tma(*a, **kw))
    lse = triton_flash.flash_attn_varlen(q, k, v, cu([s[0] for s in seqlens], DEVICE),
                                         cu([s[1] for s in seqlens], DEVICE), max(s[0] for s in seqlens),
                                         max(s[1] for s in seqlens), softmax_scale=d ** -0.5, window=win,
                                         mask=None, softcap=0.0, out=out, return_lse=True, config=cfg,
                                         configs=configs)
    assert launched, "the config asked for TMA: the descriptor kernel must run"
    ref, ref_lse = varlen_f64(q.cpu(), k.cpu(), v.cpu(), seqlens, d ** -0.5, causal, window)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("impl", runnable("flash_attn_varlen"))
def test_flash_attn_varlen_softcap_and_default_scale(impl, rng):
    seqlens = [(9, 9), (3, 12)]
    q = randn((12, 4, 64), torch.float32, rng, DEVICE, scale=3.0)
    k = randn((21, 2, 64), torch.float32, rng, DEVICE, scale=3.0)
    v = randn((21, 2, 64), torch.float32, rng, DEVICE)
    with ops.use_impl(attention=impl):
        got = ops.flash_attn_varlen(q, k, v, cu([9, 3], DEVICE), cu([9, 12], DEVICE), 9, 12,
                                    causal=True, softcap=2.0)
    ref, _ = varlen_f64(q, k, v, seqlens, 64 ** -0.5, True, (-1, -1), softcap=2.0)
    assert_close(got, ref, torch.float32)


PAGED_SETS = {
    "decode": [(1, 1), (15, 1), (16, 1), (17, 1), (50, 1)],
    "chunked": [(40, 7), (33, 33), (20, 1), (64, 16)],
    "with_empty": [(0, 0), (9, 3), (5, 0)],
}


def _paged_cases():
    cases = []
    for n, (dtype, block_size, (set_name, seqs), (causal, window)) in enumerate(itertools.product(
            DTYPES, (16, 32), PAGED_SETS.items(), [(True, (-1, -1)), (True, (7, 0)), (False, (-1, -1))])):
        hq, hkv = HEADS[n % len(HEADS)]
        d, dv = HEAD_DIMS[(n // 3) % len(HEAD_DIMS)]
        cases.append(pytest.param(seqs, block_size, hq, hkv, d, dv, causal, window, dtype,
                                  id=f"{str(dtype)[6:]}-bs{block_size}-{set_name}-c{int(causal)}"
                                     f"-w{window[0]}-h{hq}x{hkv}-d{d}x{dv}"))
    return cases


@pytest.mark.parametrize("impl", runnable("paged_attention"))
@pytest.mark.parametrize("seqs,block_size,hq,hkv,d,dv,causal,window,dtype", _paged_cases())
def test_paged_attention(impl, seqs, block_size, hq, hkv, d, dv, causal, window, dtype, rng):
    keys = [randn((length, hkv, d), dtype, rng) for length, _ in seqs]
    values = [randn((length, hkv, dv), dtype, rng) for length, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng, device=DEVICE)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    out = torch.full((sum(q_lens), hq, dv), float("nan"), dtype=dtype, device=DEVICE)
    with ops.use_impl(attention=impl):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE),
                                       max(q_lens), causal=causal, window_size=window,
                                       return_lse=True, out=out)
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5, causal, window)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("impl", runnable("paged_attention"))
def test_paged_attention_strided_vllm_layout(impl, rng):
    """The vLLM backend passes views of a combined [blocks, Hkv, bs, 2D] cache."""
    hkv, d, bs, blocks = 2, 64, 16, 6
    combined = torch.full((blocks, bs, hkv, 2 * d), float("nan"))
    combined = combined.transpose(1, 2)                # logical [B, H, N, 2D], physical NHD
    k_cache, v_cache = ops.split_kv_cache(combined, d)
    assert not k_cache.is_contiguous()
    lengths, q_lens = [23, 5], [4, 1]
    key = randn((sum(lengths), hkv, d), torch.float32, rng)
    value = randn((sum(lengths), hkv, d), torch.float32, rng)
    table = torch.tensor([[4, 1], [2, -1]], dtype=torch.int32)
    slots = torch.cat([4 * bs + torch.arange(16), 1 * bs + torch.arange(7), 2 * bs + torch.arange(5)])
    ops.reshape_and_cache(key, value, k_cache, v_cache, slots.int())
    q = randn((5, 4, d), torch.float32, rng)
    k_cache, v_cache, table = k_cache.to(DEVICE), v_cache.to(DEVICE), table.to(DEVICE)
    with ops.use_impl(attention=impl):
        got = ops.paged_attention(q.to(DEVICE), k_cache, v_cache, table,
                                  torch.tensor(lengths, dtype=torch.int32, device=DEVICE),
                                  cu(q_lens, DEVICE), 4)
    ref0, _ = attention_f64(q[:4], key[:23], value[:23], d ** -0.5, allowed(4, 23, True, (-1, -1)))
    ref1, _ = attention_f64(q[4:], key[23:], value[23:], d ** -0.5, allowed(1, 5, True, (-1, -1)))
    assert_close(got, torch.cat([ref0, ref1]), torch.float32)


@pytest.mark.parametrize("impl", runnable("reshape_and_cache"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache(impl, dtype, rng):
    blocks, bs, hkv, d, n = 5, 16, 2, 80, 37
    k_cache = torch.full((blocks, bs, hkv, d), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = torch.full((blocks, bs, hkv, 48), float("nan"), dtype=dtype, device=DEVICE)
    key = randn((n + 3, hkv, d), dtype, rng, DEVICE)      # 3 padding tokens past slot_mapping
    value = randn((n + 3, hkv, 48), dtype, rng, DEVICE)
    slots = torch.randperm(blocks * bs, generator=rng)[:n]
    slots[::5] = -1                                       # skipped
    with ops.use_impl(attention=impl):
        ops.reshape_and_cache(key, value, k_cache, v_cache, slots.to(DEVICE))
    flat_k = k_cache.view(-1, hkv, d).cpu()
    flat_v = v_cache.view(-1, hkv, 48).cpu()
    written = torch.zeros(blocks * bs, dtype=torch.bool)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], key[t].cpu()) and torch.equal(flat_v[s], value[t].cpu())
            written[s] = True
    assert torch.isnan(flat_k[~written].float()).all() and torch.isnan(flat_v[~written].float()).all()


@pytest.mark.parametrize("impl", runnable("merge_attn_states"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_attn_states(impl, dtype, rng):
    """Splitting keys in two and merging equals attending over all; empty sides ignored."""
    lq, lk, hq, hkv, d = 6, 30, 4, 2, 64
    q = randn((lq, hq, d), dtype, rng)
    k = randn((lk, hkv, d), dtype, rng)
    v = randn((lk, hkv, d), dtype, rng)
    ok = allowed(lq, lk, True, (-1, -1))
    ok[0] = False                                   # a row that sees nothing at all
    split = torch.zeros(lk, dtype=torch.bool)
    split[torch.randperm(lk, generator=rng)[:11]] = True
    split[25:] = False                              # row 1 only sees keys of part a
    oa, la = attention_f64(q, k, v, 0.125, ok & split)
    ob, lb = attention_f64(q, k, v, 0.125, ok & ~split)
    oa = oa.to(dtype)
    ob = ob.to(dtype)
    oa[torch.isinf(la).T] = float("nan")            # garbage where a side saw nothing
    ob[torch.isinf(lb).T] = float("nan")
    with ops.use_impl(attention=impl):
        out, lse = ops.merge_attn_states(oa.to(DEVICE), la.float().to(DEVICE), ob.to(DEVICE),
                                         lb.float().to(DEVICE))
    ref, ref_lse = attention_f64(q, k, v, 0.125, ok)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, torch.float32)


@pytest.mark.skipif("triton" not in runnable("paged_attention"), reason="Triton cannot run here")
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
@pytest.mark.parametrize("block_n", [None, 128], ids=["table", "n128"])
def test_triton_paged_split_kv_matches(num_splits, block_n, rng):
    """Forced split-KV counts (incl. splits past the end of short sequences) merge exactly;
    also with 128-key tiles (Hopper's tiles for a few long sequences)."""
    import importlib

    configs = importlib.import_module(f"ascend_ext.backends.{DEVICE}.configs")
    from ascend_ext.kernels.triton import paged_attention as triton_paged

    seqs = [(300, 1), (17, 1), (130, 5), (0, 0)]
    hq, hkv, d, dtype = 8, 2, 64, torch.bfloat16
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 16, rng, device=DEVICE)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    out = torch.full((sum(q_lens), hq, d), float("nan"), dtype=dtype, device=DEVICE)
    lse = triton_paged.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 5,
                                       softmax_scale=d ** -0.5, window=(-1, 0), softcap=0.0, out=out,
                                       return_lse=True, num_splits=num_splits, configs=configs,
                                       config=block_n and dict(configs.paged_config(q.device, d, dtype), BLOCK_N=block_n))
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.skipif("triton" not in runnable("paged_attention"), reason="Triton cannot run here")
@pytest.mark.parametrize("k_len,num_splits", [(0, 4), (1, 4), (64, 4), (65, 33), (1000, 33), (4096, 33), (300, 7)])
def test_split_keys_spread_each_sequence_over_all_splits(k_len, num_splits):
    """split_keys cuts a sequence's own keys into whole tiles over every split: a grid sized
    for the block table's capacity (CUDA graphs) gives a short sequence min(splits, its tile
    count) busy splits, not the one a capacity-sized split would."""
    from .triton_probes import split_key_ranges

    block_n = 64
    out = torch.full((num_splits, 2), -1, dtype=torch.int32, device=DEVICE)
    split_key_ranges[(num_splits,)](out, k_len, num_splits, BLOCK_N=block_n)
    spans = [(int(b), int(e)) for b, e in out.cpu().tolist()]
    busy = [(b, e) for b, e in spans if e > b]
    tiles = -(-k_len // block_n)
    per_split = -(-tiles // num_splits) * block_n          # whole tiles, from this sequence's length
    assert all(e - b == per_split for b, e in busy[:-1]) and len(busy) == (-(-k_len // per_split) if k_len else 0)
    assert len(busy) >= min(num_splits, tiles) / 2          # spread: never one split doing all the work
    assert sum(e - b for b, e in busy) == k_len and all(b % block_n == 0 for b, _ in busy)
    assert [b for b, _ in busy] == sorted(b for b, _ in busy) and all(
        busy[i][1] == busy[i + 1][0] for i in range(len(busy) - 1))


def test_pdl_launch_options(monkeypatch):
    """Programmatic dependent launch only for compiled kernels, and never with ASCEND_EXT_PDL=0:
    both kernels of a pair get the PDL constexpr, the dependent one also launch_pdl."""
    from ascend_ext.kernels.triton.common import pdl_flags

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("ASCEND_EXT_PDL", raising=False)
    assert pdl_flags(True, dependent=True) == {"PDL": True, "launch_pdl": True}
    assert pdl_flags(True, dependent=False) == {"PDL": True}
    assert pdl_flags(False, dependent=True) == {}
    monkeypatch.setenv("ASCEND_EXT_PDL", "0")
    assert pdl_flags(True, dependent=True) == {} and pdl_flags(True, dependent=False) == {}
    monkeypatch.delenv("ASCEND_EXT_PDL")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl_flags(True, dependent=True) == {}
