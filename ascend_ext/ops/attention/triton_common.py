"""Triton building blocks shared by the attention kernels (varlen prefill, paged).

Conventions inside kernels: scores are kept in log2 units (the softmax scale is
multiplied by log2(e) once), so exponentials are ``exp2``; a row that has seen no
key keeps running max ``-inf`` and sum 0, and finishes with output 0, lse -inf.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexpr switches for tl.dot: exact fp32 products for fp32 inputs, and an fp32
    upcast of bf16 operands under the interpreter (whose bf16 dot is wrong in triton 3.9)."""
    return {"IEEE": dtype == torch.float32,
            "DOT_F32": dtype == torch.bfloat16 and interpreting()}


def next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(n))


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def row_bounds(t, q_len, k_len, window_left, window_right,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Visible keys [lo, hi) of query row t (bottom-right aligned); works on scalars and blocks."""
    pos = t + k_len - q_len
    if HAS_LEFT:
        lo = tl.maximum(pos - window_left, 0)
    else:
        lo = pos * 0
    if HAS_RIGHT:
        hi = tl.minimum(pos + window_right + 1, k_len)
    else:
        hi = pos * 0 + k_len
    hi = tl.maximum(hi, lo)
    return lo, hi


@triton.jit
def block_segments(lo_first, lo_last, hi_first, hi_last, n_begin, n_end, BLOCK_N: tl.constexpr):
    """Split the key blocks a query tile touches into masked / mask-free / masked runs.

    Rows are ordered, so the tile's rows see keys within [lo_first, hi_last) and every
    row sees [lo_last, hi_first). Returns block-aligned (start, full_start, full_end, end)
    clipped to [n_begin, n_end): blocks in [full_start, full_end) need no mask.
    """
    start = tl.maximum((lo_first // BLOCK_N) * BLOCK_N, n_begin)
    end = tl.minimum(hi_last, n_end)
    full_start = tl.maximum(tl.cdiv(lo_last, BLOCK_N) * BLOCK_N, start)
    full_end = tl.minimum((hi_first // BLOCK_N) * BLOCK_N, (end // BLOCK_N) * BLOCK_N)
    if full_end <= full_start:
        full_start = start
        full_end = start
    return start, full_start, full_end, end


@triton.jit
def softcap_scores(s, softcap):
    """softcap * tanh(s / softcap), with tanh from exp (portable to every backend)."""
    e = tl.exp(2.0 * s / softcap)
    return softcap * (1.0 - 2.0 / (e + 1.0))


@triton.jit
def softmax_step(acc, m_i, l_i, q, k_t, v, visible, scale_log2, softcap,
                 MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                 IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """One online-softmax update of a query sub-tile with one key block.

    q [M, D], k_t [D, N], v [N, Dv], visible bool [M, N] (used when MASKED);
    acc [M, Dv] fp32, m_i / l_i [M] fp32 running max (log2 units) and sum.
    """
    s = dot(q, k_t, tl.zeros((q.shape[0], k_t.shape[1]), tl.float32), IEEE, DOT_F32)
    if HAS_SOFTCAP:
        s = softcap_scores(s * (scale_log2 / 1.4426950408889634), softcap) * 1.4426950408889634
    else:
        s = s * scale_log2
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = dot(p.to(v.dtype), v, acc, IEEE, DOT_F32)
    return acc, m_new, l_i


@triton.jit
def finish_rows(acc, m_i, l_i):
    """Normalised output and natural-log lse; rows that saw no key give 0 and -inf."""
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    return out, lse
