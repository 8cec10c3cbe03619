"""Tiling-AllReduce on CPU: 2 gloo processes, pipelined vs sequential row-parallel linear.

For tokens 256-8192 and hidden 2048-8192 (bf16, tensor parallel 2: each rank holds
K = hidden/2 inputs), per rank: matmul alone, all-reduce alone, matmul then all-reduce
(sequential) and ascend_ext.ops.tiled_linear_allreduce (pipelined, default tile rule).
Overlap efficiency = hidden communication / total communication
= (sequential - pipelined) / all-reduce time (0 = nothing hidden, 1 = all hidden).

    python benchmarks/tiling_allreduce.py [--quick] [--threads 1]

Writes tiling_allreduce.json and .png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, print_table, write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    from tests.distributed.harness import run_ranks, values
    from tp_worker import worker

    tokens = [256, 1024, 4096] if args.quick else [256, 1024, 2048, 4096, 8192]
    hidden = [2048, 4096] if args.quick else [2048, 4096, 8192]
    grid = [(t, h) for t in tokens for h in hidden]
    per_rank = values(run_ranks(worker, 2, {"grid": grid, "reps": 3, "threads": args.threads}, timeout_s=3600))
    rows = []
    for i in range(len(grid)):
        row = {k: max(r[i][k] for r in per_rank) if k.endswith("_ms") else per_rank[0][i][k] for k in per_rank[0][i]}
        row["speedup"] = row["sequential_ms"] / row["pipelined_ms"]
        row["overlap_eff"] = (row["sequential_ms"] - row["pipelined_ms"]) / row["allreduce_ms"]
        rows.append(row)
    result = {"env": environment(), "cpu_cores": os.cpu_count(), "threads_per_rank": args.threads, "rows": rows}
    print_table(f"tiling-AllReduce, 2 gloo ranks on {os.cpu_count()} cores, bf16 (ms, slowest rank)", rows,
                ["tokens", "hidden", "tile", "matmul_ms", "allreduce_ms", "sequential_ms", "pipelined_ms", "speedup",
                 "overlap_eff"])
    path = write_json("tiling_allreduce.json", result)
    _plot(rows, path.replace(".json", ".png"))
    print(f"\nwrote {path}")
    return 0


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for h in sorted({r["hidden"] for r in rows}):
        pts = [r for r in rows if r["hidden"] == h]
        ax.plot([r["tokens"] for r in pts], [r["speedup"] for r in pts], marker="o", label=f"hidden {h}")
    ax.axhline(1.0, color="k", ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("sequential / pipelined time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
