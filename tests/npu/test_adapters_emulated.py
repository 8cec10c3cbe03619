"""NPU adapters against the torch_npu emulation (CPU): each matches the reference op.

These tests exercise the adapter code paths (argument mapping, layouts, mask
conversion, output conversion) without an NPU; tests marked ``npu`` below repeat the
parity on real hardware when torch_npu and an NPU are present.
"""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.npu import attention as npu_attention
from ascend_ext.npu import emulation
from ascend_ext.npu import mla as npu_mla
from ascend_ext.ops import TileMask

from ..ops.naive import cu, paged_cache, randn


@pytest.fixture(autouse=True)
def fake_torch_npu():
    with emulation.installed():
        yield


def _ref_varlen(q, k, v, lens_q, lens_k, window, mask=None):
    causal = window[1] == 0
    with ops.use_impl(attention="reference"):
        return ops.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), causal=causal,
                                     window_size=window, mask=mask, return_lse=True)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (5, 0), (3, 2)])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_fusion_attention_adapter(window, hq, hkv, rng):
    lens_q, lens_k = [7, 1, 30], [7, 9, 30]
    q = randn((sum(lens_q), hq, 64), torch.float32, rng)
    k = randn((sum(lens_k), hkv, 64), torch.float32, rng)
    v = randn((sum(lens_k), hkv, 64), torch.float32, rng)
    out = torch.empty_like(q)
    lse = npu_attention.flash_attn_varlen(q, k, v, cu(lens_q), cu(lens_k), 30, 30, softmax_scale=0.125,
                                          window=window, mask=None, softcap=0.0, out=out, return_lse=True)
    ref, ref_lse = _ref_varlen(q, k, v, lens_q, lens_k, window)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "window", "document", "dense"])
def test_tile_mask_conversion(kind, rng):
    s = 40
    masks = {"causal": TileMask.causal(s, s, tile=(16, 16)),
             "window": TileMask.sliding_window(s, s, 6, 0, tile=(16, 16)),
             "document": TileMask.document([0, 9, 25, s], tile=(16, 16)),
             "dense": TileMask.from_dense(torch.rand(s, s, generator=rng) < 0.5, tile=(16, 16))}
    tm = masks[kind]
    q, k, v = (randn((2 * s, 2, 32), torch.float32, rng) for _ in range(3))
    out = torch.empty_like(q)
    window = (-1, 0) if kind == "document" else (-1, -1)
    npu_attention.flash_attn_varlen(q, k, v, cu([s, s]), cu([s, s]), s, s, softmax_scale=32 ** -0.5,
                                    window=window, mask=tm, softcap=0.0, out=out, return_lse=False)
    ref, _ = _ref_varlen(q, k, v, [s, s], [s, s], window, tm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(-1, 0), (6, 0)])
@pytest.mark.parametrize("seqs", [[(20, 1), (33, 1), (1, 1)], [(40, 7), (17, 17)]])
def test_infer_attention_paged_adapter(window, seqs, rng):
    hq, hkv, d, bs = 8, 2, 64, 16
    keys = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, bs, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), torch.float32, rng)
    out = torch.empty_like(q)
    lse = npu_attention.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                        softmax_scale=0.125, window=window, softcap=0.0, out=out, return_lse=True)
    with ops.use_impl(attention="reference"):
        ref, ref_lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                           softmax_scale=0.125, window_size=window, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("s_q", [1, 2])
def test_mla_adapter(s_q, rng):
    rank, rope, hq, bs = 64, 16, 4, 16
    lengths = [5, 40, 17]
    latents = [randn((n, 1, rank + rope), torch.float32, rng) for n in lengths]
    cache4, _, table, lens = paged_cache(latents, latents, bs, rng)
    cache = cache4[:, :, 0, :]
    q = randn((len(lengths), s_q, hq, rank + rope), torch.float32, rng)
    out = torch.empty(len(lengths), s_q, hq, rank)
    lse = npu_mla.mla_decode(q, cache, table, lens, kv_lora_rank=rank, softmax_scale=0.1, causal=True, out=out,
                             return_lse=True)
    with ops.use_impl(mla="reference"):
        ref, ref_lse = ops.mla_decode(q, cache, table, lens, kv_lora_rank=rank, softmax_scale=0.1, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


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
