"""moe_experts (grouped SiLU-gated MLP) vs a float64 per-row reference, both layouts."""

import pytest
import torch
import torch.nn.functional as F

from ascend_ext import ops
from ascend_ext.ops.moe.quant import dequantize, quantize_per_token

from .impls import DEVICE, runnable


def _reference(x, w13, w2, offsets, counts):
    inter = w2.shape[2]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for e, (start, n) in enumerate(zip(offsets.tolist(), counts.tolist())):
        for r in range(start, start + n):
            gu = w13[e].double() @ x[r].double()
            out[r] = w2[e].double() @ (F.silu(gu[:inter]) * gu[inter:])
    return out


LAYOUTS = {
    "dynamic": (torch.tensor([0, 5, 5, 40, 41]), torch.tensor([5, 0, 35, 1])),     # an empty expert
    "slabs": (torch.tensor([0, 24, 48, 72, 96]), torch.tensor([3, 24, 0, 17])),    # capacity slabs, padding rows
}


@pytest.mark.parametrize("impl", runnable("moe_experts"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,quant", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_moe_experts_matches_float64(impl, layout, dtype, quant, rng):
    offsets, counts = LAYOUTS[layout]
    rows, hidden, inter, experts = int(offsets[-1]), 48, 40, 4
    x = torch.randn(rows, hidden, generator=rng)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=rng) * hidden ** -0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=rng) * inter ** -0.5).to(dtype)
    scales = None
    if quant:
        xq, scales = quantize_per_token(x)
        ref_x = dequantize(xq, scales, torch.float32)
        x = xq
    else:
        x = x.to(dtype)
        ref_x = x
    with ops.use_impl(moe=impl):
        out = ops.moe_experts(x.to(DEVICE), w13.to(DEVICE), w2.to(DEVICE), offsets.to(DEVICE), counts.to(DEVICE),
                              scales=None if scales is None else scales.to(DEVICE))
    ref = _reference(ref_x, w13, w2, offsets, counts)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    valid = torch.zeros(rows, dtype=torch.bool)
    for start, n in zip(offsets.tolist(), counts.tolist()):
        valid[start:start + n] = True
    assert (out.cpu()[~valid] == 0).all(), "rows outside every expert group must be 0"
