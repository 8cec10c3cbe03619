"""Host overhead of the public ops: microseconds per call of ``ops.paged_attention`` (decode,
B=1, tiny context) through the public op, through ``torch.ops.ascend_ext`` (the custom op
that torch.compile sees), and calling the bound kernel directly.

CPU: the bound kernel is the native C++ op (``torch.ops.ascend_ext_native``); the public op's
Python cost is (public - direct). CUDA: the Triton kernel launched by its wrapper; eager
calls are host-bound at this size, so per-call wall time is the overhead.

    python benchmarks/overhead.py            # CPU (and CUDA when present)
Prints a table, writes overhead_<device>.json and .png under benchmarks/results (or $OUT).
Run with nothing else on the machine.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ascend_ext import ops  # noqa: E402
from ascend_ext.ops import _dispatch  # noqa: E402
from benchmarks.common import environment, out_dir, print_table, write_json  # noqa: E402


def per_call_us(fn, seconds: float = 1.0, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the mean µs per call in a tight loop of ~``seconds``/repeats."""
    fn()
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / repeats:
            for _ in range(50):
                fn()
            n += 50
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    samples.sort()
    return samples[len(samples) // 2]


def decode_case(device: str, dtype: torch.dtype, context: int = 32, hq: int = 32, hkv: int = 8, d: int = 128,
                block: int = 16):
    g = torch.Generator().manual_seed(0)
    blocks = -(-context // block)
    k_cache = torch.randn(blocks + 2, block, hkv, d, generator=g).to(device, dtype)
    v_cache = torch.randn(blocks + 2, block, hkv, d, generator=g).to(device, dtype)
    table = torch.arange(blocks, dtype=torch.int32, device=device)[None]
    seq_lens = torch.tensor([context], dtype=torch.int32, device=device)
    cu_q = torch.tensor([0, 1], dtype=torch.int32, device=device)
    q = torch.randn(1, hq, d, generator=g).to(device, dtype)
    out = torch.empty_like(q)
    return q, k_cache, v_cache, table, seq_lens, cu_q, out


def measure(device: str) -> list[dict]:
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        q, k_cache, v_cache, table, seq_lens, cu_q, out = decode_case(device, dtype)
        scale = q.shape[2] ** -0.5
        impl = _dispatch.bound("paged_attention", device)
        variants = {
            "public op (trusted)": lambda: _trusted(q, k_cache, v_cache, table, seq_lens, cu_q, out),
            "public op (checked)": lambda: ops.paged_attention(q, k_cache, v_cache, table, seq_lens, cu_q, 1,
                                                               max_seqlen_k=32, out=out),
            "torch.ops.ascend_ext": lambda: torch.ops.ascend_ext.paged_attention(
                q, k_cache, v_cache, table, seq_lens, cu_q, 1, 32, scale, -1, 0, 0.0, out, None),
            f"bound {impl.name} impl": lambda: impl.fn(q, k_cache, v_cache, table, seq_lens, cu_q, 1,
                                                       softmax_scale=scale, window=(-1, 0), softcap=0.0, out=out,
                                                       return_lse=False, max_seqlen_k=32),
        }
        if device == "cpu" and impl.name == "native":
            native = torch.ops.ascend_ext_native.paged_attention
            variants["native kernel direct"] = lambda: native(q, k_cache, v_cache, table, seq_lens, cu_q, scale,
                                                              -1, 0, 0.0, out, None)
        times = {name: per_call_us(fn) for name, fn in variants.items()}
        base = times.get("native kernel direct", times[f"bound {impl.name} impl"])
        for name, us in times.items():
            rows.append({"device": device, "dtype": str(dtype)[6:], "path": name, "us_per_call": us,
                         "over_kernel_us": us - base})
    return rows


def python_only(device: str) -> list[dict]:
    """The public op's own cost, free of kernel-time noise: a no-op implementation is bound
    and the public op (trusted) is timed against calling that no-op directly."""
    def noop(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, **options):
        return None   # takes whatever keywords the public op passes an implementation

    _dispatch.register("paged_attention", "_noop", lambda: noop, devices=(device,))
    rows = []
    try:
        with ops.use_impl(paged_attention="_noop"):
            q, k_cache, v_cache, table, seq_lens, cu_q, out = decode_case(device, torch.bfloat16)
            scale = q.shape[2] ** -0.5
            public = per_call_us(lambda: _trusted(q, k_cache, v_cache, table, seq_lens, cu_q, out))
            direct = per_call_us(lambda: noop(q, k_cache, v_cache, table, seq_lens, cu_q, 1, softmax_scale=scale,
                                              window=(-1, 0), softcap=0.0, out=out, return_lse=False,
                                              max_seqlen_k=32))
        rows.append({"device": device, "dtype": "bfloat16", "path": "public op (trusted), no-op kernel",
                     "us_per_call": public, "over_kernel_us": public - direct})
    finally:
        _dispatch._REGISTRY["paged_attention"][:] = [
            i for i in _dispatch._REGISTRY["paged_attention"] if i.name != "_noop"]
        _dispatch.rebind()
    return rows


def _trusted(q, k_cache, v_cache, table, seq_lens, cu_q, out):
    with ops.trusted_inputs():
        return ops.paged_attention(q, k_cache, v_cache, table, seq_lens, cu_q, 1, max_seqlen_k=32, out=out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['device']} {r['dtype']}\n{r['path']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    ax.barh(labels, [r["us_per_call"] for r in rows])
    ax.set_xlabel("µs per call (decode B=1, ctx 32, 32/8 heads, d128)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rows += measure(device) + python_only(device)
    print_table("paged_attention decode: host time per call", rows,
                ["device", "dtype", "path", "us_per_call", "over_kernel_us"])
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f}, threads: {torch.get_num_threads()}")
    tag = "_".join(devices)
    write_json(f"overhead_{tag}.json", {"env": environment(), "load_avg_1min": load,
                                       "threads": torch.get_num_threads(), "rows": rows})
    plot(rows, os.path.join(out_dir(), f"overhead_{tag}.png"))


if __name__ == "__main__":
    main()
