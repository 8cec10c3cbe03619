"""Per-rank body of benchmarks/tiling_allreduce.py (importable by spawned ranks)."""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist


def _median(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(rank: int, world: int, payload) -> list[dict]:
    from ascend_ext import ops
    from ascend_ext.ops.comm import choose_tile_tokens

    torch.set_num_threads(payload["threads"])
    rows = []
    for tokens, hidden in payload["grid"]:
        k_local = hidden // world
        x = torch.randn(tokens, k_local, dtype=torch.bfloat16)
        w = torch.randn(hidden, k_local, dtype=torch.bfloat16)
        full = torch.empty(tokens, hidden, dtype=torch.bfloat16)

        def matmul():
            torch.matmul(x, w.t(), out=full)

        def allreduce():
            dist.all_reduce(full)

        def sequential():
            matmul()
            allreduce()
        tile = choose_tile_tokens(tokens)
        t_mm, t_ar = _median(matmul, payload["reps"]), _median(allreduce, payload["reps"])
        t_seq = _median(sequential, payload["reps"])
        t_pipe = _median(lambda: ops.tiled_linear_allreduce(x, w, tile_tokens=tile), payload["reps"])
        rows.append({"tokens": tokens, "hidden": hidden, "tile": tile, "matmul_ms": t_mm * 1e3,
                     "allreduce_ms": t_ar * 1e3, "sequential_ms": t_seq * 1e3, "pipelined_ms": t_pipe * 1e3})
    return rows
