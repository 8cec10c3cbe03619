"""The expert-parallel MoE layer step as one op: route -> dispatch -> experts -> combine.

``ep_moe`` composes the MoE ops for the tokens of this rank. It exists as one
``torch.ops.ascend_ext.ep_moe`` custom op (tensor-only arguments, fixed output shape
``[T, H]``) so that compiled model graphs hold the whole data-dependent exchange as a
single node; inside it the component ops run eagerly.
"""

from __future__ import annotations

import torch

from .. import _comm as comm
from .. import _validate as check
from .._library import compiling
from .api import ep_combine, ep_dispatch, moe_experts
from .routing import check_score_dtype, moe_route


def run_ep_moe(x, router_logits, w13, w2, correction_bias, top_k: int, scoring: str, renormalize: bool,
               num_expert_group: int, topk_group: int, routed_scaling_factor: float, group_name: str,
               capacity: int, max_graph_capacity: int, timeout_s: float, score_dtype=None) -> torch.Tensor:
    """Body of ``torch.ops.ascend_ext.ep_moe`` (validated, tensor-only args; -1 = none).

    Fixed-capacity dispatch (no host sync, graph-capturable) when ``capacity`` >= 0 and
    either ``capacity <= max_graph_capacity`` or a CUDA graph is being captured; dynamic otherwise."""
    group = comm.group_by_name(group_name)
    comm.notify("ep_moe")
    with check.trusted_inputs():
        weights, ids = moe_route(router_logits, top_k, scoring=scoring, renormalize=renormalize,
                                 num_expert_group=None if num_expert_group < 0 else num_expert_group,
                                 topk_group=None if topk_group < 0 else topk_group,
                                 correction_bias=correction_bias, routed_scaling_factor=routed_scaling_factor,
                                 score_dtype=score_dtype)
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        fixed = capacity >= 0 and (capacity <= max_graph_capacity or capturing)
        result = ep_dispatch(x, ids, weights, w13.shape[0] * _world(group), group,
                             max_tokens_per_rank=max(capacity, 1) if fixed else None, timeout_s=timeout_s)
        expert_out = moe_experts(result.recv_x, w13, w2, result.expert_offsets, result.tokens_per_expert,
                                 scales=result.recv_scales, out_dtype=x.dtype)
        return ep_combine(expert_out, result.handle)


def _world(group) -> int:
    return comm.world_of(group)[0] if group is not None or comm.dist_ready() else 1


def ep_moe(x, router_logits, w13, w2, top_k, group=None, *, scoring="softmax", renormalize=True,
           num_expert_group=None, topk_group=None, correction_bias=None, routed_scaling_factor=1.0,
           capacity=None, max_graph_capacity=0, timeout_s=None, score_dtype=None) -> torch.Tensor:
    """Expert-parallel MoE forward of this rank's tokens (collective: every rank calls it).

    Args:
        x: [T, H] float tokens of this rank; router_logits: [T, E] (E = all experts).
        w13: [E_local, 2*I, H] gate and up rows of this rank's experts; w2: [E_local, H, I].
        top_k, scoring, renormalize, num_expert_group, topk_group, correction_bias,
            routed_scaling_factor, score_dtype: as in :func:`ascend_ext.ops.moe_route`.
        group: torch.distributed group or its ``group_name`` (None: the world / no group).
        capacity: tokens per peer of the fixed-capacity mode (every rank passes the same
            value; None: dynamic mode). It is used when ``capacity <= max_graph_capacity``
            or while a CUDA graph is captured, so decode steps need no host sync.
        timeout_s: deadline of each collective.

    Returns:
        [T, H] in the dtype of x: sum over each token's experts of weight * expert MLP.
    """
    check.tensor("x", x, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("router_logits", router_logits, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.dim_equals("router_logits", router_logits, 0, x.shape[0], "the token count of x")
    check.tensor("w13", w13, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("w2", w2, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.positive_int("top_k", top_k)
    check.positive_int("max_graph_capacity", max_graph_capacity, allow_zero=True)
    timeout_s = comm.default_timeout_s() if timeout_s is None else float(timeout_s)
    args = (x, router_logits, w13, w2, correction_bias, top_k, scoring, renormalize,
            -1 if num_expert_group is None else num_expert_group, -1 if topk_group is None else topk_group,
            float(routed_scaling_factor), group if isinstance(group, str) else comm.group_name(group),
            -1 if capacity is None else capacity, max_graph_capacity, timeout_s, check_score_dtype(score_dtype))
    if compiling():
        return torch.ops.ascend_ext.ep_moe(*args)
    return run_ep_moe(*args)
