"""Grouped SiLU-gated expert MLP in Triton (CUDA; CPU under the interpreter).

Rows of x are grouped by expert: rows [offsets[e], offsets[e] + counts[e]) go through
expert e. Work is cut into row tiles of BLOCK_M rows that never cross an expert
boundary; a program finds its (expert, tile) by walking the per-expert tile counts
(cdiv(count, BLOCK_M)) in-kernel, so no host sync is needed and the same launch
serves the dynamic layout and the fixed-capacity slab layout of ep_dispatch. The
grid is sized for the worst case (N / BLOCK_M + E tiles); spare programs exit.

Two kernels: (1) h = silu(x W_gate^T) * (x W_up^T), the gate and up GEMMs sharing
each loaded x tile, int8 x dequantised with its per-row scale on load; (2) out = h
W_down^T. Rows outside every group are written as 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import and_in_range, dot, dot_flags


@triton.jit
def _find_tile(OFFSETS, COUNTS, num_experts, BLOCK_M: tl.constexpr):
    """(expert, first row, end row) of this program's row tile; expert -1 if none."""
    tile = tl.program_id(0)
    expert = -1
    row0 = 0
    row_end = 0
    seen = 0
    for e in range(num_experts):
        n = tl.load(COUNTS + e)
        tiles = tl.cdiv(n, BLOCK_M)
        if (tile >= seen) & (tile < seen + tiles):
            start = tl.load(OFFSETS + e)
            expert = e
            row0 = start + (tile - seen) * BLOCK_M
            row_end = start + n
        seen += tiles
    return expert, row0, row_end


@triton.jit
def _tile_rows_cols(row0, row_end, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows of this program's expert tile and its output columns (program axis 1), with masks."""
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < row_end, cols, cols < n_cols


@triton.jit
def gate_up_kernel(X, SCALES, W13, H, OFFSETS, COUNTS, num_experts, hidden, inter,
                   stride_x, stride_we, stride_wn, stride_h,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                   INT8: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    expert, row0, row_end = _find_tile(OFFSETS, COUNTS, num_experts, BLOCK_M)
    if expert < 0:
        return
    rows, in_rows, cols, in_cols = _tile_rows_cols(row0, row_end, inter, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = W13 + expert.to(tl.int64) * stride_we
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if INT8:
        scale = tl.load(SCALES + rows, mask=in_rows, other=0.0)
    for k in range(0, hidden, BLOCK_K):
        kk = k + offs_k
        x_mask = and_in_range(in_rows[:, None], kk[None, :], hidden, EVEN_K)
        w_mask = and_in_range(in_cols[None, :], kk[:, None], hidden, EVEN_K)
        x = tl.load(X + rows.to(tl.int64)[:, None] * stride_x + kk[None, :], mask=x_mask, other=0)
        if INT8:
            x = (x.to(tl.float32) * scale[:, None]).to(W13.dtype.element_ty)
        w_gate = tl.load(w_base + cols[None, :] * stride_wn + kk[:, None], mask=w_mask, other=0.0)
        w_up = tl.load(w_base + (cols + inter)[None, :] * stride_wn + kk[:, None], mask=w_mask, other=0.0)
        acc_gate = dot(x, w_gate, acc_gate, IEEE, DOT_F32)
        acc_up = dot(x, w_up, acc_up, IEEE, DOT_F32)
    h = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    tl.store(H + rows.to(tl.int64)[:, None] * stride_h + cols[None, :], h.to(H.dtype.element_ty),
             mask=in_rows[:, None] & in_cols[None, :])


@triton.jit
def down_kernel(H, W2, OUT, OFFSETS, COUNTS, num_experts, hidden, inter,
                stride_h, stride_we, stride_wn, stride_o,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    expert, row0, row_end = _find_tile(OFFSETS, COUNTS, num_experts, BLOCK_M)
    if expert < 0:
        return
    rows, in_rows, cols, in_cols = _tile_rows_cols(row0, row_end, hidden, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_base = W2 + expert.to(tl.int64) * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(0, inter, BLOCK_K):
        kk = k + offs_k
        h = tl.load(H + rows.to(tl.int64)[:, None] * stride_h + kk[None, :],
                    mask=and_in_range(in_rows[:, None], kk[None, :], inter, EVEN_K), other=0.0)
        w = tl.load(w_base + cols[None, :] * stride_wn + kk[:, None],
                    mask=and_in_range(in_cols[None, :], kk[:, None], inter, EVEN_K), other=0.0)
        acc = dot(h, w, acc, IEEE, DOT_F32)
    tl.store(OUT + rows.to(tl.int64)[:, None] * stride_o + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=in_rows[:, None] & in_cols[None, :])


def moe_config(device: torch.device, dtype: torch.dtype) -> dict:
    if device.type == "cpu":   # interpreter
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1)
    if device.type == "npu":   # unmeasured candidate: cube-sized tiles, one program per AI core
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3)


def moe_experts(x, w13, w2, expert_offsets, tokens_per_expert, *, scales, out_dtype, config=None):
    """Triton implementation behind :func:`ascend_ext.ops.moe_experts` (validated args);
    ``config`` overrides the per-device tiles."""
    rows, hidden = x.shape
    experts, inter = w2.shape[0], w2.shape[2]
    out = torch.zeros((rows, hidden), dtype=out_dtype, device=x.device)
    if rows == 0 or experts == 0:
        return out
    compute_dtype = w13.dtype
    cfg = dict(config or moe_config(x.device, compute_dtype))
    h = torch.empty((rows, inter), dtype=compute_dtype, device=x.device)
    x = x.contiguous()
    w13, w2 = w13.contiguous(), w2.contiguous()
    offsets = expert_offsets.to(torch.int32).contiguous()
    counts = tokens_per_expert.to(torch.int32).contiguous()
    tiles = triton.cdiv(rows, cfg["BLOCK_M"]) + experts
    flags = dot_flags(compute_dtype)
    gate_up_kernel[(tiles, triton.cdiv(inter, cfg["BLOCK_N"]))](
        x, scales if scales is not None else x, w13, h, offsets, counts, experts, hidden, inter,
        x.stride(0), w13.stride(0), w13.stride(1), h.stride(0),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], EVEN_K=hidden % cfg["BLOCK_K"] == 0,
        INT8=scales is not None, **flags,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    down_kernel[(tiles, triton.cdiv(hidden, cfg["BLOCK_N"]))](
        h, w2, out, offsets, counts, experts, hidden, inter, h.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], EVEN_K=inter % cfg["BLOCK_K"] == 0,
        **flags, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out
