"""Per-rank body of benchmarks/moe.py's CPU part (an importable module for spawned ranks)."""

from __future__ import annotations

import statistics
import time

import torch

TOP_K = 8


def cpu_worker(rank: int, world: int, payload) -> list[dict]:
    import torch.distributed as dist

    from ascend_ext import ops

    rows = []
    for tokens, hidden, experts, quant in payload["grid"]:
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
        weights, ids = ops.moe_route(torch.randn(tokens, experts, generator=g), TOP_K)
        times_d, times_c = [], []
        for it in range(payload["reps"] + 1):
            dist.barrier()
            t0 = time.perf_counter()
            with ops.trusted_inputs():
                res = ops.ep_dispatch(x, ids, weights, experts, quant=quant)
            t1 = time.perf_counter()
            y = res.dequantized(torch.bfloat16)
            dist.barrier()
            t2 = time.perf_counter()
            with ops.trusted_inputs():
                ops.ep_combine(y, res.handle)
            t3 = time.perf_counter()
            if it:   # the first iteration warms up
                times_d.append(t1 - t0)
                times_c.append(t3 - t2)
        sent_rows = len(res.handle.send_tokens)
        bytes_d = sent_rows * hidden * (1 if quant else 2) + (sent_rows * 4 if quant else 0)
        bytes_c = sent_rows * hidden * 2
        rows.append({"tokens": tokens, "hidden": hidden, "experts": experts, "quant": quant or "bf16",
                     "dispatch_ms": statistics.median(times_d) * 1e3, "combine_ms": statistics.median(times_c) * 1e3,
                     "dispatch_bytes": bytes_d, "combine_bytes": bytes_c})
    return rows
