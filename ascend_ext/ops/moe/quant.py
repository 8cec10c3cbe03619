"""Per-token dynamic INT8 quantisation (the quant_mode=2 rule of Ascend's
npu_moe_distribute_dispatch): scale = max|x_row| / 127, q = round(x / scale)."""

from __future__ import annotations

import torch


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H] float -> (int8 [N, H], float32 scales [N]); all-zero rows get scale 1."""
    amax = x.float().abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(x.float() / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[:, None]).to(dtype)
