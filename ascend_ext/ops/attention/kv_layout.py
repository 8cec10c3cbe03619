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
* ``"tiles"``: for vLLM's head-major combined cache, where the K and V rows of a slot are the two
  halves of one row of ``D + Dv`` elements and the slot rows of a (block, KV head) are
  contiguous: every 32-key step of a block owns its 32 slot rows (the "step region",
  ``32 (D + Dv)`` elements) and holds there contiguous 1 KiB AMX B tiles, keys then values::

      keys   (g * D/32 + r) * 512 + 32 j + 2 kg + t  =  k[16 g + kg][32 r + 2 j + t]
      values 32 D + (c // 16) * 512 + 32 i + 2 (c % 16) + t  =  v[2 i + t][c]

  (B of S = Q K^T per 16 keys and 32 dims; B of O = P V per 16 key pairs and 16 dims). The
  native AMX kernel reads both in place in the standard operand order (scores one query row
  per vector, no transposes; contiguous tiles stream out of L3 1.5-2.6x faster than tiles
  strided across slots: benchmarks/NOTES.md, "#19 key tiles").

``"pairs"`` needs bfloat16 caches and an even block size, any strides with a contiguous head
dim (vLLM's combined cache included); ``"tiles"`` bfloat16 caches, block sizes and head dims that
are multiples of 32, and k_cache / v_cache as the halves of one combined cache with contiguous
slot rows (``ops.split_kv_cache`` of a head-major ``[num_blocks, Hkv, block_size, 2 D]``). A cache
keeps one layout for its whole life: the writer and every reader must agree (the vLLM backend
decides once per layer, :func:`preferred`).
"""

from __future__ import annotations

import os

import torch

KV_LAYOUTS = ("rows", "pairs", "tiles")
LAYOUT_ENV = "ASCEND_EXT_KV_LAYOUT"   # "auto" (default), "pairs" (at most) or "rows"
_MODES = ("auto", "pairs", "rows")


def combined(k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """The combined cache [num_blocks, block_size, Hkv, D + Dv] whose halves are k_cache and
    v_cache (a view); ValueError when they are not its halves."""
    _check_halves(k_cache, v_cache)
    return k_cache.as_strided((*k_cache.shape[:3], k_cache.shape[3] + v_cache.shape[3]), k_cache.stride())


def _check_halves(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    d, dv = k_cache.shape[3], v_cache.shape[3]
    if not (v_cache.data_ptr() == k_cache.data_ptr() + d * k_cache.element_size()
            and k_cache.stride(1) == v_cache.stride(1) == d + dv and k_cache.stride(0) == v_cache.stride(0)
            and k_cache.stride(2) == v_cache.stride(2) and k_cache.stride(3) == v_cache.stride(3) == 1):
        raise ValueError("kv_layout 'tiles' needs k_cache and v_cache to be the two halves of one combined cache "
                         "whose slot rows (D + Dv) are contiguous per block and KV head (ops.split_kv_cache of a "
                         f"head-major [num_blocks, Hkv, block_size, 2 D] cache), got strides {k_cache.stride()} / "
                         f"{v_cache.stride()}")


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
    if kv_layout == "tiles" and not torch.compiler.is_compiling():   # (traced: checked by the op itself)
        _check_halves(k_cache, v_cache)


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


def to_tiles(k_rows: torch.Tensor, v_rows: torch.Tensor) -> torch.Tensor:
    """Key and value blocks [n, block_size, H, D / Dv] in the ``"rows"`` layout -> the combined
    blocks [n, block_size, H, D + Dv] in ``"tiles"``."""
    n, block_size, heads, d = k_rows.shape
    dv, steps = v_rows.shape[3], block_size // 32
    # keys: [n, S, g, kg, H, r, j, t] -> [n, S, H, g, r, j, kg, t]
    k = k_rows.reshape(n, steps, 2, 16, heads, d // 32, 16, 2).permute(0, 1, 4, 2, 5, 6, 3, 7)
    # values: [n, S, i, t, H, ch, c] -> [n, S, H, ch, i, c, t]
    v = v_rows.reshape(n, steps, 16, 2, heads, dv // 16, 16).permute(0, 1, 4, 5, 2, 6, 3)
    region = torch.cat([k.reshape(n, steps, heads, -1), v.reshape(n, steps, heads, -1)], dim=-1)
    return region.reshape(n, steps, heads, 32, d + dv).permute(0, 1, 3, 2, 4).reshape(n, block_size, heads, d + dv)


def from_tiles(blocks: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_tiles`: combined blocks [n, block_size, H, D + Dv] in ``"tiles"``
    -> (key rows [n, block_size, H, D], value rows [n, block_size, H, Dv])."""
    n, block_size, heads, width = blocks.shape
    dv, steps = width - d, block_size // 32
    region = blocks.reshape(n, steps, 32, heads, width).permute(0, 1, 3, 2, 4).reshape(n, steps, heads, 32 * width)
    k = region[..., :32 * d].reshape(n, steps, heads, 2, d // 32, 16, 16, 2)     # [n, S, H, g, r, j, kg, t]
    v = region[..., 32 * d:].reshape(n, steps, heads, dv // 16, 16, 16, 2)       # [n, S, H, ch, i, c, t]
    k_rows = k.permute(0, 1, 3, 6, 2, 4, 5, 7).reshape(n, block_size, heads, d)
    v_rows = v.permute(0, 1, 4, 6, 2, 3, 5).reshape(n, block_size, heads, dv)
    return k_rows, v_rows
