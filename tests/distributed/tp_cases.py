"""Tiling-AllReduce scenarios run on every gloo rank (see test_tiled_allreduce.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ascend_ext import ops
from ascend_ext.ops.comm import attention_o_proj_allreduce

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def linear_worker(rank: int, world: int, cases: list[dict]) -> list[float]:
    errors = []
    for case in cases:
        g = torch.Generator().manual_seed(case["seed"] * 100 + rank)
        dtype = DTYPES[case["dtype"]]
        x = torch.randn(case["tokens"], case["k_local"], generator=g).to(dtype)
        w = torch.randn(case["n"], case["k_local"], generator=g).to(dtype) / case["k_local"] ** 0.5
        bias = torch.randn(case["n"], generator=torch.Generator().manual_seed(case["seed"])).to(dtype) \
            if case["bias"] else None
        got = ops.tiled_linear_allreduce(x, w, bias, tile_tokens=case["tile"], timeout_s=60)
        want = (x.float() @ w.float().t())
        dist.all_reduce(want)
        if bias is not None:
            want += bias.float()
        errors.append(float((got.float() - want).abs().max()) if got.numel() else 0.0)
    return errors


def attention_worker(rank: int, world: int, cases: list[dict]) -> list[float]:
    errors = []
    for case in cases:
        g = torch.Generator().manual_seed(case["seed"] * 100 + rank)
        lens = case["seqlens"]
        tq = sum(lens)
        hq, hkv, d, n = 4, 2, 32, 48
        q, k, v = torch.randn(tq, hq, d, generator=g), torch.randn(tq, hkv, d, generator=g), torch.randn(tq, hkv, d, generator=g)
        w = torch.randn(n, hq * d, generator=g) / (hq * d) ** 0.5
        bias = torch.randn(n, generator=torch.Generator().manual_seed(case["seed"]))
        cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
        got = attention_o_proj_allreduce(q, k, v, cu, cu, max(lens), max(lens), w, bias, causal=case["causal"],
                                         window_size=case.get("window", (-1, -1)), tile_tokens=case["tile"])
        attn = ops.flash_attn_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=case["causal"],
                                     window_size=case.get("window", (-1, -1)))
        want = attn.reshape(tq, -1) @ w.t()
        dist.all_reduce(want)
        errors.append(float((got - (want + bias)).abs().max()))
    return errors
