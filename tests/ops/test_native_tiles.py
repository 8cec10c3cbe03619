"""Native CPU attention, many-row work items (prefill and chunked prefill): the shapes the
tile kernel of csrc/attention_tiles.h serves (bf16 caches on AVX512-BF16 hosts, fp32 caches on
AVX512F hosts; head dims that are multiples of 32, >= 32 query rows per item), and the
neighbours that must fall back to the row kernels (softcap, fp16, head dim 48, few rows). Checked against a float64
reference on NaN-poisoned paged caches with permuted block tables."""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.backends.cpu.native import native_available

from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, paged_cache, paged_f64, randn

pytestmark = pytest.mark.skipif(native_available("cpu") is not None,
                                reason=str(native_available("cpu")))

BF16 = torch.bfloat16
TILE_DTYPES = [BF16, torch.float32]   # the caches the tile kernel serves


def _paged_case(seqs, hq, hkv, d, dv, dtype, causal, window, softcap, rng, block_size=16, scale=1.0):
    """seqs: [(keys, new queries)]; returns (got, lse) and the float64 (ref, ref_lse)."""
    keys = [randn((n, hkv, d), dtype, rng, scale=scale) for n, _ in seqs]
    values = [randn((n, hkv, dv), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, scale=scale)
    with ops.use_impl(attention="native"):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens), causal=causal,
                                       window_size=window, softcap=softcap, return_lse=True)
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5, causal, window, softcap)
    return (got, lse), (ref, ref_lse)


def _check(result, reference, dtype, atol_factor=1.0):
    (got, lse), (ref, ref_lse) = result, reference
    assert_close(got, ref, dtype, atol_factor=atol_factor)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])        # GQA 1, 4, 8
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (37, 0)),
                                           (False, (20, 9))])
@pytest.mark.parametrize("dtype", TILE_DTYPES)
def test_prefill_tiles(hq, hkv, d, causal, window, dtype, rng):
    """Prompts and chunks of odd lengths (tails of 1-31 keys in a 32-key block, partial
    16-row vectors, row vectors that see nothing of a block) in one batch."""
    seqs = [(77, 77), (203, 45), (33, 1), (150, 150), (90, 9)]
    _check(*_paged_case(seqs, hq, hkv, d, d, dtype, causal, window, 0.0, rng), dtype)


@pytest.mark.parametrize("d,dv", [(96, 64), (64, 160)])
@pytest.mark.parametrize("dtype", TILE_DTYPES)
def test_prefill_tiles_value_dim_differs(d, dv, dtype, rng):
    _check(*_paged_case([(130, 70)], 8, 2, d, dv, dtype, True, (-1, -1), 0.0, rng), dtype)


@pytest.mark.parametrize("dtype", TILE_DTYPES)
def test_prefill_tiles_large_scores(dtype, rng):
    """Scores spread over many powers of two: the running max moves by more than the
    rescale slack several times within a row. q and k drawn 4x larger make the scores 16x
    larger, and their float32 rounding with them (seen: 3.6e-5 on float32 outputs for seed
    1706649829, both before and after session 6's kernels), so atol scales by 16; a wrong
    rescale is off by O(1)."""
    _check(*_paged_case([(300, 300)], 8, 2, 64, 64, dtype, True, (-1, -1), 0.0, rng, scale=4.0), dtype,
           atol_factor=16.0)


@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("dtype", TILE_DTYPES)
def test_prefill_tiles_kv_splits(num_threads, dtype, rng):
    """Few long items: the keys are cut into splits merged through their lse."""
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        _check(*_paged_case([(2600, 40)], 8, 1, 128, 128, dtype, True, (-1, -1), 0.0, rng, block_size=64), dtype)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype,d,softcap", [(torch.float32, 48, 0.0), (torch.float32, 64, 30.0),
                                             (torch.float16, 64, 0.0),
                                             (BF16, 64, 30.0), (BF16, 48, 0.0)])
def test_prefill_row_kernel_neighbours(dtype, d, softcap, rng):
    """Calls the tile kernel does not serve keep their row-kernel results."""
    _check(*_paged_case([(90, 90), (61, 20)], 8, 2, d, d, dtype, True, (-1, -1), softcap, rng), dtype)


def test_varlen_prefill_tiles(rng):
    """flash_attn_varlen (packed K/V rows) reaches the same kernel."""
    seqs = [(120, 120), (57, 31)]
    hq, hkv, d = 8, 2, 64
    q = randn((sum(lq for _, lq in seqs), hq, d), BF16, rng)
    k = randn((sum(n for n, _ in seqs), hkv, d), BF16, rng)
    v = randn((sum(n for n, _ in seqs), hkv, d), BF16, rng)
    q_lens, k_lens = [lq for _, lq in seqs], [n for n, _ in seqs]
    with ops.use_impl(attention="native"):
        got, lse = ops.flash_attn_varlen(q, k, v, cu(q_lens), cu(k_lens), max(q_lens), max(k_lens), causal=True,
                                         return_lse=True)
    refs, lses, q0, k0 = [], [], 0, 0
    for lq, n in zip(q_lens, k_lens):
        o, lse_ref = attention_f64(q[q0:q0 + lq], k[k0:k0 + n], v[k0:k0 + n], d ** -0.5,
                                   allowed(lq, n, True, (-1, -1)))
        refs.append(o)
        lses.append(lse_ref)
        q0, k0 = q0 + lq, k0 + n
    assert_close(got, torch.cat(refs), BF16)
    assert_lse_close(lse, torch.cat(lses, dim=1), BF16)


@pytest.mark.parametrize("d", [64, 128])
def test_prefill_tiles_probabilities_keep_float32_accuracy(d, rng):
    """P enters P.V as bfloat16 hi + lo (~2^-17 relative), so the bf16 outputs are the
    correctly rounded float64 results except where the result lies within ~2^-17 of a
    rounding boundary. Rounding P to one bfloat16 (~2^-9) misrounds far more outputs: this
    is the property that kept a tiny DeepSeek's generations on vLLM's (see attention_rows.h)."""
    (got, _), (ref, _) = _paged_case([(400, 400)], 8, 2, d, d, BF16, True, (-1, -1), 0.0, rng)
    misrounded = (got != ref.to(BF16)).double().mean().item()
    assert misrounded < 0.02, f"{misrounded:.1%} of outputs differ from the rounded float64 reference"


def _amx_usable() -> bool:
    return native_available("cpu") is None and torch.ops.ascend_ext_native.amx_usable()


@pytest.mark.skipif(not _amx_usable(), reason="this CPU or build has no AMX-BF16 tile unit (or it is switched off)")
@pytest.mark.parametrize("amx", ["1", "0"])
@pytest.mark.parametrize("hq,hkv,d,dv", [(8, 2, 128, 128), (8, 1, 64, 64), (4, 4, 96, 160), (8, 2, 32, 32)])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (37, 0)), (False, (150, 9))])
def test_prefill_tiles_amx_and_avx512(amx, hq, hkv, d, dv, causal, window, monkeypatch, rng):
    """AMX hosts: the bfloat16 tile kernel on the tile unit (128-key blocks, keys read in place
    within a page and copied across page boundaries, values transposed per block) and with
    ASCEND_EXT_NATIVE_AMX=0 on AVX512-BF16 dot products, both against float64; page sizes 16
    (every 16-key slice in one page) and 48 (slices straddle pages), odd tails, partial row vectors."""
    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", amx)
    assert torch.ops.ascend_ext_native.amx_usable() == (amx == "1")
    seqs = [(77, 77), (203, 45), (33, 1), (300, 160), (90, 9)]
    for block_size in (16, 48):
        _check(*_paged_case(seqs, hq, hkv, d, dv, BF16, causal, window, 0.0, rng, block_size=block_size), BF16)


@pytest.mark.skipif(not _amx_usable(), reason="this CPU or build has no AMX-BF16 tile unit (or it is switched off)")
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 128), (16, 4, 64), (16, 2, 96), (8, 1, 32), (4, 2, 64)])
def test_decode_tiles_amx(hq, hkv, d, stream, monkeypatch, rng):
    """AMX hosts: decode and speculative-decode items of 4-16 rows (one row vector: GQA group x
    1-4 tokens) take the AMX decode form (P transposed against the interleaved value pairs, O
    row-major), smaller ones the row kernels (GQA 2 x 1 token); long contexts split into KV
    splits, pages of 16 and 48 keys, odd lengths, an empty sequence, windows, and (stream) the
    calls past the cache threshold."""
    if stream:
        monkeypatch.setenv("ASCEND_EXT_NATIVE_STREAM_BYTES", "1")
    seqs = [(1, 1), (67, 1), (0, 0), (300, 1), (129, 3), (500, 4), (2100, 1)]
    for block_size, window in ((16, (-1, -1)), (48, (100, 0))):
        _check(*_paged_case(seqs, hq, hkv, d, d, BF16, True, window, 0.0, rng, block_size=block_size), BF16)
    # scores 16x larger: the running max outgrows the rescale slack within a row (O row-major rescale)
    _check(*_paged_case(seqs, hq, hkv, d, d, BF16, True, (-1, -1), 0.0, rng, scale=4.0), BF16, atol_factor=16.0)
