"""The CPU benchmark scripts still run against today's ops and vLLM (tiny shapes, every timer
replaced by one call): a benchmark that rots (benchmarks/overhead.py once passed an
implementation fewer keywords than the public op does) fails here, not in a measurement run.
The GPU scripts (shapes and CUDA timers built in) are imported, so a broken import or name
fails here before a device call is spent on it."""

import contextlib
import glob
import importlib
import os

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _script(name: str, monkeypatch):
    """The benchmark module ``name`` with its timers calling the function once."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    module = importlib.import_module(name)

    def once(fn, *args, scope=None, **kwargs):
        with scope() if scope is not None else contextlib.nullcontext():
            fn()
        return 1.0

    for timer in ("bench_cpu_ms", "per_call_us"):
        if hasattr(module, timer):
            monkeypatch.setattr(module, timer, once)
    return module


@pytest.fixture
def native_or_skip():
    from ascend_ext.ops import _dispatch

    impl = _dispatch.implementations("paged_attention", "cpu").get("native")
    if impl is None or impl.unavailable_reason("cpu") is not None:
        pytest.skip("the native CPU kernels are not built here")


@pytest.mark.parametrize("kind,contexts,q_lens,kv_quant", [("decode", [40, 7], [1, 1], None),
                                                         ("prefill", [40], [40], None),
                                                         ("decode", [40, 7], [1, 1], "fp8")])
def test_cpu_attention_script(kind, contexts, q_lens, kv_quant, native_or_skip, monkeypatch):
    bench = _script("cpu_attention", monkeypatch)
    row = bench.measure(kind, contexts, q_lens, torch.bfloat16, bench._vllm(), ["native", "reference"], rounds=1,
                        kv_quant=kv_quant)
    assert row["native_ms"] == 1.0 and "reference_ms" in row
    if "max_diff_vs_vllm" in row and kv_quant is None:   # vLLM reads the float cache: fp8 differs by its rounding
        assert row["max_diff_vs_vllm"] < 0.05


def test_cpu_prefill_script(native_or_skip, monkeypatch):
    bench = _script("cpu_prefill", monkeypatch)
    row = bench.measure("long_d64", 40, torch.bfloat16, bench.cpu_attention._vllm(), rounds=1)
    assert row["native_min_ms"] > 0


def test_cpu_mla_script(native_or_skip, monkeypatch):
    bench = _script("cpu_mla", monkeypatch)
    row = bench.measure(2, 40, 4, torch.bfloat16, bench._vllm_mla(), ["native", "reference"], fp8=True)
    assert row["native_ms"] == row["native_fp8_ms"] == 1.0
    if "max_diff_vs_vllm" in row:
        assert row["max_diff_vs_vllm"] < 0.05


def test_overhead_script(native_or_skip, monkeypatch):
    bench = _script("overhead", monkeypatch)
    rows = bench.measure("cpu") + bench.python_only("cpu")
    assert {r["path"] for r in rows} >= {"public op (trusted)", "public op (trusted), no-op kernel"}


def test_cascade_script(monkeypatch):
    bench = _script("cascade", monkeypatch)
    rows = bench.rows("cpu", smoke=True, rounds=1)
    assert rows and all(r["max_diff"] < 0.05 for r in rows)


@pytest.mark.parametrize("name", sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(BENCHMARKS, "*.py"))))
def test_every_benchmark_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCHMARKS))
    monkeypatch.syspath_prepend(BENCHMARKS)
    assert callable(getattr(importlib.import_module(name), "main", None)) or name in ("common", "moe_worker",
                                                                                        "tp_worker")

