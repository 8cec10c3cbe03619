"""Cooperative long-context attention: KV split between accelerator and host memory.

One decode step of one attention layer (32 query heads, 8 KV heads, head dim 128,
bf16, KV block 128) over contexts of 32k-256k tokens, with a fraction f of each
context's oldest blocks offloaded to (pinned) host memory and attended there by the
CPU implementation (native C++ kernels) while the accelerator attends over the rest;
``ops.cooperative_attention`` merges both by lse. For every (batch, context, f):

* time of the cooperative call, of its accelerator part alone and of its host part
  alone (to see which side bounds it), and of plain accelerator-only attention;
* max |difference| to accelerator-only attention (the split must not change results);
* the largest context a fixed accelerator KV budget holds for a whole model
  (``--layers`` layers, ``--budget-gib`` GiB): budget / ((1 - f) * KV bytes per token),
  and the model's decode tokens/s if attention were the whole step (batch / (layers * t)).

The balanced split (both sides equally long) is estimated from the two rates measured
at the largest f and reported next to the fastest measured f.

    python benchmarks/cooperative.py [--quick] [--budget-gib 16] [--layers 32] [--max-seconds 240]

Needs an accelerator for meaningful numbers (on a CPU-only machine both sides run on
the CPU). Writes cooperative_<device>.json and .png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, out_dir, print_table, write_json  # noqa: E402

from ascend_ext import ops  # noqa: E402

HQ, HKV, HEAD_DIM, BLOCK = 32, 8, 128, 128
DTYPE = torch.bfloat16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, device, reps: int = 5) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def _full_cache(batch: int, context: int, device):
    blocks = -(-context // BLOCK)
    total = batch * blocks
    gen = torch.Generator(device=device).manual_seed(0)
    k = torch.randn(total, BLOCK, HKV, HEAD_DIM, device=device, dtype=DTYPE, generator=gen)
    v = torch.randn(total, BLOCK, HKV, HEAD_DIM, device=device, dtype=DTYPE, generator=gen)
    table = torch.randperm(total, device=device, generator=gen).int().view(batch, blocks)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn(batch, HQ, HEAD_DIM, device=device, dtype=DTYPE, generator=gen)
    cu = torch.arange(batch + 1, dtype=torch.int32, device=device)
    return k, v, table, lens, q, cu


def measure(batch: int, context: int, fractions, device, args) -> list[dict]:
    k, v, table, lens, q, cu = _full_cache(batch, context, device)
    kv_bytes_layer_token = 2 * HKV * HEAD_DIM * k.element_size()
    with ops.trusted_inputs():
        def device_only():
            return ops.paged_attention(q, k, v, table, lens, cu, 1)
        reference = device_only().float()
        t_dev_only = _time_ms(device_only, device)
    rows = []
    for f in fractions:
        host_tokens = [int(f * (context - 1)) // BLOCK * BLOCK] * batch
        dev_kv, host_kv = ops.offload_prefix(k, v, table, lens, host_tokens)
        with ops.trusted_inputs():
            out = ops.cooperative_attention(q, dev_kv, host_kv, cu, 1)
            diff = float((out.float() - reference).abs().max())
            t_coop = _time_ms(lambda: ops.cooperative_attention(q, dev_kv, host_kv, cu, 1), device)
            t_dev = _time_ms(lambda: ops.paged_attention(q, dev_kv.k_cache, dev_kv.v_cache, dev_kv.block_table,
                                                         dev_kv.seq_lens, cu, 1), device)
            q_host, cu_host = q.cpu(), cu.cpu()
            t_host = _time_ms(lambda: ops.paged_attention(q_host, host_kv.k_cache, host_kv.v_cache,
                                                          host_kv.block_table, host_kv.seq_lens, cu_host, 1,
                                                          causal=False), torch.device("cpu")) \
                if host_tokens[0] else 0.0
        real_f = host_tokens[0] / context
        budget = args.budget_gib * 2 ** 30
        per_token_model = kv_bytes_layer_token * args.layers
        rows.append({
            "batch": batch, "context": context, "host_fraction": round(real_f, 3),
            "device_only_ms": t_dev_only, "cooperative_ms": t_coop, "device_part_ms": t_dev, "host_part_ms": t_host,
            "slowdown": t_coop / t_dev_only, "max_abs_diff": diff,
            "host_GBps": host_tokens[0] * batch * kv_bytes_layer_token / t_host / 1e6 if t_host else None,
            "device_GBps": (context - host_tokens[0]) * batch * kv_bytes_layer_token / t_dev / 1e6,
            "model_tokens_per_s": batch / (args.layers * t_coop / 1e3),
            "max_context_in_budget": int(budget / ((1 - real_f) * per_token_model)) if real_f < 1 else None,
        })
        del dev_kv, host_kv
    del k, v
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def balanced_fraction(rows: list[dict]) -> float | None:
    """f at which host and device parts take equally long, from the rates at the largest f."""
    row = max(rows, key=lambda r: r["host_fraction"])
    if not row["host_part_ms"] or not row["host_fraction"]:
        return None
    host_rate = row["host_fraction"] / row["host_part_ms"]          # context fraction per ms
    device_rate = (1 - row["host_fraction"]) / row["device_part_ms"]
    return host_rate / (host_rate + device_rate)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (batch, context) in sorted({(r["batch"], r["context"]) for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["batch"] == batch and r["context"] == context]
        label = f"b{batch} ctx{context // 1024}k"
        axes[0].plot([r["host_fraction"] for r in rows], [r["cooperative_ms"] for r in rows], "o-", label=label)
        axes[1].plot([r["host_fraction"] for r in rows], [r["max_context_in_budget"] or 0 for r in rows], "o-",
                     label=label)
    axes[0].set(xlabel="fraction of KV on the host", ylabel="ms per layer (decode)", yscale="log",
                title="cooperative attention time")
    axes[1].set(xlabel="fraction of KV on the host", ylabel="tokens", yscale="log",
                title=f"max context in {result['budget_gib']} GiB accelerator KV ({result['layers']} layers)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['environment'].get('device', 'cpu')} + {result['host_threads']} host threads, "
                 f"{result['environment']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1e9, help="stop starting new cases after this")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    host_impl = ops.selected_impl("paged_attention", "cpu")
    print(f"device {device}, host implementation {host_impl}, {torch.get_num_threads()} host threads")
    if host_impl != "native":
        print("warning: the native CPU kernels are not built; the host side runs the slow reference")
    contexts = [32768, 131072] if args.quick else [32768, 65536, 131072, 262144]
    batches = [1] if args.quick else [1, 4]
    fractions = [0.0, 0.1, 0.5, 0.9] if args.quick else [0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9]
    if device.type == "cpu":
        contexts = [c // 16 for c in contexts]
    name = f"cooperative_{device.type}"
    result = {"environment": environment(), "host_impl": host_impl, "host_threads": torch.get_num_threads(),
              "budget_gib": args.budget_gib, "layers": args.layers,
              "shape": {"Hq": HQ, "Hkv": HKV, "head_dim": HEAD_DIM, "block": BLOCK, "dtype": "bfloat16"},
              "rows": []}
    start, rows = time.monotonic(), result["rows"]
    for batch in batches:
        for context in contexts:
            if time.monotonic() - start > args.max_seconds:
                print(f"time limit: skipping batch {batch} context {context}")
                continue
            case = measure(batch, context, fractions, device, args)
            est = balanced_fraction(case)
            for r in case:
                r["balanced_fraction_estimate"] = None if est is None else round(est, 3)
            rows += case
            write_json(f"{name}.json", result)   # partial results survive a time limit
            print(f"b{batch} ctx{context}: " + ", ".join(f"f={r['host_fraction']}: {r['cooperative_ms']:.2f} ms"
                                                        for r in case), flush=True)
    print_table(f"cooperative decode attention per layer ({result['environment'].get('device', 'cpu')})", rows,
                ["batch", "context", "host_fraction", "device_only_ms", "cooperative_ms", "device_part_ms",
                 "host_part_ms", "slowdown", "host_GBps", "device_GBps", "model_tokens_per_s",
                 "max_context_in_budget", "balanced_fraction_estimate", "max_abs_diff"])
    print("\nwrote", write_json(f"{name}.json", result))
    plot(result, os.path.join(out_dir(), f"{name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
