"""MLA decode benchmark on one CUDA GPU (absorbed form, paged 576-wide latent cache, bf16).

Batch 1-128 x context 1k-32k, Hq 16 and 128, s_q 1 and 2: achieved bandwidth (latent
bytes read / time) against the measured copy bandwidth and TFLOP/s against the
measured bf16 matmul rate, side by side with a naive torch implementation
(gather + matmuls) and, when the run carries it, the previous kernel (legacy) in the
same run; FP8 (e4m3, per-tensor scale) rows at batch 32/128. Times are CUDA-graph
replays (device time); the eager column adds host launch overhead. The sweep part
times tile/stage/TMA/warp-specialisation/split variants on representative shapes.

    python benchmarks/mla.py [--quick] [--parts sweep,splits,decode]   # parts run in the order given

Writes mla.json and mla.png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (bench_graph_ms, bench_ms, device_ceilings, env_shapes, environment,  # noqa: E402
                    print_table, split_breakdown, widened_table, write_json)

from ascend_ext import ops  # noqa: E402
from ascend_ext.backends.cuda import configs as cuda_configs  # noqa: E402
from ascend_ext.kernels.triton import mla_decode as triton_decode  # noqa: E402

mla_plan = cuda_configs.mla_plan

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


def _legacy():
    """The previous kernel (16-row mma.sync / 64-row tiles, pointer loads), when the run carries
    it as ascend_ext/kernels/triton/_legacy_decode.py (a copy of the old mla_decode.py, not in git)."""
    try:
        from ascend_ext.kernels.triton import _legacy_decode
        return _legacy_decode.mla_decode
    except ImportError:
        return None


def _time(fn, eager: bool) -> tuple[float, float | None]:
    fn()
    return bench_graph_ms(fn), (bench_ms(fn) if eager else None)


def _label(plan: dict) -> str:
    return (f"{plan['path']} M{plan['BLOCK_M']} N{plan['BLOCK_N']} w{plan['num_warps']} s{plan['num_stages']} "
            f"tma{int(plan['TMA'])}{' T' if plan['TRANS'] else ''}{' pdl' if plan.get('PDL') else ''} x{plan['num_splits']}")


def _line(row: dict) -> None:
    keys = ("Hq", "s_q", "B", "ctx", "kv", "plan", "us", "pct_copy_bw", "pct_matmul", "speedup_vs_legacy")
    print(" ".join(f"{k}={row[k]:.3g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}" for k in keys),
          flush=True)


def decode(ceil: dict, quick: bool, fp8: bool = True, sink=None) -> list[dict]:
    rows = []
    legacy = _legacy()
    batches = [1, 8, 32, 128] if quick else [1, 8, 32, 64, 128]
    contexts = [1024, 4096, 16384] if quick else [1024, 4096, 16384, 32768]
    for hq in (16, 128):
        for s_q in (1, 2):
            for b in batches:
                for ctx in contexts:
                    latent_bytes = b * ctx * (RANK + ROPE) * 2
                    if latent_bytes > 8e9 or (quick and ctx == 1024 and b not in (1, 32)):
                        continue
                    cache, table, lens, q = _setup(b, ctx, hq, s_q)
                    out = torch.empty(b, s_q, hq, RANK, device=DEV, dtype=torch.bfloat16)
                    plan = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=ctx, rank=RANK, rope=ROPE,
                                    cache_block=BLOCK, q_dtype=q.dtype, kv_dtype=cache.dtype)
                    def run():   # the implementation is pinned around the timing (use_impl re-selects)
                        with ops.trusted_inputs():
                            return ops.mla_decode(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                  out=out)
                    try:
                        with ops.use_impl(mla="triton"):
                            t, t_eager = _time(run, eager=b in (1, 32))
                    except Exception as exc:   # keep the run going: record and move on
                        rows.append({"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "kv": "bf16",
                                     "us": f"failed: {type(exc).__name__}: {str(exc)[:200]}"})
                        print(rows[-1], flush=True)
                        continue
                    flops = 2 * b * s_q * hq * ctx * (RANK + ROPE + RANK)
                    row = {"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "kv": "bf16", "plan": _label(plan),
                           "us": t * 1e3, "eager_us": t_eager * 1e3 if t_eager else None,
                           "GBps": latent_bytes / t / 1e6, "pct_copy_bw": 100 * latent_bytes / t / 1e6 / ceil["copy_GBps"],
                           "TF": flops / t / 1e9, "pct_matmul": 100 * flops / t / 1e9 / ceil["matmul_bf16_TFLOPs"]}
                    if legacy is not None:
                        out_old = torch.empty_like(out)
                        t_old, _ = _time(lambda: legacy(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                        causal=True, out=out_old, return_lse=False), eager=False)
                        row["legacy_us"] = t_old * 1e3
                        row["speedup_vs_legacy"] = t_old / t
                        row["max_diff_vs_legacy"] = (out_old.float() - out.float()).abs().max().item()
                    if latent_bytes <= 1.2e9 and b * hq * s_q * ctx <= 64 * 128 * 2 * 4096:
                        naive = _naive(cache, table, lens, q)
                        ref = naive()
                        row["max_err_vs_naive"] = (ref.float() - out.float()).abs().max().item()
                        row["naive_us"] = bench_ms(naive) * 1e3
                        row["speedup_vs_naive"] = row["naive_us"] / row["us"]
                    if fp8 and b in (32, 128) and ctx in (4096, 16384):
                        rows.append(row)
                        _line(row)
                        plan8 = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=ctx, rank=RANK, rope=ROPE,
                                         cache_block=BLOCK, q_dtype=q.dtype, kv_dtype=torch.float8_e4m3fn)
                        row = dict(row, kv="fp8", plan=_label(plan8))
                        for k in ("legacy_us", "speedup_vs_legacy", "max_diff_vs_legacy", "naive_us",
                                  "speedup_vs_naive", "eager_us"):
                            row.pop(k, None)
                        scale = float(cache.abs().amax()) / 448
                        cache8 = (cache / scale).to(torch.float8_e4m3fn)
                        out8 = torch.empty_like(out)
                        with ops.use_impl(mla="triton"), ops.trusted_inputs():
                            t8, _ = _time(lambda: ops.mla_decode(q, cache8, table, lens, kv_lora_rank=RANK,
                                                                 softmax_scale=SCALE, out=out8, kv_scale=scale),
                                          eager=False)
                        bytes8 = latent_bytes // 2
                        row.update(us=t8 * 1e3, GBps=bytes8 / t8 / 1e6,
                                   pct_copy_bw=100 * bytes8 / t8 / 1e6 / ceil["copy_GBps"], TF=flops / t8 / 1e9,
                                   pct_matmul=100 * flops / t8 / 1e9 / ceil["matmul_bf16_TFLOPs"],
                                   max_diff_fp8_vs_bf16=(out8.float() - out.float()).abs().max().item())
                        del cache8
                    rows.append(row)
                    _line(row)
                    if sink is not None:
                        sink(rows)
                    del cache, q
                    torch.cuda.empty_cache()
    return rows


# (BLOCK_M, BLOCK_N, num_warps, num_stages, extra) per path; row 0 is the pre-issue-15-session-2
# default (row-major MMAs), TRANS rows the transposed (keys x rows) formulation
SWEEP = {"memory": [(16, 64, 8, 3, {"TRANS": False}), (16, 64, 8, 2, {"TRANS": True}), (16, 64, 4, 2, {"TRANS": True}),
                    (32, 64, 8, 2, {"TRANS": True}), (32, 64, 4, 2, {"TRANS": True}),
                    # two programs per SM (<= 113 KiB shared, 4 warps x <= 255 registers; compile_report)
                    (16, 32, 4, 3, {"TRANS": False}), (16, 32, 4, 2, {"TRANS": False}), (16, 16, 4, 4, {"TRANS": False})],
         "compute": [(64, 64, 8, 2, {"TRANS": False}), (64, 64, 8, 2, {"TRANS": True}), (32, 64, 8, 2, {"TRANS": True}),
                     (32, 64, 4, 2, {"TRANS": True})]}
# extra split counts (relative to the plan's) timed with these variants of each path
SPLIT_VARIANTS = {"memory": [(16, 64, 8, 2, {"TRANS": True}), (32, 64, 8, 2, {"TRANS": True}),
                             (16, 32, 4, 3, {"TRANS": False}), (16, 16, 4, 4, {"TRANS": False})],
                  "compute": [(64, 64, 8, 2, {"TRANS": True})]}
FP8_VARIANTS = {"memory": [(16, 64, 8, 3, {"TRANS": False}), (16, 64, 8, 2, {"TRANS": True})],
                "compute": [(64, 64, 8, 2, {"TRANS": False}), (64, 64, 8, 3, {"TRANS": False}),
                            (64, 64, 8, 2, {"TRANS": True})]}


# part "splits": split counts around the plan's for the planned tiles of these shapes
# (MLA_SPLIT_SHAPES="Hq,s_q,B,ctx;..." overrides them)
SPLIT_SHAPES = env_shapes("MLA_SPLIT_SHAPES", ((16, 1, 32, 4096), (16, 2, 32, 4096), (16, 2, 32, 16384),
                                               (128, 1, 32, 4096), (128, 1, 32, 16384), (128, 2, 32, 4096)))


def split_sweep(ceil: dict) -> list[dict]:
    rows = []
    for hq, s_q, b, ctx in SPLIT_SHAPES:
        cache, table, lens, q = _setup(b, ctx, hq, s_q)
        out = torch.empty(b, s_q, hq, RANK, device=DEV, dtype=torch.bfloat16)
        plan = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=ctx, rank=RANK, rope=ROPE, cache_block=BLOCK,
                        q_dtype=q.dtype, kv_dtype=cache.dtype)
        auto = plan["num_splits"]
        # the plan's split count also with the other PDL setting (combine launched plainly / early)
        for splits, cfg in [(n, None) for n in sorted({max(1, auto // 2), auto, auto * 2})] + \
                [(auto, {"PDL": not plan["PDL"]})] * (auto > 1):
            def run():
                return triton_decode.mla_decode(q, cache, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                causal=True, out=out, return_lse=False, configs=cuda_configs,
                                                num_splits=splits, config=cfg)
            t, _ = _time(run, eager=False)
            flops = 2 * b * s_q * hq * ctx * (RANK + ROPE + RANK)
            nbytes = b * ctx * (RANK + ROPE) * 2
            rows.append({"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx,
                         "cfg": f"{_label(dict(plan, num_splits=splits, **(cfg or {})))}"
                                f"{' (plan)' if splits == auto and cfg is None else ''}",
                         "us": t * 1e3, "GBps": nbytes / t / 1e6, "pct_copy_bw": 100 * nbytes / t / 1e6 / ceil["copy_GBps"],
                         "TF": flops / t / 1e9, "pct_matmul": 100 * flops / t / 1e9 / ceil["matmul_bf16_TFLOPs"]})
            if splits == auto and splits > 1 and cfg is None:
                rows[-1].update(split_breakdown(triton_decode, run, splits, out.view(b * s_q, hq, RANK)))
            print(rows[-1], flush=True)
        if ctx == 4096:   # as vLLM calls it: a block table sized for max_model_len (here 32k keys)
            rows.append(_capacity_row(cache, table, lens, q, out, 32768, ceil))
            print(rows[-1], flush=True)
        del cache
        torch.cuda.empty_cache()
    return rows


def _capacity_row(cache, table, lens, q, out, capacity, ceil) -> dict:
    """MLA decode through a block table ``capacity`` keys wide (extra columns point at random
    blocks): the plan (splits, tiles) is the capacity's, each sequence cuts its own keys."""
    b, s_q, hq, _ = q.shape
    ctx = int(lens[0])
    wide = widened_table(table, capacity, BLOCK, cache.shape[0])
    plan = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=capacity, rank=RANK, rope=ROPE, cache_block=BLOCK,
                    q_dtype=q.dtype, kv_dtype=cache.dtype)

    def run():
        with ops.trusted_inputs():
            return ops.mla_decode(q, cache, wide, lens, kv_lora_rank=RANK, softmax_scale=SCALE, out=out)
    with ops.use_impl(mla="triton"):
        t, _ = _time(run, eager=False)
    nbytes = b * ctx * (RANK + ROPE) * 2
    return {"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "cfg": f"capacity {capacity}: {_label(plan)}", "us": t * 1e3,
            "GBps": nbytes / t / 1e6, "pct_copy_bw": 100 * nbytes / t / 1e6 / ceil["copy_GBps"]}


# part "sweep": its shapes (Hq, s_q, B, ctx); MLA_SWEEP_SHAPES="Hq,s_q,B,ctx;..." overrides them
SWEEP_SHAPES = env_shapes("MLA_SWEEP_SHAPES", ((16, 1, 32, 4096), (16, 2, 32, 4096), (128, 1, 32, 4096),
                                               (128, 2, 32, 4096)))


def sweep(ceil: dict, shapes=SWEEP_SHAPES) -> list[dict]:
    rows = []
    for hq, s_q, b, ctx in shapes:
        cache, table, lens, q = _setup(b, ctx, hq, s_q)
        scale8 = float(cache.abs().amax()) / 448
        cache8 = (cache / scale8).to(torch.float8_e4m3fn)
        out = torch.empty(b, s_q, hq, RANK, device=DEV, dtype=torch.bfloat16)
        path = "compute" if hq * s_q >= 64 else "memory"
        variants = [(c, None, False) for c in SWEEP[path]]
        for c in SPLIT_VARIANTS[path]:
            cfg = dict(BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3], **c[4])
            auto = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=ctx, rank=RANK, rope=ROPE,
                            cache_block=BLOCK, q_dtype=q.dtype, kv_dtype=cache.dtype, config=cfg)["num_splits"]
            variants += [(c, n, False) for n in sorted({max(1, auto // 2), auto * 2}) if n != auto]
        variants += [(c, None, True) for c in FP8_VARIANTS[path]]
        for (block_m, block_n, warps, stages, extra), splits, fp8 in variants:
            cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **extra)
            kv = cache8 if fp8 else cache
            planned = mla_plan(q.device, batch=b, heads=hq, s_q=s_q, max_len=ctx, rank=RANK, rope=ROPE,
                               cache_block=BLOCK, q_dtype=q.dtype, kv_dtype=kv.dtype, config=cfg, num_splits=splits)
            label = (f"{'fp8 ' if fp8 else ''}M{block_m} N{block_n} w{warps} s{stages} "
                     f"{'T' if extra.get('TRANS') else 'R'} x{planned['num_splits']}{'' if splits else '(plan)'}")

            def run():
                return triton_decode.mla_decode(q, kv, table, lens, kv_lora_rank=RANK, softmax_scale=SCALE,
                                                causal=True, out=out, return_lse=False, configs=cuda_configs,
                                                config=cfg, num_splits=splits, kv_scale=scale8 if fp8 else None)
            try:
                t, _ = _time(run, eager=False)
                flops = 2 * b * s_q * hq * ctx * (RANK + ROPE + RANK)
                nbytes = b * ctx * (RANK + ROPE) * kv.element_size()
                rows.append({"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "cfg": label, "us": t * 1e3,
                             "GBps": nbytes / t / 1e6, "pct_copy_bw": 100 * nbytes / t / 1e6 / ceil["copy_GBps"],
                             "TF": flops / t / 1e9, "pct_matmul": 100 * flops / t / 1e9 / ceil["matmul_bf16_TFLOPs"]})
            except Exception as exc:
                rows.append({"Hq": hq, "s_q": s_q, "B": b, "ctx": ctx, "cfg": label,
                             "us": f"failed: {type(exc).__name__}: {str(exc)[:80]}"})
            print(rows[-1], flush=True)
        del cache, cache8
        torch.cuda.empty_cache()
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (hq, s_q, key, label) in zip(axes, ((16, 1, "GBps", "GB/s of latent read"), (128, 2, "TF", "TFLOP/s"))):
        pts = [r for r in result.get("decode", []) if r["Hq"] == hq and r["s_q"] == s_q and r.get("kv") == "bf16"
               and isinstance(r.get("us"), float)]
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
    result = {"env": environment(), "ceilings": device_ceilings()}
    print(result["env"], result["ceilings"])
    cols = ["Hq", "s_q", "B", "ctx", "cfg", "us", "GBps", "pct_copy_bw", "TF", "pct_matmul"]
    for part in args.parts.split(","):   # in the order given
        if part == "sweep":
            result["sweep"] = sweep(result["ceilings"])
            print_table("MLA tile sweep (graph replay; R = row-major MMAs, T = transposed)", result["sweep"], cols)
        elif part == "splits":
            result["splits"] = split_sweep(result["ceilings"])
            print_table("MLA split-count sweep around the plan (graph replay)", result["splits"],
                        cols + ["split_only_us", "combine_only_us"])
        elif part == "decode":
            result["decode"] = decode(result["ceilings"], args.quick,
                                      sink=lambda rows: write_json("mla.json", dict(result, decode=rows)))
            print_table(f"MLA decode, latent 512+64, block {BLOCK} (us = CUDA-graph replay; legacy = previous kernel)",
                        result["decode"],
                        ["Hq", "s_q", "B", "ctx", "kv", "plan", "us", "eager_us", "GBps", "pct_copy_bw", "TF",
                         "pct_matmul", "legacy_us", "speedup_vs_legacy", "naive_us", "speedup_vs_naive",
                         "max_err_vs_naive", "max_diff_vs_legacy", "max_diff_fp8_vs_bf16"])
        else:
            parser.error(f"unknown part {part!r}")
        write_json("mla.json", result)
        sys.stdout.flush()
    path = write_json("mla.json", result)
    plot(result, path.replace(".json", ".png"))
    print(f"\nwrote {path} and mla.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
