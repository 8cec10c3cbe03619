"""Public expert-parallel MoE ops: validate, dispatch to the selected implementation."""

from __future__ import annotations

import torch

from .. import _validate as check
from .._dispatch import bound, implementations
from .._library import compiling
from .ep import DispatchResult, EPHandle


def ep_dispatch(x, topk_ids, topk_weights, num_experts, group=None, *, quant=None, max_tokens_per_rank=None,
                timeout_s=None) -> DispatchResult:
    """Send each token to the ranks that own its experts (collective: every rank calls it).

    Args:
        x: [T, H] float16/bfloat16/float32 tokens of this rank (T may be 0).
        topk_ids: [T, k] int32/int64 global expert ids, -1 = masked slot.
        topk_weights: [T, k] routing weights (float; used by ep_combine).
        num_experts: E, divisible by the group size R; rank r owns [r*E/R, (r+1)*E/R).
        group: torch.distributed process group (default: the world).
        quant: None or "int8" (per-token dynamic INT8 on the wire, scales alongside).
        max_tokens_per_rank: fixed-capacity mode (static shapes, no host sync): at most
            this many tokens go to each peer; the rest are dropped and counted. With the
            triton implementation and :func:`~ascend_ext.ops.trusted_inputs` (or while a
            CUDA graph is captured) this mode exchanges nothing but the payload and can
            be captured in a CUDA graph.
        timeout_s: deadline of each collective (default ASCEND_EXT_COMM_TIMEOUT_S or 300 s).

    A group of one (or no process group at all, with the triton implementation) runs
    locally without collectives.

    Returns:
        :class:`DispatchResult` with ``recv_x`` [N, H] grouped by local expert (int8 with
        ``recv_scales`` [N] when quantised), ``tokens_per_expert`` [E/R], ``expert_offsets``
        [E/R + 1], ``num_dropped`` and the ``handle`` for :func:`ep_combine`. N may exceed
        the dispatched rows: rows outside every expert group are padding.
    """
    check.tensor("x", x, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64))
    check.tensor("topk_weights", topk_weights, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.same_device("x", x, topk_ids=topk_ids, topk_weights=topk_weights)
    check.dim_equals("topk_ids", topk_ids, 0, x.shape[0], "the token count of x")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights must have the shape of topk_ids {tuple(topk_ids.shape)}, "
                         f"got {tuple(topk_weights.shape)}")
    check.positive_int("num_experts", num_experts)
    if quant not in (None, "int8"):
        raise ValueError(f"quant must be None or 'int8', got {quant!r}")
    if max_tokens_per_rank is not None:
        check.positive_int("max_tokens_per_rank", max_tokens_per_rank)
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    return bound("ep_dispatch", x.device.type).fn(x, topk_ids, topk_weights, num_experts, group, quant=quant,
                max_tokens_per_rank=max_tokens_per_rank, timeout_s=timeout_s,
                check_values=check.value_checks_enabled())


def ep_combine(expert_out, handle: EPHandle) -> torch.Tensor:
    """Weighted sum of the experts' outputs back in each rank's original token order.

    expert_out: [N, H] float, row i the output for ``recv_x[i]`` of the matching
    :func:`ep_dispatch` (rows outside any expert group are ignored). Returns [T, H] in
    the dispatching dtype: sum over the token's experts of weight * expert output
    (0 for tokens whose slots were all masked).
    """
    if not isinstance(handle, EPHandle):
        raise TypeError(f"handle must be the EPHandle returned by ep_dispatch, got {type(handle).__name__}")
    check.tensor("expert_out", expert_out, ndim=2, dtypes=check.FLOAT_DTYPES)
    expected = (handle.grouped_rows(), handle.hidden)
    if tuple(expert_out.shape) != expected:
        raise ValueError(f"expert_out must have shape [N, H] = {list(expected)} (the dispatched rows), "
                         f"got {tuple(expert_out.shape)}")
    if handle.impl is not None:   # the implementation that dispatched must combine
        return implementations("ep_combine", expert_out.device.type)[handle.impl].load()(expert_out, handle)
    return bound("ep_combine", expert_out.device.type).fn(expert_out, handle)


def moe_experts(x, w13, w2, expert_offsets, tokens_per_expert, *, scales=None, out_dtype=None):
    """SiLU-gated MLP of each local expert over its group of rows.

    x: [N, H] float, or int8 with ``scales`` [N] (dequantised here); w13: [E_local, 2*I, H]
    (gate rows then up rows, vLLM's w13 layout); w2: [E_local, H, I]; expert_offsets
    [E_local + 1] and tokens_per_expert [E_local] int as returned by ep_dispatch.
    Returns [N, H] in ``out_dtype`` (default: dtype of w2); rows of no group are 0.
    """
    check.tensor("x", x, ndim=2, dtypes=check.FLOAT_DTYPES + (torch.int8,))
    check.tensor("w13", w13, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("w2", w2, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.same_device("x", x, w13=w13, w2=w2, expert_offsets=expert_offsets, tokens_per_expert=tokens_per_expert)
    experts, hidden = w2.shape[0], w2.shape[1]
    check.dim_equals("x", x, 1, hidden, "the hidden size of w2 (w2.shape[1])")
    check.dim_equals("w13", w13, 0, experts, "the expert count of w2")
    check.dim_equals("w13", w13, 2, hidden, "the hidden size")
    check.dim_equals("w13", w13, 1, 2 * w2.shape[2], "2 * the intermediate size of w2")
    check.tensor("tokens_per_expert", tokens_per_expert, ndim=1, dtypes=(torch.int32, torch.int64))
    check.tensor("expert_offsets", expert_offsets, ndim=1, dtypes=(torch.int32, torch.int64))
    check.dim_equals("tokens_per_expert", tokens_per_expert, 0, experts, "the expert count of w13/w2")
    check.dim_equals("expert_offsets", expert_offsets, 0, experts + 1, "the expert count + 1")
    if (x.dtype == torch.int8) != (scales is not None):
        raise TypeError("int8 x needs scales [N] (and float x takes none)")
    if scales is not None:
        check.tensor("scales", scales, ndim=1, dtypes=(torch.float32,))
        check.dim_equals("scales", scales, 0, x.shape[0], "the row count of x")
    if check.value_checks_enabled() and experts:
        ends = (expert_offsets[:-1] + tokens_per_expert).cpu()
        if bool((ends > x.shape[0]).any()) or bool((tokens_per_expert < 0).any()):
            raise ValueError(f"expert groups exceed the rows of x ({x.shape[0]}): offsets "
                             f"{expert_offsets.tolist()}, counts {tokens_per_expert.tolist()}")
    out_dtype = out_dtype or w2.dtype
    if compiling():
        return torch.ops.ascend_ext.moe_experts(x, w13, w2, expert_offsets, tokens_per_expert, scales, out_dtype)
    return bound("moe_experts", x.device.type).fn(x, w13, w2, expert_offsets, tokens_per_expert, scales=scales,
                                                  out_dtype=out_dtype)
