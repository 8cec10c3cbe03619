"""Local expert computation (SiLU-gated MLP) over expert-grouped rows: reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant import dequantize


def experts_reference(x, w13, w2, expert_offsets, tokens_per_expert, *, scales, out_dtype):
    """Rows [offsets[e], offsets[e] + counts[e]) go through expert e; other rows give 0."""
    inter = w2.shape[2]
    out = torch.zeros((x.shape[0], w2.shape[1]), dtype=out_dtype, device=x.device)
    starts = expert_offsets.tolist()
    counts = tokens_per_expert.tolist()
    for e, (start, n) in enumerate(zip(starts, counts)):
        if n == 0:
            continue
        rows = x[start:start + n]
        rows = dequantize(rows, scales[start:start + n], torch.float32) if scales is not None else rows.float()
        gate_up = rows @ w13[e].float().T
        hidden = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        out[start:start + n] = (hidden @ w2[e].float().T).to(out_dtype)
    return out
