"""The one definition of which keys a query row sees under causal / window rules.

Bottom-right alignment (flash-attn >= 2.1, vLLM): in a sequence with Lq queries
and Lk keys, query row i sits at key position ``i + Lk - Lq``. ``window=(left,
right)`` (-1 = unbounded) lets it see keys j with
``pos - left <= j <= pos + right``; causal is ``right = 0``.
"""

from __future__ import annotations

import torch


def key_bounds(rows: torch.Tensor, seqlen_q: int, seqlen_k: int,
               window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible key interval ``[lo, hi)`` (int64, clamped to [0, Lk]) of each query row."""
    left, right = window
    pos = rows.to(torch.int64) + (seqlen_k - seqlen_q)
    lo = (pos - left).clamp(0, seqlen_k) if left >= 0 else torch.zeros_like(pos)
    hi = (pos + right + 1).clamp(0, seqlen_k) if right >= 0 else torch.full_like(pos, seqlen_k)
    return lo, torch.maximum(hi, lo)


def visible_mask(seqlen_q: int, seqlen_k: int, window: tuple[int, int],
                 device: torch.device | str = "cpu") -> torch.Tensor | None:
    """bool [Lq, Lk], True where the query may attend; None when every key is visible."""
    if window == (-1, -1):
        return None
    rows = torch.arange(seqlen_q, device=device)
    lo, hi = key_bounds(rows, seqlen_q, seqlen_k, window)
    cols = torch.arange(seqlen_k, device=device)
    return (cols >= lo[:, None]) & (cols < hi[:, None])
