"""The ``native`` CPU implementation: C++ kernels from csrc/ (``torch.ops.ascend_ext_native``).

The extension ``ascend_ext._native`` is built at install time when torch and a C++
compiler are present (see setup.py). Its kernels accumulate in float32 and cover
causal/window/softcap/lse/attention sinks; they take no :class:`TileMask` (declared in
``backends/cpu/__init__.py``: a masked request raises, naming the implementations that can).
``mla_decode`` runs float16/bfloat16/float32 latent caches, and float8_e4m3fn caches with a
per-tensor ``kv_scale`` under float16/bfloat16 queries, natively (csrc/mla_decode.cpp).
"""

from __future__ import annotations

import functools

import torch

from ...ops.attention import reference
from ...ops.mla import reference as mla_reference


@functools.lru_cache(maxsize=None)
def _load_error() -> str | None:
    try:
        import ascend_ext._native  # noqa: F401 - registers torch.ops.ascend_ext_native.*
    except ImportError as error:
        return (f"the native CPU extension is not built ({error}); reinstall with "
                "`pip install --no-build-isolation -e .` next to torch and a C++ compiler")
    return None


def native_available(device: str) -> str | None:
    """Registry check: the extension imports and the tensors live on the CPU."""
    if device != "cpu":
        return f"native kernels run on cpu, not {device}"
    return _load_error()


OPS_NAMESPACE = "ascend_ext_native"   # torch.ops namespace of the kernels (tests swap in a variant build)


class _Ops:
    """The kernels of OPS_NAMESPACE, their OpOverloads cached (a torch.ops attribute walk per
    call costs about a microsecond; the tests swap OPS_NAMESPACE for a portable build)."""

    def __init__(self):
        self._cache: dict[tuple[str, str], object] = {}

    def __getattr__(self, name: str):
        key = (OPS_NAMESPACE, name)
        op = self._cache.get(key)
        if op is None:
            op = self._cache[key] = getattr(getattr(torch.ops, OPS_NAMESPACE), name).default
        return op


_OPS = _Ops()


def _ops() -> _Ops:
    return _OPS


def _last_dim_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _contiguous(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor if tensor is None or tensor.is_contiguous() else tensor.contiguous()


def _lse_buffer(q: torch.Tensor, return_lse: bool) -> torch.Tensor | None:
    return torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32) if return_lse else None


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      softmax_scale, window, mask, softcap, out, return_lse, sinks=None):
    lse = _lse_buffer(q, return_lse)
    _ops().flash_attn_varlen(
        _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), cu_seqlens_q, cu_seqlens_k,
        softmax_scale, window[0], window[1], softcap, out, lse, _contiguous(sinks))
    return lse


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                    softmax_scale, window, softcap, out, return_lse, max_seqlen_k=None, kv_scales=None, sinks=None,
                    kv_layout="rows"):
    if kv_layout == "pairs":
        _require_pairs(v_cache)
    lse = _lse_buffer(q, return_lse)
    _ops().paged_attention(
        _last_dim_contiguous(q), k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
        softmax_scale, window[0], window[1], softcap, out, lse, _contiguous(sinks), *_channel_scales(kv_scales),
        value_pairs=kv_layout == "pairs", kv_tiles=kv_layout == "tiles")
    return lse


@functools.lru_cache(maxsize=None)
def value_pairs_supported(head_dim_v: int) -> bool:
    """Whether this build's kernels read (and write) a bfloat16 value cache of head dim
    ``head_dim_v`` in the "pairs" layout: AVX512-BF16 pair kernels, ``head_dim_v % 32 == 0``."""
    return native_available("cpu") is None and bool(_ops().value_pairs_supported(head_dim_v))


def kv_tiles_in_place(head_dim: int, head_dim_v: int) -> bool:
    """Whether this build reads a bfloat16 cache in the "tiles" layout in place (the AMX kernel:
    built, granted by Linux, ``ASCEND_EXT_NATIVE_AMX`` not 0 now) at these head dims; elsewhere
    the kernels read it through staged rows (correct, not faster)."""
    return native_available("cpu") is None and bool(_ops().kv_tiles_in_place(head_dim, head_dim_v))


def _require_pairs(v_cache: torch.Tensor) -> None:
    if not value_pairs_supported(v_cache.shape[3]):
        raise NotImplementedError(f"the native CPU kernels of this build do not read kv_layout 'pairs' at value "
                                  f"head dim {v_cache.shape[3]} (AVX512-BF16 and a multiple of 32 needed); use "
                                  "kv_layout 'rows'")


def _channel_scales(kv_scales) -> tuple:
    """k_scale, v_scale, k_offset, v_offset as the kernel takes them: contiguous float32
    [Hkv, D] (kv_quant's normalised views materialised; a few KiB), or four Nones."""
    if kv_scales is None:
        return (None,) * 4
    return tuple(None if t is None else t.contiguous() for t in
                 (kv_scales.k_scale, kv_scales.v_scale, kv_scales.k_offset, kv_scales.v_offset))


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
               kv_scale=None):
    lse = (torch.empty((q.shape[2], q.shape[0] * q.shape[1]), dtype=torch.float32) if return_lse else None)
    target = out if out.stride(-1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    _ops().mla_decode(_last_dim_contiguous(q), kv_cache, _last_dim_contiguous(block_table), seq_lens, kv_lora_rank,
                      softmax_scale, causal, target, lse, 1.0 if kv_scale is None else kv_scale)
    if target is not out:
        out.copy_(target)
    return lse


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, *, kv_scales=None, kv_layout="rows"):
    if kv_scales is not None:   # quantising store: the reference's vectorised torch path
        return reference.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, kv_scales=kv_scales)
    if key.dtype != k_cache.dtype or value.dtype != v_cache.dtype or key.stride(-1) != 1 or value.stride(-1) != 1:
        return reference.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, kv_layout=kv_layout)
    _ops().reshape_and_cache(key, value, k_cache, v_cache, slot_mapping.contiguous(),
                             value_pairs=kv_layout == "pairs", kv_tiles=kv_layout == "tiles")


def concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping):
    if kv_c.dtype != kv_cache.dtype or k_pe.dtype != kv_cache.dtype or kv_c.stride(-1) != 1 or k_pe.stride(-1) != 1:
        return mla_reference.concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping)
    _ops().concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping.contiguous())
