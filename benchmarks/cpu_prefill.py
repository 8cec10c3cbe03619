"""CPU prefill attention: the native kernel vs vLLM's CPU kernel, alternated, minima compared.

Prefill is compute bound, so on a shared 2-core host the fastest of many alternated calls
(ours, vLLM's, ours, ...) is the figure least disturbed by other load; medians are printed
too. With --threads 1 the times are the calling thread's CPU time (both kernels then run
inline), which excludes preemption by other processes: a usable A/B on a loaded machine. Shapes: the Llama-3-8B-like layer of cpu_attention.py (32 q / 8 KV heads, d128) and
the long-context e2e model's layer (8 q / 2 KV heads, d64), causal prompts, bf16 paged
caches with head-major block interiors (the cases are built by cpu_attention.Case).

    python benchmarks/cpu_prefill.py [--rounds 15] [--prompts 512 2048 8192] [--dtype bfloat16] [--threads N]

Writes cpu_prefill_<dtype>.json and .png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_attention  # noqa: E402
from common import environment, out_dir, print_table, write_json  # noqa: E402

from ascend_ext import ops  # noqa: E402

SHAPES = {"8b_d128": (32, 8, 128), "long_d64": (8, 2, 64)}   # (Hq, Hkv, head dim)


def _times_ms(fns: dict, rounds: int, clock) -> dict:
    """Alternate the callables `rounds` times after one warm-up each; per name all times."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append((clock() - t0) * 1e3)
    return times


def measure(shape: str, prompt: int, dtype: torch.dtype, vops, rounds: int) -> dict:
    cpu_attention.HQ, cpu_attention.HKV, cpu_attention.HEAD_DIM = SHAPES[shape]
    case = cpu_attention.Case([prompt], [prompt], dtype, vops)
    fns = {"native": case.ours("native")}
    if vops is not None:
        fns["vllm"] = case.theirs()
    # one thread runs inline in this thread: its CPU time excludes the time other processes
    # took the core (wall time otherwise)
    with ops.use_impl(attention="native"):   # vLLM's op is unaffected by our binding
        times = _times_ms(fns, rounds, time.thread_time if torch.get_num_threads() == 1 else time.perf_counter)
    hq, _, d = SHAPES[shape]
    flops = 4 * hq * d * prompt * (prompt + 1) // 2
    row = {"shape": shape, "prompt": prompt, "load_avg": os.getloadavg()[0]}
    for name, t in times.items():
        t.sort()
        row[f"{name}_min_ms"], row[f"{name}_median_ms"] = t[0], t[len(t) // 2]
        row[f"{name}_GFLOPs"] = flops / t[0] / 1e6
    if vops is not None:
        row["vllm_over_native_min"] = row["vllm_min_ms"] / row["native_min_ms"]
        row["vllm_over_native_median"] = row["vllm_median_ms"] / row["native_median_ms"]
        row["max_diff_vs_vllm"] = float((case.vout.float() - case.out.float()).abs().max())
    return row


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for shape in SHAPES:
        rows = [r for r in result["rows"] if r["shape"] == shape]
        ax.plot([r["prompt"] for r in rows], [r["native_GFLOPs"] for r in rows], "o-", label=f"native {shape}")
        if rows and "vllm_GFLOPs" in rows[0]:
            ax.plot([r["prompt"] for r in rows], [r["vllm_GFLOPs"] for r in rows], "x--", label=f"vLLM {shape}")
    ax.set(xscale="log", xlabel="prompt tokens (causal)", ylabel="GFLOP/s (best of alternated runs)",
           title=f"CPU prefill attention, {result['dtype']}, {result['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--prompts", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    vops = cpu_attention._vllm()
    rows = []
    for shape in args.shapes:
        for prompt in args.prompts:
            rows.append(measure(shape, prompt, dtype, vops, args.rounds))
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                  flush=True)
    result = {"environment": environment(), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "rounds": args.rounds, "rows": rows}
    print_table(f"prefill, {args.dtype}, {result['threads']} threads, {args.rounds} alternated rounds",
                rows, ["shape", "prompt", "native_min_ms", "vllm_min_ms", "vllm_over_native_min",
                       "native_median_ms", "vllm_median_ms", "vllm_over_native_median", "native_GFLOPs",
                       "vllm_GFLOPs", "max_diff_vs_vllm", "load_avg"])
    name = f"cpu_prefill_{args.dtype}"
    print("\nwrote", write_json(f"{name}.json", result))
    plot(result, os.path.join(out_dir(), f"{name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
