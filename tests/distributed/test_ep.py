"""Expert-parallel dispatch/combine across 2 and 4 gloo ranks vs a float64 single-process
reference of the whole MoE layer; failure modes raise instead of hanging."""

import pytest
import torch

from ascend_ext import ops

from .ep_cases import (bad_ids_on_rank1, indivisible_experts, mismatched_hidden, rank_inputs, reference,
                       silent_rank, worker)
from .harness import run_ranks, values

pytestmark = pytest.mark.distributed


def _cases(world: int, seed: int) -> list[dict]:
    base = dict(hidden=32, inter=48, experts=4 * world, top_k=2, dtype="float32", mode="layer", seed=seed)
    many = [23, 0, 9, 31][:world] if world > 1 else [23]     # uneven, and one rank with no tokens
    return [
        dict(base, name="layer", tokens=many),
        dict(base, name="identity", mode="identity", tokens=many, top_k=3),
        dict(base, name="skewed", routing="skewed", tokens=many),
        dict(base, name="masked", routing="masked", tokens=many),
        dict(base, name="bf16", dtype="bfloat16", tokens=many),
        dict(base, name="int8-identity", mode="identity", quant="int8", tokens=many),
        dict(base, name="int8-layer", quant="int8", tokens=many),
        dict(base, name="capacity-ample", capacity=64, tokens=many),
        dict(base, name="capacity-overflow", capacity=5, tokens=many),
        dict(base, name="capacity-int8", capacity=7, quant="int8", mode="identity", tokens=many),
        dict(base, name="experts-16-topk-8", experts=16, top_k=8, tokens=[17] * world),
    ]


# (world, implementation): the fused Triton path runs under the interpreter on CPU;
# a group of one takes its local path (no collectives)
SETUPS = [(1, "triton"), (1, "reference"), (2, "reference"), (2, "triton"), (4, "reference"), (4, "triton")]


@pytest.mark.parametrize("world,impl", SETUPS)
def test_ep_matches_single_process_reference(world, impl):
    seed = int(torch.randint(0, 10**6, ()).item())
    cases = [dict(case, impl=impl) for case in _cases(world, seed)]
    if impl == "triton" and world == 4:   # the interpreter on 4 processes is slow: a covering subset
        cases = [c for c in cases if c["name"] in ("layer", "masked", "int8-layer", "capacity-overflow",
                                                   "capacity-int8")]
    if impl == "triton":   # the graph-safe form: no value checks, fixed capacity exchanges payload only
        cases += [dict(case, name=case["name"] + "-trusted", trusted=True) for case in cases
                  if case.get("capacity")]
    per_rank = values(run_ranks(worker, world, cases, timeout_s=240))
    for i, case in enumerate(cases):
        ref = reference(case, world)
        got_tpe = torch.stack([per_rank[r][i]["tokens_per_expert"] for r in range(world)])
        dropped = sum(per_rank[r][i]["num_dropped"] for r in range(world))
        assert dropped == ref["dropped"], (case["name"], dropped, ref["dropped"])
        assert torch.equal(got_tpe, ref["tokens_per_expert"]), case["name"]
        for r in range(world):
            out, want = per_rank[r][i]["out"].double(), ref["out"][r]
            assert out.shape == want.shape, case["name"]
            if case.get("quant") == "int8" and case["mode"] == "identity":
                # per-token scale amax/127 rounds each element by <= amax/254; weights sum to <= 1
                x = rank_inputs(case, r)[0].double()
                bound = (x.abs().amax(dim=1, keepdim=True) / 254 * 1.001 + 1e-6) if len(x) else 0
                assert ((out - want).abs() <= bound).all(), case["name"]
            elif case.get("quant") == "int8":
                # through the expert MLP: the quantisation error stays at the per-mille level
                assert (out - want).norm() <= 0.02 * want.norm() + 1e-6, (case["name"], float((out - want).norm()))
            else:
                atol = 2e-2 if case["dtype"] == "bfloat16" else 1e-4
                torch.testing.assert_close(out, want, atol=atol, rtol=atol, msg=case["name"])


def test_identity_round_trip_is_weight_sum_times_x():
    world = 2
    case = dict(name="rt", hidden=16, inter=8, experts=8, top_k=4, dtype="float32", mode="identity", seed=5,
                tokens=[12, 7], renormalize=False)
    per_rank = values(run_ranks(worker, world, [case], timeout_s=120))
    for r in range(world):
        x, ids, w = rank_inputs(case, r)
        torch.testing.assert_close(per_rank[r][0]["out"], w.sum(1, keepdim=True) * x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_bad_inputs_raise_on_every_rank(impl):
    msgs = values(run_ranks(bad_ids_on_rank1, 2, impl, timeout_s=120))
    assert "topk_ids must lie in [-1, 8)" in msgs[1] and "rank(s) [1] rejected" in msgs[0], msgs
    msgs = values(run_ranks(mismatched_hidden, 2, impl, timeout_s=120))
    assert all("ranks disagree on hidden size: [16, 32]" in m for m in msgs), msgs
    msgs = values(run_ranks(indivisible_experts, 2, impl, timeout_s=120))
    assert all("num_experts (3) must be divisible by the group size (2)" in m for m in msgs), msgs


@pytest.mark.parametrize("how", ["never_calls", "die"])
def test_missing_rank_raises_timeout(how):
    results = run_ranks(silent_rank, 2, how, timeout_s=60)
    status, text = results[0]
    assert status == "ok" and text.startswith("timeout after"), results[0]
    assert float(text.split()[2][:-2]) < 15


def test_single_process_validation():
    x = torch.randn(4, 8)
    ids = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="topk_ids must have dtype"):
        ops.ep_dispatch(x, ids.float(), torch.ones(4, 2), 4)
    with pytest.raises(ValueError, match="topk_weights must have the shape"):
        ops.ep_dispatch(x, ids, torch.ones(4, 3), 4)
    with pytest.raises(ValueError, match="quant must be None or 'int8'"):
        ops.ep_dispatch(x, ids, torch.ones(4, 2), 4, quant="fp8")
    with pytest.raises(ValueError, match="max_tokens_per_rank must be > 0"):
        ops.ep_dispatch(x, ids, torch.ones(4, 2), 4, max_tokens_per_rank=0)
    with pytest.raises(TypeError, match="handle must be the EPHandle"):
        ops.ep_combine(x, handle=None)
