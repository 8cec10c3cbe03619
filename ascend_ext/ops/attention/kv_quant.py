"""Quantised paged KV caches: what the scales mean, their validation, and the reference
quantise / dequantise math every implementation matches.

Two schemes, chosen by the cache dtype:

* ``float8_e4m3fn`` (vLLM's ``--kv-cache-dtype fp8`` / ``fp8_e4m3``; vLLM allocates uint8 and
  views it as e4m3): symmetric, ``stored = sat(x / scale)``, ``x = stored * scale``; ``k_scale``
  / ``v_scale`` per tensor (one value, vLLM's default) or per KV head (``[Hkv]``, vLLM's
  ``attn_head`` kv-cache scheme). ``sat`` clamps to +-448 as vLLM's kernels do (satfinite);
  a plain ``.to(float8_e4m3fn)`` would turn overflow into NaN.
* ``int8`` (vllm-ascend's C8 KV cache): static per-channel affine,
  ``stored = clamp(round(x * (1 / scale) + offset), -128, 127)``, ``x = (stored - offset) * scale``;
  scale and optional offset per tensor (one value), per KV head ``[Hkv]`` or per channel
  (``[Hkv * D]`` or ``[Hkv, D]``, vllm-ascend's layout).

Scales are float tensors on the cache's device (any float dtype; computed in float32), so
CUDA graphs replay with whatever values the tensors hold. Normalised form
(:class:`KVScales`): float32 views expanded to ``[Hkv, D]`` (K) and ``[Hkv, Dv]`` (V).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _validate as check

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MIN, INT8_MAX = -128, 127
KINDS = {FP8_DTYPE: "fp8", torch.int8: "int8"}
"""cache dtype -> scheme name (the names :class:`~.._contract.Supports` uses)."""


class KVScales(NamedTuple):
    """Dequantisation parameters of a quantised cache pair: float32 ``[Hkv, D]`` / ``[Hkv, Dv]``
    views (broadcast where the scale is per tensor / per head); offsets None = symmetric."""

    kind: str
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    k_offset: torch.Tensor | None
    v_offset: torch.Tensor | None


def cache_kind(dtype: torch.dtype) -> str | None:
    """'fp8' / 'int8' for a quantised cache dtype, None for a float one."""
    return KINDS.get(dtype)


def _expand(name: str, t, heads: int, dim: int, per_channel: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (float scale on the cache's device), got {type(t).__name__}")
    if not t.dtype.is_floating_point or t.dtype == FP8_DTYPE:
        raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    n = t.numel()
    t = t.float() if t.dtype != torch.float32 else t
    if n == 1:
        return t.reshape(1, 1).expand(heads, dim)
    if n == heads:
        return t.reshape(heads, 1).expand(heads, dim)
    if per_channel and n == heads * dim:
        return t.reshape(heads, dim)
    allowed = f"1 (per tensor), {heads} (per KV head)" + (f" or {heads * dim} (per channel)" if per_channel else "")
    raise ValueError(f"{name} must hold {allowed} values, got shape {tuple(t.shape)}")


def normalize(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale, v_scale, k_offset=None, v_offset=None, *,
              check_values: bool = False) -> KVScales | None:
    """Validate the scale arguments against the caches' dtype; None for float caches.

    ``check_values`` also reads the scales (a device sync): every scale finite and > 0,
    every offset finite."""
    kind = cache_kind(k_cache.dtype)
    given = {"k_scale": k_scale, "v_scale": v_scale, "k_offset": k_offset, "v_offset": v_offset}
    if kind is None:
        extra = [name for name, t in given.items() if t is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} apply to quantised caches (float8_e4m3fn or int8) only; got "
                             f"{k_cache.dtype} caches")
        return None
    if k_scale is None or v_scale is None:
        raise ValueError(f"a {k_cache.dtype} KV cache needs k_scale and v_scale (float tensors: per tensor, per KV "
                         f"head{' or per channel' if kind == 'int8' else ''})")
    if kind == "fp8" and (k_offset is not None or v_offset is not None):
        raise ValueError("FP8 KV caches are symmetric (vLLM's scheme): k_offset / v_offset must be None")
    if (k_offset is None) != (v_offset is None):
        raise ValueError("give both k_offset and v_offset, or neither")
    for name, t in given.items():
        if t is not None and isinstance(t, torch.Tensor) and t.device != k_cache.device:
            raise ValueError(f"{name} must be on the cache's device ({k_cache.device}), got {t.device}")
    heads, d, dv = k_cache.shape[2], k_cache.shape[3], v_cache.shape[3]
    per_channel = kind == "int8"
    scales = KVScales(kind, _expand("k_scale", k_scale, heads, d, per_channel),
                      _expand("v_scale", v_scale, heads, dv, per_channel),
                      None if k_offset is None else _expand("k_offset", k_offset, heads, d, per_channel),
                      None if v_offset is None else _expand("v_offset", v_offset, heads, dv, per_channel))
    if check_values:
        for name, t in (("k_scale", scales.k_scale), ("v_scale", scales.v_scale)):
            if not bool(((t > 0) & torch.isfinite(t)).all()):
                raise ValueError(f"{name} must be finite and > 0 everywhere, got {given[name].flatten().tolist()[:8]}")
        for name, t in (("k_offset", scales.k_offset), ("v_offset", scales.v_offset)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite, got {given[name].flatten().tolist()[:8]}")
    return scales


def quantize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x [..., H, D] -> stored values in ``dtype`` (scale / offset broadcast as [H, D])."""
    if dtype == FP8_DTYPE:
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)
    q = x.float() * (1.0 / scale)
    if offset is not None:
        q = q + offset
    return torch.round(q).clamp(INT8_MIN, INT8_MAX).to(dtype)


def dequantize(stored: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Stored values [..., H, D] -> float32 (what attention sees)."""
    x = stored.float()
    if offset is not None:
        x = x - offset
    return x * scale


def schema_args(scales: KVScales | None, k_scale, v_scale, k_offset, v_offset) -> dict:
    """The k_scale / v_scale / k_offset / v_offset arguments of the custom-op schemas: the
    caller's tensors as given (validated; the op normalises them again), none for float caches."""
    if scales is None:
        return {}
    return dict(k_scale=k_scale, v_scale=v_scale, k_offset=k_offset, v_offset=v_offset)


def check_cache_dtypes(k_cache: torch.Tensor, v_cache: torch.Tensor, q_dtype: torch.dtype) -> None:
    """A cache pair is in the query dtype, or both in one quantised dtype (q then float16/bfloat16/float32)."""
    if cache_kind(k_cache.dtype) is not None:
        check.same_dtype("k_cache", k_cache, v_cache=v_cache)
    elif k_cache.dtype != q_dtype:
        raise TypeError(f"k_cache must have the dtype of q ({q_dtype}) or be a quantised cache (float8_e4m3fn, "
                        f"int8), got {k_cache.dtype}")
    elif v_cache.dtype != q_dtype:
        raise TypeError(f"v_cache must have the dtype of q ({q_dtype}), got {v_cache.dtype}")
