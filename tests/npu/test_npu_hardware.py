"""The NPU adapters on a real Ascend NPU vs the reference ops (skipped without one)."""

import pytest
import torch

from ascend_ext import ops

from ..ops.naive import cu, paged_cache, randn

pytestmark = pytest.mark.npu
DEV = "npu"


@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (True, (64, 0))])
def test_flash_attn_varlen_on_npu(causal, window, rng):
    lens = [300, 1, 1000]
    q, k, v = (randn((sum(lens), h, 128), torch.bfloat16, rng) for h in (16, 4, 4))
    got = ops.flash_attn_varlen(q.to(DEV), k.to(DEV), v.to(DEV), cu(lens, DEV), cu(lens, DEV), 1000, 1000,
                                causal=causal, window_size=window).cpu()
    with ops.use_impl(attention="reference"):
        ref = ops.flash_attn_varlen(q, k, v, cu(lens), cu(lens), 1000, 1000, causal=causal, window_size=window)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_paged_attention_on_npu(rng):
    seqs = [(2000, 1), (17, 1), (600, 33)]
    keys = [randn((n, 4, 128), torch.bfloat16, rng) for n, _ in seqs]
    values = [randn((n, 4, 128), torch.bfloat16, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, 128, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), 16, 128), torch.bfloat16, rng)
    got = ops.paged_attention(q.to(DEV), k_cache.to(DEV), v_cache.to(DEV), table.to(DEV), lens.to(DEV),
                              cu(q_lens, DEV), 33).cpu()
    with ops.use_impl(attention="reference"):
        ref = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), 33)
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)
