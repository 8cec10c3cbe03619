"""Emulated npu_moe_distribute_dispatch/combine and npu_mm_all_reduce_base adapters across
2 gloo ranks equal the single-process reference (as the portable implementation does)."""

import pytest
import torch

from ..distributed.ep_cases import reference
from ..distributed.harness import run_ranks, values
from . import real_ops
from .npu_dist_cases import ep_worker, mm_allreduce_worker

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("real", [False, True], ids=["emulation", "real_schema"])
def test_npu_ep_adapters_match_reference(real):
    world = 2
    base = dict(hidden=32, inter=48, experts=8, top_k=2, mode="layer", seed=11, tokens=[13, 6])
    cases = [dict(base, dtype="float32"), dict(base, dtype="bfloat16"),
             dict(base, dtype="bfloat16", quant="int8", mode="identity"), dict(base, dtype="float32", top_k=4)]
    if real:
        real_ops.define()   # download/skip here, not in the ranks
    per_rank = values(run_ranks(ep_worker, world, {"cases": cases, "real": real}, timeout_s=180))
    for i, case in enumerate(cases):
        ref = reference(case, world)
        for r in range(world):
            out, want = per_rank[r][i]["out"].double(), ref["out"][r]
            tol = 1e-4 if case["dtype"] == "float32" else 3e-2 * max(1.0, float(want.abs().max()))
            assert (out - want).abs().max() <= tol, (case, float((out - want).abs().max()))
        got_tpe = torch.stack([per_rank[r][i]["tokens_per_expert"] for r in range(world)])
        assert torch.equal(got_tpe, ref["tokens_per_expert"])


@pytest.mark.parametrize("real", [False, True], ids=["emulation", "real_schema"])
def test_npu_mm_all_reduce_adapter(real):
    if real:
        real_ops.define()
    errors = values(run_ranks(mm_allreduce_worker, 2, {"real": real}, timeout_s=120))
    assert max(errors) < 2e-2, errors
