"""Bad input gets a ValueError/TypeError that names the argument."""

import pytest
import torch

from ascend_ext import ops

from .naive import cu


def _varlen(**over):
    args = dict(q=torch.randn(6, 4, 64), k=torch.randn(8, 2, 64), v=torch.randn(8, 2, 64),
                cu_seqlens_q=cu([2, 4]), cu_seqlens_k=cu([3, 5]), max_seqlen_q=4, max_seqlen_k=5)
    kw = {}
    for name, value in over.items():
        (args if name in args else kw)[name] = value
    return lambda: ops.flash_attn_varlen(*args.values(), **kw)


VARLEN_BAD = [
    ("q rank", _varlen(q=torch.randn(6, 256)), ValueError, "q must have 3 dimensions"),
    ("q not tensor", _varlen(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    ("q int", _varlen(q=torch.ones(6, 4, 64, dtype=torch.int32)), TypeError, "q must have dtype"),
    ("k dtype", _varlen(k=torch.randn(8, 2, 64, dtype=torch.float16)), TypeError, "k must have the dtype of q"),
    ("head dim", _varlen(k=torch.randn(8, 2, 32)), ValueError, "k.shape[2]"),
    ("v tokens", _varlen(v=torch.randn(7, 2, 64)), ValueError, "v.shape[0]"),
    ("gqa", _varlen(k=torch.randn(8, 3, 64), v=torch.randn(8, 3, 64)), ValueError, "multiple of the head count of k"),
    ("cu dtype", _varlen(cu_seqlens_q=cu([2, 4]).long()), TypeError, "cu_seqlens_q must have dtype"),
    ("cu not increasing", _varlen(cu_seqlens_q=torch.tensor([0, 4, 2, 6], dtype=torch.int32),
                                  cu_seqlens_k=cu([3, 2, 3])), ValueError, "cu_seqlens_q must be non-decreasing"),
    ("cu first", _varlen(cu_seqlens_q=torch.tensor([1, 2, 6], dtype=torch.int32)), ValueError, "cu_seqlens_q[0]"),
    ("cu total", _varlen(cu_seqlens_k=cu([3, 4])), ValueError, "cu_seqlens_k[-1]"),
    ("batch mismatch", _varlen(cu_seqlens_k=cu([3, 4, 1])), ValueError, "cu_seqlens_k must have shape [B+1]"),
    ("max_seqlen small", _varlen(max_seqlen_q=3), ValueError, "max_seqlen_q (3)"),
    ("window", _varlen(window_size=(-2, 0)), ValueError, "window_size left"),
    ("window type", _varlen(window_size=5), TypeError, "window_size must be a pair"),
    ("scale type", _varlen(softmax_scale=torch.tensor(0.1)), TypeError, "softmax_scale"),
    ("out shape", _varlen(out=torch.empty(6, 4, 32)), ValueError, "out must have shape"),
    ("mask type", _varlen(mask=torch.ones(4, 5, dtype=torch.bool)), TypeError, "mask must be a TileMask"),
    ("mask shape", _varlen(mask=ops.TileMask.causal(4, 4)), ValueError, "mask is 4x4"),
    ("causal type", _varlen(causal=1), TypeError, "causal must be a bool"),
]


@pytest.mark.parametrize("call,exc,message", [pytest.param(*c[1:], id=c[0]) for c in VARLEN_BAD])
def test_flash_attn_varlen_bad_input(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def _paged(**over):
    args = dict(q=torch.randn(3, 4, 64), k_cache=torch.randn(6, 16, 2, 64), v_cache=torch.randn(6, 16, 2, 64),
                block_table=torch.tensor([[0, 1], [2, -1]], dtype=torch.int32),
                seq_lens=torch.tensor([20, 5], dtype=torch.int32), cu_seqlens_q=cu([2, 1]), max_seqlen_q=2)
    kw = {}
    for name, value in over.items():
        (args if name in args else kw)[name] = value
    return lambda: ops.paged_attention(*args.values(), **kw)


PAGED_BAD = [
    ("cache rank", _paged(k_cache=torch.randn(6, 16, 128)), ValueError, "k_cache must have 4 dimensions"),
    ("cache dtype", _paged(v_cache=torch.randn(6, 16, 2, 64).half()), TypeError, "v_cache must have the dtype of q"),
    ("cache blocks", _paged(v_cache=torch.randn(5, 16, 2, 64)), ValueError, "v_cache.shape[0]"),
    ("cache head dim", _paged(k_cache=torch.randn(6, 16, 2, 32)), ValueError, "k_cache.shape[3]"),
    ("gqa", _paged(k_cache=torch.randn(6, 16, 3, 64), v_cache=torch.randn(6, 16, 3, 64)), ValueError, "head count"),
    ("table dtype", _paged(block_table=torch.tensor([[0, 1], [2, 3]])), TypeError, "block_table must have dtype"),
    ("table range", _paged(block_table=torch.tensor([[0, 9], [2, -1]], dtype=torch.int32)), ValueError,
     "block_table[0, 1] = 9 is out of range"),
    ("table negative", _paged(block_table=torch.tensor([[0, -1], [2, -1]], dtype=torch.int32)), ValueError,
     "block_table[0, 1] = -1"),
    ("table too narrow", _paged(seq_lens=torch.tensor([40, 5], dtype=torch.int32)), ValueError, "block_table has 2 columns"),
    ("seq_lens batch", _paged(seq_lens=torch.tensor([20], dtype=torch.int32)), ValueError, "seq_lens.shape[0]"),
    ("seq_lens negative", _paged(seq_lens=torch.tensor([20, -5], dtype=torch.int32), cu_seqlens_q=cu([2, 0]),
                                 q=torch.randn(2, 4, 64)), ValueError, "seq_lens must be >= 0"),
    ("max_seqlen_k", _paged(max_seqlen_k=10), ValueError, "max_seqlen_k (10)"),
    ("strided head dim", _paged(k_cache=torch.randn(6, 16, 2, 128)[..., ::2]), ValueError, "contiguous in its last"),
]


@pytest.mark.parametrize("call,exc,message", [pytest.param(*c[1:], id=c[0]) for c in PAGED_BAD])
def test_paged_attention_bad_input(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


VALUE_RULES = {"table range", "table negative", "table too narrow", "seq_lens negative",
               "max_seqlen_k"}


@pytest.mark.parametrize("call,exc,message", [pytest.param(*c[1:], id=c[0]) for c in PAGED_BAD
                                              if c[0] not in VALUE_RULES])
def test_paged_attention_bad_input_trusted(call, exc, message):
    """The one-expression fast path (trusted inputs, the decode hot path) rejects the same
    metadata and the detailed checks give the same message."""
    with ops.trusted_inputs(), pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_reshape_and_cache_bad_input():
    k_cache = torch.zeros(4, 16, 2, 64)
    key = torch.randn(5, 2, 64)
    with pytest.raises(ValueError, match="past the cache capacity"):
        ops.reshape_and_cache(key, key, k_cache, k_cache.clone(), torch.tensor([0, 1, 2, 3, 64]))
    with pytest.raises(ValueError, match="slot_mapping has 6 entries"):
        ops.reshape_and_cache(key, key, k_cache, k_cache.clone(), torch.arange(6))
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        ops.reshape_and_cache(key, key, k_cache, k_cache.clone(), torch.arange(5).float())
    with pytest.raises(ValueError, match="key.shape\\[1\\]"):
        ops.reshape_and_cache(torch.randn(5, 3, 64), torch.randn(5, 3, 64), k_cache, k_cache.clone(), torch.arange(5))


def test_merge_bad_input():
    out = torch.randn(5, 4, 8)
    lse = torch.randn(4, 5)
    with pytest.raises(ValueError, match="lse_b must have shape"):
        ops.merge_attn_states(out, lse, out, lse.T.contiguous())
    with pytest.raises(TypeError, match="lse_a must have dtype"):
        ops.merge_attn_states(out, lse.double(), out, lse)
    with pytest.raises(TypeError, match="out_b must have the dtype"):
        ops.merge_attn_states(out, lse, out.half(), lse)


def test_trusted_inputs_skips_value_checks_only():
    bad = _paged(block_table=torch.tensor([[0, 99], [2, -1]], dtype=torch.int32))
    with pytest.raises(ValueError):
        bad()
    with ops.trusted_inputs(), pytest.raises(TypeError):   # metadata checks still run
        ops.paged_attention(torch.randn(3, 4, 64), torch.randn(6, 16, 2, 64).half(), torch.randn(6, 16, 2, 64),
                            torch.zeros(2, 2, dtype=torch.int32), torch.tensor([20, 5], dtype=torch.int32),
                            cu([2, 1]), 2)
