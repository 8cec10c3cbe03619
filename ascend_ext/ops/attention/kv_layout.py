"""Paged KV-cache layouts of the paged ops (``kv_layout=`` of ``paged_attention`` /
``reshape_and_cache`` / ``cascade_attention``).

* ``"rows"`` (default, vLLM's): slot ``s`` of a block holds the key row and the value row of
  key ``s``.
* ``"pairs"``: keys as rows; the two value slots ``(2i, 2i + 1)`` of a block hold keys ``2i``
  and ``2i + 1`` interleaved per dim: read as one run of ``2 * Dv`` elements (slot ``2i`` then
  slot ``2i + 1`` of a head), element ``2c + t`` is ``v[key 2i + t][c]``. That is the operand
  layout of bfloat16 pair dot products (AVX512-BF16 ``vdpbf16ps``, AMX tiles), so the native
  CPU kernels read values in place instead of interleaving every block on every call
  (benchmarks/NOTES.md, "#19 value pairs").
* ``"tiles"``: values as in ``"pairs"``; keys as AMX tile operands of ``S = Q K^T``: the 16
  key slots of each 16-key group hold the group transposed per 16 x 16 block of dim pairs
  (32-bit words): word ``16 r + g`` of slot ``j`` is word ``16 r + j`` of key ``g``, so slot
  ``j`` is row ``j`` of the B tile of dims ``[32 r, 32 r + 32)``. The native AMX kernel reads
  both caches in place in the standard operand order (scores one query row per vector, no
  transposes; benchmarks/NOTES.md, "#19 key tiles").

``"pairs"`` needs bfloat16 caches and an even block size; ``"tiles"`` bfloat16 caches, block
sizes and head dims that are multiples of 32. Any strides with a contiguous head dim (vLLM's
combined cache, where a slot row holds K then V, included). A cache keeps one layout for its
whole life: the writer and every reader must agree (the vLLM backend decides once per layer,
:func:`preferred`).
"""

from __future__ import annotations

import os

import torch

KV_LAYOUTS = ("rows", "pairs", "tiles")
LAYOUT_ENV = "ASCEND_EXT_KV_LAYOUT"   # "auto" (default), "pairs" (at most) or "rows"
_MODES = ("auto", "pairs", "rows")


def values_as_pairs(kv_layout: str) -> bool:
    """Whether ``kv_layout`` stores values as key pairs."""
    return kv_layout in ("pairs", "tiles")


def check(kv_layout, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Validate ``kv_layout`` against the caches [num_blocks, block_size, Hkv, D / Dv]."""
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    if kv_layout == "rows":
        return
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dtype != torch.bfloat16:
            raise TypeError(f"kv_layout {kv_layout!r} needs bfloat16 caches, {name} is {cache.dtype}")
    block_size = v_cache.shape[1]
    if kv_layout == "pairs" and block_size % 2:
        raise ValueError(f"kv_layout 'pairs' needs an even block size, v_cache has {block_size}")
    if kv_layout == "tiles" and (block_size % 32 or k_cache.shape[3] % 32 or v_cache.shape[3] % 32):
        raise ValueError(f"kv_layout 'tiles' needs block size and head dims that are multiples of 32, got "
                         f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")


def preferred(k_cache: torch.Tensor, v_cache: torch.Tensor) -> str:
    """The layout to keep the caches in for their whole life: the first of ``"tiles"``,
    ``"pairs"`` that the implementations bound for ``reshape_and_cache`` and ``paged_attention``
    on their device both declare to pay at these head dims (``Supports.layout_pays``: the native
    CPU kernels, "tiles" where AMX runs, "pairs" with AVX512-BF16) and :func:`check` accepts,
    else ``"rows"``. ``ASCEND_EXT_KV_LAYOUT=pairs`` stops at "pairs", ``=rows`` keeps rows."""
    mode = os.environ.get(LAYOUT_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{LAYOUT_ENV} must be one of {_MODES}, got {mode!r}")
    from .._dispatch import bound

    candidates = {"auto": ("tiles", "pairs"), "pairs": ("pairs",), "rows": ()}[mode]
    dims = (k_cache.shape[3], v_cache.shape[3])
    for layout in candidates:
        try:
            check(layout, k_cache, v_cache)
        except (TypeError, ValueError):
            continue
        if all(layout in s.kv_layouts and s.layout_pays is not None and s.layout_pays(layout, *dims)
               for s in (bound(op, v_cache.device.type).supports for op in ("reshape_and_cache", "paged_attention"))):
            return layout
    return "rows"


def to_pairs(rows: torch.Tensor) -> torch.Tensor:
    """Value blocks [n, block_size, H, Dv] in the ``"rows"`` layout -> the same blocks in ``"pairs"``."""
    n, block_size, heads, dv = rows.shape
    x = rows.unflatten(1, (block_size // 2, 2)).permute(0, 1, 3, 4, 2)           # [n, P, H, Dv, 2]
    x = x.reshape(n, block_size // 2, heads, 2, dv).permute(0, 1, 3, 2, 4)       # [n, P, 2, H, Dv]
    return x.reshape(n, block_size, heads, dv)


def from_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_pairs`."""
    n, block_size, heads, dv = pairs.shape
    x = pairs.unflatten(1, (block_size // 2, 2)).permute(0, 1, 3, 2, 4)          # [n, P, H, 2, Dv]
    x = x.reshape(n, block_size // 2, heads, dv, 2).permute(0, 1, 4, 2, 3)       # [n, P, 2, H, Dv]
    return x.reshape(n, block_size, heads, dv)


def to_tiles(rows: torch.Tensor) -> torch.Tensor:
    """Key blocks [n, block_size, H, D] in the ``"rows"`` layout -> the same blocks in
    ``"tiles"`` (an involution: it is also the inverse)."""
    n, block_size, heads, d = rows.shape
    # [n, groups, key g, H, r, word j, 2] -> swap g and j
    x = rows.reshape(n, block_size // 16, 16, heads, d // 32, 16, 2).transpose(2, 5)
    return x.reshape(n, block_size, heads, d)


from_tiles = to_tiles
