"""Cascade attention vs plain paged attention on a batch sharing a long prompt prefix.

B sequences share a P-token prefix (the same physical cache blocks, as prefix caching
leaves them) and each has S tokens of its own; every sequence decodes Lq new tokens (1:
decode; more: the first chunk after the prefix). Plain: one ``paged_attention`` call, which
reads the prefix once per sequence. Cascade: ``cascade_attention`` = one non-causal pass of
all B*Lq queries over the prefix (read once) + one causal pass over the suffixes + an lse
merge; its plan (``plan_cascade``, once per step in the vLLM backend) is built outside the
timed call, and timed alone as ``plan_us``.

Layer shape: a Llama-3-8B-like layer, 32 query / 8 KV heads, head dim 128, bf16, KV block
128 on CPU (vLLM's CPU block) and 16 on CUDA.

    python benchmarks/cascade.py --device cpu            # the CPU row: run on an idle box
    python benchmarks/cascade.py --device cpu --smoke    # tiny shapes: checks that it runs
    python benchmarks/attention.py --parts cascade       # the same cases on CUDA (Triton)

CPU timing alternates plain and cascade calls (medians of ``--rounds`` rounds) and prints
the load average before and after. Writes cascade_<device>.json to $OUT (or
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_cpu_ms, environment, print_table, write_json  # noqa: E402

from ascend_ext import ops  # noqa: E402

HQ, HKV, HEAD_DIM = 32, 8, 128
COLUMNS = ["B", "prefix", "suffix", "q", "plain_us", "cascade_us", "speedup", "plan_us", "prefix_reads_saved_MB",
           "max_diff"]


def cases(device: str, quick: bool, smoke: bool) -> list[tuple[int, int, int, int]]:
    """(B, prefix P, own suffix S, new tokens Lq) per row."""
    if smoke:
        return [(8, 256, 40, 1), (8, 256, 40, 4)]
    if device == "cpu":
        rows = [(64, 4096, 128, 1), (16, 4096, 128, 1), (64, 1024, 128, 1), (8, 4096, 128, 1), (64, 4096, 128, 8)]
        return rows[:2] if quick else rows
    rows = [(64, 4096, 256, 1), (256, 4096, 256, 1), (64, 16384, 256, 1), (16, 4096, 256, 1), (64, 4096, 256, 16)]
    return rows[:2] if quick else rows


class Case:
    """B sequences over one paged cache whose first P/bs blocks are shared."""

    def __init__(self, device, batch, prefix, suffix, q_len, block, dtype=torch.bfloat16, heads=(HQ, HKV, HEAD_DIM),
                 seed=0):
        hq, hkv, d = heads
        gen = torch.Generator().manual_seed(seed)
        assert prefix % block == 0, "the shared prefix is whole blocks (prefix caching shares full blocks)"
        shared, own = prefix // block, -(-(suffix + q_len) // block)
        num_blocks = shared + batch * own
        self.k_cache = torch.randn(num_blocks, block, hkv, d, generator=gen).to(dtype).to(device)
        self.v_cache = torch.randn(num_blocks, block, hkv, d, generator=gen).to(dtype).to(device)
        perm = torch.randperm(num_blocks, generator=gen).int()
        table = torch.empty(batch, shared + own, dtype=torch.int32)
        table[:, :shared] = perm[:shared]
        table[:, shared:] = perm[shared:].view(batch, own)
        self.table = table.to(device)
        self.lens = torch.full((batch,), prefix + suffix + q_len, dtype=torch.int32, device=device)
        self.q = torch.randn(batch * q_len, hq, d, generator=gen).to(dtype).to(device)
        self.cu = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device=device)
        self.q_len, self.block, self.max_len = q_len, block, prefix + suffix + q_len
        self.out = torch.empty_like(self.q)
        self.out_cascade = torch.empty_like(self.q)
        self.prefix_bytes = (batch - 1) * prefix * hkv * d * 2 * self.k_cache.element_size()
        blocks = ops.shared_prefix_blocks(self.table, self.lens, self.cu, block, self.max_len)
        assert blocks == shared, (blocks, shared)
        self.plan = ops.plan_cascade(self.table, self.lens, self.cu, self.q.shape[0], block, blocks)

    def plain(self):
        with ops.trusted_inputs():
            ops.paged_attention(self.q, self.k_cache, self.v_cache, self.table, self.lens, self.cu, self.q_len,
                                out=self.out, max_seqlen_k=self.max_len)

    def cascade(self):
        with ops.trusted_inputs():
            ops.cascade_attention(self.q, self.k_cache, self.v_cache, self.plan, self.cu, self.q_len,
                                  out=self.out_cascade, max_seqlen_k=self.max_len)

    def replan(self):
        blocks = ops.shared_prefix_blocks(self.table, self.lens, self.cu, self.block, self.max_len)
        ops.plan_cascade(self.table, self.lens, self.cu, self.q.shape[0], self.block, blocks)


def measure_cpu(case: Case, rounds: int) -> dict:
    plain, cascade = [], []
    for _ in range(rounds):   # alternate, so that load changes hit both sides alike
        plain.append(bench_cpu_ms(case.plain, min_reps=3, min_s=0.2))
        cascade.append(bench_cpu_ms(case.cascade, min_reps=3, min_s=0.2))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"plain_us": med(plain) * 1e3, "cascade_us": med(cascade) * 1e3,
            "plan_us": bench_cpu_ms(case.replan, min_reps=5, min_s=0.05) * 1e3}


def measure_cuda(case: Case) -> dict:
    from common import bench_graph_ms, bench_ms

    return {"plain_us": bench_graph_ms(case.plain) * 1e3, "cascade_us": bench_graph_ms(case.cascade) * 1e3,
            "plan_us": bench_ms(case.replan) * 1e3}


def rows(device: str, quick: bool = False, smoke: bool = False, rounds: int = 5) -> list[dict]:
    block = 128 if device == "cpu" else 16
    heads = (8, 2, 64) if smoke else (HQ, HKV, HEAD_DIM)
    out = []
    for batch, prefix, suffix, q_len in cases(device, quick, smoke):
        case = Case(device, batch, prefix, suffix, q_len, 16 if smoke else block, heads=heads)
        row = {"B": batch, "prefix": prefix, "suffix": suffix, "q": q_len}
        row.update(measure_cpu(case, rounds) if device == "cpu" else measure_cuda(case))
        case.plain()
        case.cascade()
        row["max_diff"] = float((case.out.float() - case.out_cascade.float()).abs().max())
        row["speedup"] = row["plain_us"] / row["cascade_us"]
        row["prefix_reads_saved_MB"] = case.prefix_bytes / 1e6
        out.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        del case
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script runs")
    parser.add_argument("--rounds", type=int, default=5, help="CPU: alternated rounds per row")
    args = parser.parse_args()
    load_before = os.getloadavg()
    impl = ops.selected_impl("paged_attention", args.device)
    started = time.time()
    result = {"environment": environment(), "device": args.device, "impl": impl, "threads": torch.get_num_threads(),
              "load_before": load_before,
              "rows": rows(args.device, args.quick, args.smoke, 1 if args.smoke else args.rounds)}
    result["load_after"] = os.getloadavg()
    print_table(f"cascade vs plain paged attention on {args.device} ({impl}, {result['threads']} threads; "
                f"us per layer call; load average {load_before[0]:.2f} -> {result['load_after'][0]:.2f}; "
                f"{time.time() - started:.0f} s)", result["rows"], COLUMNS)
    print("\nwrote", write_json(f"cascade_{args.device}{'_smoke' if args.smoke else ''}.json", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
