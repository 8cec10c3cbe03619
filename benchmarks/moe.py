"""Expert-parallel MoE benchmarks.

CPU part (default): 2 and 4 gloo processes on this machine; per configuration the
median dispatch and combine latency over the ranks' slowest, and GB/s of payload
this rank sends (hidden vectors, plus scales for INT8), bf16 vs INT8.

GPU part (--gpu, one CUDA device): routing (moe_route), the dispatch layout + permute
and the weighted un-permute of ep_dispatch / ep_combine on a group of one, and the
Triton grouped expert MLP, against a naive torch implementation (topk; sort +
index_select; index_add), in GB/s / TFLOP/s.

    python benchmarks/moe.py [--quick]
    python benchmarks/moe.py --gpu

Writes moe_cpu.json / moe_gpu.json and a PNG to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, print_table, write_json  # noqa: E402

TOP_K = 8


def _grid(quick: bool):
    tokens = [128, 1024] if quick else [128, 1024, 4096]
    hidden = [2048] if quick else [2048, 7168]
    experts = [64] if quick else [64, 256]
    return [(t, h, e, q) for t in tokens for h in hidden for e in experts for q in (None, "int8")]


def cpu(quick: bool) -> list[dict]:
    from moe_worker import cpu_worker
    from tests.distributed.harness import run_ranks, values

    grid = _grid(quick)
    table = []
    for world in (2, 4):
        per_rank = values(run_ranks(cpu_worker, world, {"grid": grid, "reps": 3}, timeout_s=1800))
        for i, cfg in enumerate(grid):
            worst_d = max(r[i]["dispatch_ms"] for r in per_rank)
            worst_c = max(r[i]["combine_ms"] for r in per_rank)
            row = dict(per_rank[0][i], ranks=world, dispatch_ms=worst_d, combine_ms=worst_c)
            row["dispatch_GBps"] = row.pop("dispatch_bytes") / worst_d / 1e6
            row["combine_GBps"] = row.pop("combine_bytes") / worst_c / 1e6
            table.append(row)
    return table


def gpu() -> list[dict]:
    import torch.distributed as dist

    from common import bench_ms

    from ascend_ext import ops

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29571")
    dist.init_process_group("nccl", rank=0, world_size=1)
    rows = []
    for tokens, hidden, experts in ((4096, 7168, 256), (4096, 2048, 64), (16384, 4096, 128), (512, 7168, 256)):
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        logits = torch.randn(tokens, experts, device="cuda")
        with ops.trusted_inputs():
            t_route = bench_ms(lambda: ops.moe_route(logits, TOP_K))
            t_naive_route = bench_ms(lambda: torch.softmax(logits, -1).topk(TOP_K))
            weights, ids = ops.moe_route(logits, TOP_K)
            t_dispatch = bench_ms(lambda: ops.ep_dispatch(x, ids, weights, experts))
            res = ops.ep_dispatch(x, ids, weights, experts)
            y = res.recv_x
            t_combine = bench_ms(lambda: ops.ep_combine(y, res.handle))

            def naive_permute():
                order = torch.sort(ids.flatten().long(), stable=True).indices
                return x.index_select(0, order // TOP_K), order
            t_naive_perm = bench_ms(naive_permute)
            permuted, order = naive_permute()

            def naive_unpermute():
                out = torch.zeros(tokens, hidden, device="cuda", dtype=torch.float32)
                out.index_add_(0, order // TOP_K, permuted.float() * weights.flatten()[order, None])
                return out.to(torch.bfloat16)
            t_naive_unperm = bench_ms(naive_unpermute)
        moved = tokens * TOP_K * hidden * 2 * 2    # read + write of every (token, expert) row
        rows.append({"tokens": tokens, "hidden": hidden, "experts": experts,
                     "route_us": t_route * 1e3, "naive_route_us": t_naive_route * 1e3,
                     "dispatch_us": t_dispatch * 1e3, "dispatch_GBps": moved / t_dispatch / 1e6,
                     "naive_permute_us": t_naive_perm * 1e3, "naive_permute_GBps": moved / t_naive_perm / 1e6,
                     "combine_us": t_combine * 1e3, "combine_GBps": moved / t_combine / 1e6,
                     "naive_unpermute_us": t_naive_unperm * 1e3})
        inter = 2048 if hidden >= 4096 else 1024
        local = experts
        w13 = torch.randn(local, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16) * hidden ** -0.5
        w2 = torch.randn(local, hidden, inter, device="cuda", dtype=torch.bfloat16) * inter ** -0.5
        with ops.trusted_inputs(), ops.use_impl(moe="triton"):
            t_exp = bench_ms(lambda: ops.moe_experts(res.recv_x, w13, w2, res.expert_offsets, res.tokens_per_expert))
            got = ops.moe_experts(res.recv_x, w13, w2, res.expert_offsets, res.tokens_per_expert)
        with ops.use_impl(moe="reference"):
            ref = ops.moe_experts(res.recv_x[:2048], w13, w2, res.expert_offsets.clamp(max=2048),
                                  (res.expert_offsets[1:].clamp(max=2048) - res.expert_offsets[:-1].clamp(max=2048)))
        flops = 2 * res.recv_x.shape[0] * hidden * inter * 3
        rows[-1].update({"experts_us": t_exp * 1e3, "experts_TF": flops / t_exp / 1e9,
                         "experts_max_rel_err": float((got[:2048].float() - ref.float()).norm() / ref.float().norm())})
        del w13, w2
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = {"env": environment()}
    if args.gpu:
        result["gpu"] = gpu()
        print_table("MoE on one GPU (bf16, top-8)", result["gpu"],
                    ["tokens", "hidden", "experts", "route_us", "naive_route_us", "dispatch_us", "dispatch_GBps",
                     "naive_permute_us", "naive_permute_GBps", "combine_us", "combine_GBps", "naive_unpermute_us",
                     "experts_us", "experts_TF", "experts_max_rel_err"])
        path = write_json("moe_gpu.json", result)
    else:
        result["cpu_cores"] = os.cpu_count()
        result["cpu"] = cpu(args.quick)
        print_table(f"EP dispatch/combine over gloo on {os.cpu_count()} CPU cores (top-8, bf16 tokens)",
                    result["cpu"], ["ranks", "tokens", "hidden", "experts", "quant", "dispatch_ms", "dispatch_GBps",
                                    "combine_ms", "combine_GBps"])
        path = write_json("moe_cpu.json", result)
        _plot_cpu(result["cpu"], path.replace(".json", ".png"))
    print(f"\nwrote {path}")
    return 0


def _plot_cpu(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for world in sorted({r["ranks"] for r in rows}):
        for quant in ("bf16", "int8"):
            pts = [r for r in rows if r["ranks"] == world and r["quant"] == quant and r["experts"] == 64
                   and r["hidden"] == 2048]
            ax.plot([r["tokens"] for r in pts], [r["dispatch_ms"] for r in pts], marker="o",
                    label=f"{world} ranks, {quant} dispatch")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per rank (hidden 2048, 64 experts, top-8)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
