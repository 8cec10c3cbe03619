"""Tiling-AllReduce equals the unpipelined row-parallel linear + all-reduce (2 and 4 gloo
ranks), for linear layers and for the attention -> o_proj -> all-reduce pipeline."""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.ops.comm import attention_o_proj_allreduce, choose_tile_tokens

from .harness import run_ranks, values
from .tp_cases import attention_worker, linear_worker

pytestmark = pytest.mark.distributed

LINEAR_CASES = [dict(tokens=t, k_local=24, n=40, tile=tile, bias=bias, dtype=dtype, seed=i)
                for i, (t, tile, bias, dtype) in enumerate([
                    (1, None, True, "float32"), (7, 3, False, "float32"), (128, 64, True, "float32"),
                    (128, 100, False, "bfloat16"), (1000, None, True, "float32"), (1000, 7, True, "float32"),
                    (1000, 5000, False, "float32"), (1000, 96, True, "bfloat16"), (600, None, False, "float32")])]
ATTENTION_CASES = [
    dict(seqlens=[30, 1, 45], causal=True, tile=16, seed=1),
    dict(seqlens=[30, 1, 45], causal=False, tile=7, seed=2),
    dict(seqlens=[64, 17], causal=True, tile=100, seed=3),
    dict(seqlens=[50, 40], causal=True, window=(9, 0), tile=13, seed=4),
]


@pytest.mark.parametrize("world", [2, 4])
def test_pipelined_equals_unpipelined(world):
    results = run_ranks(linear_worker, world, LINEAR_CASES, timeout_s=180)
    for rank_errors in values(results):
        for case, err in zip(LINEAR_CASES, rank_errors):
            bound = 5e-4 if case["dtype"] == "float32" else 0.15
            assert err <= bound, (case, err)
    results = run_ranks(attention_worker, world, ATTENTION_CASES, timeout_s=180)
    for rank_errors in values(results):
        for case, err in zip(ATTENTION_CASES, rank_errors):
            assert err <= 1e-4, (case, err)


def test_group_of_one_and_no_distributed():
    x, w, b = torch.randn(300, 16), torch.randn(8, 16), torch.randn(8)
    torch.testing.assert_close(ops.tiled_linear_allreduce(x, w, b, tile_tokens=64), x @ w.t() + b)
    q = k = v = torch.randn(20, 2, 8)
    cu = torch.tensor([0, 20], dtype=torch.int32)
    out = attention_o_proj_allreduce(q, k, v, cu, cu, 20, 20, torch.eye(16), tile_tokens=6)
    torch.testing.assert_close(out, ops.flash_attn_varlen(q, k, v, cu, cu, 20, 20, causal=True).reshape(20, 16))


def test_tile_rule():
    assert choose_tile_tokens(1) == 1 and choose_tile_tokens(511) == 511
    assert choose_tile_tokens(600) == 320           # two tiles of >= 256 rows
    assert choose_tile_tokens(1024) == 256          # four tiles
    assert choose_tile_tokens(8192) == 2048         # at most four tiles
    assert choose_tile_tokens(1000) % 64 == 0


def test_bad_input():
    with pytest.raises(ValueError, match="weight.shape\\[1\\] \\(15\\) must equal the input width"):
        ops.tiled_linear_allreduce(torch.randn(4, 16), torch.randn(8, 15))
    with pytest.raises(ValueError, match="tile_tokens must be > 0"):
        ops.tiled_linear_allreduce(torch.randn(4, 16), torch.randn(8, 16), tile_tokens=0)
    with pytest.raises(ValueError, match="bias.shape\\[0\\]"):
        ops.tiled_linear_allreduce(torch.randn(4, 16), torch.randn(8, 16), torch.randn(7))
    with pytest.raises(TypeError, match="weight must have the dtype of x"):
        ops.tiled_linear_allreduce(torch.randn(4, 16), torch.randn(8, 16).half())
    with pytest.raises(ValueError, match="supports causal attention"):
        q = torch.randn(4, 2, 8)
        cu = torch.tensor([0, 4], dtype=torch.int32)
        attention_o_proj_allreduce(q, q, q, cu, cu, 4, 4, torch.randn(8, 16), causal=False, window_size=(2, 2))
