"""Tiling-AllReduce: a row-parallel linear whose all-reduce is pipelined per token tile.

Tensor parallelism ends every attention block with ``y = all_reduce(x @ W_local^T)``;
done whole, the matrix units idle during the reduction. Here the tokens are cut into
tiles and each tile's all-reduce is started asynchronously as soon as its matmul is
done, so it travels while the next tile is multiplied (FastAttention's
tiling-AllReduce). The result equals the unpipelined one up to summation order: the
per-tile sums are the same sums.

Tile rule (``tile_tokens=None``): no pipelining below 512 tokens (decode and small
batches: one launch is cheapest); otherwise 2 to 4 tiles of at least 256 rows
(tokens // 256, clamped), rounded up to a multiple of 64 rows.
"""

from __future__ import annotations

import torch

from .. import _comm as comm
from .. import _validate as check
from .._dispatch import bound
from .._library import compiling


def choose_tile_tokens(tokens: int) -> int:
    """Rows per tile for ``tokens`` rows (see module docstring)."""
    if tokens < 512:
        return max(tokens, 1)
    tiles = min(4, max(2, tokens // 256))
    rows = -(-tokens // tiles)
    return -(-rows // 64) * 64


def tiled_reference(x, weight, bias, group, *, tile_tokens, timeout_s):
    world = comm.world_of(group)[0] if group is not None or comm.dist_ready() else 1
    out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    pending = []
    for start in range(0, x.shape[0], tile_tokens):
        tile = out[start:start + tile_tokens]
        torch.matmul(x[start:start + tile_tokens], weight.t(), out=tile)
        if world > 1:
            pending.append(comm.all_reduce_async(tile, group))
    for work in pending:
        comm.wait(work, "tiled_linear_allreduce", group, timeout_s)
    if bias is not None:
        out += bias
    return out


def run_tiled(x, weight, bias, group_name: str, tile_tokens: int, min_tokens: int, timeout_s: float):
    """Body of ``torch.ops.ascend_ext.tiled_linear_allreduce`` (validated, tensor-only args).

    Below ``min_tokens`` rows (decode) the product is reduced in one piece by the group's
    registered small-batch all-reduce (:func:`ascend_ext.ops._comm.register_group`; vLLM's
    own communicator under the vLLM integration) when there is one; otherwise the rows are
    cut into tiles (``tile_tokens`` <= 0: :func:`choose_tile_tokens`) whose all-reduces
    overlap the next tile's matmul.
    """
    group = comm.group_by_name(group_name)
    small = comm.small_all_reduce(group_name) if x.shape[0] < min_tokens else None
    if small is not None:
        out = small(torch.matmul(x, weight.t()))
        return out + bias if bias is not None else out
    if tile_tokens <= 0:
        tile_tokens = choose_tile_tokens(x.shape[0])
    comm.notify("tiled_linear_allreduce")
    return bound("tiled_linear_allreduce", x.device.type).fn(x, weight, bias, group, tile_tokens=tile_tokens,
                                                             timeout_s=timeout_s)


def tiled_linear_allreduce(x, weight, bias=None, group=None, *, tile_tokens=None, timeout_s=None, min_tokens=0):
    """All-reduced row-parallel linear, computed and reduced tile by tile.

    Args:
        x: [T, K_local] float16/bfloat16/float32, this rank's input shard.
        weight: [N, K_local], same dtype/device as x.
        bias: optional [N], added once after the reduction.
        group: torch.distributed group, or its ``group_name`` (default: the world when
            initialised; a single process without distributed, or a group of one, just computes).
        tile_tokens: rows per tile (> 0); default chosen by :func:`choose_tile_tokens`.
        timeout_s: deadline per all-reduce (default ASCEND_EXT_COMM_TIMEOUT_S or 300 s).
        min_tokens: below this many rows the product is reduced in one piece, by the
            group's registered small-batch all-reduce if any (decode keeps the serving
            stack's fastest collective); the decision is made inside the op, so compiled
            graphs hold no shape branch.

    Returns:
        [T, N] = sum over ranks of x_r @ weight_r^T (+ bias), dtype of x.
    """
    check.tensor("x", x, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("weight", weight, ndim=2)
    check.same_dtype("x", x, weight=weight, bias=bias)
    check.same_device("x", x, weight=weight, bias=bias)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight.shape[1] ({weight.shape[1]}) must equal the input width x.shape[1] "
                         f"({x.shape[1]}): weight is [N, K_local], x is [T, K_local]")
    if bias is not None:
        check.tensor("bias", bias, ndim=1)
        check.dim_equals("bias", bias, 0, weight.shape[0], "the output width weight.shape[0]")
    if tile_tokens is not None:
        check.positive_int("tile_tokens", tile_tokens)
    check.positive_int("min_tokens", min_tokens, allow_zero=True)
    if timeout_s is None:
        timeout_s = comm.default_timeout_s()
    elif not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    group_name = group if isinstance(group, str) else comm.group_name(group)
    if compiling():
        return torch.ops.ascend_ext.tiled_linear_allreduce(x, weight, bias, group_name, tile_tokens or 0,
                                                           min_tokens, float(timeout_s))
    return run_tiled(x, weight, bias, group_name, tile_tokens or 0, min_tokens, float(timeout_s))


def _query_tiles(cu_q: list[int], cu_k: list[int], tile_tokens: int, causal: bool):
    """Per query tile [a, b): sub-batch pieces (seq, q rows [q0, q1), key count K').

    Causal keeps bottom-right alignment by truncating each sequence's keys to
    K' = i1 + Lk - Lq (query rows [i0, i1) are then the last rows of a shorter
    sequence); non-causal attention keeps every key."""
    total = cu_q[-1]
    for a in range(0, total, tile_tokens):
        b = min(total, a + tile_tokens)
        pieces = []
        for s in range(len(cu_q) - 1):
            q0, q1 = max(a, cu_q[s]), min(b, cu_q[s + 1])
            if q0 >= q1:
                continue
            lq, lk = cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]
            i1 = q1 - cu_q[s]
            keys = max(0, min(lk, i1 + lk - lq)) if causal else lk
            pieces.append((s, q0, q1, keys))
        yield a, b, pieces


def attention_o_proj_allreduce(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, o_weight,
                               o_bias=None, group=None, *, softmax_scale=None, causal=True, window_size=(-1, -1),
                               tile_tokens=None, timeout_s=None):
    """Attention -> output projection -> all-reduce, pipelined per query-token tile.

    Tile i's all-reduce travels while tile i+1's attention and projection compute.
    q/k/v/cu_seqlens as in :func:`ascend_ext.ops.flash_attn_varlen` (this rank's heads);
    o_weight [N, Hq*Dv] (this rank's input shard of o_proj), o_bias [N] added once.
    Supported masks: causal (with an optional left window) or full non-causal.
    Returns [Tq, N]: the all-reduced projection, equal to the unpipelined result.
    """
    from ..attention.api import flash_attn_varlen

    left, right = check.window(window_size, causal)
    if not causal and (left, right) != (-1, -1):
        raise ValueError("attention_o_proj_allreduce supports causal attention (optionally windowed) or full "
                         f"non-causal attention, got causal={causal}, window_size={window_size}")
    check.tensor("o_weight", o_weight, ndim=2)
    width = q.shape[1] * v.shape[2]
    if o_weight.shape[1] != width:
        raise ValueError(f"o_weight.shape[1] ({o_weight.shape[1]}) must equal Hq * Dv = {width}")
    if tile_tokens is None:
        tile_tokens = choose_tile_tokens(q.shape[0])
    check.positive_int("tile_tokens", tile_tokens)
    timeout_s = comm.default_timeout_s() if timeout_s is None else timeout_s
    world = comm.world_of(group)[0] if group is not None or comm.dist_ready() else 1
    out = torch.empty((q.shape[0], o_weight.shape[0]), dtype=q.dtype, device=q.device)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pending = []
    for a, b, pieces in _query_tiles(cu_q, cu_k, tile_tokens, causal):
        lens_q = [q1 - q0 for _, q0, q1, _ in pieces]
        lens_k = [keys for *_, keys in pieces]
        k_tile = torch.cat([k[cu_k[s]:cu_k[s] + n] for (s, *_), n in zip(pieces, lens_k)])
        v_tile = torch.cat([v[cu_k[s]:cu_k[s] + n] for (s, *_), n in zip(pieces, lens_k)])
        offsets = torch.tensor([0] + lens_q, device=q.device).cumsum(0).to(torch.int32)
        k_offsets = torch.tensor([0] + lens_k, device=q.device).cumsum(0).to(torch.int32)
        attn = flash_attn_varlen(q[a:b], k_tile, v_tile, offsets, k_offsets, max(lens_q), max(lens_k),
                                 softmax_scale=softmax_scale, causal=causal, window_size=(left, right))
        tile = out[a:b]
        torch.matmul(attn.reshape(b - a, width), o_weight.t(), out=tile)
        if world > 1:
            pending.append(comm.all_reduce_async(tile, group))
    for work in pending:
        comm.wait(work, "attention_o_proj_allreduce", group, timeout_s)
    if o_bias is not None:
        out += o_bias
    return out
