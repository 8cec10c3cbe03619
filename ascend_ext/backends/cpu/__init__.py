"""CPU backend: native C++ kernels (csrc/, built at install), Triton kernels under the
interpreter (tests: TRITON_INTERPRET=1), and the vLLM platform (``platform.py``)."""

from __future__ import annotations

from ...ops._contract import Supports
from ...ops._dispatch import register
from .._triton import register_triton

NATIVE_OPS = ("flash_attn_varlen", "paged_attention", "reshape_and_cache", "mla_decode", "concat_and_cache_mla")


def _layout_pays(kv_layout: str, head_dim: int, head_dim_v: int) -> bool:
    """The native kernels read bf16 value pairs in place (AVX512-BF16 builds, Dv % 32 == 0), and
    a "tiles" cache in place where AMX runs (benchmarks/NOTES.md, "#19 key tiles")."""
    from .native import kv_tiles_in_place, value_pairs_supported

    if kv_layout == "tiles":
        return kv_tiles_in_place(head_dim, head_dim_v)
    return kv_layout == "pairs" and value_pairs_supported(head_dim_v)


NATIVE_LAYOUTS = ("rows", "pairs", "tiles")
NATIVE_SUPPORTS = Supports(mask=False, kv_layouts=NATIVE_LAYOUTS, layout_pays=_layout_pays,
                           note="the native kernels apply causal/window rules, not TileMask tiles")
NATIVE_PAGED_SUPPORTS = Supports(mask=False, kv_quant=("fp8", "int8"), kv_layouts=NATIVE_LAYOUTS,
                                 layout_pays=_layout_pays,
                                 note="the native kernels apply causal/window rules, not TileMask tiles; fp8 / int8 "
                                      "caches are dequantised to float32 rows on load")


def _native_available(device: str) -> str | None:
    from .native import native_available

    return native_available(device)


def _interpreter_kv_quant() -> tuple[str, ...]:
    """Quantised caches the Triton interpreter reads: triton-ascend's (its own venv) has no fp8 type."""
    import importlib.metadata

    try:
        importlib.metadata.version("triton-ascend")
    except importlib.metadata.PackageNotFoundError:
        return ("fp8", "int8")
    return ("int8",)


def register_impls() -> None:
    for op in NATIVE_OPS:
        register(op, "native", f"ascend_ext.backends.cpu.native:{op}", devices=("cpu",),
                 available=_native_available,
                 supports=NATIVE_PAGED_SUPPORTS if op == "paged_attention" else NATIVE_SUPPORTS)
    register_triton("cpu", "ascend_ext.backends.cpu.configs",
                    supports={"paged_attention": Supports(kv_quant=_interpreter_kv_quant())})
