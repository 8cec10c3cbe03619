"""Expert-parallel MoE benchmarks.

CPU part (default): 2 and 4 gloo processes on this machine; per configuration the
median dispatch and combine latency over the ranks' slowest, and GB/s of payload
this rank sends (hidden vectors, plus scales for INT8), bf16 vs INT8.

GPU part (--gpu, one CUDA device, group of one): the fused ep_dispatch (layout +
pack; bf16, INT8, fixed capacity) and ep_combine (weighted gather) against the bare
anchors stable sort + index_select and index_add; the fixed-capacity pair replayed
from a CUDA graph; and the multi-rank protocol (pack, one payload all_to_all, expand;
dynamic vs fixed capacity) forced onto the group of one. --quick: two shapes.

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


GPU_GRID = [(t, h, e) for t in (512, 4096, 16384) for h, e in ((2048, 64), (4096, 128), (7168, 256))]


def gpu(quick: bool) -> list[dict]:
    """Group of one on one GPU: the fused EP path (ops, triton impl) vs bare torch anchors."""
    import torch.distributed as dist

    from common import bench_graph_ms, bench_ms

    from ascend_ext import ops
    from ascend_ext.kernels.triton import expert_parallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29571")
    dist.init_process_group("nccl", rank=0, world_size=1)
    world = dist.group.WORLD
    rows = []
    grid = GPU_GRID[:2] if quick else GPU_GRID
    for tokens, hidden, experts in grid:
        g = torch.Generator(device="cuda").manual_seed(tokens + hidden)
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
        logits = torch.randn(tokens, experts, device="cuda", generator=g)
        row = {"tokens": tokens, "hidden": hidden, "experts": experts}
        with ops.trusted_inputs(), ops.use_impl(ep_dispatch="triton", ep_combine="triton"):
            weights, ids = ops.moe_route(logits, TOP_K)
            row["route_us"] = bench_ms(lambda: ops.moe_route(logits, TOP_K)) * 1e3
            row["naive_route_us"] = bench_ms(lambda: torch.softmax(logits, -1).topk(TOP_K)) * 1e3

            # anchors: bare stable sort + gather, and the index_add weighted un-permute
            def naive_permute():
                order = torch.sort(ids.flatten().long(), stable=True).indices
                return x.index_select(0, order // TOP_K), order
            permuted, order = naive_permute()

            def naive_unpermute():
                out = torch.zeros(tokens, hidden, device="cuda", dtype=torch.float32)
                out.index_add_(0, order // TOP_K, permuted.float() * weights.flatten()[order, None])
                return out.to(torch.bfloat16)
            row["naive_permute_us"] = bench_ms(naive_permute) * 1e3
            row["naive_unpermute_us"] = bench_ms(naive_unpermute) * 1e3

            def dispatch(**kw):
                return ops.ep_dispatch(x, ids, weights, experts, world, **kw)
            for name, kw in (("dispatch", {}), ("dispatch_int8", {"quant": "int8"}),
                             ("dispatch_fixed", {"max_tokens_per_rank": tokens})):
                row[name + "_us"] = bench_ms(lambda: dispatch(**kw)) * 1e3
            res = dispatch()
            y = res.recv_x
            row["combine_us"] = bench_ms(lambda: ops.ep_combine(y, res.handle)) * 1e3
            # correctness in the same run: identity experts give sum_j w_j * x per token
            want = (weights.sum(1, keepdim=True) * x.float())
            got = ops.ep_combine(res.recv_x, res.handle).float()
            row["identity_rel_err"] = float((got - want).norm() / want.norm())
            row["layout_us"] = bench_ms(lambda: expert_parallel.layout(ids, experts)) * 1e3
            row["fixed_graph_us"] = bench_graph_ms(
                lambda: ops.ep_combine(y, dispatch(max_tokens_per_rank=tokens).handle), replays=5) * 1e3
            # the multi-rank protocol (pack, one payload all_to_all, expand) on a group of one
            expert_parallel.FORCE_COLLECTIVES = True
            try:
                for name, kw in (("coll_dynamic", {}), ("coll_fixed", {"max_tokens_per_rank": tokens})):
                    r2 = dispatch(**kw)
                    y2 = r2.recv_x
                    row[name + "_dispatch_us"] = bench_ms(lambda: dispatch(**kw)) * 1e3
                    row[name + "_combine_us"] = bench_ms(lambda: ops.ep_combine(y2, r2.handle)) * 1e3
                    got2 = ops.ep_combine(y2, r2.handle).float()
                    row[name + "_rel_err"] = float((got2 - want).norm() / want.norm())
            finally:
                expert_parallel.FORCE_COLLECTIVES = False
        base = row["naive_permute_us"] + row["naive_unpermute_us"]
        row["ratio_vs_naive"] = (row["dispatch_us"] + row["combine_us"]) / base
        row["dispatch_ratio_vs_sort_gather"] = row["dispatch_us"] / row["naive_permute_us"]
        moved = tokens * TOP_K * hidden * 2 + tokens * hidden * 2      # bf16: k row writes + one read
        row["dispatch_GBps"] = moved / (row["dispatch_us"] * 1e3)
        row["combine_GBps"] = moved / (row["combine_us"] * 1e3)
        rows.append(row)
        print(row, flush=True)
        del x, permuted, res, y
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return rows


GPU_COLUMNS = ["tokens", "hidden", "experts", "naive_permute_us", "naive_unpermute_us", "layout_us", "dispatch_us",
               "dispatch_int8_us", "dispatch_fixed_us", "combine_us", "ratio_vs_naive",
               "dispatch_ratio_vs_sort_gather", "dispatch_GBps", "combine_GBps", "fixed_graph_us",
               "coll_dynamic_dispatch_us", "coll_dynamic_combine_us", "coll_fixed_dispatch_us",
               "coll_fixed_combine_us", "identity_rel_err", "coll_fixed_rel_err", "route_us", "naive_route_us"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = {"env": environment()}
    if args.gpu:
        result["gpu"] = gpu(args.quick)
        path = write_json("moe_gpu.json", result)
        print_table("EP dispatch/combine on one GPU, group of one (bf16, top-8)", result["gpu"], GPU_COLUMNS)
        try:
            _plot_gpu(result["gpu"], path.replace(".json", ".png"))
        except ImportError as exc:   # the table and JSON are the result; the plot is a convenience
            print(f"no plot: {exc}")
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


def _plot_gpu(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for hidden, experts in sorted({(r["hidden"], r["experts"]) for r in rows}):
        pts = [r for r in rows if r["hidden"] == hidden and r["experts"] == experts]
        ax.plot([r["tokens"] for r in pts], [r["ratio_vs_naive"] for r in pts], marker="o",
                label=f"H {hidden}, E {experts}")
    ax.axhline(1.2, color="grey", linestyle="--", label="goal 1.2x")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens (top-8)")
    ax.set_ylabel("(dispatch + combine) / (sort+gather + index_add)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
