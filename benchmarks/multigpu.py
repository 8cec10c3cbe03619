"""Expert-parallel dispatch/combine and tiling-AllReduce across the GPUs of one host (NCCL).

One process per GPU. Parts:

* ep: ``ops.ep_dispatch`` + ``ops.ep_combine`` with hidden 7168, top-8 of 256 experts,
  128 and 4096 tokens per rank, bf16 and INT8 on the wire. Parity: combining the
  dispatched rows unchanged must give back sum_k w_k x = x (weights renormalised); the
  relative error is reported per case. Latency is the slowest rank's median; algorithm
  bandwidth = bytes this rank sends to *other* ranks / time.
* tp: attention-output projection + all-reduce, sequential (one matmul, one
  all_reduce) vs ``ops.tiled_linear_allreduce`` (per-tile async all-reduce), tokens
  512-16384, hidden 4096/8192, each rank holding hidden / world input columns. Parity:
  max relative difference pipelined vs sequential. Overlap efficiency =
  (sequential - pipelined) / all-reduce time.

    python benchmarks/multigpu.py [--world N] [--parts ep,tp] [--quick]
    python benchmarks/multigpu.py --cpu --world 2 --quick     # dry run: gloo on CPU

NVLink multicast stays off (NCCL_NVLS_ENABLE=0). Writes multigpu_<world>.json to $OUT
(or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HIDDEN, EXPERTS, TOP_K = 7168, 256, 8


def _timed(fn, device, reps: int) -> float:
    import torch.distributed as dist

    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def ep_part(rank: int, world: int, device, quick: bool) -> list[dict]:
    from ascend_ext import ops

    rows = []
    for tokens in ((128,) if quick else (128, 4096)):
        gen = torch.Generator(device=device).manual_seed(1000 + rank)
        x = torch.randn(tokens, HIDDEN, device=device, generator=gen).to(torch.bfloat16)
        logits = torch.randn(tokens, EXPERTS, device=device, generator=gen)
        weights, ids = ops.moe_route(logits, TOP_K)
        for quant in (None, "int8"):
            with ops.trusted_inputs():
                res = ops.ep_dispatch(x, ids, weights, EXPERTS, quant=quant)
                back = ops.ep_combine(res.dequantized(torch.bfloat16), res.handle)
                expected = x.float() * weights.float().sum(-1, keepdim=True)
                rel_err = float((back.float() - expected).norm() / expected.norm())
                t_dispatch = _timed(lambda: ops.ep_dispatch(x, ids, weights, EXPERTS, quant=quant), device, 5)
                y = res.dequantized(torch.bfloat16)
                t_combine = _timed(lambda: ops.ep_combine(y, res.handle), device, 5)
            owner = ids.long() // (EXPERTS // world)
            remote_pairs = int(torch.stack([(owner == r).any(-1) for r in range(world) if r != rank]).sum()) \
                if world > 1 else 0
            row_bytes = HIDDEN * (1 if quant else 2) + (4 if quant else 0)
            rows.append({"part": "ep", "rank": rank, "tokens": tokens, "quant": quant or "bf16",
                         "dispatch_ms": t_dispatch, "combine_ms": t_combine, "rel_err": rel_err,
                         "remote_bytes_dispatch": remote_pairs * row_bytes,
                         "remote_bytes_combine": remote_pairs * HIDDEN * 2})
    return rows


def tp_part(rank: int, world: int, device, quick: bool) -> list[dict]:
    import torch.distributed as dist

    from ascend_ext import ops
    from ascend_ext.ops.comm import choose_tile_tokens

    rows = []
    grid = [(512, 4096), (4096, 4096)] if quick else [(t, h) for t in (512, 2048, 4096, 16384) for h in (4096, 8192)]
    for tokens, hidden in grid:
        gen = torch.Generator(device=device).manual_seed(rank)
        k_local = hidden // world
        x = torch.randn(tokens, k_local, device=device, generator=gen).to(torch.bfloat16)
        w = (torch.randn(hidden, k_local, device=device, generator=gen) * k_local ** -0.5).to(torch.bfloat16)
        full = torch.empty(tokens, hidden, device=device, dtype=torch.bfloat16)

        def matmul():
            torch.matmul(x, w.t(), out=full)

        def sequential():
            matmul()
            dist.all_reduce(full)
        tile = choose_tile_tokens(tokens)
        sequential()
        reference = full.float().clone()
        pipelined = ops.tiled_linear_allreduce(x, w, tile_tokens=tile)
        diff = float((pipelined.float() - reference).abs().max() / reference.abs().max())
        reps = 5 if quick else 10
        rows.append({"part": "tp", "rank": rank, "tokens": tokens, "hidden": hidden, "tile": tile,
                     "matmul_ms": _timed(matmul, device, reps),
                     "allreduce_ms": _timed(lambda: dist.all_reduce(full), device, reps),
                     "sequential_ms": _timed(sequential, device, reps),
                     "pipelined_ms": _timed(lambda: ops.tiled_linear_allreduce(x, w, tile_tokens=tile), device, reps),
                     "max_rel_diff": diff})
    return rows


def _rank_main(rank: int, world: int, port: int, args, results) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    import datetime

    import torch.distributed as dist
    try:
        if args.cpu:
            device = torch.device("cpu")
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=120))
        else:
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=120), device_id=device)
        rows = []
        if "ep" in args.parts:
            rows += ep_part(rank, world, device, args.quick)
        if "tp" in args.parts:
            rows += tp_part(rank, world, device, args.quick)
        results.put((rank, rows, None))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # report, never hang the parent
        import traceback
        results.put((rank, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _merge(per_rank: list[list[dict]]) -> list[dict]:
    """Slowest rank's time per case; parity and bytes as the worst / sum over ranks."""
    merged = []
    for rows in zip(*per_rank):
        row = {k: v for k, v in rows[0].items() if k != "rank"}
        for key in row:
            if key.endswith("_ms") or key in ("rel_err", "max_rel_diff"):
                row[key] = max(r[key] for r in rows)
        if row["part"] == "ep":
            row["remote_bytes_dispatch"] = max(r["remote_bytes_dispatch"] for r in rows)
            row["remote_bytes_combine"] = max(r["remote_bytes_combine"] for r in rows)
            row["dispatch_algbw_GBps"] = row["remote_bytes_dispatch"] / row["dispatch_ms"] / 1e6
            row["combine_algbw_GBps"] = row["remote_bytes_combine"] / row["combine_ms"] / 1e6
            for k in ("remote_bytes_dispatch", "remote_bytes_combine"):
                row.pop(k)
        else:
            row["speedup"] = row["sequential_ms"] / row["pipelined_ms"]
            row["overlap_efficiency"] = (row["sequential_ms"] - row["pipelined_ms"]) / row["allreduce_ms"]
        merged.append(row)
    return merged


def main() -> int:
    import multiprocessing as mp

    from common import environment, print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=None)
    parser.add_argument("--parts", default="ep,tp")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU (dry run of the script)")
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    world = args.world or (2 if args.cpu else torch.cuda.device_count())
    if world < 2:
        print("needs at least 2 GPUs (or --cpu)")
        return 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, args, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    got, errors, start = {}, {}, time.monotonic()
    while len(got) + len(errors) < world and time.monotonic() - start < args.timeout_s:
        try:
            rank, rows, error = results.get(timeout=1.0)
        except Exception:  # queue.Empty
            if not any(p.is_alive() for p in procs):
                break
            continue
        (errors if error else got)[rank] = error or rows
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    if errors or len(got) < world:
        for rank, text in errors.items():
            print(f"rank {rank} failed:\n{text}")
        print(f"{len(got)} of {world} ranks returned")
        return 1
    rows = _merge([got[r] for r in range(world)])
    env = environment()
    env["world"] = world
    env["backend"] = "gloo" if args.cpu else "nccl"
    print_table(f"expert-parallel dispatch/combine, EP{world}, hidden {HIDDEN}, top-{TOP_K} of {EXPERTS}",
                [r for r in rows if r["part"] == "ep"],
                ["tokens", "quant", "dispatch_ms", "combine_ms", "dispatch_algbw_GBps", "combine_algbw_GBps", "rel_err"])
    print_table(f"tiling-AllReduce, TP{world}", [r for r in rows if r["part"] == "tp"],
                ["tokens", "hidden", "tile", "matmul_ms", "allreduce_ms", "sequential_ms", "pipelined_ms", "speedup",
                 "overlap_efficiency", "max_rel_diff"])
    name = f"multigpu_{'cpu' if args.cpu else 'cuda'}_{world}.json"
    print("\nwrote", write_json(name, {"environment": env, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
