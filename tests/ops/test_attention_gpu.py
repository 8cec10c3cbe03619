"""The attention parity suite at realistic sizes, on CUDA (skipped without a GPU).

The float64 reference runs on the GPU too; sizes are chosen so that the kernels
use their production tiles (several first-level tiles, split-KV, long contexts).
"""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.ops import TileMask

from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, paged_cache, paged_f64, randn, varlen_f64

pytestmark = pytest.mark.gpu
DEV = "cuda"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (300, 0)), (False, (100, 57))])
def test_varlen_realistic(dtype, d, causal, window, rng):
    seqlens = [(1000, 1000), (1, 1), (2049, 2049), (77, 500), (700, 300)]
    hq, hkv = 16, 4
    tq, tk = sum(s[0] for s in seqlens), sum(s[1] for s in seqlens)
    q, k, v = (randn((t, h, d), dtype, rng, DEV) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))
    out = torch.full((tq, hq, d), float("nan"), dtype=dtype, device=DEV)
    with ops.use_impl(attention="triton"):
        _, lse = ops.flash_attn_varlen(q, k, v, cu([s[0] for s in seqlens], DEV), cu([s[1] for s in seqlens], DEV),
                                       2049, 2049, causal=causal, window_size=window, return_lse=True, out=out)
    ref, ref_lse = varlen_f64(q, k, v, seqlens, d ** -0.5, causal, window)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", [(16, 4), (8, 8)])
def test_varlen_short_causal_tiles(d, hq, hkv, rng):
    """Causal batches of <= 1024 keys, as the op picks their tiles (Hopper: the short-span
    64 x 64 entry at d64 and d128), against float64: ragged, odd and single-token sequences."""
    seqlens = [(1024, 1024), (1, 1), (333, 333), (77, 500), (999, 999)]
    dtype = torch.bfloat16
    tq, tk = sum(s[0] for s in seqlens), sum(s[1] for s in seqlens)
    q, k, v = (randn((t, h, d), dtype, rng, DEV) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))
    out = torch.full((tq, hq, d), float("nan"), dtype=dtype, device=DEV)
    with ops.use_impl(attention="triton"):
        _, lse = ops.flash_attn_varlen(q, k, v, cu([s[0] for s in seqlens], DEV), cu([s[1] for s in seqlens], DEV),
                                       1024, 1024, causal=True, return_lse=True, out=out)
    ref, ref_lse = varlen_f64(q, k, v, seqlens, d ** -0.5, True, (-1, -1))
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("d,block_n", [(64, 64), (128, 128)])
@pytest.mark.parametrize("ws", [False, True])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (300, 0)), (False, (100, 57))])
def test_varlen_tma_path(d, block_n, ws, causal, window, rng):
    """The Hopper tensor-descriptor kernel (forced by config) against float64: ragged
    sequences whose last key tiles run into the next sequence / past the tensor."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need Hopper or newer")
    from ascend_ext.backends.cuda import configs
    from ascend_ext.kernels.triton import flash_attention as triton_flash

    seqlens = [(1000, 1000), (1, 1), (2049, 2049), (77, 500), (700, 300)]
    hq, hkv, dtype = 16, 4, torch.bfloat16
    tq, tk = sum(s[0] for s in seqlens), sum(s[1] for s in seqlens)
    q, k, v = (randn((t, h, d), dtype, rng, DEV) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))
    out = torch.full((tq, hq, d), float("nan"), dtype=dtype, device=DEV)
    cfg = dict(SUB_M=128, NUM_SUB=1, BLOCK_N=block_n, num_warps=8, num_stages=3, TMA=True, WS=ws)
    win = (window[0], 0 if causal else window[1])
    lse = triton_flash.flash_attn_varlen(q, k, v, cu([s[0] for s in seqlens], DEV), cu([s[1] for s in seqlens], DEV),
                                         2049, 2049, softmax_scale=d ** -0.5, window=win, mask=None, softcap=0.0,
                                         out=out, return_lse=True, config=cfg, configs=configs)
    ref, ref_lse = varlen_f64(q, k, v, seqlens, d ** -0.5, causal, window)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("kind", ["document_causal", "random_dense"])
def test_tile_mask_realistic(kind, rng):
    s, hq, hkv, d, dtype = 4096, 8, 2, 128, torch.bfloat16
    if kind == "document_causal":
        offsets = [0, 100, 1500, 1501, 3000, s]
        tm = TileMask.document(offsets, tile=(128, 128))
        dense, causal = tm.dense(), True
    else:
        dense = torch.rand(s, s, generator=rng) < 0.2
        dense[:256] = False
        tm = TileMask.from_dense(dense, tile=(128, 64))
        causal = False
    q, k, v = (randn((s, h, d), dtype, rng, DEV) for h in (hq, hkv, hkv))
    with ops.use_impl(attention="triton"):
        out, lse = ops.flash_attn_varlen(q, k, v, cu([s], DEV), cu([s], DEV), s, s, causal=causal,
                                         mask=tm, return_lse=True)
    ref, ref_lse = attention_f64(q, k, v, d ** -0.5, allowed(s, s, causal, (-1, -1), dense, device=DEV))
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("block_size", [16, 64])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (16, 16, 64), (8, 1, 256)])
def test_paged_realistic(block_size, hq, hkv, d, rng):
    dtype = torch.bfloat16
    seqs = [(8191, 1), (1, 1), (3000, 1), (4100, 37), (17, 17)] + [(513, 1)] * 3
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng, extra_blocks=50, device=DEV)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEV)
    out = torch.full((sum(q_lens), hq, d), float("nan"), dtype=dtype, device=DEV)
    with ops.use_impl(attention="triton"):
        _, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEV), max(q_lens),
                                     return_lse=True, out=out)
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5, device=DEV)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("hq,s_q", [(16, 1), (128, 2), (16, 4)])
def test_mla_realistic(hq, s_q, rng):
    from .test_mla import _latent_cache, _reference

    rank, rope, dtype = 512, 64, torch.bfloat16
    rows, cache, table, lens = _latent_cache([8191, 1, 0, 3000, 64], rank + rope, 64, dtype, rng, extra_blocks=20)
    q = randn((5, s_q, hq, rank + rope), dtype, rng, DEV)
    out = torch.full((5, s_q, hq, rank), float("nan"), dtype=dtype, device=DEV)
    with ops.use_impl(mla="triton"):
        _, lse = ops.mla_decode(q, cache.to(DEV), table.to(DEV), lens.to(DEV), kv_lora_rank=rank,
                                softmax_scale=0.07, return_lse=True, out=out)
    ref, ref_lse = _reference(q, rows, rank, 0.07, True)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


def test_split_combine_under_pdl_matches_plain_launch(rng):
    """The split-KV combine launched by programmatic dependent launch (the sm90 default: it
    starts while the split kernel finishes and waits on griddepcontrol) gives the plain
    launch's bits, call after call with new queries (stale partials would show). The paged
    case is one long sequence (Hopper: 128-key tiles, FEW_LONG_SEQUENCES), as the op picks it."""
    from ascend_ext.backends.cuda import configs
    from ascend_ext.kernels.triton import mla_decode as triton_mla
    from ascend_ext.kernels.triton import paged_attention as triton_paged

    from .test_mla import _latent_cache

    hopper = torch.cuda.get_device_capability()[0] >= 9
    dtype, hq, hkv, d, n = torch.bfloat16, 32, 8, 128, 20000
    base = configs.paged_config(torch.device(DEV), d, dtype, batch_kv_heads=hkv, max_keys=n)
    assert bool(base.get("PDL")) == hopper
    keys, values = [randn((n, hkv, d), dtype, rng)], [randn((n, hkv, d), dtype, rng)]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 16, rng, device=DEV)
    rank, rope = 512, 64
    _, latent, latent_table, latent_lens = _latent_cache([8191, 3000], rank + rope, 64, dtype, rng)
    latent, latent_table, latent_lens = latent.to(DEV), latent_table.to(DEV), latent_lens.to(DEV)
    for _ in range(8):
        q = randn((1, hq, d), dtype, rng, DEV)
        q_mla = randn((2, 1, 16, rank + rope), dtype, rng, DEV)
        outs = []
        for pdl in (True, False):
            out = torch.full_like(q, float("nan"))
            triton_paged.paged_attention(q, k_cache, v_cache, table, lens, cu([1], DEV), 1, softmax_scale=d ** -0.5,
                                         window=(-1, 0), softcap=0.0, out=out, return_lse=False, max_seqlen_k=n,
                                         configs=configs, config=dict(base, PDL=pdl))
            out_mla = torch.full((2, 1, 16, rank), float("nan"), dtype=dtype, device=DEV)
            triton_mla.mla_decode(q_mla, latent, latent_table, latent_lens, kv_lora_rank=rank, softmax_scale=0.07,
                                  causal=True, out=out_mla, return_lse=False, configs=configs,
                                  config={"PDL": pdl})
            outs.append((out, out_mla))
        assert not outs[0][0].isnan().any() and not outs[0][1].isnan().any()
        assert torch.equal(outs[0][0], outs[1][0]), "paged decode: PDL combine differs from the plain launch"
        assert torch.equal(outs[0][1], outs[1][1]), "MLA decode: PDL combine differs from the plain launch"
    via_op = torch.full_like(q, float("nan"))
    with ops.use_impl(attention="triton"):
        ops.paged_attention(q, k_cache, v_cache, table, lens, cu([1], DEV), 1, out=via_op, max_seqlen_k=n)
    assert torch.equal(via_op, outs[0][0]), "the op did not pick the table's tiles"
    ref, _ = paged_f64(q, keys, values, [(n, 1)], d ** -0.5, device=DEV)
    assert_close(outs[0][0], ref, dtype)
