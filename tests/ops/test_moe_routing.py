"""moe_route vs an independent per-token loop reference; deterministic ties; bad input."""

import math

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE


def _route_loop(logits, k, scoring, renormalize, groups, topk_group, bias, scale):
    """Spelled out per token in float64: scores, group filter, selection, weights."""
    out_w, out_i = [], []
    for row in logits.double():
        scores = torch.softmax(row, 0) if scoring == "softmax" else torch.sigmoid(row)
        sel = scores + (bias.double() if bias is not None else 0)
        allowed = list(range(len(row)))
        if groups:
            size = len(row) // groups
            group_scores = []
            for g in range(groups):
                vals = sorted(sel[g * size:(g + 1) * size].tolist(), reverse=True)
                group_scores.append(vals[0] + vals[1] if bias is not None else vals[0])
            best = sorted(range(groups), key=lambda g: (-group_scores[g], g))[:topk_group]
            allowed = [e for e in allowed if e // size in best]
        chosen = sorted(allowed, key=lambda e: (-float(sel[e]), e))[:k]
        w = scores[chosen]
        if renormalize:
            w = w / w.sum()
        out_w.append((w * scale).tolist())
        out_i.append(chosen)
    return torch.tensor(out_w), torch.tensor(out_i, dtype=torch.int32)


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_route_matches_loop_reference(scoring, renormalize, grouped, with_bias, rng):
    tokens, experts, k = 37, 32, 6
    logits = torch.randn(tokens, experts, generator=rng)
    bias = torch.randn(experts, generator=rng) * 0.1 if with_bias else None
    groups, topk_group = (8, 3) if grouped else (None, None)
    w, ids = ops.moe_route(logits.to(DEVICE), k, scoring=scoring, renormalize=renormalize,
                           num_expert_group=groups, topk_group=topk_group,
                           correction_bias=None if bias is None else bias.to(DEVICE), routed_scaling_factor=2.5)
    ref_w, ref_ids = _route_loop(logits, k, scoring, renormalize, groups, topk_group, bias, 2.5)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(w.cpu().double(), ref_w.double(), atol=1e-6, rtol=1e-5)


def test_ties_go_to_the_lower_expert_index():
    logits = torch.zeros(3, 8)
    logits[1, [2, 5, 6]] = 1.0          # three-way tie for top-2
    w, ids = ops.moe_route(logits, 2)
    assert ids.tolist() == [[0, 1], [2, 5], [0, 1]]
    _, gids = ops.moe_route(torch.zeros(2, 8), 2, num_expert_group=4, topk_group=2)
    assert gids.tolist() == [[0, 1], [0, 1]]


def test_route_bad_input():
    with pytest.raises(ValueError, match="top_k \\(9\\) must be <= the number of experts \\(8\\)"):
        ops.moe_route(torch.randn(2, 8), 9)
    with pytest.raises(ValueError, match="num_expert_group \\(3\\) must divide"):
        ops.moe_route(torch.randn(2, 8), 2, num_expert_group=3, topk_group=1)
    with pytest.raises(ValueError, match="exceeds the experts in the kept groups"):
        ops.moe_route(torch.randn(2, 8), 5, num_expert_group=4, topk_group=2)
    with pytest.raises(ValueError, match="scoring must be"):
        ops.moe_route(torch.randn(2, 8), 2, scoring="relu")
    with pytest.raises(ValueError, match="correction_bias.shape\\[0\\]"):
        ops.moe_route(torch.randn(2, 8), 2, correction_bias=torch.zeros(7))
    with pytest.raises(ValueError, match="given together"):
        ops.moe_route(torch.randn(2, 8), 2, num_expert_group=4)
    assert not math.isnan(float(ops.moe_route(torch.randn(0, 8), 2)[0].sum()))


def test_moe_experts_bad_input():
    w13, w2 = torch.randn(2, 16, 8), torch.randn(2, 8, 8)
    offsets, counts = torch.tensor([0, 2, 4]), torch.tensor([2, 2])
    with pytest.raises(ValueError, match="w13.shape\\[1\\]"):
        ops.moe_experts(torch.randn(4, 8), torch.randn(2, 12, 8), w2, offsets, counts)
    with pytest.raises(TypeError, match="int8 x needs scales"):
        ops.moe_experts(torch.zeros(4, 8, dtype=torch.int8), w13, w2, offsets, counts)
    with pytest.raises(ValueError, match="expert groups exceed the rows"):
        ops.moe_experts(torch.randn(3, 8), w13, w2, offsets, counts)
