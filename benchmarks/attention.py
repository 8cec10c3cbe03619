"""Attention benchmarks on one CUDA GPU: prefill, document masks, paged decode, tiling ablation.

Everything is measured in one run against anchors measured in the same run: torch
SDPA's FLASH (FA2), CUDNN and EFFICIENT backends, naive attention, flex_attention with
a BlockMask, the device's copy bandwidth and bf16 matmul rate.

    python benchmarks/attention.py                 # full run, ~5 min on an H100
    python benchmarks/attention.py --parts prefill,decode --quick
    python benchmarks/attention.py --parts sweep   # tile-configuration sweep
    python benchmarks/attention.py --parts decode --kv-dtype both   # fp8 KV cache vs bf16, same run
    python benchmarks/attention.py --parts cascade # shared-prefix batches: cascade vs plain paged

Prints markdown tables, writes attention.json and attention.png to $OUT (or
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cascade  # noqa: E402
from common import (bench_graph_ms, bench_ms, device_ceilings, environment, print_table,  # noqa: E402
                    env_shapes, read_floor_us, split_breakdown, widened_table, write_json)

from ascend_ext import ops  # noqa: E402
from ascend_ext.ops import TileMask  # noqa: E402
from ascend_ext.backends.cuda import configs as cuda_configs  # noqa: E402
from ascend_ext.kernels.triton import flash_attention as triton_flash  # noqa: E402
from ascend_ext.kernels.triton import paged_attention as triton_paged  # noqa: E402

DEV = "cuda"
TOKENS = 32768          # B * S per prefill shape
COPY_GBPS = [float("nan")]   # filled in by main() from the measured ceiling


def _cu(lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEV)


def _flops(b, s, hq, d, causal):
    return 4 * b * s * s * hq * d * (0.5 if causal else 1.0)


def _sdpa(backend, q4, k4, v4, causal, mask=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def run():
        with sdpa_kernel(which):
            return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, is_causal=causal and mask is None)
    return run


def _naive(q4, k4, v4, causal):
    s = q4.shape[2]
    scale = q4.shape[-1] ** -0.5
    tri = torch.ones(s, s, dtype=torch.bool, device=DEV).tril() if causal else None

    def run():
        scores = (q4 @ k4.transpose(-1, -2)) * scale
        if tri is not None:
            scores = scores.masked_fill(~tri, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q4.dtype) @ v4
    return run


def _try_ms(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return bench_ms(fn)
    except Exception as exc:  # a backend that refuses a shape is reported, not fatal
        return f"n/a ({type(exc).__name__})"


def prefill(quick: bool) -> list[dict]:
    rows = []
    seqs = [1024, 4096, 16384] if quick else [1024, 4096, 16384, 32768]
    for d in (128, 64):
        for name, hq, hkv in (("MHA", 32, 32), ("GQA8", 32, 4)):
            for s in seqs:
                for causal in (True, False):
                    b = max(1, TOKENS // s)
                    q = torch.randn(b * s, hq, d, device=DEV, dtype=torch.bfloat16)
                    k = torch.randn(b * s, hkv, d, device=DEV, dtype=torch.bfloat16)
                    v = torch.randn(b * s, hkv, d, device=DEV, dtype=torch.bfloat16)
                    cu = _cu([s] * b)
                    out = torch.empty_like(q)

                    def ours():
                        return ops.flash_attn_varlen(q, k, v, cu, cu, s, s, causal=causal, out=out)
                    q4 = q.view(b, s, hq, d).transpose(1, 2)
                    k4 = k.view(b, s, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1)
                    v4 = v.view(b, s, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, 1)
                    with ops.use_impl(attention="triton"), ops.trusted_inputs():
                        ours()
                        ref = _sdpa("flash", q4, k4, v4, causal)()
                        err = (out.view(b, s, hq, d).transpose(1, 2).float() - ref.float()).abs().max().item()
                        t_ours = bench_ms(ours)
                    flops = _flops(b, s, hq, d, causal)
                    row = {"d": d, "heads": name, "S": s, "B": b, "causal": causal, "max_err_vs_fa2": err,
                           "ours_TF": flops / t_ours / 1e9}
                    for backend in ("flash", "cudnn", "efficient"):
                        t = _try_ms(_sdpa(backend, q4, k4, v4, causal))
                        row[f"{backend}_TF"] = flops / t / 1e9 if isinstance(t, float) else t
                    if s <= 4096:
                        t = _try_ms(_naive(q4, k4, v4, causal))
                        row["naive_TF"] = flops / t / 1e9 if isinstance(t, float) else t
                    for backend in ("flash", "cudnn"):
                        if isinstance(row[f"{backend}_TF"], float):
                            row[f"vs_{backend}"] = row["ours_TF"] / row[f"{backend}_TF"]
                    rows.append(row)
                    del q, k, v, q4, k4, v4, out
                    torch.cuda.empty_cache()
    return rows


def _doc_offsets(s: int, docs: int = 8) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    cuts = sorted(torch.randperm(s - 1, generator=gen)[:docs - 1].add(1).tolist())
    return [0] + cuts + [s]


def _mask_case(name: str, s: int):
    """(TileMask, causal, window, flex mask_mod, useful score count, varlen-docs offsets or None)."""
    if name in ("documents", "window+documents"):
        offsets = _doc_offsets(s)
        doc_ids = torch.zeros(s, dtype=torch.int32, device=DEV)
        for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
            doc_ids[a:b] = i
        left = 512 if name == "window+documents" else -1

        def mod(b, h, qi, ki):
            ok = (doc_ids[qi] == doc_ids[ki]) & (qi >= ki)
            return ok & (qi - ki <= left) if left >= 0 else ok
        lens = [b - a for a, b in zip(offsets, offsets[1:])]
        useful = sum(sum(min(i + 1, left + 1 if left >= 0 else i + 1) for i in range(n)) for n in lens)
        return TileMask.document(offsets, tile=(128, 128)), True, (left, 0), mod, useful, offsets
    # random block-sparse: each 128x128 tile kept with probability 0.3, the diagonal always
    gen = torch.Generator().manual_seed(1)
    nt = s // 128
    keep = torch.rand(nt, nt, generator=gen) < 0.3
    keep |= torch.eye(nt, dtype=torch.bool)
    codes = torch.where(keep, -1, -2).long()
    tm = TileMask._from_codes(s, s, 128, 128, codes, torch.zeros(0, 128, 128, dtype=torch.bool))
    keep_dev = keep.to(DEV)

    def mod(b, h, qi, ki):
        return keep_dev[qi // 128, ki // 128]
    return tm, False, (-1, -1), mod, int(keep.sum()) * 128 * 128, None


# tile variants timed on the window+documents case (the config table's d128 entry + these keys)
WINDOW_TILES = {"M128N64": dict(BLOCK_N=64), "M64N128w4": dict(SUB_M=64, num_warps=4, WS=False),
                "M64N64w4": dict(SUB_M=64, BLOCK_N=64, num_warps=4, WS=False, num_stages=3),
                "M128N128s2": dict(num_stages=2)}


# block-sparse walk variants (the 128 x 128 mask tiles fix SUB_M * NUM_SUB and BLOCK_N)
SPARSE_TILES = {"pointers": dict(MASK_TMA=False), "sub2x64": dict(NUM_SUB=2, SUB_M=64), "s2": dict(num_stages=2),
                "sub2x64s2": dict(NUM_SUB=2, SUB_M=64, num_stages=2)}


def masks() -> list[dict]:
    """Tiling-mask cases against flex_attention with the equivalent BlockMask (16k tokens,
    16 heads, d128, bf16): 8 causal documents, the same with a 512-key sliding window,
    random 30% block-sparse tiles. 'ours' takes the default path (a document mask runs as the
    varlen batch of its documents), 'runs' forces the stored run/pool walk (full tiles of a
    row in one loop), 'runs_nowalk' the previous one-loop-per-run kernel."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    s, h, d = 16384, 16, 128
    q = torch.randn(s, h, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(s, h, d, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(s, h, d, device=DEV, dtype=torch.bfloat16)
    q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    cu_full = _cu([s])
    flex = torch.compile(flex_attention)
    cfg_runs = dict(cuda_configs.flash_config(q.device, d, q.dtype), TILE_RUNS=True)
    t_causal = None
    rows = []
    for name in ("documents", "window+documents", "block-sparse"):
        tm, causal, window, mod, useful, offsets = _mask_case(name, s)
        tm = tm.to(DEV)
        stats = tm.stats()
        flops = 4 * useful * h * d
        block_mask = create_block_mask(mod, None, None, s, s, device=DEV)
        ref = flex(q4, k4, v4, block_mask=block_mask)[0].transpose(0, 1)
        t_flex = bench_ms(lambda: flex(q4, k4, v4, block_mask=block_mask))
        row = {"case": name, "flex_ms": t_flex, "tiles": f"{stats['full']} full / {stats['partial']} partial"}
        with ops.use_impl(attention="triton"), ops.trusted_inputs():
            def ours():
                return ops.flash_attn_varlen(q, k, v, cu_full, cu_full, s, s, causal=causal, window_size=window,
                                             mask=tm)
            row["max_diff_vs_flex"] = float((ours().float() - ref.float()).abs().max())
            row["ours_ms"] = bench_ms(ours)

            def runs():
                return triton_flash.flash_attn_varlen(q, k, v, cu_full, cu_full, s, s, softmax_scale=d ** -0.5,
                                                      window=window, mask=tm, softcap=0.0, out=torch.empty_like(q),
                                                      return_lse=False, config=cfg_runs, configs=cuda_configs)
            if name != "block-sparse":   # block-sparse (a dense-kind mask) always walks runs
                row["runs_ms"] = bench_ms(runs)
            if name in ("window+documents", "block-sparse"):   # other tile shapes / pipelines
                for label, extra in (WINDOW_TILES if name == "window+documents" else SPARSE_TILES).items():
                    cfg = dict(cuda_configs.flash_config(q.device, d, q.dtype), **extra)
                    row[f"tiles_{label}_ms"] = bench_ms(lambda: triton_flash.flash_attn_varlen(
                        q, k, v, cu_full, cu_full, s, s, softmax_scale=d ** -0.5, window=window, mask=tm, softcap=0.0,
                        out=torch.empty_like(q), return_lse=False, config=cfg, configs=cuda_configs))
            cfg_runs["WALK"] = False      # full runs one pipelined loop each (the previous kernel)
            row["runs_nowalk_ms"] = bench_ms(runs)
            cfg_runs["WALK"] = True
            if offsets is not None:
                cu_docs = _cu([b - a for a, b in zip(offsets, offsets[1:])])
                longest = max(b - a for a, b in zip(offsets, offsets[1:]))
                row["varlen_docs_ms"] = bench_ms(lambda: ops.flash_attn_varlen(
                    q, k, v, cu_docs, cu_docs, longest, longest, causal=True, window_size=window))
            if t_causal is None:
                t_causal = bench_ms(lambda: ops.flash_attn_varlen(q, k, v, cu_full, cu_full, s, s, causal=True))
        row["causal16k_ms"] = t_causal
        row["useful_TF"] = flops / row["ours_ms"] / 1e9
        row["flex_TF"] = flops / t_flex / 1e9
        row["vs_flex"] = t_flex / row["ours_ms"]
        rows.append(row)
    return rows


def _paged_case(b, ctx, hq, hkv, d, bs):
    """Random bf16 paged decode inputs: cache [blocks, bs, hkv, d] under a permuted block
    table, b sequences of ctx keys, one query token each, and an output buffer."""
    nblk = b * ctx // bs
    k_cache = torch.randn(nblk, bs, hkv, d, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.randn(nblk, bs, hkv, d, device=DEV, dtype=torch.bfloat16)
    table = torch.randperm(nblk, device=DEV, dtype=torch.int32).view(b, ctx // bs)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    q = torch.randn(b, hq, d, device=DEV, dtype=torch.bfloat16)
    cu = torch.arange(b + 1, dtype=torch.int32, device=DEV)
    return k_cache, v_cache, table, lens, q, cu, torch.empty_like(q)


def _legacy_paged():
    """The previous paged kernel module, when the run carries it as
    ascend_ext/kernels/triton/_legacy_paged.py (a copy of an older paged_attention.py, not in git)."""
    try:
        from ascend_ext.kernels.triton import _legacy_paged
        return _legacy_paged
    except ImportError:
        return None


def decode_splits() -> list[dict]:
    """Split-KV count and tile config at small batch (CUDA-graph replay, us per call)."""
    hq, hkv, d, bs = 32, 8, 128, 16
    rows = []
    grid = [(1, ctx, (None, 8, 16, 32, 33, 64), 3) for ctx in (1024, 4096, 16384, 32768)]
    grid += [(8, ctx, (None, 4, 5, 8, 16), 1) for ctx in (1024, 4096, 16384)] + [(16, 4096, (None, 3, 4, 8), 0)]
    if "DECODE_SPLITS_CASES" in os.environ:   # "B,ctx;B,ctx;...": the automatic plan vs 64/128-key tiles only
        grid = [(b, ctx, (None,), 2) for b, ctx in env_shapes("DECODE_SPLITS_CASES", ())]
    for b, ctx, split_opts, n_others in grid:
        base = cuda_configs.paged_config(torch.device(DEV), d, torch.bfloat16, batch_kv_heads=b * hkv, max_keys=ctx)
        other_cfgs = [dict(base, PDL=not base.get("PDL")), dict(base, BLOCK_N=64 if base["BLOCK_N"] == 128 else 128),
                      dict(base, num_stages=3)][:n_others]
        k_cache, v_cache, table, lens, q, cu, out = _paged_case(b, ctx, hq, hkv, d, bs)
        kv_bytes = 2 * b * ctx * hkv * d * 2
        # the floor at this size: one torch reduction reading the same byte count (launch and tail included)
        flat = torch.randn(kv_bytes // 2, device=DEV, dtype=torch.bfloat16)
        read_us = 1e3 * bench_graph_ms(lambda: flat.sum(dtype=torch.float32))
        del flat
        floor_us = read_floor_us(kv_bytes)
        ref = None
        for cfg, opts in [(base, split_opts)] + [(c, (None,)) for c in other_cfgs]:
            auto = triton_paged.config_splits(q.device, cfg, b * hkv, ctx)
            for splits in (None,) + tuple(x for x in opts if x and x != auto and x <= ctx // cfg["BLOCK_N"]):
                def call(module):
                    return module.paged_attention(q, k_cache, v_cache, table, lens, cu, 1, softmax_scale=d ** -0.5,
                                                  window=(-1, 0), softcap=0.0, out=out, return_lse=False,
                                                  max_seqlen_k=ctx, config=cfg, configs=cuda_configs,
                                                  num_splits=splits or auto)

                def run():
                    return call(triton_paged)
                run()
                if ref is None:
                    ref = out.clone()
                t = bench_graph_ms(run)
                row = {"B": b, "ctx": ctx, "cfg": f"N{cfg['BLOCK_N']} w{cfg['num_warps']} s{cfg['num_stages']}{' pdl' if cfg.get('PDL') else ''}",
                       "splits": f"{splits or auto}{'*' if splits is None else ''}",
                       "us": t * 1e3, "pct_copy_bw": 100 * kv_bytes / t / 1e6 / COPY_GBPS[0],
                       "read_us": read_us, "read_floor_us": floor_us, "max_diff": float((out.float() - ref.float()).abs().max())}
                if splits is None and cfg is base and auto > 1:
                    row.update(split_breakdown(triton_paged, run, auto, out))
                    legacy = _legacy_paged()
                    if legacy is not None:
                        row["legacy_us"] = 1e3 * bench_graph_ms(lambda: call(legacy))
                rows.append(row)
        if b == 1 and ctx <= 4096:   # CUDA-graph contract: max_seqlen_k = the block table's capacity
            rows.append(_capacity_row(k_cache, v_cache, table, lens, q, cu, out, ref, 32768, kv_bytes))
        del k_cache, v_cache
        torch.cuda.empty_cache()
    return rows


def _capacity_row(k_cache, v_cache, table, lens, q, cu, out, ref, capacity, kv_bytes) -> dict:
    """One op call as vLLM captures it: a block table as wide as ``capacity`` keys (extra
    columns point at random blocks) and max_seqlen_k = capacity, so the split count and tiles
    are the capacity's while the sequence is short (each program cuts its own keys)."""
    b, ctx = table.shape[0], int(lens[0])
    wide = widened_table(table, capacity, k_cache.shape[1], k_cache.shape[0])

    def run():
        with ops.trusted_inputs():
            return ops.paged_attention(q, k_cache, v_cache, wide, lens, cu, 1, out=out, max_seqlen_k=capacity)
    with ops.use_impl(attention="triton"):
        t = bench_graph_ms(run)
    cfg = cuda_configs.paged_config(q.device, q.shape[-1], q.dtype, batch_kv_heads=b * k_cache.shape[2],
                                    max_keys=capacity)
    splits = triton_paged.config_splits(q.device, cfg, b * k_cache.shape[2], capacity)
    return {"B": b, "ctx": ctx, "cfg": f"capacity {capacity} N{cfg['BLOCK_N']}", "splits": f"{splits}*",
            "us": t * 1e3, "pct_copy_bw": 100 * kv_bytes / t / 1e6 / COPY_GBPS[0],
            "max_diff": float((out.float() - ref.float()).abs().max())}


def _kv_caches(kv: str, k_cache, v_cache) -> tuple:
    """The caches (and scale arguments) decode reads for KV dtype ``kv``: bf16 as built, or the
    same values in an fp8 e4m3 cache with per-tensor scales (vLLM's --kv-cache-dtype fp8)."""
    if kv == "bf16":
        return k_cache, v_cache, {}
    scales = {"k_scale": torch.tensor([0.02], device=DEV), "v_scale": torch.tensor([0.02], device=DEV)}
    fp8 = [torch.empty(c.shape, dtype=torch.float8_e4m3fn, device=DEV) for c in (k_cache, v_cache)]
    slots = torch.arange(k_cache.shape[0] * k_cache.shape[1], device=DEV)
    for start in range(0, slots.numel(), 1 << 18):   # quantise through the op, in chunks
        part = slots[start:start + (1 << 18)]
        ops.reshape_and_cache(k_cache.flatten(0, 1)[part], v_cache.flatten(0, 1)[part], fp8[0], fp8[1], part,
                              **scales)
    return fp8[0], fp8[1], scales


def decode(quick: bool, kv_dtypes=("bf16",)) -> list[dict]:
    hq, hkv, d, bs = 32, 8, 128, 16
    rows = []
    batches = [1, 8, 32, 128] if quick else [1, 8, 32, 128, 256]
    contexts = [1024, 4096, 16384] if quick else [1024, 4096, 16384, 32768]
    for b in batches:
        for ctx in contexts:
            kv_bytes = 2 * b * ctx * hkv * d * 2
            if kv_bytes > 24e9:
                continue
            k_cache, v_cache, table, lens, q, cu, out = _paged_case(b, ctx, hq, hkv, d, bs)
            bf16_us = None
            for kv in kv_dtypes:
                kc, vc, scales = _kv_caches(kv, k_cache, v_cache)
                read = kv_bytes // (2 if kv == "fp8" else 1)
                with ops.use_impl(attention="triton"), ops.trusted_inputs():
                    def run():
                        return ops.paged_attention(q, kc, vc, table, lens, cu, 1, out=out, max_seqlen_k=ctx,
                                                   **scales)
                    t_eager = bench_ms(run)
                    t = bench_graph_ms(run)
                bf16_us = t * 1e3 if kv == "bf16" else bf16_us
                row = {"B": b, "ctx": ctx, "kv": kv, "us": t * 1e3, "GBps": read / t / 1e6,
                       "eager_us": t_eager * 1e3, "pct_copy_bw": 100 * read / t / 1e6 / COPY_GBPS[0],
                       "tok_per_s": b / t * 1e3, "speedup_vs_bf16": bf16_us / (t * 1e3) if bf16_us else None}
                if b * ctx <= 32 * 4096:
                    def naive():
                        def dense(cache, scale):
                            x = cache[table.long()].view(b, ctx, hkv, d).transpose(1, 2)
                            x = x if scale is None else (x.float() * scale).to(q.dtype)   # dequantised cache
                            return x.repeat_interleave(hq // hkv, 1)
                        return F.scaled_dot_product_attention(q.unsqueeze(2), dense(kc, scales.get("k_scale")),
                                                              dense(vc, scales.get("v_scale")))
                    ref = naive().squeeze(2)
                    row["max_err_vs_naive"] = (ref.float() - out.float()).abs().max().item()
                    row["naive_us"] = bench_ms(naive) * 1e3
                rows.append(row)
                print(row, flush=True)
                del kc, vc
            del k_cache, v_cache
            torch.cuda.empty_cache()
    return rows


ABLATION = [   # (SUB_M, NUM_SUB, BLOCK_N, warps, stages, warp_specialize, TMA)
    (128, 1, 128, 8, 3, False, False), (128, 1, 64, 8, 3, False, False), (256, 2, 64, 8, 2, False, False),
    (128, 1, 128, 8, 3, False, True), (128, 1, 128, 8, 3, True, True), (128, 1, 128, 4, 3, True, True),
    (128, 1, 128, 8, 2, False, True), (128, 1, 64, 8, 3, False, True), (128, 1, 64, 4, 3, True, True),
    # short sequences (ABLATION_SEQS=1024): smaller query tiles, deeper pipelines
    (64, 1, 64, 4, 3, False, True), (64, 1, 128, 4, 3, False, True), (128, 1, 128, 8, 4, True, True),
    (128, 1, 64, 8, 4, False, True),
]


ABLATION_DIMS = [int(x) for x in os.environ.get("ABLATION_DIMS", "128,64").split(",")]
ABLATION_SEQS = [int(x) for x in os.environ["ABLATION_SEQS"].split(",")] if "ABLATION_SEQS" in os.environ else None


def ablation(quick: bool) -> list[dict]:
    rows = []
    for d in ABLATION_DIMS:
        for s in ABLATION_SEQS or ((4096,) if quick else (4096, 16384)):
            for causal in (True, False):
                b, h = TOKENS // s, 32
                q = torch.randn(b * s, h, d, device=DEV, dtype=torch.bfloat16)
                k = torch.randn(b * s, h, d, device=DEV, dtype=torch.bfloat16)
                v = torch.randn(b * s, h, d, device=DEV, dtype=torch.bfloat16)
                cu = _cu([s] * b)
                out = torch.empty_like(q)
                ref = None
                for sub_m, num_sub, block_n, warps, stages, ws, tma in ABLATION:
                    cfg = dict(SUB_M=sub_m, NUM_SUB=num_sub, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
                               WS=ws, TMA=tma)
                    row = {"d": d, "S": s, "causal": causal, "first_level": f"{sub_m * num_sub}x{block_n}",
                           "second_level": f"{num_sub}x{sub_m}", "warps": warps, "stages": stages, "ws": ws,
                           "tma": tma}

                    def run():
                        return triton_flash.flash_attn_varlen(q, k, v, cu, cu, s, s, softmax_scale=d ** -0.5,
                                                              window=(-1, 0) if causal else (-1, -1), mask=None,
                                                              softcap=0.0, out=out, return_lse=False, config=cfg,
                                                              configs=cuda_configs)
                    try:
                        run()
                        torch.cuda.synchronize()
                        if ref is None:
                            ref = out.clone()
                        row["max_diff_vs_first"] = (out.float() - ref.float()).abs().max().item()
                        row["TF"] = _flops(b, s, h, d, causal) / bench_ms(run) / 1e9
                    except Exception as exc:
                        row["TF"] = f"failed: {type(exc).__name__}: {str(exc)[:60]}"
                    rows.append(row)
                del q, k, v, out
    return rows


PAGED_SWEEP = [(16, 32, 4, 2), (16, 64, 4, 2), (16, 64, 4, 3), (16, 64, 4, 4), (16, 128, 4, 2), (16, 128, 4, 3),
               (16, 128, 8, 3), (16, 64, 8, 4), (16, 32, 4, 3)]
# register caps tried with the 8-bit caches (a 4th program per SM needs <= 128 registers at 4 warps)
PAGED_SWEEP_CAPPED = [(16, 64, 4, 2, 128), (16, 64, 4, 3, 128), (16, 128, 8, 3, 128)]
# (batch, context, split counts tried besides the automatic one)
PAGED_SWEEP_SHAPES = [(32, 4096, (4,)), (128, 4096, (2,)), (8, 16384, (16, 32)), (8, 4096, (16,)), (32, 16384, (4,)),
                      (1, 32768, ()), (64, 16384, ())]


def paged_sweep(kv_dtypes=("bf16",)) -> list[dict]:
    """Tile configs x split counts of the paged decode (graph replay); 'splits' marks the automatic
    count with '*'; the 8-bit caches also try register caps (maxnreg)."""
    from ascend_ext.ops.attention import kv_quant

    hq, hkv, d, bs = 32, 8, 128, 16
    rows = []
    for b, ctx, split_opts in PAGED_SWEEP_SHAPES:
        k_cache, v_cache, table, lens, q, cu, out = _paged_case(b, ctx, hq, hkv, d, bs)
        for kv in kv_dtypes:
            kc, vc, scales = _kv_caches(kv, k_cache, v_cache)
            kv_scales = kv_quant.normalize(kc, vc, scales.get("k_scale"), scales.get("v_scale"))
            cfgs = [c + (0,) for c in PAGED_SWEEP] + (PAGED_SWEEP_CAPPED if kc.element_size() == 1 else [])
            for block_m, block_n, warps, stages, cap in cfgs:
                cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, maxnreg=cap)
                auto = triton_paged.config_splits(q.device, cfg, b * hkv, ctx)
                for splits in (None,) + tuple(x for x in split_opts if x != auto):
                    def run():
                        return triton_paged.paged_attention(q, kc, vc, table, lens, cu, 1, softmax_scale=d ** -0.5,
                                                            window=(-1, 0), softcap=0.0, out=out, return_lse=False,
                                                            max_seqlen_k=ctx, kv_scales=kv_scales, config=cfg,
                                                            configs=cuda_configs, num_splits=splits or auto)
                    t = bench_graph_ms(run)
                    rows.append({"B": b, "ctx": ctx, "kv": kv,
                                 "cfg": f"M{block_m} N{block_n} w{warps} s{stages}" + (f" r{cap}" if cap else ""),
                                 "splits": f"{splits or auto}{'*' if splits is None else ''}", "us": t * 1e3,
                                 "GBps": 2 * b * ctx * hkv * d * kc.element_size() / t / 1e6})
                    print(rows[-1], flush=True)
            del kc, vc
        del k_cache, v_cache
        torch.cuda.empty_cache()
    return rows


def overhead() -> list[dict]:
    """Host time of one eager call (tiny shapes): where does it go? cProfile top entries."""
    import cProfile
    import pstats
    import time

    b, ctx, hq, hkv, d = 1, 1024, 32, 8, 128
    k_cache = torch.randn(ctx // 16, 16, hkv, d, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.arange(ctx // 16, device=DEV, dtype=torch.int32).view(1, -1)
    lens = torch.full((1,), ctx, dtype=torch.int32, device=DEV)
    q = torch.randn(b, hq, d, device=DEV, dtype=torch.bfloat16)
    cu = torch.arange(b + 1, dtype=torch.int32, device=DEV)
    rows = []
    with ops.use_impl(attention="triton"), ops.trusted_inputs():
        def call():
            return ops.paged_attention(q, k_cache, v_cache, table, lens, cu, 1, max_seqlen_k=ctx)
        for _ in range(20):
            call()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            call()
        host_us = (time.perf_counter() - t0) / 200 * 1e6
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            call()
        prof.disable()
        torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    rows.append({"what": "paged_attention eager host time per call", "us": host_us})
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    for (file, line, fn), (cc, nc, tt, ct, callers) in entries:
        rows.append({"what": f"{os.path.basename(file)}:{line} {fn}", "us": tt / 200 * 1e6,
                     "cum_us": ct / 200 * 1e6})
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    pre = [r for r in result.get("prefill", []) if r["d"] == 128 and r["heads"] == "MHA" and r["causal"]]
    if pre:
        ax = axes[0]
        xs = [r["S"] for r in pre]
        for key, label in (("ours_TF", "ascend_ext"), ("flash_TF", "SDPA FA2"), ("cudnn_TF", "SDPA cuDNN"),
                           ("efficient_TF", "SDPA efficient")):
            ys = [r[key] if isinstance(r.get(key), float) else math.nan for r in pre]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title("causal prefill bf16 d128 MHA (B*S=32k)")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.legend()
    dec = result.get("decode", [])
    if dec:
        ax = axes[1]
        for b, kv in sorted({(r["B"], r.get("kv", "bf16")) for r in dec}):
            pts = [r for r in dec if r["B"] == b and r.get("kv", "bf16") == kv]
            ax.plot([r["ctx"] for r in pts], [r["GBps"] for r in pts], marker="o" if kv == "bf16" else "x",
                    label=f"batch {b} {kv}")
        ax.axhline(result["ceilings"]["copy_GBps"], color="k", ls="--", label="copy bandwidth")
        ax.set_xscale("log", base=2)
        ax.set_title("paged decode (bf16 q; KV bf16 / fp8), 32q/8kv heads, d128")
        ax.set_xlabel("context")
        ax.set_ylabel("GB/s of KV read")
        ax.legend()
    abl = [r for r in result.get("ablation", []) if isinstance(r.get("TF"), float) and r["d"] == 128 and r["causal"]]
    if abl:
        ax = axes[2]
        labels = [f"S{r['S'] // 1024}k {r['first_level']}/{r['second_level']} w{r['warps']}"
                  f"{' tma' if r.get('tma') else ''}{' ws' if r.get('ws') else ''}" for r in abl]
        ax.barh(range(len(abl)), [r["TF"] for r in abl])
        ax.set_yticks(range(len(abl)), labels, fontsize=7)
        ax.set_title("two-level tiling ablation (causal d128)")
        ax.set_xlabel("TFLOP/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="prefill,masks,decode,ablation")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kv-dtype", default="bf16", choices=("bf16", "fp8", "both"),
                        help="decode KV cache: bf16, fp8 (e4m3, per-tensor scales), or both in the same run")
    args = parser.parse_args()
    kv_dtypes = ("bf16", "fp8") if args.kv_dtype == "both" else (args.kv_dtype,)
    parts = set(args.parts.split(","))
    result = {"env": environment(), "ceilings": device_ceilings()}
    COPY_GBPS[0] = result["ceilings"]["copy_GBps"]
    print(result["env"], result["ceilings"])
    sections = [
        ("sweep", "paged_sweep", lambda: paged_sweep(kv_dtypes), "paged decode config sweep",
         ["B", "ctx", "kv", "cfg", "splits", "us", "GBps"]),
        ("decode_splits", "decode_splits", decode_splits, "paged decode split-KV sweep (graph replay; * = auto)",
         ["B", "ctx", "cfg", "splits", "us", "pct_copy_bw", "read_us", "read_floor_us", "split_only_us", "combine_only_us", "legacy_us",
          "max_diff"]),
        ("masks", "masks", masks, "tiling-mask cases vs flex_attention (16k tokens, 16 heads, d128, bf16; ms)",
         ["case", "tiles", "ours_ms", "runs_ms", "runs_nowalk_ms", "flex_ms", "varlen_docs_ms", "causal16k_ms", "useful_TF",
          "flex_TF", "vs_flex", "max_diff_vs_flex"] + [f"tiles_{label}_ms" for label in {**WINDOW_TILES, **SPARSE_TILES}]),
        ("decode", "decode", lambda: decode(args.quick, kv_dtypes),
         f"paged decode, bf16 queries (32 q / 8 kv heads, d128, block 16), KV cache {'/'.join(kv_dtypes)}; "
         f"copy bandwidth {result['ceilings']['copy_GBps']:.0f} GB/s; us = CUDA-graph replay, eager_us = plain "
         f"calls; GBps = KV bytes read / us",
         ["B", "ctx", "kv", "us", "GBps", "pct_copy_bw", "tok_per_s", "speedup_vs_bf16", "eager_us", "naive_us",
          "max_err_vs_naive"]),
        ("ablation", "ablation", lambda: ablation(args.quick), "two-level tiling ablation (bf16, 32 heads, B*S=32k)",
         ["d", "S", "causal", "first_level", "second_level", "warps", "stages", "ws", "tma", "TF",
          "max_diff_vs_first"]),
        ("prefill", "prefill", lambda: prefill(args.quick), "prefill bf16 (TFLOP/s; causal counts half)",
         ["d", "heads", "S", "B", "causal", "ours_TF", "flash_TF", "cudnn_TF", "efficient_TF", "naive_TF",
          "vs_flash", "vs_cudnn", "max_err_vs_fa2"]),
        ("overhead", "overhead", overhead, "eager host overhead (tottime per call, cProfile)", ["what", "us", "cum_us"]),
        ("cascade", "cascade", lambda: cascade.rows("cuda", args.quick),
         "cascade vs plain paged attention, shared prefix (32 q / 8 kv heads, d128, bf16, block 16; us = CUDA-graph "
         "replay of one layer call; plan_us = the per-step plan, eager)", cascade.COLUMNS),
    ]
    for part, key, fn, title, columns in sections:
        if part not in parts:
            continue
        try:
            result[key] = fn()
            print_table(title, result[key], columns)
        except Exception:   # one broken part must not lose the others' numbers
            import traceback
            traceback.print_exc()
            result[key + "_error"] = traceback.format_exc()[-2000:]
        sys.stdout.flush()
    path = write_json("attention.json", result)
    plot(result, path.replace(".json", ".png"))
    print(f"\nwrote {path} and attention.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
