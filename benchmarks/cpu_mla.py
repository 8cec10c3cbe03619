"""CPU MLA decode: our native C++ kernel vs vLLM's CPU MLA decode vs the torch reference.

One run, same process, same inputs: a paged latent cache [blocks, 16, 576] (kv_lora_rank
512 + rope 64, block 16 as vLLM's CPU MLA backend forces), one new query per sequence,
DeepSeek head counts (Hq 16: V2-Lite; 128: V3/R1; 4: the tiny e2e model), batch x
context sweeps. vLLM's side is ``torch.ops._C.mla_decode_kvcache`` (what its CPU_MLA
backend calls; its AMX_MLA backend needs AMX, absent on CPUs without amx_bf16), ours the
public ``ascend_ext.ops.mla_decode`` with validation off as in the vLLM backend.

Reported: median ms per call, latent-cache bytes read per second against the host read
bandwidth measured in the same run (the memory roofline), GFLOP/s (2 * Hq * L * (576 +
512) per sequence) against a bf16 matmul measured in the same run (the compute ceiling:
with Hq >= 16 MLA decode does ~200+ flops per cache byte, so on a CPU it is compute
bound, not bandwidth bound), the ratio vLLM time / native time (> 1 = native faster) and
the largest output difference between native and vLLM.

    python benchmarks/cpu_mla.py [--quick | --smoke] [--dtype bfloat16|float16|float32] [--fp8]

--fp8 also times the same latents in a float8_e4m3fn cache (per-tensor kv_scale = amax / 448),
native and reference, with fp8_speedup = native time on the 16-bit cache / on the fp8 cache.

Writes cpu_mla_<dtype>.json and .png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_cpu_ms, environment, host_read_gbps, out_dir, pinned, print_table, write_json  # noqa: E402
from cpu_attention import _cpu_name  # noqa: E402

from ascend_ext import ops  # noqa: E402

RANK, ROPE, BLOCK = 512, 64, 16
WIDTH = RANK + ROPE
REFERENCE_MAX_KV_BYTES = 1 << 26   # the reference loops over sequences in fp32: slow past this


def _vllm_mla():
    try:
        import vllm._custom_ops as vops
        torch.ops._C.mla_decode_kvcache  # noqa: B018 - raises when vLLM's CPU kernels are absent
    except (ImportError, AttributeError, RuntimeError):
        return None
    return vops


def host_matmul_gflops(dtype: torch.dtype, n: int = 1024) -> float:
    """Measured dense matmul rate (GFLOP/s) of this host in ``dtype``, all threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / bench_cpu_ms(lambda: a @ b) / 1e6


class Case:
    """B sequences of `context` cached latent rows in a shuffled paged cache, one query each."""

    def __init__(self, batch: int, context: int, heads: int, dtype: torch.dtype, fp8: bool = False):
        gen = torch.Generator().manual_seed(batch * 7919 + context + heads)
        per_seq = -(-context // BLOCK)
        self.cache = torch.randn(batch * per_seq, BLOCK, WIDTH, generator=gen).to(dtype)
        self.table = torch.randperm(batch * per_seq, generator=gen).to(torch.int32).view(batch, per_seq)
        self.lens = torch.full((batch,), context, dtype=torch.int32)
        self.q = torch.randn(batch, 1, heads, WIDTH, generator=gen).to(dtype)
        self.scale = (128 + ROPE) ** -0.5
        self.out = torch.empty(batch, 1, heads, RANK, dtype=dtype)
        self.vout = torch.zeros(batch, heads, RANK, dtype=dtype)
        self.q3 = self.q[:, 0].contiguous()
        self.kv_bytes = batch * context * WIDTH * self.cache.element_size()
        self.flops = 2 * batch * heads * context * (WIDTH + RANK)
        self.kv_scale = float(self.cache.float().abs().amax()) / 448 if fp8 else None
        self.cache8 = (self.cache.float() / self.kv_scale).to(torch.float8_e4m3fn) if fp8 else None

    def ours(self, impl: str, fp8: bool = False):
        cache = self.cache8 if fp8 else self.cache

        def call():   # the implementation is pinned once per timing loop (measure)
            with ops.trusted_inputs():
                ops.mla_decode(self.q, cache, self.table, self.lens, kv_lora_rank=RANK,
                               softmax_scale=self.scale, out=self.out, kv_scale=self.kv_scale if fp8 else None)
        return call

    def theirs(self, vops):
        return lambda: vops.mla_decode_kvcache_cpu(self.vout, self.q3, self.cache, self.scale, self.table, self.lens)


def measure(batch: int, context: int, heads: int, dtype, vops, impls, fp8: bool = False) -> dict:
    case = Case(batch, context, heads, dtype, fp8)
    row = {"heads": heads, "batch": batch, "context": context}
    for impl in impls:
        if impl == "reference" and case.kv_bytes > REFERENCE_MAX_KV_BYTES:
            continue
        row[f"{impl}_ms"] = bench_cpu_ms(case.ours(impl), scope=pinned(mla=impl))
        if fp8:
            row[f"{impl}_fp8_ms"] = bench_cpu_ms(case.ours(impl, fp8=True), scope=pinned(mla=impl))
    if vops is not None:
        row["vllm_ms"] = bench_cpu_ms(case.theirs(vops))
        if "native" in impls:
            with ops.use_impl(mla="native"):
                case.ours("native")()
            row["max_diff_vs_vllm"] = float((case.vout.float() - case.out[:, 0].float()).abs().max())
    for key in [k for k in row if k.endswith("_ms")]:
        name = key[:-3]
        row[f"{name}_GBps"] = case.kv_bytes / row[key] / 1e6
        row[f"{name}_GFLOPs"] = case.flops / row[key] / 1e6
    if "native_ms" in row and "vllm_ms" in row:
        row["vllm_over_native"] = row["vllm_ms"] / row["native_ms"]
    if "native_fp8_ms" in row:
        row["fp8_speedup"] = row["native_ms"] / row["native_fp8_ms"]
    return row


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for heads in sorted({r["heads"] for r in result["rows"]}):
        for batch in sorted({r["batch"] for r in result["rows"] if r["heads"] == heads}):
            rows = [r for r in result["rows"] if r["heads"] == heads and r["batch"] == batch]
            ctx = [r["context"] for r in rows]
            label = f"H{heads} b{batch}"
            if all("vllm_over_native" in r for r in rows):
                axes[0].plot(ctx, [r["vllm_over_native"] for r in rows], "o-", label=label)
            axes[1].plot(ctx, [r["native_GBps"] for r in rows], "o-", label=f"native {label}")
            axes[2].plot(ctx, [r["native_GFLOPs"] for r in rows], "o-", label=f"native {label}")
            if all("vllm_ms" in r for r in rows):
                axes[1].plot(ctx, [r["vllm_GBps"] for r in rows], "x--", label=f"vLLM {label}")
                axes[2].plot(ctx, [r["vllm_GFLOPs"] for r in rows], "x--", label=f"vLLM {label}")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xscale="log", xlabel="context", ylabel="vLLM time / native time", title="MLA decode speedup vs vLLM")
    axes[1].axhline(result["host_read_GBps"], color="r", lw=0.8, label="host read roofline")
    axes[1].set(xscale="log", yscale="log", xlabel="context", ylabel="latent GB/s", title="cache read rate")
    axes[2].axhline(result["host_matmul_GFLOPs"], color="r", lw=0.8, label=f"{result['dtype']} matmul")
    axes[2].set(xscale="log", yscale="log", xlabel="context", ylabel="GFLOP/s", title="arithmetic rate")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.suptitle(f"CPU MLA decode, {result['dtype']}, {result['threads']} threads, {result['environment']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep(mode: str) -> list[tuple[int, int, int]]:
    """(heads, batch, context) cases."""
    if mode == "smoke":
        return [(4, 2, 40), (16, 1, 300)]
    tiny = [(4, 8, ctx) for ctx in (64, 128)]   # the e2e tiny DeepSeek's decode step
    if mode == "quick":
        return tiny + [(h, b, ctx) for h in (16, 128) for b in (1, 8) for ctx in (1024, 8192)]
    return tiny + [(h, b, ctx) for h in (16, 128) for b in (1, 8, 32) for ctx in (256, 1024, 4096, 16384)
                   if b * ctx <= 131072]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true", help="two tiny cases: checks the script runs")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--fp8", action="store_true", help="also time an fp8 (e4m3) copy of each cache")
    args = parser.parse_args()
    if args.fp8 and args.dtype == "float32":
        parser.error("--fp8 takes float16 or bfloat16 queries")
    dtype = getattr(torch, args.dtype)
    vops = _vllm_mla()
    if vops is None:
        print("vLLM's CPU MLA decode kernel is not installed: comparing native and reference only")
    impls = ["reference"] + (["native"] if ops.selected_impl("mla_decode", "cpu") == "native" else [])
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    rows = []
    for heads, batch, context in sweep(mode):
        rows.append(measure(batch, context, heads, dtype, vops, impls, args.fp8))
        print(f"H{heads} b{batch} ctx{context}: " + ", ".join(f"{k}={rows[-1][k]:.3g}" for k in rows[-1]
                                                             if k.endswith("_ms")), flush=True)
    result = {"environment": environment(), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "cpu": _cpu_name(), "load_average": os.getloadavg(), "mode": mode,
              "host_read_GBps": host_read_gbps(1 << 26 if args.smoke else 1 << 29),
              "host_matmul_GFLOPs": host_matmul_gflops(dtype, 256 if args.smoke else 1024),
              "shape": {"kv_lora_rank": RANK, "rope": ROPE, "block": BLOCK, "s_q": 1}, "rows": rows}
    print_table(f"MLA decode, {args.dtype}, {result['threads']} threads, load {result['load_average'][0]:.2f}; "
                f"host read {result['host_read_GBps']:.0f} GB/s, {args.dtype} matmul "
                f"{result['host_matmul_GFLOPs']:.0f} GFLOP/s", rows,
                ["heads", "batch", "context", "native_ms", "vllm_ms", "reference_ms", "native_GBps", "vllm_GBps",
                 "native_GFLOPs", "vllm_GFLOPs", "vllm_over_native", "max_diff_vs_vllm"]
                + (["native_fp8_ms", "reference_fp8_ms", "fp8_speedup"] if args.fp8 else []))
    name = f"cpu_mla_{args.dtype}" + ("_fp8" if args.fp8 else "") + ("_smoke" if args.smoke else "")
    print("\nwrote", write_json(f"{name}.json", result))
    plot(result, os.path.join(out_dir(), f"{name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
