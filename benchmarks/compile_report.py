"""Compile the Triton kernels for a GPU target offline (no GPU needed) and report
what the compiler made of them: shared memory, registers, spills, wgmma count,
vector loads, async copies. Costs no device time; run before a device call.

    python benchmarks/compile_report.py                      # default variants
    python benchmarks/compile_report.py flash SUB_M=64 NUM_SUB=2 num_warps=8

Arguments that the real launch specialises on (pointers, strides) are marked
16-divisible, as Triton's JIT does for such values at launch.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

KERNELS = {
    "flash": ("ascend_ext.kernels.triton.flash_attention", "flash_varlen_fwd_kernel",
              dict(GROUP=1, BLOCK_D=128, BLOCK_DV=128, SUB_M=128, NUM_SUB=1, BLOCK_N=128, HAS_LEFT=False,
                   HAS_RIGHT=True, HAS_MASK=False, HAS_SOFTCAP=False, WRITE_LSE=False, EVEN_D=True, IEEE=False,
                   DOT_F32=False, WARP_SPEC=False, WALK=True, WALK_RUNS=32, num_warps=8, num_stages=3)),
    "paged": ("ascend_ext.kernels.triton.paged_attention", "paged_attn_kernel",
              dict(GROUP=4, CACHE_BLOCK=16, BLOCK_M=16, BLOCK_N=64, BLOCK_D=128, BLOCK_DV=128, HAS_LEFT=False,
                   HAS_RIGHT=True, HAS_SOFTCAP=False, WRITE_LSE=False, EVEN_D=True, IEEE=False, DOT_F32=False, KV_QUANT=0,
                   HAS_OFFSET=False, num_warps=4, num_stages=2)),
    "mla": ("ascend_ext.kernels.triton.mla_decode", "mla_decode_kernel",
            dict(HEADS=16, BLOCK_M=16, BLOCK_N=64, BLOCK_C=512, BLOCK_R=64, CAUSAL=True, WRITE_LSE=False,
                 EVEN=True, TMA=True, MASK_N=16, WARP_SPEC=False, TRANS=False, IEEE=False, DOT_F32=False,
                 num_warps=4, num_stages=3)),
    "experts_gate_up": ("ascend_ext.kernels.triton.moe_experts", "gate_up_kernel",
                        dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, EVEN_K=True, INT8=False, IEEE=False, DOT_F32=False,
                             num_warps=4, num_stages=3)),
    "experts_down": ("ascend_ext.kernels.triton.moe_experts", "down_kernel",
                     dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, EVEN_K=True, IEEE=False, DOT_F32=False, num_warps=4,
                          num_stages=3)),
}
FLOAT_ARGS = {"scale_log2", "softcap", "sm_scale", "kv_scale"}
UNALIGNED_INTS = {"window_left", "window_right", "HEAD_DIM", "HEAD_DIM_V", "num_splits", "cache_block",
                  "kv_lora_rank", "rope_dim", "num_tokens", "s_q", "rank", "rope",
                  "num_experts", "hidden", "inter"}


def report(name: str, overrides: dict, dtype: str = "bf16") -> dict:
    module, attr, defaults = KERNELS[name]
    kernel = getattr(__import__(module, fromlist=[attr]), attr)
    cfg = dict(defaults, **overrides)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
    if "maxnreg" in cfg:   # register cap (ptxas --maxrregcount), as the launch option
        options["maxnreg"] = cfg.pop("maxnreg")
    kv = cfg.pop("KV", dtype)   # cache dtype (e.g. fp8e4nv, i8) of CACHE / K_CACHE / V_CACHE (MLA: descriptors)
    sig = inspect.signature(kernel.fn).parameters
    params = list(sig)
    for p in params:   # defaulted arguments the run does not set keep their defaults (as the launch does),
        default = sig[p].default   # except descriptors, which a TMA run passes
        if p not in cfg and default is not inspect.Parameter.empty and not (p.endswith("_DESC") and cfg.get("TMA")):
            cfg[p] = default
    signature, attrs = {}, {}
    for i, p in enumerate(params):
        if p in cfg:
            signature[p] = "constexpr"
        elif p.endswith("_DESC"):   # MLA latent tiles [BLOCK_N, C/2] / [BLOCK_N, R]; flash K / V [BLOCK_N, D]
            box = {"C_DESC": cfg.get("BLOCK_C", 0) // 2, "R_DESC": cfg.get("BLOCK_R"), "K_DESC": cfg.get("BLOCK_D"),
                   "V_DESC": cfg.get("BLOCK_DV")}[p]
            signature[p] = f"tensordesc<{kv}[{cfg['BLOCK_N']}, {box}]>" if cfg.get("TMA") else f"*{kv}"
        elif p.isupper() and p not in UNALIGNED_INTS:
            signature[p] = {"LSE": "*fp32", "SCALES": "*fp32", "OFFSETS": "*i32", "COUNTS": "*i32", "CU_Q": "*i32", "CU_K": "*i32", "SEQ_LENS": "*i32",
                            "BLOCK_TABLE": "*i32", "ROW_PTR": "*i32", "RUN_START": "*i32", "RUN_LEN": "*i32",
                            "RUN_POOL": "*i32", "POOL_TILES": "*i8", "CACHE": f"*{kv}", "K_CACHE": f"*{kv}",
                            "V_CACHE": f"*{kv}", "K_SCALE": "*fp32", "V_SCALE": "*fp32", "K_OFF": "*fp32",
                            "V_OFF": "*fp32", "SINKS": "*fp32"}.get(p, f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif p in FLOAT_ARGS:
            signature[p] = "fp32"
        else:
            signature[p] = "i32"
            if p not in UNALIGNED_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, signature, constexprs=cfg, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 128), options=options)
    ptx = compiled.asm["ptx"]
    info = {"kernel": name, **overrides, "smem_KiB": compiled.metadata.shared / 1024,
            "wgmma": ptx.count("wgmma.mma_async"), "mma.sync": ptx.count("mma.sync"),
            "ld.global.v4": len(re.findall(r"ld\.global(\.\w+)*\.v4", ptx)),
            "ld.global": ptx.count("ld.global"), "cp.async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
            "tma": ptx.count("cp.async.bulk.tensor"), "cvt": ptx.count("cvt.")}
    info.update(_ptxas_usage(ptx))
    return info


def _ptxas_usage(ptx: str) -> dict:
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    # the newest bundled ptxas understands the PTX version Triton emits
    ptxas = next((os.path.join(bin_dir, n) for n in ("ptxas-blackwell", "ptxas")
                  if os.path.exists(os.path.join(bin_dir, n))), "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(tmp, "k.o")],
                              capture_output=True, text=True)
    text = proc.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return {"regs": int(regs.group(1)) if regs else None, "spill_B": int(spill.group(1)) if spill else None}


def main(argv: list[str]) -> int:
    if argv:
        runs = [(argv[0], {k: eval(v) for k, v in (a.split("=", 1) for a in argv[1:])})]
    else:
        runs = [("flash", {}), ("flash", {"SUB_M": 64, "NUM_SUB": 2}), ("flash", {"WARP_SPEC": True}),
                ("flash", {"HAS_MASK": True}), ("flash", {"BLOCK_D": 64, "BLOCK_DV": 64, "BLOCK_N": 64, "num_warps": 4}),
                ("paged", {}), ("paged", {"KV": "fp8e4nv", "KV_QUANT": 1}),
                ("paged", {"KV": "fp8e4nv", "KV_QUANT": 1, "BLOCK_N": 128})]
    for kernel, overrides in runs:
        try:
            print(report(kernel, overrides))
        except Exception as exc:
            print({"kernel": kernel, **overrides, "error": f"{type(exc).__name__}: {str(exc)[-600:]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
