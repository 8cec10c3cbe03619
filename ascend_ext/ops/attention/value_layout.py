"""Value-cache layouts of the paged ops (``value_layout=`` of ``paged_attention`` /
``reshape_and_cache``).

* ``"rows"`` (default, vLLM's): slot ``s`` of a block holds the value row of key ``s``.
* ``"pairs"``: the two slots ``(2i, 2i + 1)`` of a block hold keys ``2i`` and ``2i + 1``
  interleaved per dim: read as one run of ``2 * Dv`` elements (slot ``2i`` then slot ``2i + 1``
  of a head), element ``2c + t`` is ``v[key 2i + t][c]``. That is the operand layout of
  bfloat16 pair dot products (AVX512-BF16 ``vdpbf16ps``, AMX tiles), so the native CPU kernels
  read values in place instead of interleaving every block on every call (measured in
  benchmarks/NOTES.md, "#19 value pairs"). Keys are unchanged.

``"pairs"`` needs bfloat16 caches and an even block size; any strides with a contiguous head
dim (vLLM's combined cache, where a slot row holds K then V, included: a pair's two halves are
then the V parts of its two slots). A cache keeps one layout for its whole life: the writer
and every reader must agree (the vLLM backend decides once per layer, :func:`preferred`).
"""

from __future__ import annotations

import os

import torch

VALUE_LAYOUTS = ("rows", "pairs")
LAYOUT_ENV = "ASCEND_EXT_VALUE_LAYOUT"   # "auto" (default) or "rows"


def check(value_layout, v_cache: torch.Tensor) -> None:
    """Validate ``value_layout`` against ``v_cache`` [num_blocks, block_size, Hkv, Dv]."""
    if value_layout not in VALUE_LAYOUTS:
        raise ValueError(f"value_layout must be one of {VALUE_LAYOUTS}, got {value_layout!r}")
    if value_layout == "rows":
        return
    if v_cache.dtype != torch.bfloat16:
        raise TypeError(f"value_layout 'pairs' needs a bfloat16 v_cache, got {v_cache.dtype}")
    if v_cache.shape[1] % 2:
        raise ValueError(f"value_layout 'pairs' needs an even block size, v_cache has {v_cache.shape[1]}")


def preferred(v_cache: torch.Tensor) -> str:
    """The layout to keep ``v_cache`` in for its whole life: ``"pairs"`` where the
    implementations bound for ``reshape_and_cache`` and ``paged_attention`` on its device both
    declare that it pays at its head dim (``Supports.value_pairs_pay``: the native CPU kernels
    built with AVX512-BF16) and :func:`check` accepts it, else ``"rows"``.
    ``ASCEND_EXT_VALUE_LAYOUT=rows`` keeps rows everywhere."""
    mode = os.environ.get(LAYOUT_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "rows"):
        raise ValueError(f"{LAYOUT_ENV} must be 'auto' or 'rows', got {mode!r}")
    if mode == "rows":
        return "rows"
    try:
        check("pairs", v_cache)
    except (TypeError, ValueError):
        return "rows"
    from .._dispatch import bound

    for op in ("reshape_and_cache", "paged_attention"):
        supports = bound(op, v_cache.device.type).supports
        if "pairs" not in supports.value_layouts or supports.value_pairs_pay is None \
                or not supports.value_pairs_pay(v_cache.shape[3]):
            return "rows"
    return "pairs"


def to_pairs(rows: torch.Tensor) -> torch.Tensor:
    """Blocks [n, block_size, H, Dv] in the ``"rows"`` layout -> the same blocks in ``"pairs"``."""
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
