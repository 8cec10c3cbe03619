"""Attention sinks (gpt-oss): every implementation vs the float64 reference that appends the
sink as one more (zero-valued) key; split-KV paths, edge rows, composition by merge, bad input.

Cases follow what the peers cover (vLLM / flash-attn sink tests: sinks on and off, GQA and
MHA, causal / sliding window / none, decode and prefill queries, Lq > Lk with leading rows
that see no key, many heads each with its own sink, a very negative sink as a no-op),
at interpreter-friendly sizes.
"""

import itertools

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE, interpreter, runnable
from .naive import assert_close, assert_lse_close, cu, paged_cache, paged_f64, randn, varlen_f64

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VARLEN_SETS = {
    "prefill": [(9, 9), (17, 17), (1, 1)],
    "q_lt_k": [(3, 20), (1, 9)],
    "q_gt_k": [(10, 4), (5, 0)],     # leading causal rows and an empty sequence see only the sink
}
MASKING = [(True, (-1, -1)), (True, (4, 0)), (False, (-1, -1))]
HEADS = [(4, 2), (8, 8), (8, 1)]


def _sinks(hq, rng, scale=2.0):
    return (torch.randn(hq, generator=rng) * scale).float().to(DEVICE)


def _varlen_cases():
    cases = []
    for n, (dtype, (causal, window), (name, seqlens)) in enumerate(
            itertools.product(DTYPES, MASKING, VARLEN_SETS.items())):
        hq, hkv = HEADS[n % len(HEADS)]
        d = (64, 80)[n % 2]
        cases.append(pytest.param(seqlens, hq, hkv, d, causal, window, dtype,
                                  id=f"{str(dtype)[6:]}-c{int(causal)}-w{window[0]}-{name}-h{hq}x{hkv}-d{d}"))
    return cases


@pytest.mark.parametrize("impl", runnable("flash_attn_varlen", sinks=True))
@pytest.mark.parametrize("seqlens,hq,hkv,d,causal,window,dtype", _varlen_cases())
def test_flash_attn_varlen_sinks(impl, seqlens, hq, hkv, d, causal, window, dtype, rng):
    q = randn((sum(s[0] for s in seqlens), hq, d), dtype, rng, DEVICE)
    k = randn((sum(s[1] for s in seqlens), hkv, d), dtype, rng, DEVICE)
    v = randn((sum(s[1] for s in seqlens), hkv, d), dtype, rng, DEVICE)
    sinks = _sinks(hq, rng)
    out = torch.full_like(q, float("nan"))
    with ops.use_impl(attention=impl):
        got, lse = ops.flash_attn_varlen(q, k, v, cu([s[0] for s in seqlens], DEVICE),
                                         cu([s[1] for s in seqlens], DEVICE), max(s[0] for s in seqlens),
                                         max(s[1] for s in seqlens), causal=causal, window_size=window,
                                         return_lse=True, out=out, sinks=sinks)
    ref, ref_lse = varlen_f64(q, k, v, seqlens, d ** -0.5, causal, window, sinks=sinks)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


PAGED_SETS = {
    "decode": [(1, 1), (17, 1), (50, 1)],
    "chunked": [(40, 7), (33, 33), (20, 1)],
    "q_gt_k": [(3, 9), (0, 2), (16, 4)],   # more queries than keys (non-causal: all keys; causal: some none)
}


def _paged_cases():
    cases = []
    for n, (dtype, block_size, (name, seqs), (causal, window)) in enumerate(itertools.product(
            DTYPES, (16, 32), PAGED_SETS.items(), MASKING)):
        if n % 2:   # half the grid: every dtype, block size, set and masking still appears
            continue
        hq, hkv = HEADS[n % len(HEADS)]
        d = (64, 128, 80)[n % 3]
        cases.append(pytest.param(seqs, block_size, hq, hkv, d, causal, window, dtype,
                                  id=f"{str(dtype)[6:]}-bs{block_size}-{name}-c{int(causal)}-w{window[0]}"
                                     f"-h{hq}x{hkv}-d{d}"))
    return cases


def _paged_reference(q, keys, values, seqs, causal, window, sinks, d, softcap=0.0):
    return paged_f64(q, keys, values, seqs, d ** -0.5, causal, window, softcap, sinks)


def _paged_inputs(seqs, block_size, hq, hkv, d, dtype, rng):
    keys = [randn((length, hkv, d), dtype, rng) for length, _ in seqs]
    values = [randn((length, hkv, d), dtype, rng) for length, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng, device=DEVICE)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    return keys, values, k_cache, v_cache, table, lens, q_lens, q


@pytest.mark.parametrize("impl", runnable("paged_attention", sinks=True))
@pytest.mark.parametrize("seqs,block_size,hq,hkv,d,causal,window,dtype", _paged_cases())
def test_paged_attention_sinks(impl, seqs, block_size, hq, hkv, d, causal, window, dtype, rng):
    keys, values, k_cache, v_cache, table, lens, q_lens, q = _paged_inputs(seqs, block_size, hq, hkv, d, dtype, rng)
    sinks = _sinks(hq, rng)
    out = torch.full_like(q, float("nan"))
    with ops.use_impl(attention=impl):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), max(q_lens),
                                       causal=causal, window_size=window, return_lse=True, out=out, sinks=sinks)
    ref, ref_lse = _paged_reference(q, keys, values, seqs, causal, window, sinks, d)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", runnable("paged_attention", sinks=True))
@pytest.mark.parametrize("seqs", [[(1500, 1)], [(1030, 24)]], ids=["decode", "tile-rows"])
def test_paged_sinks_long_context_splits(impl, seqs, threads, rng):
    """One KV head, one long sequence, two threads: fewer work items than threads, so the
    native kernel splits the context (>= 1024 keys) and merges the splits; 24 queries x 8
    heads make many-row items for its bf16 tile kernel. The sink joins once, in the merge."""
    if impl == "triton" and interpreter():
        pytest.skip("interpreter: the forced-split test below covers the Triton combine")
    threads(2)
    dtype, hq, hkv, d = torch.bfloat16, 8, 1, 64
    keys, values, k_cache, v_cache, table, lens, q_lens, q = _paged_inputs(seqs, 16, hq, hkv, d, dtype, rng)
    sinks = _sinks(hq, rng, scale=4.0)
    with ops.use_impl(attention=impl):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), max(q_lens),
                                       return_lse=True, sinks=sinks)
    ref, ref_lse = _paged_reference(q, keys, values, seqs, True, (-1, -1), sinks, d)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.skipif("triton" not in runnable("paged_attention"), reason="Triton cannot run here")
@pytest.mark.parametrize("num_splits", [1, 3])
def test_triton_paged_sinks_split_kv(num_splits, rng):
    """Forced split counts: the sink joins in the combine only (not once per split)."""
    import importlib

    configs = importlib.import_module(f"ascend_ext.backends.{DEVICE}.configs")
    from ascend_ext.kernels.triton import paged_attention as triton_paged

    seqs = [(130, 1), (17, 3), (0, 2)]
    dtype, hq, hkv, d = torch.float32, 4, 2, 64
    keys, values, k_cache, v_cache, table, lens, q_lens, q = _paged_inputs(seqs, 16, hq, hkv, d, dtype, rng)
    sinks = _sinks(hq, rng)
    out = torch.full_like(q, float("nan"))
    lse = triton_paged.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 3,
                                       softmax_scale=d ** -0.5, window=(-1, 0), softcap=0.0, out=out,
                                       return_lse=True, num_splits=num_splits, configs=configs, sinks=sinks)
    ref, ref_lse = _paged_reference(q, keys, values, seqs, True, (-1, -1), sinks, d)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("op", ["flash_attn_varlen", "paged_attention"])
def test_sinks_with_softcap_and_extremes(op, rng):
    """Softcap (the sink joins the capped scores), a sink far below every score (a no-op:
    equal to no sinks) and far above (output ~0, lse ~ sink), -inf (= none); every impl."""
    hq, hkv, d, dtype = 4, 2, 64, torch.float32
    seqs = [(12, 5), (7, 7)]
    keys, values, k_cache, v_cache, table, lens, q_lens, q = _paged_inputs(seqs, 16, hq, hkv, d, dtype, rng)
    k, v = torch.cat(keys).to(DEVICE), torch.cat(values).to(DEVICE)
    sinks = torch.tensor([-1e4, 1e3, float("-inf"), 0.5], device=DEVICE)

    def call(sinks, softcap):
        if op == "flash_attn_varlen":
            return ops.flash_attn_varlen(q, k, v, cu(q_lens, DEVICE), cu([n for n, _ in seqs], DEVICE), 7, 12,
                                         causal=True, return_lse=True, softcap=softcap, sinks=sinks)
        return ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 7, return_lse=True,
                                   softcap=softcap, sinks=sinks)

    ref, ref_lse = _paged_reference(q, keys, values, seqs, True, (-1, -1), sinks, d, softcap=5.0)
    for impl in runnable(op, sinks=True):
        with ops.use_impl(attention=impl):
            got, lse = call(sinks, 5.0)
            plain, plain_lse = call(None, 5.0)
        assert_close(got, ref, dtype)
        assert_lse_close(lse, ref_lse, dtype)
        # heads 0 and 2: the sink contributes nothing
        assert torch.allclose(got[:, [0, 2]].cpu(), plain[:, [0, 2]].cpu(), atol=1e-6)
        assert torch.allclose(lse[[0, 2]].cpu(), plain_lse[[0, 2]].cpu(), atol=1e-5)
        assert got[:, 1].abs().max() < 1e-30 and torch.allclose(lse[1].cpu(), torch.full_like(lse[1].cpu(), 1e3))


@pytest.mark.parametrize("impl", runnable("paged_attention", sinks=True))
def test_sinks_compose_through_merge(impl, rng):
    """A split of the keys where only one side carries the sink merges into the full result
    with sinks, even where that side saw no key (its lse is then the sink, not -inf): the
    property cascade attention relies on."""
    hq, hkv, d, dtype = 4, 1, 64, torch.float32
    prefix, suffix = 32, [5, 0, 9]
    q_lens = [2, 1, 3]
    seqs = [(prefix + s, lq) for s, lq in zip(suffix, q_lens)]
    keys, values, k_cache, v_cache, table, lens, _, q = _paged_inputs(seqs, 16, hq, hkv, d, dtype, rng)
    shared = keys[0][:prefix], values[0][:prefix]
    for b in range(1, len(seqs)):   # make the first two blocks common, as prefix caching does
        keys[b][:prefix], values[b][:prefix] = shared
        table[b, :2] = table[0, :2]
    sinks = _sinks(hq, rng)
    with ops.use_impl(attention=impl):
        pre_out, pre_lse = ops.paged_attention(q, k_cache, v_cache, table[:1, :2], lens.new_tensor([prefix]),
                                               cu([q.shape[0]], DEVICE), q.shape[0], causal=False,
                                               return_lse=True)
        suf_out, suf_lse = ops.paged_attention(q, k_cache, v_cache, table[:, 2:], lens - prefix, cu(q_lens, DEVICE),
                                               3, causal=True, return_lse=True, sinks=sinks)
    out, lse = ops.merge_attn_states(pre_out, pre_lse, suf_out, suf_lse)
    ref, ref_lse = _paged_reference(q, keys, values, seqs, True, (-1, -1), sinks, d)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("op", ["flash_attn_varlen", "paged_attention"])
def test_sinks_bad_input(op):
    q = torch.randn(3, 4, 16)
    k_cache = torch.randn(2, 16, 2, 16)
    args = {"flash_attn_varlen": (q, torch.randn(3, 2, 16), torch.randn(3, 2, 16), cu([3]), cu([3]), 3, 3),
            "paged_attention": (q, k_cache, k_cache.clone(), torch.zeros(1, 1, dtype=torch.int32),
                                torch.tensor([3], dtype=torch.int32), cu([3]), 3)}[op]
    fn = getattr(ops, op)
    with pytest.raises(TypeError, match=r"sinks must be float32 \[Hq\] = \[4\]"):
        fn(*args, sinks=torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"sinks must have shape \[Hq\] = \[4\]"):
        fn(*args, sinks=torch.zeros(2))
    with pytest.raises(ValueError, match="sinks must be on the device of q"):
        fn(*args, sinks=torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="sinks must be finite or -inf"):
        fn(*args, sinks=torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="sinks must be a float32 tensor"):
        fn(*args, sinks=[0.0] * 4)
