"""NPU adapters on CPU, through the torch_npu emulation and through torch_npu's real op
schemas and meta shape functions (tests/npu/real_ops.py, from the torch-npu wheel): each
adapter matches the reference op, and violates none of the operators' documented limits.
"""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.backends.npu import attention as npu_attention
from ascend_ext.backends.npu import constraints
from ascend_ext.backends.npu import mla as npu_mla
from ascend_ext.ops import TileMask

from . import emulation, real_ops
from ..ops.naive import cu, paged_cache, randn

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


@pytest.fixture(autouse=True, params=["emulation", "real_schema"])
def fake_torch_npu(request):
    """torch_npu for the adapters: the emulation called directly, or the same emulation behind
    the real schemas (argument binding) and the real meta functions (output shapes)."""
    module = real_ops.module() if request.param == "real_schema" else None
    with emulation.installed(module):
        yield request.param


def _ref_varlen(q, k, v, lens_q, lens_k, window, mask=None):
    causal = window[1] == 0
    with ops.use_impl(attention="reference"):
        return ops.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), causal=causal,
                                     window_size=window, mask=mask, return_lse=True)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (5, 0), (3, 2)])
@pytest.mark.parametrize("hq,hkv,dtype", [(4, 4, torch.float32), (8, 2, torch.bfloat16)])
def test_fusion_attention_adapter(window, hq, hkv, dtype, rng):
    lens_q, lens_k = [7, 1, 30], [7, 9, 30]
    q = randn((sum(lens_q), hq, 64), dtype, rng)
    k = randn((sum(lens_k), hkv, 64), dtype, rng)
    v = randn((sum(lens_k), hkv, 64), dtype, rng)
    out = torch.full_like(q, float("nan"))
    lse = npu_attention.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), 30, 30, softmax_scale=0.125,
                                          window=window, mask=None, softcap=0.0, out=out, return_lse=True)
    ref, ref_lse = _ref_varlen(q, k, v, lens_q, lens_k, window)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=1e-5)


def test_fusion_attention_rows_without_keys_are_refused(rng):
    """The op forbids fully masked rows in varlen calls: a causal sequence with more queries
    than keys has such rows, and the adapter says so instead of calling the op."""
    q = randn((9, 2, 32), torch.bfloat16, rng)
    k = v = randn((4, 2, 32), torch.bfloat16, rng)
    with pytest.raises(ValueError, match="fully masked query rows"):
        npu_attention.flash_attn_varlen(q, k, v, cu([9]), cu([4]), 9, 4, softmax_scale=0.2, window=(-1, 0),
                                        mask=None, softcap=0.0, out=torch.empty_like(q), return_lse=False)


@pytest.mark.parametrize("kind", ["causal", "window", "document", "dense", "dense_empty_rows"])
def test_tile_mask_conversion(kind, rng):
    s = 40
    empty = torch.rand(s, s, generator=rng) < 0.5
    empty[[0, 7, 39]] = False          # rows that see no key: the op forbids them, the adapter works around
    masks = {"causal": TileMask.causal(s, s, tile=(16, 16)),
             "window": TileMask.sliding_window(s, s, 6, 0, tile=(16, 16)),
             "document": TileMask.document([0, 9, 25, s], tile=(16, 16)),
             "dense": TileMask.from_dense(torch.rand(s, s, generator=rng) < 0.5, tile=(16, 16)),
             "dense_empty_rows": TileMask.from_dense(empty, tile=(16, 16))}
    tm = masks[kind]
    q, k, v = (randn((2 * s, 2, 32), torch.float32, rng) for _ in range(3))
    out = torch.empty_like(q)
    window = (-1, 0) if kind == "document" else (-1, -1)
    lse = npu_attention.flash_attn_varlen(q, k, v, cu([s, s]), cu([s, s]), s, s, softmax_scale=32 ** -0.5,
                                          window=window, mask=tm, softcap=0.0, out=out, return_lse=True)
    ref, ref_lse = _ref_varlen(q, k, v, [s, s], [s, s], window, tm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("window", [(-1, 0), (6, 0)])
@pytest.mark.parametrize("seqs", [[(200, 1), (33, 1), (1, 1)], [(300, 7), (17, 17)]])
@pytest.mark.parametrize("dtype,block_size", [(torch.bfloat16, 128), (torch.float16, 256)])
def test_infer_attention_paged_adapter(window, seqs, dtype, block_size, rng):
    hq, hkv, d = 8, 2, 64
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng)
    out = torch.full_like(q, float("nan"))
    lse = npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                        softmax_scale=0.125, window=window, softcap=0.0, out=out, return_lse=True)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                           softmax_scale=0.125, window_size=window, return_lse=True)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


@pytest.mark.parametrize("window", [(-1, 0), (-1, -1)])
def test_fusion_attention_adapter_sinks(window, rng):
    """npu_fusion_attention's float32 ``sink`` [N] (the wheel's documented example)."""
    lens_q, lens_k = [7, 1, 30], [7, 9, 30]
    q = randn((sum(lens_q), 8, 64), torch.bfloat16, rng)
    k, v = (randn((sum(lens_k), 2, 64), torch.bfloat16, rng) for _ in range(2))
    sinks = torch.randn(8, generator=rng) * 2
    out = torch.full_like(q, float("nan"))
    lse = npu_attention.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), 30, 30, softmax_scale=0.125,
                                          window=window, mask=None, softcap=0.0, out=out, return_lse=True,
                                          sinks=sinks)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), 30, 30, softmax_scale=0.125,
                                             causal=window[1] == 0, return_lse=True, sinks=sinks)
    torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


@pytest.mark.parametrize("window", [(-1, 0), (6, 0), (-1, -1)])
def test_infer_attention_paged_adapter_sinks(window, rng):
    """Sinks move the paged call to npu_fused_infer_attention_score_v2 (learnable_sink: bfloat16,
    TND); gpt-oss's bfloat16 sinks pass through exactly."""
    hq, hkv, d, dtype = 8, 2, 64, torch.bfloat16
    seqs = [(200, 1), (300, 7), (17, 17)]
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 128, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng)
    sinks = (torch.randn(hq, generator=rng) * 2).to(torch.bfloat16).float()
    out = torch.full_like(q, float("nan"))
    lse = npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                        softmax_scale=0.125, window=window, softcap=0.0, out=out, return_lse=True,
                                        sinks=sinks)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                           softmax_scale=0.125, window_size=window, causal=window[1] == 0,
                                           return_lse=True, sinks=sinks)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


def test_infer_attention_paged_more_queries_than_keys(rng):
    """Non-causal: every query sees all keys of its sequence (cascade's shared-prefix pass);
    causal rows that would see no key are refused by name (the op does not document them)."""
    hq, hkv, d, dtype = 4, 1, 64, torch.float16
    keys = [randn((5, hkv, d), dtype, rng), randn((130, hkv, d), dtype, rng)]
    k_cache, v_cache, table, lens = paged_cache(keys, keys, 128, rng)
    q = randn((12, hq, d), dtype, rng)
    out = torch.full_like(q, float("nan"))
    lse = npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu([9, 3]), 9, softmax_scale=0.125,
                                        window=(-1, -1), softcap=0.0, out=out, return_lse=True)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu([9, 3]), 9, softmax_scale=0.125,
                                           causal=False, return_lse=True)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="sequence 0 has 9 queries over 5 keys"):
        npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu([9, 3]), 9, softmax_scale=0.125,
                                      window=(-1, 0), softcap=0.0, out=out, return_lse=False)


def test_paged_sinks_refusals(rng):
    """learnable_sink's documented limits (value D <= 128) and sinks with an int8 cache: clear errors."""
    q = randn((2, 4, 256), torch.bfloat16, rng)
    keys = [randn((20, 1, 256), torch.bfloat16, rng)] * 2
    k_cache, v_cache, table, lens = paged_cache(keys, keys, 128, rng)
    with pytest.raises(ValueError, match="learnable_sink only with value head dims <= 128"):
        npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu([1, 1]), 1, softmax_scale=0.1,
                                      window=(-1, 0), softcap=0.0, out=torch.empty_like(q), return_lse=False,
                                      sinks=torch.zeros(4))
    from ascend_ext.ops.attention import kv_quant

    k8 = torch.zeros(2, 128, 1, 256, dtype=torch.int8)
    scales = kv_quant.normalize(k8, k8, torch.ones(1), torch.ones(1))
    with pytest.raises(NotImplementedError, match="attention sinks with an int8 KV cache"):
        npu_attention.paged_attention(q, k8, k8, table, lens, cu([1, 1]), 1, softmax_scale=0.1, window=(-1, 0),
                                      softcap=0.0, out=torch.empty_like(q), return_lse=False, kv_scales=scales,
                                      sinks=torch.zeros(4))


@pytest.mark.parametrize("s_q,heads", [(1, 16), (2, 4), (3, 130)])
def test_mla_adapter(s_q, heads, rng):
    """Latent 512 + rope 64 (the op's documented MLA shape); 4 and 130 heads are padded to the
    supported counts (4 -> 4, 130 -> 128 + 2 -> 128 + 2), block_size 128."""
    rank, rope, bs = 512, 64, 128
    lengths = [5, 140, 17]
    latents = [randn((n, 1, rank + rope), torch.bfloat16, rng) for n in lengths]
    cache4, _, table, lens = paged_cache(latents, latents, bs, rng)
    cache = cache4[:, :, 0, :]
    q = randn((len(lengths), s_q, heads, rank + rope), torch.bfloat16, rng)
    out = torch.full((len(lengths), s_q, heads, rank), float("nan"), dtype=torch.bfloat16)
    lse = npu_mla.mla_decode(q, cache, table, lens, kv_lora_rank=rank, softmax_scale=0.04, causal=True, out=out,
                             return_lse=True)
    with ops.use_impl(mla="reference"):
        ref, ref_lse = ops.mla_decode(q, cache, table, lens, kv_lora_rank=rank, softmax_scale=0.04,
                                      return_lse=True)
    torch.testing.assert_close(out, ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


def test_mla_head_groups():
    assert constraints.mla_head_groups(4) == [(0, 4, 4)]
    assert constraints.mla_head_groups(20) == [(0, 20, 32)]
    assert constraints.mla_head_groups(130) == [(0, 128, 128), (128, 2, 2)]


def test_documented_limits_are_clear_errors(rng):
    """fp32 caches, block size 16, a non-512/64 MLA, more than 16 MLA query tokens, fp32 or
    3-rank npu_mm_all_reduce_base: ValueErrors naming the limit, before any op call."""
    q = randn((3, 4, 64), torch.float32, rng)
    keys = [randn((20, 2, 64), torch.float32, rng)]
    k_cache, v_cache, table, lens = paged_cache(keys, keys, 128, rng)
    with pytest.raises(ValueError, match="query in float16, bfloat16 only"):
        npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu([3]), 3, softmax_scale=0.1,
                                      window=(-1, 0), softcap=0.0, out=torch.empty_like(q), return_lse=False)
    keys = [randn((20, 2, 64), torch.bfloat16, rng)]
    k_cache, v_cache, table, lens = paged_cache(keys, keys, 16, rng)
    with pytest.raises(ValueError, match="block_size in \\(128, 256, 384, 512\\)"):
        npu_attention.paged_attention(q.bfloat16(), k_cache, v_cache, table, lens, cu([3]), 3, softmax_scale=0.1,
                                      window=(-1, 0), softcap=0.0, out=torch.empty_like(q.bfloat16()),
                                      return_lse=False)
    cache = randn((2, 128, 80), torch.bfloat16, rng)
    with pytest.raises(ValueError, match="kv_lora_rank 512 and rope dim 64"):
        npu_mla.mla_decode(randn((1, 1, 4, 80), torch.bfloat16, rng), cache, table, lens, kv_lora_rank=64,
                           softmax_scale=0.1, causal=True, out=torch.empty(1, 1, 4, 64), return_lse=False)
    cache = randn((2, 128, 576), torch.bfloat16, rng)
    with pytest.raises(ValueError, match="1-16 query tokens"):
        npu_mla.mla_decode(randn((1, 17, 4, 576), torch.bfloat16, rng), cache, table, lens, kv_lora_rank=512,
                           softmax_scale=0.1, causal=True, out=torch.empty(1, 17, 4, 512), return_lse=False)
    x, w = randn((4, 8), torch.float32, rng), randn((6, 8), torch.float32, rng)
    with pytest.raises(ValueError, match="x in float16, bfloat16 only"):
        constraints.check_mm_allreduce(x, w, 2)
    with pytest.raises(ValueError, match="runs on \\(1, 2, 4, 8\\) ranks only"):
        constraints.check_mm_allreduce(x.half(), w.half(), 3)
    with pytest.raises(ValueError, match="block size in \\(16, 128\\)"):
        constraints.check_block_size(64, use_mla=True)
    constraints.check_block_size(constraints.NPU_BLOCK_SIZE, use_mla=True)
    constraints.check_block_size(constraints.NPU_BLOCK_SIZE, use_mla=False)


def test_mla_adapter_rejects_fp8_cache(rng):
    """npu_fused_infer_attention_score takes the latent cache in the query dtype: an FP8
    cache is refused with a clear NotImplementedError, never silently misread."""
    rank, rope = 64, 16
    cache = randn((3, 16, rank + rope), torch.float32, rng).to(torch.float8_e4m3fn)
    q = randn((1, 1, 4, rank + rope), torch.bfloat16, rng)
    with pytest.raises(NotImplementedError, match="'npu' implementation of mla_decode does not support FP8"):
        npu_mla.mla_decode(q, cache, torch.tensor([[0]], dtype=torch.int32), torch.tensor([5], dtype=torch.int32),
                           kv_lora_rank=rank, softmax_scale=0.1, causal=True, out=torch.empty(1, 1, 4, rank),
                           return_lse=False, kv_scale=0.5)


def test_wrong_arguments_make_the_emulation_disagree(rng):
    """The emulation enforces the documented rules, so adapter mistakes show up."""
    q = randn((6, 2, 16), torch.float32, rng)
    k = v = randn((10, 2, 16), torch.float32, rng)
    with pytest.raises(RuntimeError, match="must be float16 or bfloat16"):
        emulation.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="TND", actual_seq_lengths=[6],
                                                  actual_seq_lengths_kv=[10])
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    mask = npu_attention.compressed_causal_mask("cpu")
    right_down = emulation.npu_fusion_attention(q, k, v, 2, "TND", atten_mask=mask, actual_seq_qlen=[6],
                                                actual_seq_kvlen=[10], sparse_mode=3)[0]
    left_up = emulation.npu_fusion_attention(q, k, v, 2, "TND", atten_mask=mask, actual_seq_qlen=[6],
                                             actual_seq_kvlen=[10], sparse_mode=2)[0]
    assert (right_down - left_up).abs().max() > 1e-3, "sparse_mode 2 vs 3 must differ when Sq != Skv"
    with pytest.raises(RuntimeError, match="requires the compressed 2048x2048"):
        emulation.npu_fusion_attention(q, k, v, 2, "TND", actual_seq_qlen=[6], actual_seq_kvlen=[10], sparse_mode=3)
    with pytest.raises(RuntimeError, match="input_layout 'BSH'"):
        emulation.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="BSH")
    with pytest.raises(RuntimeError, match="must be cumulative"):
        emulation.npu_fusion_attention(q, k, v, 2, "TND", actual_seq_qlen=[6, 3], actual_seq_kvlen=[10, 10])
    with pytest.raises(RuntimeError, match="upper triangle"):
        emulation.npu_fusion_attention(q, k, v, 2, "TND", atten_mask=~mask, actual_seq_qlen=[6],
                                       actual_seq_kvlen=[10], sparse_mode=3)


@pytest.mark.parametrize("seqs", [[(200, 1), (33, 1), (1, 1), (129, 1)], [(300, 7), (17, 17), (5, 1)]])
@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_infer_attention_int8_cache(seqs, offsets, dtype, rng):
    """vllm-ascend's C8 scheme: decode batches go to the op with per-channel key/value antiquant
    parameters; chunked prefill attends over the dequantised blocks it reads."""
    hq, hkv, d, block_size = 8, 2, 64, 128
    keys = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    fk, fv, table, lens = paged_cache(keys, values, block_size, rng)
    scales = {n: torch.rand(hkv * d, generator=rng) * 0.03 + 0.01 for n in ("k_scale", "v_scale")}
    if offsets:
        scales.update({n: torch.randint(-5, 6, (hkv * d,), generator=rng).float() for n in ("k_offset", "v_offset")})
    k_cache, v_cache = torch.zeros_like(fk, dtype=torch.int8), torch.zeros_like(fv, dtype=torch.int8)
    flat = (table.long() * block_size)[:, :, None] + torch.arange(block_size)
    slots = torch.cat([flat[b].flatten()[:n] for b, (n, _) in enumerate(seqs)])
    with ops.use_impl(attention="reference"):
        ops.reshape_and_cache(torch.cat(keys), torch.cat(values), k_cache, v_cache, slots, **scales)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng)
    out = torch.full_like(q, float("nan"))
    from ascend_ext.ops.attention import kv_quant
    kv_scales = kv_quant.normalize(k_cache, v_cache, **{n: scales.get(n) for n in
                                                        ("k_scale", "v_scale", "k_offset", "v_offset")})
    lse = npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                        softmax_scale=0.125, window=(-1, 0), softcap=0.0, out=out, return_lse=True,
                                        kv_scales=kv_scales)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                           softmax_scale=0.125, return_lse=True, **scales)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


def test_int8_cache_limits_are_clear_errors(rng):
    q = randn((2, 8, 48), torch.bfloat16, rng)
    cache = torch.zeros(4, 128, 2, 48, dtype=torch.int8)
    from ascend_ext.ops.attention import kv_quant
    scales = kv_quant.normalize(cache, cache, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="multiple of 32"):
        npu_attention.paged_attention(q, cache, cache, torch.zeros(2, 1, dtype=torch.int32),
                                      torch.tensor([3, 4], dtype=torch.int32), cu([1, 1]), 1, softmax_scale=0.1,
                                      window=(-1, 0), softcap=0.0, out=torch.empty_like(q), return_lse=False,
                                      kv_scales=scales)
