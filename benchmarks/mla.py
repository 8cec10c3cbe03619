"""MLA decode benchmark on one CUDA GPU (absorbed form, paged 576-wide latent cache, bf16).

Batch 1-128 x context 1k-32k, Hq 16 and 128, s_q 1 and 2: achieved bandwidth (latent
bytes read / time) against the measured copy bandwidth and TFLOP/s against the
measured bf16 matmul rate, side by side with a naive torch implementation
(gather + matmuls) in the same run. Times are CUDA-graph replays (device time);
the eager column adds host launch overhead.

    python benchmarks/mla.py [--quick] [--parts sweep,decode]

Writes mla.json and mla.png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_graph_ms, bench_ms, device_ceilings, environment, print_table, write_json  # noqa: E402

from ascend_ext import ops  # noqa: E402
from ascend_ext.kernels.triton import mla_decode as triton_decode  # noqa: E402

DEV = "cuda"
RANK, ROPE, BLOCK = 512, 64, 64
SCALE = (128 + 64) ** -0.5


def _setup(b, ctx, hq, s_q):
    nblk = b * ctx // BLOCK
    cache = torch.randn(nblk, BLOCK, RANK + ROPE, device=DEV, dtype=torch.bfloat16)
    table = torch.randperm(nblk, device=DEV, dtype=torch.int32).view(b, ctx // BLOCK)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    q = torch.randn(b, s_q, hq, RANK + ROPE, device=DEV, dtype=torch.bfloat16)
    return cache, table, lens, q


def _naive(cache, table, lens, q):
    b, s_q, hq, _ = q.shape
    ctx = int(lens[0])

    def run():
        latent = cache[table.long()].view(b, ctx, RANK + ROPE)                     # gather
        scores = torch.einsum("bshd,bld->bhsl", q, latent).float() * SCALE
        pos = torch.arange(s_q, device=DEV)[:, None] + ctx - s_q
        scores = scores.masked_fill(torch.arange(ctx, device=DEV)[None, :] > pos, float("-inf"))
        p = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.einsum("bhsl,blr->bshr", p, latent[..., :RANK])
    return run


def decode(ceil: dict, quick: bool) -> list[dict]:
    rows = []
    batches = [1, 8, 32, 128] if quick else [1, 8, 32, 64, 128]
    contexts = [1024, 4096, 16384] if quick else [1024, 4096, 16384, 32768]
    for hq in (16, 128):
        for s_q in (1, 2):
            for b in batches:
                for ctx in contexts:
                    latent_bytes = b * ctx * (RANK + ROPE) * 2
                    if latent_bytes > 8e9:
                        continue
                    cache, table, lens, q = _setup(b, ctx, hq, s_q)
                    out = torch.empty(b, s_q, hq, RANK, device=DEV, dtype=torch.bfloat16)
                    with ops.use_impl(mla="triton"), ops.trusted_inputs():
                        def run():
                            return ops.mla_decode(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                  out=out)
                        run()
                        t = bench_graph_ms(run)
                        t_eager = bench_ms(run)
                    flops = 2 * b * s_q * hq * ctx * (RANK + ROPE + RANK)
                    row = {"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "us": t * 1e3, "eager_us": t_eager * 1e3,
                           "GBps": latent_bytes / t / 1e6, "pct_copy_bw": 100 * latent_bytes / t / 1e6 / ceil["copy_GBps"],
                           "TF": flops / t / 1e9, "pct_matmul": 100 * flops / t / 1e9 / ceil["matmul_bf16_TFLOPs"]}
                    if latent_bytes <= 1.2e9 and b * hq * s_q * ctx <= 64 * 128 * 2 * 4096:
                        naive = _naive(cache, table, lens, q)
                        ref = naive()
                        row["max_err_vs_naive"] = (ref.float() - out.float()).abs().max().item()
                        row["naive_us"] = bench_ms(naive) * 1e3
                        row["speedup_vs_naive"] = row["naive_us"] / row["us"]
                    rows.append(row)
                    del cache, q
                    torch.cuda.empty_cache()
    return rows


SWEEP = [(16, 32, 4, 3), (16, 32, 8, 3), (16, 64, 4, 2), (16, 16, 4, 3),
         (32, 32, 8, 3), (64, 32, 8, 2), (64, 16, 8, 3), (64, 32, 8, 3)]


def sweep(ceil: dict) -> list[dict]:
    rows = []
    for hq, s_q, b, ctx in ((16, 1, 64, 4096), (16, 1, 1, 32768), (128, 2, 32, 4096), (128, 1, 64, 4096)):
        cache, table, lens, q = _setup(b, ctx, hq, s_q)
        out = torch.empty(b, s_q, hq, RANK, device=DEV, dtype=torch.bfloat16)
        for block_m, block_n, warps, stages in SWEEP:
            if block_m < hq * s_q and block_m == 16 and hq > 16:
                continue
            cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)

            def run():
                return triton_decode.mla_decode(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                causal=True, out=out, return_lse=False, config=cfg)
            try:
                t = bench_graph_ms(run)
                flops = 2 * b * s_q * hq * ctx * (RANK + ROPE + RANK)
                rows.append({"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "cfg": f"M{block_m} N{block_n} w{warps} s{stages}",
                             "us": t * 1e3, "GBps": b * ctx * (RANK + ROPE) * 2 / t / 1e6, "TF": flops / t / 1e9})
            except Exception as exc:
                rows.append({"Hq": hq, "s_q": s_q, "cfg": f"M{block_m} N{block_n} w{warps} s{stages}",
                             "us": f"failed: {type(exc).__name__}"})
        del cache
        torch.cuda.empty_cache()
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (hq, s_q, key, label) in zip(axes, ((16, 1, "GBps", "GB/s of latent read"), (128, 2, "TF", "TFLOP/s"))):
        pts = [r for r in result.get("decode", []) if r["Hq"] == hq and r["s_q"] == s_q]
        for b in sorted({r["B"] for r in pts}):
            sel = [r for r in pts if r["B"] == b]
            ax.plot([r["ctx"] for r in sel], [r[key] for r in sel], marker="o", label=f"batch {b}")
        ceiling = result["ceilings"]["copy_GBps" if key == "GBps" else "matmul_bf16_TFLOPs"]
        ax.axhline(ceiling, color="k", ls="--", label="measured ceiling")
        ax.set_xscale("log", base=2)
        ax.set_title(f"MLA decode Hq={hq}, s_q={s_q}")
        ax.set_xlabel("context")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="decode")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    result = {"env": environment(), "ceilings": device_ceilings()}
    print(result["env"], result["ceilings"])
    if "sweep" in parts:
        result["sweep"] = sweep(result["ceilings"])
        print_table("MLA tile sweep (graph replay)", result["sweep"], ["Hq", "s_q", "B", "ctx", "cfg", "us", "GBps", "TF"])
        sys.stdout.flush()
    if "decode" in parts:
        result["decode"] = decode(result["ceilings"], args.quick)
        print_table(f"MLA decode bf16, latent 512+64, block {BLOCK} (us = CUDA-graph replay)", result["decode"],
                    ["Hq", "s_q", "B", "ctx", "us", "eager_us", "GBps", "pct_copy_bw", "TF", "pct_matmul",
                     "naive_us", "speedup_vs_naive", "max_err_vs_naive"])
    path = write_json("mla.json", result)
    plot(result, path.replace(".json", ".png"))
    print(f"\nwrote {path} and mla.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
