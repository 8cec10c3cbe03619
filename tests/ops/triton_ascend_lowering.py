"""Lower every ascend_ext Triton kernel with triton-ascend's own compiler (run as a script
under triton-ascend, TRITON_INTERPRET unset; test_triton_ascend_lowering.py runs it).

Each kernel is reached through its Python wrapper with the NPU tile configuration (the
config tables' ``npu`` entries), so the specialisations are the ones an Ascend device
would compile. Launches become compile-only: the target is triton-ascend's ``npu``
backend and the pipeline stops after ``ttadapter`` (TTIR -> triton-adapter-opt ->
Linalg/HIVM), before the binary step that needs CANN (bishengir-compile). Prints one JSON
line per lowered kernel specialisation and a final summary line.

``--only NAME`` lowers one case, ``--list`` prints the case names. Negative controls, which
must fail: ``--control frontend`` lowers a kernel with an undefined name; ``--control
adapter`` replaces triton-adapter-opt with ``false`` (the lowering really runs the tool).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "lowering needs the compiler, not the interpreter"

import torch                                                             # noqa: E402
import triton                                                            # noqa: E402
import triton.language as tl                                             # noqa: E402
import triton.runtime.jit as jit                                         # noqa: E402
import triton.compiler                                                   # noqa: E402
from triton._C.libtriton import ir                                       # noqa: E402
from triton.backends.compiler import GPUTarget                           # noqa: E402
from triton.compiler import make_backend                                 # noqa: E402

TARGET = GPUTarget("npu", "Ascend910B1", 0)
LOWERED: list[dict] = []


def lower(src, target=None, options=None):
    """Stand-in for triton.compile: TTIR and the Ascend adapter IR, no binary."""
    backend = make_backend(TARGET)
    opts = backend.parse_options(dict(options or {}))
    stages: dict = {}
    backend.add_stages(stages, opts)
    assert list(stages)[:2] == ["ttir", "ttadapter"], list(stages)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(opts, backend.get_codegen_implementation(), backend.get_module_map(), context)
    metadata = {"hash": src.hash(), "target": TARGET, **opts.__dict__}
    ttir = stages["ttir"](module, metadata)
    ttir_text = str(ttir)
    adapter = stages["ttadapter"](ttir, metadata)
    if "func.func" not in adapter:
        raise RuntimeError(f"{src.fn.__name__}: triton-adapter-opt produced no function")
    record = {"kernel": src.fn.__name__, "constants": {k: v for k, v in src.constants.items()
                                                       if isinstance(v, (int, bool, str))},
              "ttir_ops": ttir_text.count("\n"), "adapter_bytes": len(adapter),
              "hivm_or_linalg": ("hivm" in adapter) or ("linalg" in adapter)}
    LOWERED.append(record)
    print(json.dumps(record), flush=True)
    return _Lowered()


class _Lowered:
    """What a launch gets back: nothing runs."""


class _CompileOnlyDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET


def _compile_only_launch(self, grid):
    return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=True, **kwargs)


def install() -> None:
    import triton.compiler
    triton.compiler.compile = lower           # JITFunction.create_binder imports it from here
    jit.JITFunction.__getitem__ = _compile_only_launch
    triton.runtime.driver.set_active(_CompileOnlyDriver())
    torch.utils.rename_privateuse1_backend("npu")   # torch.device("npu") for the config tables


def cases():
    """(name, thunk) per kernel path, each with the NPU tile configuration."""
    from ascend_ext.backends.npu import configs as npu_configs
    from ascend_ext.kernels.triton import ep_layout, flash_attention, mla_decode, moe_experts, paged_attention
    from ascend_ext.ops import TileMask

    npu = torch.device("npu")
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g).to(dtype)

    def cu(lens):
        return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)

    def flash(d, dtype, window, mask=None, sinks=None):
        q, k, v = rnd(40, 8, d, dtype=dtype), rnd(40, 2, d, dtype=dtype), rnd(40, 2, d, dtype=dtype)
        flash_attention.flash_attn_varlen(q, k, v, cu([40]), cu([40]), 40, 40, softmax_scale=d ** -0.5, window=window,
                                          mask=mask, softcap=0.0, out=torch.empty_like(q), return_lse=True,
                                          sinks=sinks, configs=npu_configs)

    def paged(d, dtype, splits, int8=False, sinks=None):
        k_cache, v_cache = rnd(6, 128, 2, d, dtype=dtype), rnd(6, 128, 2, d, dtype=dtype)
        q = rnd(3, 8, d, dtype=dtype)
        scales = None
        if int8:   # vllm-ascend's C8 cache: per-channel scale and offset
            from ascend_ext.ops.attention import kv_quant

            k_cache, v_cache = (k_cache * 20).to(torch.int8), (v_cache * 20).to(torch.int8)
            scales = kv_quant.normalize(k_cache, v_cache, torch.full((2 * d,), 0.05), torch.full((2 * d,), 0.05),
                                        torch.ones(2 * d), torch.ones(2 * d))
        table = torch.tensor([[0, 1, 2], [3, 4, 5], [5, 4, 3]], dtype=torch.int32)
        paged_attention.paged_attention(q, k_cache, v_cache, table, torch.tensor([300, 40, 1], dtype=torch.int32),
                                        cu([1, 1, 1]), 1, softmax_scale=0.1, window=(-1, 0), softcap=0.0,
                                        out=torch.empty_like(q), return_lse=True, max_seqlen_k=300,
                                        configs=npu_configs, num_splits=splits, kv_scales=scales, sinks=sinks)

    def mla(heads, s_q):
        cache = rnd(4, 128, 576)
        q = rnd(2, s_q, heads, 576)
        mla_decode.mla_decode(q, cache, torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                              torch.tensor([200, 17], dtype=torch.int32), kv_lora_rank=512, softmax_scale=0.04,
                              causal=True, out=torch.empty(2, s_q, heads, 512, dtype=torch.bfloat16),
                              return_lse=True, configs=npu_configs)

    def moe(int8):
        x = rnd(48, 256)
        scales = None
        if int8:
            x, scales = torch.randint(-127, 127, (48, 256), generator=g, dtype=torch.int8), rnd(48, dtype=torch.float32)
        moe_experts.moe_experts(x, rnd(4, 2 * 384, 256), rnd(4, 256, 384), cu([10, 0, 30, 8])[:-1].long(),
                                torch.tensor([10, 0, 30, 8]), scales=scales, out_dtype=torch.bfloat16,
                                config=moe_experts.moe_config(npu, torch.bfloat16))

    def ep(quant):
        ids = torch.randint(0, 8, (48, 2), generator=g, dtype=torch.int32)
        ep_layout.layout(ids, 8)
        ep_layout.layout(ids, 4, width=2, dedup=True, capacity=16)
        pos = torch.randint(-1, 96, (48, 2), generator=g, dtype=torch.int32)
        src = rnd(48, 256)
        if quant:
            dst, scale = torch.empty(96, 256, dtype=torch.int8), torch.empty(96, dtype=torch.float32)
            ep_layout.scatter_rows(src, pos, dst, dst_scale=scale,
                                   meta=(ids, rnd(48, 2, dtype=torch.float32)),
                                   dst_meta=(torch.empty(96, 1, dtype=torch.int32), torch.empty(96, 1)))
        else:
            ep_layout.scatter_rows(src, pos, torch.empty(96, 256, dtype=torch.bfloat16))
        ep_layout.gather_reduce(rnd(96, 256), pos, rnd(48, 2, dtype=torch.float32) if quant else None,
                                torch.empty(48, 256, dtype=torch.bfloat16))

    yield "flash d128 bf16 causal", lambda: flash(128, torch.bfloat16, (-1, 0))
    yield "flash d64 fp16 window", lambda: flash(64, torch.float16, (16, 0))
    # a dense-kind mask (known kinds take their native forms): the run/pool walk is lowered
    yield "flash d128 bf16 tile-mask", lambda: flash(128, torch.bfloat16, (-1, -1),
                                                     TileMask.from_dense(torch.rand(40, 40, generator=g) < 0.5,
                                                                         tile=(128, 256)))
    yield "paged d128 bf16 split", lambda: paged(128, torch.bfloat16, 2)
    yield "paged d64 fp16", lambda: paged(64, torch.float16, 1)
    yield "paged d128 bf16 int8 cache", lambda: paged(128, torch.bfloat16, 2, int8=True)
    # attention sinks (HAS_SINK): joined at the store, or in the split combine
    yield "flash d64 bf16 sinks", lambda: flash(64, torch.bfloat16, (-1, 0), sinks=rnd(8, dtype=torch.float32))
    yield "paged d64 bf16 sinks", lambda: paged(64, torch.bfloat16, 1, sinks=rnd(8, dtype=torch.float32))
    yield "paged d64 bf16 split sinks", lambda: paged(64, torch.bfloat16, 2, sinks=rnd(8, dtype=torch.float32))
    yield "mla 16 heads", lambda: mla(16, 1)
    yield "mla 128 heads s_q 2", lambda: mla(128, 2)
    yield "moe bf16", lambda: moe(False)
    yield "moe int8", lambda: moe(True)
    yield "ep layout + scatter + gather", lambda: ep(False)
    yield "ep layout + int8 scatter + weighted gather", lambda: ep(True)


@triton.jit
def _broken_kernel(X, n):
    offs = tl.arange(0, 16)
    tl.store(X + offs, tl.load(X + offs) + undefined_name)   # noqa: F821  (negative control)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="lower the case with exactly this name")
    parser.add_argument("--list", action="store_true", help="print the case names")
    parser.add_argument("--control", choices=["frontend", "adapter"])
    args = parser.parse_args()
    install()
    if args.control == "frontend":
        _broken_kernel[(1,)](torch.zeros(16), 16)
    if args.control == "adapter":
        import shutil

        backend_globals = type(make_backend(TARGET)).add_stages.__globals__   # triton loads backends by path
        backend_globals["_get_triton_adapter_opt_path"] = lambda: shutil.which("false")
    if args.list:
        print(json.dumps([name for name, _ in cases()]))
        return 0
    for name, thunk in cases():
        if args.only in ("", name):
            thunk()
    kernels = sorted({r["kernel"] for r in LOWERED})
    print(json.dumps({"summary": True, "specialisations": len(LOWERED), "kernels": kernels}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
