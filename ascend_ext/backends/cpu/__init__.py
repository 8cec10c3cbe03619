"""CPU backend: native C++ kernels (csrc/, built at install), Triton kernels under the
interpreter (tests: TRITON_INTERPRET=1), and the vLLM platform (``platform.py``)."""

from __future__ import annotations

from ...ops._contract import Supports
from ...ops._dispatch import register
from .._triton import register_triton

NATIVE_OPS = ("flash_attn_varlen", "paged_attention", "reshape_and_cache", "mla_decode", "concat_and_cache_mla")


def _value_pairs_pay(head_dim_v: int) -> bool:
    """The native kernels read bf16 value pairs in place (AVX512-BF16 builds, Dv % 32 == 0)."""
    from .native import value_pairs_supported

    return value_pairs_supported(head_dim_v)


NATIVE_SUPPORTS = Supports(mask=False, value_layouts=("rows", "pairs"), value_pairs_pay=_value_pairs_pay,
                           note="the native kernels apply causal/window rules, not TileMask tiles")
NATIVE_PAGED_SUPPORTS = Supports(mask=False, kv_quant=("fp8", "int8"), value_layouts=("rows", "pairs"),
                                 value_pairs_pay=_value_pairs_pay,
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
