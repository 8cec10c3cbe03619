"""Native C++ CPU kernels: the paths the shared parity matrix does not reach
(KV splits of long contexts, thread counts, strided queries)."""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.backends.cpu.native import native_available

from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, paged_cache, paged_f64, randn

pytestmark = pytest.mark.skipif(native_available("cpu") is not None,
                                reason=str(native_available("cpu")))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _check_native_paged(seqs, hq, hkv, d, dtype, block_size, rng, window=(-1, -1)):
    """Native paged attention of a packed batch ((keys, new queries) per sequence) against
    the float64 reference, lse included."""
    keys = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), dtype, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, block_size, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng)
    with ops.use_impl(attention="native"):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                       window_size=window, return_lse=True)
    ref, ref_lse = paged_f64(q, keys, values, seqs, d ** -0.5, True, window)
    assert_close(got, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("num_threads", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [(-1, -1), (700, 0)])
def test_paged_long_context_kv_splits(num_threads, dtype, window, threads, rng):
    """Few work items x long context: the kernel cuts the keys into splits merged by lse."""
    threads(num_threads)
    # (keys, new queries): decode and a 2-token chunk
    _check_native_paged([(3001, 1), (1537, 2)], 4, 1, 64, dtype, 16, rng, window)


@pytest.mark.parametrize("num_threads", [1, 3])
def test_varlen_long_and_strided_query(num_threads, threads, rng):
    threads(num_threads)
    lq, lk, hq, hkv, d = 20, 2100, 8, 2, 96   # 4 work items < 2 x 3 threads: KV splits
    q_full = randn((lq, hq, 2 * d), torch.float32, rng)
    q = q_full[..., :d]                      # strided query view
    k = randn((lk, hkv, d), torch.float32, rng)
    v = randn((lk, hkv, d), torch.float32, rng)
    with ops.use_impl(attention="native"):
        got, lse = ops.flash_attn_varlen(q, k, v, cu([lq]), cu([lk]), lq, lk, causal=True,
                                         return_lse=True)
    ref, ref_lse = attention_f64(q, k, v, d ** -0.5, allowed(lq, lk, True, (-1, -1)))
    assert_close(got, ref, torch.float32)
    assert_lse_close(lse, ref_lse, torch.float32)


def test_mask_is_refused_by_name(rng):
    """The native kernels declare no TileMask support: a masked request raises (no silent
    fallback), naming the implementations that can serve it."""
    q = randn((40, 2, 32), torch.float32, rng)
    dense = torch.rand(40, 40, generator=rng) > 0.4
    mask = ops.TileMask.from_dense(dense, tile=(16, 16))
    with ops.use_impl(attention="native"), pytest.raises(NotImplementedError, match="TileMask.*'reference'"):
        ops.flash_attn_varlen(q, q, q, cu([40]), cu([40]), 40, 40, mask=mask)


def test_raw_op_rejects_inconsistent_tensors():
    """Direct torch.ops calls (bypassing the Python validation) fail cleanly, never read
    out of bounds."""
    q = torch.randn(2, 4, 64)
    cache = torch.randn(3, 16, 2, 32)            # head dim 32 != 64
    table = torch.zeros(1, 1, dtype=torch.int32)
    lens = torch.tensor([3], dtype=torch.int32)
    cu_q = torch.tensor([0, 2], dtype=torch.int32)
    out = torch.empty(2, 4, 64)
    with pytest.raises(RuntimeError, match="head dim"):
        torch.ops.ascend_ext_native.paged_attention(q, cache, cache, table, lens, cu_q, 0.1, -1, 0, 0.0, out, None)
    good = torch.randn(3, 16, 2, 64)
    with pytest.raises(RuntimeError, match="disagree on B"):
        torch.ops.ascend_ext_native.paged_attention(q, good, good, table, lens, torch.tensor([0, 1, 2], dtype=torch.int32),
                                             0.1, -1, 0, 0.0, out, None)
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.ascend_ext_native.paged_attention(q, good.half(), good.half(), table, lens, cu_q, 0.1, -1, 0, 0.0, out,
                                             None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(8, 2), (6, 3), (9, 3), (7, 1)])
def test_paged_streaming_path(dtype, hq, hkv, monkeypatch, rng):
    """The path taken when a call's K/V outgrow the last-level cache (64-key blocks, the next
    block prefetched: spread over the work for bf16 with GQA groups of 2+ rows (4, 2, 3, 4 + 3 here), in
    bursts otherwise), forced on small inputs: prefetches are hints, results must not change. Odd
    lengths (block tails, a 1-key sequence), permuted block table, chunked queries."""
    monkeypatch.setenv("ASCEND_EXT_NATIVE_STREAM_BYTES", "0")
    _check_native_paged([(1001, 1), (129, 2), (1, 1), (64, 1), (257, 5)], hq, hkv, 128, dtype, 16, rng)


def test_paged_context_larger_than_the_cache_hierarchy(rng):
    """~51 MiB of bf16 K/V, GQA 4: past a typical last-level cache, where the kernel streams
    with software prefetch on its own (no override)."""
    _check_native_paged([(100_003, 1), (300, 3)], 4, 1, 128, torch.bfloat16, 64, rng)
