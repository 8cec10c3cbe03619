"""CPU attention: native C++ kernels vs the torch reference vs vLLM's own CPU kernels.

One run, same process, same inputs: a Llama-3-8B-like layer (32 query heads, 8 KV
heads, head dim 128, KV block 128) in the paged cache of each implementation (ours
filled by ``ops.reshape_and_cache``, vLLM's by ``cpu_attn_reshape_and_cache``, its
packed layout). Ours is vLLM's combined CPU cache (head-major slots holding K then V, split by
``ops.split_kv_cache``) in the cache layout our vLLM backend picks (``ops.preferred_kv_layout``:
"tiles" where the native kernels run on AMX, "pairs" with AVX512-BF16); the same data in the
simpler layouts runs beside it (``native_rows_ms`` / ``native_pairs_ms``, ``rows_over_ours`` /
``pairs_over_ours``: > 1 = the chosen layout is faster). Cases:

* decode: batch 1-64 x context 512-16k, one new token per sequence (``--quick``: six cases from
  cache-resident 2 MiB to 256 MiB), the sides alternated over ``--rounds`` rounds (median);
* prefill: one prompt of 512-4096 tokens, causal (paged form for all three, and
  our ``flash_attn_varlen`` too);
* chunked prefill: 512 new tokens over an 8k context.

Reported: median ms per call of the public op (``ascend_ext.ops.paged_attention``,
validation off as in the vLLM backend; vLLM's ``cpu_attention_with_kv_cache`` with
scheduler metadata built once, as its backend does per step), KV bytes read per
second, the ratio vLLM time / native time (> 1 = native faster), and the largest
output difference between native and vLLM (both against the same inputs). Decode's roofline
is measured per case in the same run: a plain sum over as many bytes as the case's K/V, same
threads (``read_GBps``; cache bandwidth for cache-resident cases), and each side's share of it
(``*_pct_of_read_bw``); the 512 MiB host read is reported too.

``--kv-cache-dtype fp8|int8``: our cache quantised by ``ops.reshape_and_cache`` (per-KV-head
scales from the data's absmax); native and reference read it, and the native kernel over the
float cache of the same data runs beside them (``native_float_ms``, ``float_over_native``:
> 1 = the quantised cache is faster). vLLM's side is not run (its CPU fp8 path is not wired here).

    python benchmarks/cpu_attention.py [--quick] [--dtype bfloat16|float32|float16] [--kv-cache-dtype fp8|int8]

Writes cpu_attention_<dtype>[_<kv-cache-dtype>].json and .png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_cpu_ms, environment, host_read_gbps, out_dir, pinned, print_table, write_json  # noqa: E402

from ascend_ext import ops  # noqa: E402

HQ, HKV, HEAD_DIM, BLOCK = 32, 8, 128, 128
REFERENCE_MAX_KV_BYTES = 1 << 28   # the reference gathers and computes in fp32: slow past this


def _vllm():
    try:
        import vllm._custom_ops as vops
        torch.ops._C.cpu_attention_with_kv_cache  # noqa: B018 - raises when the CPU kernels are absent
    except (ImportError, AttributeError, RuntimeError):
        return None
    return vops


def _vllm_isa(dtype: torch.dtype) -> str:
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return _get_attn_isa(dtype, BLOCK, HEAD_DIM)


class Case:
    """One batch of sequences with cached contexts and new queries, in both caches."""

    def __init__(self, contexts: list[int], q_lens: list[int], dtype: torch.dtype, vops, kv_quant: str | None = None,
                 seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.contexts, self.q_lens, self.dtype, self.vops = contexts, q_lens, dtype, vops
        blocks = [-(-c // BLOCK) for c in contexts]
        num_blocks = sum(blocks) + 1
        perm = torch.randperm(num_blocks, generator=gen)
        width = max(blocks)
        self.table = torch.zeros(len(contexts), width, dtype=torch.int32)
        cursor, slots = 0, []
        for b, (ctx, nb) in enumerate(zip(contexts, blocks)):
            self.table[b, :nb] = perm[cursor:cursor + nb].int()
            cursor += nb
            pos = torch.arange(ctx)
            slots.append(self.table[b, pos // BLOCK].long() * BLOCK + pos % BLOCK)
        slots = torch.cat(slots)
        tokens = slots.numel()
        key = (torch.randn(tokens, HKV, HEAD_DIM, generator=gen)).to(dtype)
        value = torch.randn(tokens, HKV, HEAD_DIM, generator=gen).to(dtype)
        # vLLM's combined CPU cache: head-major slots holding K then V (what our backend receives)
        def combined():
            return ops.split_kv_cache(torch.zeros(num_blocks, HKV, BLOCK, 2 * HEAD_DIM, dtype=dtype), HEAD_DIM)

        self.k_cache, self.v_cache = combined()
        chosen = ops.preferred_kv_layout(self.k_cache, self.v_cache)   # as our vLLM backend decides
        self.layout = {"kv_layout": chosen}
        ops.reshape_and_cache(key, value, self.k_cache, self.v_cache, slots.int(), **self.layout)
        self.alt_caches = {}   # the same data in the simpler layouts, for the A/B
        for layout in ("rows", "pairs")[:("rows", "pairs", "tiles").index(chosen)]:
            self.alt_caches[layout] = combined()
            ops.reshape_and_cache(key, value, *self.alt_caches[layout], slots.int(), kv_layout=layout)
        self.scales = {}
        self.float_caches = (self.k_cache, self.v_cache)
        if kv_quant is not None:   # per-KV-head scales from the absmax; the float caches stay for comparison
            cache_dtype, top = (torch.float8_e4m3fn, 448.0) if kv_quant == "fp8" else (torch.int8, 127.0)
            self.scales = {"k_scale": key.float().abs().amax(dim=(0, 2)) / top,
                           "v_scale": value.float().abs().amax(dim=(0, 2)) / top}
            combined_q = torch.zeros(num_blocks, HKV, BLOCK, 2 * HEAD_DIM, dtype=cache_dtype)
            self.k_cache, self.v_cache = ops.split_kv_cache(combined_q, HEAD_DIM)
            ops.reshape_and_cache(key, value, self.k_cache, self.v_cache, slots.int(), **self.scales)
        self.seq_lens = torch.tensor(contexts, dtype=torch.int32)
        self.cu_q = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
        self.q = torch.randn(sum(q_lens), HQ, HEAD_DIM, generator=gen).to(dtype)
        self.out = torch.empty_like(self.q)
        self.kv_bytes = sum(contexts) * HKV * HEAD_DIM * 2 * self.k_cache.element_size()
        self.float_kv_bytes = sum(contexts) * HKV * HEAD_DIM * 2 * self.float_caches[0].element_size()
        if vops is not None:
            self.isa = _vllm_isa(dtype)
            combined = torch.zeros(num_blocks, HKV, 2 * BLOCK, HEAD_DIM, dtype=dtype)
            self.vk, self.vv = combined.chunk(2, dim=2)
            vops.cpu_attn_reshape_and_cache(key, value, self.vk, self.vv, slots, self.isa)
            self.meta = vops.cpu_attn_get_scheduler_metadata(
                num_reqs=len(contexts), num_heads=HQ, num_kv_heads=HKV, head_dim=HEAD_DIM, seq_lens=self.seq_lens,
                dtype=dtype, query_start_loc=self.cu_q, causal=True, sliding_window_size=-1, isa=self.isa,
                enable_kv_split=True)
            self.vout = torch.empty_like(self.q)
        del key, value

    def ours(self, impl: str, cache: str = "main"):
        """cache: "main" (quantised when --kv-cache-dtype), "float" (the float cache of the same
        data, in the backend's layout) or "rows" / "pairs" (the float cache in that layout)."""
        k_cache, v_cache = {"main": (self.k_cache, self.v_cache), "float": self.float_caches,
                            **self.alt_caches}[cache]
        args = (self.scales if cache == "main" and self.scales else
                {"kv_layout": cache} if cache in self.alt_caches else self.layout)

        def run():   # as the vLLM backend calls it; the timing loop pins the implementation
            with ops.trusted_inputs():
                ops.paged_attention(self.q, k_cache, v_cache, self.table, self.seq_lens, self.cu_q,
                                    max(self.q_lens), out=self.out, **args)
        return run

    def theirs(self):
        def run():
            self.vops.cpu_attention_with_kv_cache(
                query=self.q, key_cache=self.vk, value_cache=self.vv, output=self.vout, query_start_loc=self.cu_q,
                seq_lens=self.seq_lens, scale=HEAD_DIM ** -0.5, causal=True, alibi_slopes=None, sliding_window=-1,
                block_table=self.table, softcap=0.0, scheduler_metadata=self.meta, s_aux=None)
        return run

    def varlen_native(self):
        """Prefill of one prompt as flash_attn_varlen over the same K/V (contiguous)."""
        k_cache, v_cache = self.alt_caches.get("rows", (self.k_cache, self.v_cache))
        blocks = self.table[0, :-(-self.contexts[0] // BLOCK)].long()
        k = k_cache[blocks].flatten(0, 1)[:self.contexts[0]]
        v = v_cache[blocks].flatten(0, 1)[:self.contexts[0]]
        cu_k = torch.tensor([0, self.contexts[0]], dtype=torch.int32)

        def run():
            with ops.trusted_inputs():
                ops.flash_attn_varlen(self.q, k, v, self.cu_q, cu_k, self.q_lens[0], self.contexts[0], causal=True,
                                      out=self.out)
        return run


def measure(kind: str, contexts: list[int], q_lens: list[int], dtype, vops, impls, rounds: int = 3,
            kv_quant: str | None = None) -> dict:
    """One case: native, vLLM and (decode) a plain read of the same byte count timed ``rounds``
    times, alternated, median of the rounds' medians (the host's memory bandwidth drifts between
    runs, so the roofline is measured beside the kernels); the reference once."""
    case = Case(contexts, q_lens, dtype, vops, kv_quant)
    row = {"kind": kind, "batch": len(contexts), "context": contexts[0], "new_tokens": q_lens[0],
           "kv_MiB": case.kv_bytes / 2**20}
    causal_pairs = sum(lq * (ctx - lq) + lq * (lq + 1) // 2 for ctx, lq in zip(contexts, q_lens))
    flops = 4 * HQ * HEAD_DIM * causal_pairs
    sides = {impl: case.ours(impl) for impl in impls if impl != "reference"}
    scopes = {impl: pinned(attention=impl) for impl in impls}
    if "reference" in impls and case.kv_bytes <= REFERENCE_MAX_KV_BYTES:   # slow: timed once, not alternated
        row["reference_ms"] = bench_cpu_ms(case.ours("reference"), min_reps=3, min_s=0.1,
                                           scope=scopes["reference"])
    if vops is not None:
        sides["vllm"] = case.theirs()
    if kv_quant is not None and "native" in impls:
        sides["native_float"] = case.ours("native", cache="float")
        scopes["native_float"] = pinned(attention="native")
    for layout in case.alt_caches if kv_quant is None and "native" in impls else ():
        sides[f"native_{layout}"] = case.ours("native", cache=layout)
        scopes[f"native_{layout}"] = pinned(attention="native")
    row["kv_layout"] = case.layout["kv_layout"]
    if kind == "decode":   # the roofline: a plain sum over as many bytes, same threads, in the same rounds
        plain = torch.ones(case.kv_bytes // 4)
        sides["read"] = plain.sum
    times = {name: [] for name in sides}
    for _ in range(rounds if kind == "decode" else 1):
        for name, fn in sides.items():
            times[name].append(bench_cpu_ms(fn, scope=scopes.get(name)))
    for name, ms in times.items():
        row[f"{name}_ms"] = statistics.median(ms)
    if kind == "decode":
        row["read_GBps"] = case.kv_bytes / row.pop("read_ms") / 1e6
    if "native" in impls and vops is not None:
        with ops.use_impl(attention="native"):
            case.ours("native")()
        row["max_diff_vs_vllm"] = float((case.vout.float() - case.out.float()).abs().max())
    if kind == "prefill" and "native" in impls and kv_quant is None:   # varlen takes float K / V only
        row["native_varlen_ms"] = bench_cpu_ms(case.varlen_native(), scope=pinned(attention="native"))
    for key in [k for k in row if k.endswith("_ms")]:
        name = key[:-3]
        row[f"{name}_GBps"] = (case.float_kv_bytes if name == "native_float" else case.kv_bytes) / row[key] / 1e6
        row[f"{name}_GFLOPs"] = flops / row[key] / 1e6
    if "native_ms" in row and "vllm_ms" in row:
        row["vllm_over_native"] = row["vllm_ms"] / row["native_ms"]
    if "native_ms" in row and "native_float_ms" in row:
        row["float_over_native"] = row["native_float_ms"] / row["native_ms"]
    for layout in ("rows", "pairs"):
        if "native_ms" in row and f"native_{layout}_ms" in row:
            row[f"{layout}_over_ours"] = row[f"native_{layout}_ms"] / row["native_ms"]
    for name in ("native", "vllm"):
        if kind == "decode" and f"{name}_GBps" in row:
            row[f"{name}_pct_of_read_bw"] = 100 * row[f"{name}_GBps"] / row["read_GBps"]
    return row


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = "float_over_native" if result.get("kv_cache_dtype") else "vllm_over_native"
    other = "native_float" if ratio == "float_over_native" else "vllm"
    decode = [r for r in result["rows"] if r["kind"] == "decode" and ratio in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for batch in sorted({r["batch"] for r in decode}):
        rows = [r for r in decode if r["batch"] == batch]
        axes[0].plot([r["context"] for r in rows], [r[ratio] for r in rows], "o-", label=f"batch {batch}")
        axes[1].plot([r["context"] for r in rows], [r["native_GBps"] for r in rows], "o-", label=f"native b{batch}")
        axes[1].plot([r["context"] for r in rows], [r[f"{other}_GBps"] for r in rows], "x--", label=f"{other} b{batch}")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xscale="log", xlabel="context", ylabel=f"{other} time / native time",
                title=f"decode speedup vs {other}")
    axes[1].axhline(result["host_read_GBps"], color="r", lw=0.8, label="host read roofline")
    axes[1].set(xscale="log", xlabel="context", ylabel="KV GB/s", title="decode KV read rate")
    for ax in axes:
        ax.legend(fontsize=7)
    cache = f", {result['kv_cache_dtype']} cache" if result.get("kv_cache_dtype") else ""
    fig.suptitle(f"CPU attention, {result['dtype']}{cache}, {result['threads']} threads, {result['environment']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="alternated timing rounds per decode case (median)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--kv-cache-dtype", default=None, choices=["fp8", "int8"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    kv_quant = args.kv_cache_dtype
    vops = None if kv_quant else _vllm()
    impls = [name for name in ("native", "reference") if ops.selected_impl("paged_attention", "cpu") == "native"
             or name == "reference"]
    if vops is None and not kv_quant:
        print("vLLM's CPU attention kernels are not installed: comparing native and reference only")

    if args.quick:   # cache-resident (2-8 MiB), LLC-sized (32 MiB) and past the LLC (64-256 MiB)
        decode_cases = [(1, 512), (1, 2048), (16, 512), (1, 16384), (4, 16384), (16, 4096)]
    else:
        decode_cases = [(b, c) for b in (1, 4, 16, 64) for c in (512, 2048, 8192, 16384)]
    prompts = [512, 2048] if args.quick else [512, 2048, 4096]
    rows = []
    for batch, ctx in decode_cases:
        rows.append(measure("decode", [ctx] * batch, [1] * batch, dtype, vops, impls, args.rounds, kv_quant))
        print(f"decode b{batch} ctx{ctx}: " + ", ".join(f"{k}={rows[-1][k]:.3g}" for k in rows[-1]
                                                             if k.endswith("_ms")), flush=True)
    for prompt in prompts:
        rows.append(measure("prefill", [prompt], [prompt], dtype, vops, impls, kv_quant=kv_quant))
    rows.append(measure("chunked", [8192], [512], dtype, vops, impls, kv_quant=kv_quant))

    result = {"environment": environment(), "dtype": args.dtype, "kv_cache_dtype": kv_quant,
              "threads": torch.get_num_threads(),
              "cpu": _cpu_name(), "host_read_GBps": host_read_gbps(),
              "vllm_isa": _vllm_isa(dtype) if vops is not None else None,
              "shape": {"Hq": HQ, "Hkv": HKV, "head_dim": HEAD_DIM, "block": BLOCK}, "rows": rows}
    cache = f", {kv_quant} cache" if kv_quant else ""
    print_table(f"decode, {args.dtype}{cache}, {result['threads']} threads, host read roofline "
                f"{result['host_read_GBps']:.0f} GB/s",
                [r for r in rows if r["kind"] == "decode"],
                ["batch", "context", "kv_MiB", "native_ms", "native_rows_ms", "native_pairs_ms", "vllm_ms",
                 "native_float_ms",
                 "native_GBps", "vllm_GBps", "read_GBps", "native_pct_of_read_bw", "vllm_pct_of_read_bw",
                 "vllm_over_native", "rows_over_ours", "pairs_over_ours", "float_over_native", "max_diff_vs_vllm"])
    print_table("prefill / chunked prefill", [r for r in rows if r["kind"] != "decode"],
                ["kind", "context", "new_tokens", "native_ms", "native_rows_ms", "native_pairs_ms",
                 "native_varlen_ms", "vllm_ms",
                 "native_float_ms", "reference_ms", "native_GFLOPs", "vllm_GFLOPs", "vllm_over_native",
                 "rows_over_ours", "pairs_over_ours", "float_over_native", "max_diff_vs_vllm"])
    name = f"cpu_attention_{args.dtype}" + (f"_{kv_quant}" if kv_quant else "")
    print("\nwrote", write_json(f"{name}.json", result))
    plot(result, os.path.join(out_dir(), f"{name}.png"))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
