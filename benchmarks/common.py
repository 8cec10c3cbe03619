"""Shared benchmark plumbing: timing, device ceilings, result files (JSON + PNG), tables."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch
import triton
import triton.language as tl


def bench_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn`` on the current device (CUDA events through do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def bench_cpu_ms(fn, min_reps: int = 5, min_s: float = 0.3, max_reps: int = 200, scope=None) -> float:
    """Median wall-clock ms of ``fn`` on the host: one warm-up call, then at least
    ``min_reps`` calls and ``min_s`` seconds. ``scope`` (a zero-argument callable giving a
    context manager, e.g. ``lambda: ops.use_impl(attention="native")``) is entered once around
    the whole loop: an implementation is chosen once, as in serving, not in every timed call
    (``use_impl`` re-selects on entry and exit: ~4 us a call on this CPU)."""
    import contextlib
    import time

    with scope() if scope is not None else contextlib.nullcontext():
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_s):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def pinned(**overrides):
    """``scope`` for :func:`bench_cpu_ms`: ``ops.use_impl(**overrides)`` entered once per loop."""
    from ascend_ext import ops

    return lambda: ops.use_impl(**overrides)


def host_read_gbps(nbytes: int = 1 << 29) -> float:
    """Measured host memory read bandwidth (GB/s): a sum over ``nbytes`` of float32, all threads."""
    x = torch.ones(nbytes // 4)
    ms = bench_cpu_ms(x.sum, min_reps=5, min_s=0.5)
    return nbytes / ms / 1e6


def bench_graph_ms(fn, replays: int = 20) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph: device time without host launch overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(replays):
            fn()
    return bench_ms(graph.replay) / replays


def split_breakdown(module, run, splits: int, out) -> dict:
    """Where a split-KV call's time goes (graph replay, us): ``run`` with ``module``'s
    ``combine_splits`` skipped, and that combine alone over fp32 partials [splits, *out.shape]."""
    combine = module.combine_splits
    try:
        module.combine_splits = lambda *args, **kwargs: None
        split_only = bench_graph_ms(run)
    finally:
        module.combine_splits = combine
    tokens, heads, dv = out.shape
    part_o = torch.randn((splits, tokens, heads, dv), device=out.device)
    part_lse = torch.randn((splits, heads, tokens), device=out.device)
    combine_only = bench_graph_ms(lambda: combine(part_o, part_lse, out, None))
    return {"split_only_us": split_only * 1e3, "combine_only_us": combine_only * 1e3}


@triton.jit
def _read_kernel(X, OUT, n, BLOCK: tl.constexpr):
    """Each program sums strided BLOCK-element chunks of X [n] into OUT[program]."""
    pid, programs = tl.program_id(0), tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(pid * BLOCK, n, programs * BLOCK):
        acc += tl.load(X + start + offs, mask=start + offs < n, other=0.0).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, 0))


def read_floor_us(nbytes: int) -> float:
    """The fastest plain read of ``nbytes`` we can write (graph replay, us): a Triton kernel
    streaming one contiguous buffer (:func:`_read_kernel`), best of a few chunk sizes, programs
    per SM and pipeline depths. The floor of a decode call of that many cache bytes, launch and
    tail included."""
    x = torch.ones(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    out = torch.empty(sms * 8, device="cuda", dtype=torch.float32)
    best = float("inf")
    for block in (2048, 8192):
        for per_sm in (2, 4, 8):
            for stages in (3, 4):
                def run():
                    _read_kernel[(sms * per_sm,)](x, out, x.numel(), BLOCK=block, num_warps=4, num_stages=stages)
                best = min(best, bench_graph_ms(run) * 1e3)
    del x
    return best


def env_shapes(name: str, default: tuple) -> tuple:
    """Shapes from environment variable ``name`` ("a,b,c;a,b,c;..." -> ((a, b, c), ...)), else ``default``."""
    if name not in os.environ:
        return default
    return tuple(tuple(int(x) for x in part.split(",")) for part in os.environ[name].split(";"))


def widened_table(table: torch.Tensor, capacity_keys: int, block_size: int, num_blocks: int) -> torch.Tensor:
    """``table`` [B, W] widened to ``capacity_keys // block_size`` columns, the extra ones pointing
    at random blocks: a block table as vLLM sizes it (for max_model_len), wider than the contexts."""
    extra = torch.randint(0, num_blocks, (table.shape[0], capacity_keys // block_size - table.shape[1]),
                          device=table.device, dtype=table.dtype)
    return torch.cat([table, extra], 1)


def device_ceilings() -> dict:
    """Measured copy bandwidth (bytes read + written) and bf16 matmul rate of this GPU."""
    src = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)   # 512 MiB, far past L2
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * src.element_size() / ms / 1e6
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    return {"copy_GBps": copy_gbs, "matmul_bf16_TFLOPs": 2 * 8192 ** 3 / ms / 1e9}


def environment() -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def out_dir() -> str:
    path = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(path, exist_ok=True)
    return path


def write_json(name: str, payload: dict) -> str:
    path = os.path.join(out_dir(), name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) + " |")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
