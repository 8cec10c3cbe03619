"""Per-rank bodies of the emulated NPU collective adapters (run by the gloo harness)."""

from __future__ import annotations

import torch

from ascend_ext import ops
from ascend_ext.backends.npu import comm as npu_comm
from ascend_ext.backends.npu import moe as npu_moe

from ..distributed.ep_cases import expert_weights, rank_inputs
from . import emulation


def _torch_npu(real: bool):
    """The emulation, or the emulation behind the wheel's real schemas (tests/npu/real_ops.py)."""
    if not real:
        return None
    from . import real_ops
    return real_ops.module()


def ep_worker(rank: int, world: int, payload: dict) -> list[dict]:
    results = []
    cases = payload["cases"]
    with emulation.installed(_torch_npu(payload["real"])):
        for case in cases:
            x, ids, weights = rank_inputs(case, rank)
            res = npu_moe.ep_dispatch(x, ids, weights, case["experts"], None, quant=case.get("quant"),
                                      max_tokens_per_rank=None, timeout_s=60, check_values=True)
            local = case["experts"] // world
            if case["mode"] == "layer":
                w13, w2 = expert_weights(case)
                y = ops.moe_experts(res.recv_x, w13[rank * local:(rank + 1) * local],
                                    w2[rank * local:(rank + 1) * local], res.expert_offsets, res.tokens_per_expert,
                                    scales=res.recv_scales, out_dtype=x.dtype)
            else:
                y = res.dequantized()
            results.append({"out": npu_moe.ep_combine(y, res.handle),
                            "tokens_per_expert": res.tokens_per_expert.clone(), "num_dropped": 0})
    return results


def mm_allreduce_worker(rank: int, world: int, payload: dict) -> float:
    """Relative error of the fused-op tiled linear (bf16: the op takes fp16/bf16 only)."""
    with emulation.installed(_torch_npu(payload["real"])):
        g = torch.Generator().manual_seed(rank)
        x, w = torch.randn(300, 24, generator=g).bfloat16(), torch.randn(40, 24, generator=g).bfloat16()
        b = torch.ones(40, dtype=torch.bfloat16)
        got = npu_comm.tiled_linear_allreduce(x, w, b, None, tile_tokens=64, timeout_s=60)
        want = x.double() @ w.double().t()
        torch.distributed.all_reduce(want)
        want = want + b.double()
        return float((got.double() - want).abs().max() / want.abs().max())
